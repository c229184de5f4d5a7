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
    "Raised", "exit_reason", "classify", "exception_struct", "python_stacktrace",
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


class Raised(Exception):
    """An exception raised elsewhere (in a worker process), carried as the BEAM sees it:
    its class (`error`, `exit`, `throw`), reason and stacktrace, re-raised here unchanged."""

    def __init__(self, kind: Atom, reason: Any, stacktrace: list[Any]) -> None:
        super().__init__(inspect(reason))
        self.kind = kind
        self.reason = reason
        self.stacktrace = stacktrace


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
_PLUMBING = ("pykv.process", "pykv.exports", "pykv.threads", "pykv.otp.", "asyncio.", "concurrent.futures.")


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
    if isinstance(exc, Raised):
        return exc.kind, exc.reason, exc.stacktrace
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


# -- Elixir's report wording (Exception.format_exit/1 and the Logger translator's) ----------------

_FUNCTION_CLAUSE, _UNDEF, _BADARG = Atom("function_clause"), Atom("undef"), Atom("badarg")
_SHORT_EXITS = {"normal": "normal", "shutdown": "shutdown", "killed": "killed", "noproc": "no process",
                "noconnection": "no connection", "timeout": "time out"}


def cut(text: str, limit: int = 2000) -> str:
    """A log line's share of an untrusted or huge term: `limit` characters, then `...`."""
    return text if len(text) <= limit else text[:limit] + "..."


def _module_name(module: Any) -> str:
    """`KV.Registry`, `:supervisor` (an Erlang module, as Elixir writes it), or a Python
    module's dotted name as it is."""
    text = module.name if isinstance(module, Atom) else str(module)
    if text.startswith("Elixir."):
        return text[7:]
    return f":{text}" if text.isidentifier() and text[:1].islower() else text


def _frame(entry: Any) -> str | None:
    if not (type(entry) is tuple and len(entry) == 4):
        return None
    module, function, arity, location = entry
    if type(arity) is list:
        arity = len(arity)
    where = ""
    if type(location) is list:
        info = {k.name: v for k, v in (i for i in location if type(i) is tuple and len(i) == 2)
                if isinstance(k, Atom)}
        file, line = info.get("file"), info.get("line")
        if file is not None:
            file = bytes(file).decode(errors="replace") if type(file) is list else str(file)
            where = f"{file}:{line}: " if line is not None else f"{file}: "
    name = function.name if isinstance(function, Atom) else str(function)
    return f"{where}{_module_name(module)}.{name}/{arity}"


def format_stacktrace(stack: Any, indent: str = "    ") -> str:
    lines = [line for line in (_frame(e) for e in (stack if type(stack) is list else [])) if line]
    return "".join(f"\n{indent}{line}" for line in lines[:20])


def format_exception(reason: Any, indent: str = "    ") -> str | None:
    """`** (RuntimeError) boom` and its stacktrace, for an error exit reason `{error, stack}`;
    None when `reason` is not one (a plain exit)."""
    if not (type(reason) is tuple and len(reason) == 2 and type(reason[1]) is list):
        return None
    error, stack = reason
    if isinstance(error, dict) and error.get(_EXCEPTION) is True:
        head = f"** ({_module_name(error.get(_STRUCT))}) {error.get(_MESSAGE, inspect(error))}"
    elif error is _FUNCTION_CLAUSE and stack and _frame(stack[0]):
        head = f"** (FunctionClauseError) no function clause matching in {_frame(stack[0]).rpartition(': ')[2]}"  # type: ignore[union-attr]
    elif error is _UNDEF and stack and _frame(stack[0]):
        head = f"** (UndefinedFunctionError) function {_frame(stack[0]).rpartition(': ')[2]} is undefined or private"  # type: ignore[union-attr]
    elif stack and not any(_frame(e) for e in stack):
        return None  # a two-element exit whose second part is no stacktrace
    else:
        head = f"** (ErlangError) Erlang error: {cut(inspect(error))}"
    return head + format_stacktrace(stack, indent)


def format_exit(reason: Any) -> str:
    """Elixir's `Exception.format_exit/1`, as supervisor reports print `** (exit) ...`."""
    if isinstance(reason, Atom) and reason.name in _SHORT_EXITS:
        return _SHORT_EXITS[reason.name]
    if type(reason) is tuple and len(reason) == 2 and reason[0] is Atom("shutdown"):
        return f"shutdown: {cut(inspect(reason[1]))}"
    if type(reason) is tuple and len(reason) == 2 and reason[0] is Atom("nodedown"):
        return f"no connection to {inspect(reason[1])}"
    exception = format_exception(reason, "        ")
    if exception is not None:
        return "an exception was raised:\n    " + exception
    return cut(inspect(reason))
