"""How failures cross between Python and the BEAM.

Python -> BEAM: an exception in a process or an exported function becomes the exit reason a
BEAM caller expects: `{exception_struct, stacktrace}` for Elixir-style errors (so
`Exception.format_exit/1` and ExUnit print it), the bare reason for `exit/1`.
BEAM -> Python: an exit reason arrives as an `Exit` (or a subclass) carrying the term.
"""

from __future__ import annotations

import traceback
from types import TracebackType
from typing import Any

from .atoms import ERROR
from .term import Atom, inspect

__all__ = [
    "Exit", "Timeout", "NoProc", "NoConnection", "ElixirException", "ErlangError", "Throw",
    "exit_reason", "classify", "exception_struct", "python_stacktrace",
]

_STRUCT, _EXCEPTION, _MESSAGE = Atom("__struct__"), Atom("__exception__"), Atom("message")


class Exit(Exception):
    """A process exit with a BEAM reason. Raise it to exit with exactly that reason (as
    Elixir's `exit/1`); calls into the cluster raise it when the remote side exits."""

    def __init__(self, reason: Any, message: str | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self._message = message  # rendered on demand: most exits are never printed

    def __str__(self) -> str:
        return self._message or f"exited: {inspect(self.reason)}"


class Timeout(Exit, TimeoutError):
    """The BEAM's `:timeout` exit: no reply in time."""

    def __init__(self, what: str = "call") -> None:
        super().__init__(Atom("timeout"), f"{what} timed out")


class NoProc(Exit):
    """The target process does not exist (`:noproc`)."""

    def __init__(self, target: Any) -> None:
        super().__init__(Atom("noproc"), f"no process: {inspect(target)} is not alive")


class NoConnection(Exit, ConnectionError):
    """The target's node is down or unreachable (`:noconnection`, `{:nodedown, node}`)."""

    def __init__(self, node: Any) -> None:
        self.node = node  # the BEAM's own reason for this: {:nodedown, node}
        super().__init__((Atom("nodedown"), node), f"node {inspect(node)} is down or unreachable")


class ElixirException(Exception):
    """Raise an Elixir exception on purpose: `raise ElixirException("ArgumentError", "bad")`.

    `fields` fill the struct's other fields (e.g. `key=` for KeyError)."""

    def __init__(self, name: str, message: str, **fields: Any) -> None:
        self.name = name if name.startswith("Elixir.") else "Elixir." + name
        self.message = message
        self.fields = fields
        super().__init__(message)


class Throw(Exception):
    """`throw(value)`: for erpc callers this is `{:throw, value}`, not an error."""

    def __init__(self, value: Any) -> None:
        self.value = value
        super().__init__(inspect(value))


class ErlangError(Exception):
    """`erlang:error(Reason)`: the exit reason becomes `{reason, stacktrace}`."""

    def __init__(self, reason: Any) -> None:
        self.reason = reason
        super().__init__(inspect(reason))


# Python type -> (Elixir exception module, extra struct fields with their defaults).
_ELIXIR_EQUIVALENT: list[tuple[type[BaseException], str, dict[str, Any]]] = [
    (KeyError, "KeyError", {"key": None, "term": None}),
    (ZeroDivisionError, "ArithmeticError", {}),
    (ArithmeticError, "ArithmeticError", {}),
    (ValueError, "ArgumentError", {}),
    (TypeError, "ArgumentError", {}),
    (IndexError, "Enum.OutOfBoundsError", {}),
]


def exception_struct(name: str, message: str, fields: dict[str, Any] | None = None) -> dict[Any, Any]:
    struct: dict[Any, Any] = {_STRUCT: Atom(name if name.startswith("Elixir.") else "Elixir." + name),
                              _EXCEPTION: True}
    for key, value in (fields or {}).items():
        struct[Atom(key)] = value
    struct[_MESSAGE] = message
    return struct


# Frames of the runtime that carries a call to an exported function.
_PLUMBING = ("pykv.process", "pykv.exports", "pykv.otp.", "asyncio.", "concurrent.futures.")


def python_stacktrace(tb: TracebackType | None) -> list[Any]:
    """Python frames as BEAM stacktrace entries `{module, function, arity, [file:, line:]}`,
    innermost first as on the BEAM."""
    entries = []
    for frame, lineno in traceback.walk_tb(tb):
        code = frame.f_code
        module = frame.f_globals.get("__name__", "python")
        if module.startswith(_PLUMBING):
            continue  # how the call reached the function, not the caller's concern
        location = [(Atom("file"), list(code.co_filename.encode())), (Atom("line"), lineno)]
        arity = code.co_argcount - (code.co_varnames[:1] in (("self",), ("cls",)))  # as called
        entries.append((Atom(module), Atom(code.co_name), arity, location))
    entries.reverse()
    return entries


EXIT, THROW, NOCATCH = Atom("exit"), Atom("throw"), Atom("nocatch")


def classify(exc: BaseException) -> tuple[Atom, Any, list[Any]]:
    """`(class, reason, stacktrace)` as a BEAM `catch Class:Reason:Stack` would see it."""
    if isinstance(exc, Exit):
        return EXIT, exc.reason, []
    stack = python_stacktrace(exc.__traceback__)
    if isinstance(exc, Throw):
        return THROW, exc.value, stack
    if isinstance(exc, ErlangError):
        mfa = getattr(exc, "mfa", None)  # undef, badarg: the stack is the failed call itself
        return ERROR, exc.reason, [(*mfa, getattr(exc, "location", []))] if mfa else stack
    return ERROR, _error_reason(exc), stack


def exit_reason(exc: BaseException) -> Any:
    """The exit reason a BEAM process would have died with, had it raised `exc`."""
    kind, reason, stack = classify(exc)
    if kind is EXIT:
        return reason
    if kind is THROW:
        return ((NOCATCH, reason), stack)
    return (reason, stack)


def _error_reason(exc: BaseException) -> Any:
    """The Elixir exception struct standing for a Python exception."""
    if isinstance(exc, ElixirException):
        return exception_struct(exc.name, exc.message, exc.fields)
    for py_type, name, defaults in _ELIXIR_EQUIVALENT:
        if isinstance(exc, py_type):
            fields = dict(defaults)
            if isinstance(exc, KeyError) and exc.args:
                fields["key"] = _termable(exc.args[0])
                message = f"key {inspect(fields['key'])} not found"
            else:
                message = str(exc) or type(exc).__name__
            return exception_struct(name, message, fields)
    if type(exc) is RuntimeError:
        return exception_struct("RuntimeError", str(exc) or "runtime error")
    # no Elixir equivalent: keep the Python type in the message
    text = str(exc)
    kind = type(exc).__name__
    return exception_struct("RuntimeError", f"{kind}: {text}" if text else kind)


def _termable(value: Any) -> Any:
    from .term import encode, TermError
    try:
        encode(value)
        return value
    except TermError:
        return repr(value)
