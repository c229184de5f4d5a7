"""Running an exported MFA inside a process: the one place where cluster requests become
Python calls. Output goes to the caller's group leader when one is known."""

from __future__ import annotations

import contextvars
from typing import Any, Callable

from ..exports import UndefinedFunction
from ..process import Process, enter
from ..term import Atom, Fun
from .io import redirect_output


async def apply_mfa(proc: Process, module: Any, function: Any, args: Any) -> Any:
    writer = redirect_output(proc)
    try:
        return await proc.node.exports.apply(module, function, args)
    finally:
        if writer is not None:
            writer.flush()


def apply_now(proc: Process, module: Any, function: Any, args: Any) -> tuple[bool, Any]:
    """Run a quick export (a plain function exported with `blocking=False`), or fail an
    undefined one, right now in `proc`'s context, with no asyncio task: `(True, result)`.
    `(False, None)`: the export is `async def` or may block, and needs a task of its own.
    The function's exceptions propagate."""
    entry = proc.node.exports.lookup(module, function, len(args)) if type(args) is list else None
    if entry is None:
        raise UndefinedFunction(module, function, args)
    if entry.is_async or entry.blocking:
        return False, None
    return True, contextvars.copy_context().run(_call_as, proc, entry.fn, args)


def _call_as(proc: Process, fn: Callable[..., Any], args: list[Any]) -> Any:
    enter(proc)
    writer = redirect_output(proc)
    try:
        return fn(*args)
    finally:
        if writer is not None:
            writer.flush()


def is_closure_call(module: Any, function: Any, args: Any) -> bool:
    """`erlang:apply(Fun, Args)`: how a caller's anonymous function arrives. Python cannot
    run BEAM code."""
    return (module is Atom("erlang") and function is Atom("apply") and type(args) is list
            and len(args) == 2 and isinstance(args[0], Fun))
