"""The export table: the only Python functions the cluster may call.

A BEAM caller names `{module, function, arity}`; nothing else is looked up, evaluated or
imported. Anything not exported fails as an undefined function does on a BEAM node.

Two ways to export: `@node.export(...)` on a running node, or the module-level `@export(...)`,
which only declares: `python -m pykv --load MODULE` (`pykv.load`) serves what a module declared.
"""

from __future__ import annotations

import inspect as pyinspect
from dataclasses import dataclass
from typing import Any, Callable

from .errors import ErlangError
from .term import Atom
from .threads import BlockingPool
from .workers import WorkerPool, locate

UNDEF = Atom("undef")


def module_atom(module: str | Atom) -> Atom:
    """`"KV.Router"` -> `:"Elixir.KV.Router"` (Elixir aliases start uppercase); `"erlang"`
    and `"Elixir.KV.Router"` are taken as they are."""
    if isinstance(module, Atom):
        return module
    if module[:1].isupper() and not module.startswith("Elixir."):
        return Atom("Elixir." + module)
    return Atom(module)


@dataclass(frozen=True)
class Export:
    fn: Callable[..., Any]
    is_async: bool
    blocking: bool   # a plain function that may block: run it in a worker thread
    workers: bool = False  # CPU-bound: run it in a worker process (pykv.workers)


class Exports:
    def __init__(self, pool: BlockingPool | None = None, workers: WorkerPool | None = None) -> None:
        self._table: dict[tuple[Atom, Atom, int], Export] = {}
        self.pool = pool if pool is not None else BlockingPool()  # where blocking exports run
        self.workers = workers if workers is not None else WorkerPool()  # started on first use

    def export(self, module: str | Atom, function: str | None = None, arity: int | None = None,
               *, blocking: bool = True, workers: bool = False
               ) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: make `fn` callable from the cluster as `module.function/arity`.

        `function` defaults to the Python name, `arity` to the number of positional
        parameters. A plain function runs in a worker thread (it may block) unless
        `blocking=False` says it is quick; an `async def` runs on the node's loop.
        `workers=True`: a CPU-bound module-level function, run in a worker process so that
        calls use every core (arguments and result must be terms)."""
        def register(fn: Callable[..., Any]) -> Callable[..., Any]:
            self.add(module, function or fn.__name__, fn, arity, blocking=blocking, workers=workers)
            return fn
        return register

    def add(self, module: str | Atom, function: str, fn: Callable[..., Any],
            arity: int | None = None, *, blocking: bool = True,
            workers: bool = False) -> tuple[Atom, Atom, int]:
        if arity is None:
            params = pyinspect.signature(fn).parameters.values()
            arity = sum(1 for p in params if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD))
        is_async = pyinspect.iscoroutinefunction(fn)
        if workers:
            if is_async:
                raise ValueError(f"{fn.__qualname__}: an async def cannot run in a worker process")
            locate(fn)  # a function a worker cannot import fails now, not at its first call
        mfa = (module_atom(module), Atom(function), arity)
        self._table[mfa] = Export(fn, is_async, (blocking or workers) and not is_async, workers)
        return mfa

    def add_declared(self, declarations: list[Declaration]) -> list[tuple[Atom, Atom, int]]:
        """Serve declarations made with the module-level `export`; returns their MFAs."""
        return [self.add(d.module, d.function, d.fn, d.arity, blocking=d.blocking, workers=d.workers)
                for d in declarations]

    def lookup(self, module: Any, function: Any, arity: int) -> Export | None:
        return self._table.get((module, function, arity))

    def __contains__(self, mfa: tuple[Any, Any, int]) -> bool:
        return mfa in self._table

    async def apply(self, module: Any, function: Any, args: list[Any]) -> Any:
        """Run an exported function; an unknown MFA raises `undef` as the BEAM does."""
        entry = self._table.get((module, function, len(args))) if type(args) is list else None
        if entry is None:
            raise UndefinedFunction(module, function, args)
        if entry.is_async:
            return await entry.fn(*args)
        if entry.workers:
            return await self.workers.run(entry.fn, args)
        if entry.blocking:
            return await self.pool.run(entry.fn, *args)
        return entry.fn(*args)


@dataclass(frozen=True)
class Declaration:
    """An export declared at module level, not yet served by any node."""
    module: str | Atom
    function: str
    fn: Callable[..., Any]
    arity: int | None
    blocking: bool
    workers: bool = False


# declarations by the Python module that made them (fn.__module__), in order
_declared: dict[str, list[Declaration]] = {}


def export(module: str | Atom, function: str | None = None, arity: int | None = None,
           *, blocking: bool = True, workers: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Module-level decorator: declare `fn` as `module.function/arity` for the node that
    loads this module (`python -m pykv --load`). The same arguments as `node.export`; the
    function itself is returned unchanged, and nothing is served until a node loads it."""
    def declare(fn: Callable[..., Any]) -> Callable[..., Any]:
        owner = getattr(fn, "__module__", None) or "__main__"
        _declared.setdefault(owner, []).append(
            Declaration(module, function or fn.__name__, fn, arity, blocking, workers))
        return fn
    return declare


def declared(python_module: str) -> list[Declaration]:
    """What the Python module named `python_module` declared with `@export`."""
    return list(_declared.get(python_module, ()))


class UndefinedFunction(ErlangError):
    """`undef`, whose stacktrace is the one call that does not exist: `[{M, F, Args, []}]`."""

    def __init__(self, module: Any, function: Any, args: Any) -> None:
        super().__init__(UNDEF)
        self.mfa = (module, function, args)
