"""pykv: a Python node for Erlang/Elixir clusters, and the Mix/OTP guide's KV store on it."""

from .exports import export
from .errors import ElixirException, ErlangError, Exit, NoConnection, NoProc, Throw, Timeout
from .node import Node
from .process import Process
from .term import Atom, ImproperList, Pid, Reference

__all__ = [
    "Node", "Process", "export", "Atom", "Pid", "Reference", "ImproperList",
    "Exit", "Timeout", "NoProc", "NoConnection", "ElixirException", "ErlangError", "Throw",
]
