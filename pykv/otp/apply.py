"""Running an exported MFA inside a process: the one place where cluster requests become
Python calls. Output goes to the caller's group leader when one is known."""

from __future__ import annotations

from typing import Any

from ..process import Process
from ..term import Atom, Fun
from .io import redirect_output


async def apply_mfa(proc: Process, module: Any, function: Any, args: Any) -> Any:
    writer = redirect_output(proc)
    try:
        return await proc.node.exports.apply(module, function, args)
    finally:
        if writer is not None:
            writer.flush()


def is_closure_call(module: Any, function: Any, args: Any) -> bool:
    """`erlang:apply(Fun, Args)`: how a caller's anonymous function arrives. Python cannot
    run BEAM code."""
    return (module is Atom("erlang") and function is Atom("apply") and type(args) is list
            and len(args) == 2 and isinstance(args[0], Fun))
