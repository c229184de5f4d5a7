"""Supervisor, with OTP's semantics (stdlib supervisor.erl) and Elixir's vocabulary.

    sup = await Supervisor.start_link(node, [
        Registry.child_spec(name="KV.Registry"),
        TaskSupervisor.child_spec(name="KV.RouterTasks"),
    ], strategy="one_for_all", name="KV.Supervisor")

Children start in order (a failure stops those started, in reverse, and the supervisor's start
fails with `{:shutdown, {:failed_to_start_child, id, reason}}`) and stop in reverse order,
each within its shutdown time. A child that exits is restarted by its `restart` type and the
strategy: one_for_one (that child), one_for_all (every child), rest_for_one (it and those
started after it). More than `max_restarts` restarts in `max_seconds` (Elixir's defaults, 3
in 5) and the supervisor stops its children and exits `:shutdown`, saying so in the log.

BEAM tools call it as any supervisor: `Supervisor.which_children/count_children/
terminate_child/restart_child/delete_child/start_child`, `:supervisor.get_childspec`, with
the same result shapes (reversed start order in which_children, keyword lists on the wire).
A child spec from a BEAM caller runs only a function the node exports (see child_spec.py);
any other start fails as on a node without that module (`undef`).
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import time
from collections import deque
from typing import TYPE_CHECKING, Any, ClassVar

from ..atoms import ERROR, EXIT_TAG, GEN_CAST, KILLED, OK, SHUTDOWN
from ..errors import Exit, cut, format_exit
from ..exports import module_atom
from ..process import Process, enter
from ..term import Atom, Pid, inspect
from . import sys as sys_protocol
from .child_spec import (
    IGNORE, INFINITY, PERMANENT, SUPERVISOR, TEMPORARY, TRANSIENT, UNDEFINED, ChildSpec,
    StartError, StartFailed, from_term, shutdown, start_now,
)
from .gen_server import ALREADY_STARTED, GenServer, call, is_shutdown

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.supervisor")

ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE = Atom("one_for_one"), Atom("one_for_all"), Atom("rest_for_one")
RESTARTING = Atom("restarting")
CHILD_TERMINATED, START_ERROR, SHUTDOWN_ERROR = Atom("child_terminated"), Atom("start_error"), Atom("shutdown_error")
REACHED_MAX = Atom("reached_max_restart_intensity")
FAILED_TO_START_CHILD = Atom("failed_to_start_child")
NOT_FOUND, RUNNING, ALREADY_PRESENT = Atom("not_found"), Atom("running"), Atom("already_present")
TRY_AGAIN_RESTART = Atom("try_again_restart")
WHICH_CHILDREN, COUNT_CHILDREN = Atom("which_children"), Atom("count_children")
START_CHILD, TERMINATE_CHILD = Atom("start_child"), Atom("terminate_child")
RESTART_CHILD, DELETE_CHILD, GET_CHILDSPEC = Atom("restart_child"), Atom("delete_child"), Atom("get_childspec")
SPECS, ACTIVE, SUPERVISORS, WORKERS = Atom("specs"), Atom("active"), Atom("supervisors"), Atom("workers")
LOCAL = Atom("local")


class RestartIntensity:
    """At most `max_restarts` restarts within any `max_seconds` (supervisor.erl's add_restart)."""

    __slots__ = ("max_restarts", "max_seconds", "restarts")

    def __init__(self, max_restarts: int = 3, max_seconds: float = 5) -> None:
        if type(max_restarts) is not int or max_restarts < 0:
            raise ValueError(f"max_restarts must be a non-negative integer, not {max_restarts!r}")
        if not max_seconds > 0:
            raise ValueError(f"max_seconds must be positive, not {max_seconds!r}")
        self.max_restarts = max_restarts
        self.max_seconds = max_seconds
        self.restarts: deque[float] = deque()

    def add(self) -> bool:
        """Count a restart; False when it is one too many."""
        now = time.monotonic()
        restarts = self.restarts
        while restarts and restarts[0] < now - self.max_seconds:
            restarts.popleft()
        restarts.append(now)
        return len(restarts) <= self.max_restarts

    def as_term(self) -> list[int]:
        """The restart times as OTP keeps them: monotonic seconds, newest first."""
        return [int(t) for t in reversed(self.restarts)]


def supervisor_name(sup: GenServer) -> str:
    """A supervisor as Elixir's reports name it: its name, or `#PID<...> (Module)`."""
    if sup.name is not None:
        return inspect(sup.name)
    return f"{sup.pid!r} ({inspect(sup.beam_callback_atom())})"


def _start_call(mfa: Any) -> str:
    module, function, args = mfa
    name = function.name if isinstance(function, Atom) else str(function)
    if type(args) is not list:
        return f"{inspect(module)}.{name}/?"
    return f"{inspect(module)}.{name}({cut(', '.join(inspect(a) for a in args), 500)})"


def report(sup: GenServer, context: Atom, reason: Any, spec: ChildSpec, pid: Any,
           dynamic: bool = False, mfa: Any = None) -> None:
    """A supervisor report in the words of Elixir's Logger translator (`Child KV.Registry of
    Supervisor KV.Supervisor terminated`, `... caused shutdown`); error level, except for a
    temporary child's exit (no restart follows; the child's own crash was logged)."""
    what = {CHILD_TERMINATED: "terminated", START_ERROR: "failed to start",
            SHUTDOWN: "caused shutdown", SHUTDOWN_ERROR: "shut down abnormally"}[context]
    child = "Child of" if dynamic else f"Child {inspect(spec.id)} of"
    lines = [f"{child} Supervisor {supervisor_name(sup)} {what}", f"** (exit) {format_exit(reason)}"]
    if type(pid) is Pid and context is not SHUTDOWN:
        lines.append(f"Pid: {pid!r}")
    lines.append(f"Start Call: {_start_call(mfa or spec.mfa)}")
    level = logging.DEBUG if context is CHILD_TERMINATED and spec.restart is TEMPORARY else logging.ERROR
    log.log(level, "%s", "\n".join(lines))


class SupervisorBase(GenServer):
    """What Supervisor and DynamicSupervisor share: they trap exits, show as `:supervisor`
    processes to `:sys`, and start and stop their children in the supervisor's context."""

    beam_callback: ClassVar[str | Atom | None] = None
    child_type: ClassVar[str | Atom] = SUPERVISOR
    shutdown: ClassVar[int | str | Atom] = INFINITY
    intensity: RestartIntensity
    gave_up = False  # True once it shut down for too many restarts

    @classmethod
    def beam_callback_atom(cls) -> Atom:
        """The supervisor's callback module, as `:supervisor.get_callback_module/1` says it."""
        for klass in cls.__mro__:
            if "beam_callback" in klass.__dict__ and klass.__dict__["beam_callback"] is not None:
                return module_atom(klass.__dict__["beam_callback"])
            if "beam_module" in klass.__dict__ and issubclass(klass, GenServer):
                return klass.beam_module_atom()
        return cls.beam_module_atom()

    def _registered_name(self) -> Any:
        return (LOCAL, self.name) if self.name is not None else (self.pid, self.beam_callback_atom())

    def process_dictionary(self) -> list[Any]:
        return [(Atom("$initial_call"), (Atom("supervisor"), self.beam_callback_atom(), 1)),
                (Atom("$ancestors"), list(self._ancestors))]

    def format_status(self) -> list[Any]:
        # the {supervisor, [{"Callback", Mod}]} item: supervisor:get_callback_module/1 reads it
        return [*super().format_status(),
                (Atom("supervisor"), [(sys_protocol.charlist("Callback"), self.beam_callback_atom())])]

    def system_replace_state(self, state: Any) -> None:
        raise ValueError("a supervisor's state is its children: use start_child/terminate_child")

    def in_context(self, coroutine: Any) -> "asyncio.Task[Any]":
        """Run a coroutine as this supervisor (current_process() is it), e.g. its start."""
        context = contextvars.copy_context()
        context.run(enter, self)
        return asyncio.get_running_loop().create_task(coroutine, context=context)


class _Child:
    __slots__ = ("spec", "pid")

    def __init__(self, spec: ChildSpec, pid: Any = None) -> None:
        self.spec = spec
        self.pid = pid  # a Pid, None (not running: OTP's undefined), or (RESTARTING, old pid)


class Supervisor(SupervisorBase):
    """A static supervisor. Use it directly (`await Supervisor.start_link(node, children,
    strategy=...)`) or subclass it, as `use Supervisor`:

        class KVSupervisor(Supervisor):
            beam_module = "KV.Supervisor"
            def init(self):
                super().init([Registry.child_spec(name="KV.Registry"), ...], strategy="one_for_all")
    """

    beam_module: ClassVar[str | Atom | None] = "Supervisor"
    beam_callback: ClassVar[str | Atom | None] = "Supervisor.Default"
    beam_clauses: ClassVar[str | Atom | None] = "supervisor"  # OTP's supervisor.erl has the clauses
    _init_args: tuple[Any, ...] = ()

    # -- starting -------------------------------------------------------------------------------

    @classmethod
    def start(cls, *args: Any, **kwargs: Any) -> Any:
        raise TypeError("a Supervisor starts its children as it starts: use `await Supervisor.start_link(...)`")

    @classmethod
    async def start_link(cls, node: "Node", *args: Any, name: str | Atom | None = None,
                         link: Process | None = None, **kwargs: Any) -> "Supervisor | None":
        """Start the supervisor and its children, in order. `link` is its parent. Returns it,
        or None if init returned IGNORE; raises StartError with the reason a BEAM supervisor
        gives (`{:shutdown, {:failed_to_start_child, id, reason}}`, `{:already_started, pid}`)."""
        if name is not None:
            existing = node.whereis(name)
            if existing is not None and existing.alive:
                raise StartError((ALREADY_STARTED, existing.pid), f"{inspect(module_atom(name))} is already started")
        sup = cls(node, node.make_pid())
        sup._adopt(link)
        sup.trap_exit = True
        node.add_process(sup, name)
        if link is not None:
            node.link(link, sup.pid)
        sup._busy = True
        sup._init_args = args
        try:
            result = contextvars.copy_context().run(sup._run_init, args, kwargs)
            if result is IGNORE:
                raise _Ignored()
            if not hasattr(sup, "_children"):
                raise StartError((Atom("bad_return"), (sup.beam_callback_atom(), Atom("init"), result)),
                                 f"{type(sup).__name__}.init did not call Supervisor.init(children, ...)")
            await sup.in_context(sup._start_children())
        except BaseException as e:
            if link is not None:
                node.unlink(link, sup.pid)
            if isinstance(e, _Ignored):
                Process._terminate(sup, Atom("normal"))
                return None
            reason = e.reason if isinstance(e, Exit) else KILLED if isinstance(e, asyncio.CancelledError) \
                else sys_protocol.as_term(repr(e))
            Process._terminate(sup, reason)
            if isinstance(e, StartError):
                raise
            if isinstance(e, Exit):
                raise StartError(reason, str(e)) from e
            raise
        sup._busy = False
        if sup.mailbox:
            sup._busy = True
            contextvars.copy_context().run(sup._drain_as_self)
        return sup

    @classmethod
    def child_spec(cls, *args: Any, id: Any = None, name: str | Atom | None = None,
                   restart: str | Atom | None = None, shutdown: int | str | Atom | None = None,
                   **kwargs: Any) -> ChildSpec:
        """This supervisor as a child of another: type supervisor, shutdown infinity."""
        spec = super().child_spec(*args, id=id, name=name, restart=restart, shutdown=shutdown, **kwargs)
        return spec.replace(start=lambda sup: cls.start_link(sup.node, *args, name=name, link=sup, **kwargs))

    def init(self, children: list[ChildSpec] = (), *, strategy: str | Atom = ONE_FOR_ONE,  # type: ignore[assignment]
             max_restarts: int = 3, max_seconds: float = 5) -> None:
        """Elixir's `Supervisor.init(children, strategy: ..., max_restarts: 3, max_seconds: 5)`."""
        strategy = Atom(strategy) if isinstance(strategy, str) else strategy
        if strategy not in (ONE_FOR_ONE, ONE_FOR_ALL, REST_FOR_ONE):
            raise StartError((Atom("supervisor_data"), (Atom("invalid_strategy"), strategy)),
                             f"strategy must be one_for_one, one_for_all or rest_for_one, not {strategy!r}")
        specs = list(children)
        seen: set[Any] = set()
        for spec in specs:
            if not isinstance(spec, ChildSpec):
                raise StartError((Atom("start_spec"), (Atom("invalid_child_spec"), sys_protocol.as_term(spec))),
                                 f"not a ChildSpec: {spec!r}")
            if spec.id in seen:
                raise StartError((Atom("start_spec"), (Atom("duplicate_child_name"), spec.id)),
                                 f"two children have the id {inspect(spec.id)}")
            seen.add(spec.id)
        self.strategy = strategy
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self._children: list[_Child] = [_Child(spec) for spec in specs]

    async def _start_children(self, children: list[_Child] | None = None) -> None:
        """Start `children` (default: all) in order; on a failure stop those started and raise."""
        todo = self._children if children is None else children
        for child in todo:
            try:
                child.pid = await self._start_one(child.spec)
            except StartFailed as e:
                report(self, START_ERROR, e.reason, child.spec, UNDEFINED)
                await self._terminate_children()
                reason = (SHUTDOWN, (FAILED_TO_START_CHILD, child.spec.id, e.reason))
                raise StartError(reason, f"{supervisor_name(self)} failed to start child "
                                         f"{inspect(child.spec.id)}: {format_exit(e.reason)}") from e
            if child.pid is None and child.spec.restart is TEMPORARY:
                self._children.remove(child)

    async def _start_one(self, spec: ChildSpec) -> Pid | None:
        result = start_now(self, spec)
        if asyncio.iscoroutine(result) or isinstance(result, asyncio.Future):
            result = await result
        return result

    # -- stopping -------------------------------------------------------------------------------

    async def terminate(self, reason: Any) -> None:
        await self._terminate_children()

    async def _terminate_children(self, children: list[_Child] | None = None) -> None:
        """Stop children in reverse start order, each within its shutdown time; temporary
        ones are forgotten, the others kept (not running) for a restart."""
        for child in reversed(list(self._children if children is None else children)):
            await self._terminate_one(child)
            if child.spec.restart is TEMPORARY and child in self._children:
                self._children.remove(child)

    async def _terminate_one(self, child: _Child) -> None:
        pid = child.pid
        child.pid = None
        if type(pid) is not Pid:
            return
        for _, spec, reason in await shutdown(self, [(pid, child.spec)]):
            report(self, SHUTDOWN_ERROR, reason, spec, pid)

    # -- children exiting -----------------------------------------------------------------------

    def handle_info(self, message: Any) -> Any:
        if type(message) is tuple and len(message) == 3 and message[0] is EXIT_TAG:
            child = self._find_pid(message[1])
            if child is not None:
                return self._child_exited(child, message[2])
            return None
        log.error("Supervisor received unexpected message: %s", cut(inspect(message), 1000))
        return None

    def handle_cast(self, request: Any) -> Any:
        if type(request) is tuple and len(request) == 2 and request[0] is TRY_AGAIN_RESTART:
            child = self._find_id(request[1])
            if child is not None and type(child.pid) is tuple:
                return self._restart(child)
            return None
        return super().handle_cast(request)

    def _child_exited(self, child: _Child, reason: Any) -> Any:
        restart = child.spec.restart
        if restart is PERMANENT or (restart is TRANSIENT and not is_shutdown(reason)):
            report(self, CHILD_TERMINATED, reason, child.spec, child.pid)
            return self._restart(child)
        if restart is TEMPORARY and not is_shutdown(reason):
            report(self, CHILD_TERMINATED, reason, child.spec, child.pid)
        self._forget(child)
        return None

    def _forget(self, child: _Child) -> None:
        """del_child: a temporary child is gone; another is kept, not running."""
        if child.spec.restart is TEMPORARY:
            if child in self._children:
                self._children.remove(child)
        else:
            child.pid = None

    async def _restart(self, child: _Child) -> None:
        if not self.intensity.add():
            report(self, SHUTDOWN, REACHED_MAX, child.spec, child.pid)
            self._forget(child)
            self.gave_up = True
            raise Exit(SHUTDOWN)  # the loop runs terminate (the other children), then exits
        old = child.pid
        if self.strategy is ONE_FOR_ONE:
            todo = [child]
        else:
            start = 0 if self.strategy is ONE_FOR_ALL else self._children.index(child)
            todo = list(self._children[start:])
            child.pid = None
            await self._terminate_children([c for c in todo if c is not child])
            todo = [c for c in todo if c in self._children]
        for each in todo:
            try:
                each.pid = await self._start_one(each.spec)
            except StartFailed as e:
                report(self, START_ERROR, e.reason, each.spec, UNDEFINED)
                each.pid = (RESTARTING, old if each is child and type(old) is Pid else UNDEFINED)
                # try again later, through the mailbox (supervisor.erl's try_again_restart)
                self.node.route(self.pid, self.pid, (GEN_CAST, (TRY_AGAIN_RESTART, each.spec.id)))
                return
            if each.pid is None and each.spec.restart is TEMPORARY:
                self._children.remove(each)

    def _find_pid(self, pid: Any) -> _Child | None:
        for child in self._children:
            if child.pid == pid:
                return child
        return None

    def _find_id(self, id: Any) -> _Child | None:
        for child in self._children:
            if child.spec.id == id:
                return child
        return None

    # -- calls from BEAM tools (and Python clients) ------------------------------------------

    def handle_call(self, request: Any, from_: Any) -> Any:
        if request is WHICH_CHILDREN:
            return self.which_children()
        if request is COUNT_CHILDREN:
            return self.count_children()
        if type(request) is tuple and len(request) == 2:
            op, arg = request
            if op is TERMINATE_CHILD:
                return self._call_terminate_child(arg)
            if op is RESTART_CHILD:
                return self._call_restart_child(arg)
            if op is DELETE_CHILD:
                return self._call_delete_child(arg)
            if op is GET_CHILDSPEC:
                child = self._find_id(arg)
                return (OK, child.spec.as_term()) if child is not None else (ERROR, NOT_FOUND)
            if op is START_CHILD:
                return self._call_start_child(arg)
        return super().handle_call(request, from_)

    def which_children(self) -> list[Any]:
        """`[{id, pid | :restarting | :undefined, type, modules}]`, newest first as OTP lists them."""
        return [(c.spec.id, RESTARTING if type(c.pid) is tuple else (c.pid or UNDEFINED), c.spec.type, c.spec.modules)
                for c in reversed(self._children)]

    def count_children(self) -> list[Any]:
        """`[specs: n, active: n, supervisors: n, workers: n]` (a keyword list on the wire)."""
        active = supervisors = 0
        for child in self._children:
            if type(child.pid) is Pid and (child.pid.node is not self.node.name or child.pid in self.node.processes):
                active += 1
            if child.spec.type is SUPERVISOR:
                supervisors += 1
        n = len(self._children)
        return [(SPECS, n), (ACTIVE, active), (SUPERVISORS, supervisors), (WORKERS, n - supervisors)]

    async def _call_terminate_child(self, id: Any) -> Any:
        child = self._find_id(id)
        if child is None:
            return (ERROR, NOT_FOUND)
        await self._terminate_one(child)
        self._forget(child)
        return OK

    async def _call_restart_child(self, id: Any) -> Any:
        child = self._find_id(id)
        if child is None:
            return (ERROR, NOT_FOUND)
        if type(child.pid) is tuple:
            return (ERROR, RESTARTING)
        if child.pid is not None:
            return (ERROR, RUNNING)
        try:
            child.pid = await self._start_one(child.spec)
        except StartFailed as e:
            return (ERROR, e.reason)
        return (OK, child.pid if child.pid is not None else UNDEFINED)

    def _call_delete_child(self, id: Any) -> Any:
        child = self._find_id(id)
        if child is None:
            return (ERROR, NOT_FOUND)
        if type(child.pid) is tuple:
            return (ERROR, RESTARTING)
        if child.pid is not None:
            return (ERROR, RUNNING)
        self._children.remove(child)
        return OK

    async def _call_start_child(self, spec: Any) -> Any:
        if not isinstance(spec, ChildSpec):
            try:
                spec = from_term(spec)
            except ValueError as e:
                return (ERROR, e.args[0])
        existing = self._find_id(spec.id)
        if existing is not None:
            if type(existing.pid) is Pid:
                return (ERROR, (ALREADY_STARTED, existing.pid))
            return (ERROR, ALREADY_PRESENT)
        try:
            pid = await self._start_one(spec)
        except StartFailed as e:
            reason = e.reason
            if type(reason) is tuple and len(reason) == 2 and reason[0] is ALREADY_STARTED:
                return (ERROR, reason)
            return (ERROR, (reason, spec.record(UNDEFINED)))
        if pid is None and spec.restart is TEMPORARY:
            return (OK, UNDEFINED)
        self._children.append(_Child(spec, pid))
        return (OK, pid if pid is not None else UNDEFINED)

    # -- :sys ---------------------------------------------------------------------------------

    def system_get_state(self) -> Any:
        """The supervisor.erl `#state{}` record, as a BEAM supervisor shows it."""
        ids = [c.spec.id for c in reversed(self._children)]
        db = {c.spec.id: c.spec.record(c.pid if c.pid is not None else UNDEFINED) for c in self._children}
        return (Atom("state"), self._registered_name(), self.strategy, (ids, db), UNDEFINED,
                self.intensity.max_restarts, self.intensity.max_seconds, self.intensity.as_term(), 0,
                Atom("never"), self.beam_callback_atom(), init_args_term(self._init_args))


def init_args_term(args: tuple[Any, ...]) -> Any:
    """The init argument as `:sys` shows it (`#state.args`): child specs as their maps."""
    shown = [[c.as_term() if isinstance(c, ChildSpec) else c for c in a] if isinstance(a, (list, tuple)) else a
             for a in args]
    return sys_protocol.as_term(shown[0] if len(shown) == 1 else shown)


class _Ignored(Exception):
    pass


# -- the client: any supervisor, Python or BEAM ---------------------------------------------------

async def which_children(via: Any, sup: Any) -> list[Any]:
    """`Supervisor.which_children/1` (and DynamicSupervisor's)."""
    return await call(via, sup, WHICH_CHILDREN, timeout=None)


async def count_children(via: Any, sup: Any) -> dict[Atom, int]:
    """`Supervisor.count_children/1`: a map, as Elixir makes of the keyword list."""
    return dict(await call(via, sup, COUNT_CHILDREN, timeout=None))


async def terminate_child(via: Any, sup: Any, id_or_pid: Any) -> Any:
    return await call(via, sup, (TERMINATE_CHILD, id_or_pid), timeout=None)


async def restart_child(via: Any, sup: Any, id: Any) -> Any:
    return await call(via, sup, (RESTART_CHILD, id), timeout=None)


async def delete_child(via: Any, sup: Any, id: Any) -> Any:
    return await call(via, sup, (DELETE_CHILD, id), timeout=None)


async def start_child(via: Any, sup: Any, spec: Any) -> Any:
    """`Supervisor.start_child/2` with a spec term (a map), for a BEAM supervisor; a Python
    supervisor on this node also takes a ChildSpec."""
    return await call(via, sup, (START_CHILD, spec), timeout=None)
