"""Group-leader IO: what an exported function prints goes to its caller's console.

The BEAM IO protocol (OTP stdlib "The Erlang I/O Protocol"): `{io_request, From, ReplyAs,
{put_chars, unicode, Chars}}` to the group leader, answered `{io_reply, ReplyAs, ok}`.
A caller's group leader reaches us in SPAWN_REQUEST (rpc, erpc, Node.spawn).
"""

from __future__ import annotations

import asyncio
import contextvars
import io
import sys
import threading
from typing import TYPE_CHECKING, Any

from ..atoms import OK
from ..process import Process
from ..term import Atom, Pid, inspect

if TYPE_CHECKING:
    from ..node import Node

IO_REQUEST = Atom("io_request")
IO_REPLY = Atom("io_reply")
PUT_CHARS = Atom("put_chars")
UNICODE = Atom("unicode")

_sink: contextvars.ContextVar["GroupLeaderWriter | None"] = contextvars.ContextVar("pykv_io_sink", default=None)


class GroupLeaderWriter:
    """Collects a process's printed text and sends it, a line at a time, to a group leader."""

    def __init__(self, proc: Process, leader: Pid) -> None:
        self.proc = proc
        self.leader = leader
        self.loop = asyncio.get_running_loop()
        self.loop_thread = threading.get_ident()
        self._buffer: list[str] = []

    def write(self, text: str) -> None:
        self._buffer.append(text)
        if "\n" in text:
            self.flush()

    def flush(self) -> None:
        if not self._buffer:
            return
        chars = "".join(self._buffer)
        self._buffer.clear()
        request = (IO_REQUEST, self.proc.pid, self.proc.node.make_ref(), (PUT_CHARS, UNICODE, chars))
        if threading.get_ident() == self.loop_thread:
            self.proc.send(self.leader, request)
        else:  # a blocking export runs in a worker thread
            self.loop.call_soon_threadsafe(self.proc.send, self.leader, request)


class _ContextStdout(io.TextIOBase):
    """sys.stdout that writes to the current process's group leader when it has one."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def write(self, text: str) -> int:
        sink = _sink.get()
        if sink is None:
            return self._real.write(text)
        sink.write(text)
        return len(text)

    def flush(self) -> None:
        sink = _sink.get()
        (sink or self._real).flush()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)


def redirect_output(proc: Process) -> GroupLeaderWriter | None:
    """From now on in this context, print() goes to `proc`'s group leader (if remote)."""
    leader = proc.group_leader
    if leader is None or leader.node is proc.node.name:
        return None
    if not isinstance(sys.stdout, _ContextStdout):
        sys.stdout = _ContextStdout(sys.stdout)
    writer = GroupLeaderWriter(proc, leader)
    _sink.set(writer)
    return writer


class LocalGroupLeader(Process):
    """This node's group leader for the processes we start on other nodes: their output is
    printed here, and every IO request is answered so the remote process never blocks."""

    @classmethod
    def of(cls, node: "Node") -> "LocalGroupLeader":
        leader = node.whereis("pykv_group_leader")
        if leader is None:
            leader = node.add_process(cls(node, node.make_pid()), "pykv_group_leader")
        assert isinstance(leader, LocalGroupLeader)
        return leader

    def _deliver(self, message: Any) -> None:
        if not (type(message) is tuple and len(message) == 4 and message[0] is IO_REQUEST):
            return
        _, sender, reply_as, request = message
        try:
            text = _put_chars_text(request)
        except (ValueError, TypeError, OverflowError):
            text = None  # chardata we cannot read: refused, never raised into the connection
        if text is None:
            reply: Any = (Atom("error"), Atom("enotsup"))
        else:
            sys.stdout.write(text)
            sys.stdout.flush()
            reply = OK
        self.send(sender, (IO_REPLY, reply_as, reply))


def _put_chars_text(request: Any) -> str | None:
    """The text of a put_chars request (OTP stdlib "The Erlang I/O Protocol"), or None."""
    if type(request) is not tuple or not request or request[0] is not PUT_CHARS:
        return None
    if len(request) in (2, 3):                        # {put_chars, [Encoding,] Chars}
        return _text(request[-1])
    if len(request) == 5 and request[2:4] == (Atom("io_lib"), Atom("format")):
        fmt, args = request[4] if type(request[4]) is list and len(request[4]) == 2 else (None, None)
        return _format(_text(fmt), args if type(args) is list else [])
    return None


def _text(chars: Any) -> str:
    """Chardata: a binary (UTF-8), a code point, or a possibly nested list of those."""
    if isinstance(chars, (bytes, bytearray)):
        return bytes(chars).decode("utf-8", "replace")
    if isinstance(chars, int) and not isinstance(chars, bool):
        return chr(chars)
    if isinstance(chars, list):
        return "".join(_text(c) for c in chars)
    if isinstance(chars, Atom):
        return chars.name
    raise TypeError(f"not chardata: {chars!r}")


def _format(fmt: str, args: list[Any]) -> str:
    """io:format's common directives (~s ~p ~w ~n ~~), terms shown as Elixir inspects them.
    Anything else is shown as the format and its arguments, rather than lost."""
    out, rest, i = [], list(args), 0
    while i < len(fmt):
        c = fmt[i]
        if c != "~" or i + 1 >= len(fmt):
            out.append(c)
            i += 1
            continue
        directive = fmt[i + 1]
        i += 2
        if directive == "n":
            out.append("\n")
        elif directive == "~":
            out.append("~")
        elif directive in "spw" and rest:
            arg = rest.pop(0)
            out.append(_text(arg) if directive == "s" else inspect(arg))
        else:
            return f"{fmt} {inspect(args)}\n"
    return "".join(out)
