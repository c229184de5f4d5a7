"""DynamicSupervisor, as Elixir's (lib/elixir/lib/dynamic_supervisor.ex): children started on
demand, one_for_one, identified by pid; `max_children`, `extra_arguments`, restart intensity.

    buckets = DynamicSupervisor.start(node, name="KV.BucketSupervisor")
    pid = await buckets.start_child(Bucket.child_spec())      # through its mailbox
    pid = buckets.start_child_nowait(Bucket.child_spec())     # now, from this node's code

BEAM tools call it as Elixir's: `DynamicSupervisor.start_child/which_children/count_children/
terminate_child` (the calls carry `{:start_child, {mfa, restart, shutdown, type, modules}}`,
validated by the caller). Unknown casts are ignored, as Elixir's handle_cast/2 does.
"""

from __future__ import annotations

import logging
from typing import Any, Awaitable, ClassVar

from ..atoms import ERROR, EXIT_TAG, OK, SHUTDOWN
from ..errors import ErlangError, Exit, NoProc, cut
from ..exports import module_atom
from ..term import Atom, Pid, inspect
from .child_spec import (
    IGNORE, PERMANENT, TEMPORARY, TRANSIENT, UNDEFINED, ChildSpec, StartError, StartFailed,
    shutdown, start_now,
)
from .gen_server import call, is_shutdown
from .supervisor import (
    ACTIVE, CHILD_TERMINATED, COUNT_CHILDREN, NOT_FOUND, REACHED_MAX, RESTARTING, SHUTDOWN_ERROR,
    SPECS, START_CHILD, START_ERROR, SUPERVISORS, TERMINATE_CHILD, WHICH_CHILDREN, WORKERS,
    RestartIntensity, SupervisorBase, report,
)
from . import sys as sys_protocol

log = logging.getLogger("pykv.supervisor")

ONE_FOR_ONE = Atom("one_for_one")
START_TASK = Atom("start_task")
GEN_RESTART = Atom("$gen_restart")
MAX_CHILDREN = Atom("max_children")
INFINITY = Atom("infinity")


class _Restarting:
    """A child whose restart failed: kept under its old pid until a retry succeeds."""

    __slots__ = ("spec",)

    def __init__(self, spec: ChildSpec) -> None:
        self.spec = spec


class DynamicSupervisor(SupervisorBase):
    """A supervisor of children started on demand. `init` takes Elixir's options."""

    beam_module: ClassVar[str | Atom | None] = "DynamicSupervisor"
    beam_callback: ClassVar[str | Atom | None] = "Supervisor.Default"

    def init(self, *, strategy: str | Atom = ONE_FOR_ONE, max_children: int | str | Atom | None = None,  # type: ignore[override]
             max_restarts: int = 3, max_seconds: float = 5, extra_arguments: list[Any] = ()) -> None:  # type: ignore[assignment]
        strategy = Atom(strategy) if isinstance(strategy, str) else strategy
        if strategy is not ONE_FOR_ONE:
            raise StartError((Atom("supervisor_data"), (Atom("invalid_strategy"), strategy)),
                             "a DynamicSupervisor's only strategy is one_for_one")
        if max_children in (None, "infinity", INFINITY):
            max_children = None
        elif type(max_children) is not int or max_children < 0:
            raise StartError((Atom("supervisor_data"), (Atom("invalid_max_children"), max_children)),
                             f"max_children must be a non-negative integer or infinity, not {max_children!r}")
        self.strategy = strategy
        self.max_children: int | None = max_children  # type: ignore[assignment]
        self.extra_arguments = list(extra_arguments)
        self.intensity = RestartIntensity(max_restarts, max_seconds)
        self._children: dict[Pid, Any] = {}  # pid -> ChildSpec, or _Restarting
        self.trap_exit = True

    @classmethod
    def child_spec(cls, *args: Any, id: Any = None, name: str | Atom | None = None,
                   restart: str | Atom | None = None, shutdown: int | str | Atom | None = None,
                   **kwargs: Any) -> ChildSpec:
        """As `{DynamicSupervisor, name: ..., strategy: ...}`: id the name, type supervisor."""
        kwargs = {k: Atom(v) if k == "strategy" and isinstance(v, str) else v for k, v in kwargs.items()}
        spec = super().child_spec(*args, id=id, name=name, restart=restart, shutdown=shutdown, **kwargs)
        if id is None and name is not None:
            spec = spec.replace(id=module_atom(name))
        return spec

    # -- starting children -----------------------------------------------------------------------

    def start_child_nowait(self, spec: ChildSpec) -> Pid | None:
        """Start a child now, from Python code on this node (the registry starts buckets so):
        the child's start must not need awaiting. Returns its pid (None for ignore); raises
        StartError (`:max_children`, or the start's reason)."""
        if self._stopping or not self.alive:
            raise NoProc(self.name or self.pid)
        if self.max_children is not None and len(self._children) >= self.max_children:
            raise StartError(MAX_CHILDREN, f"{inspect(self.name or self.pid)} has max_children children")
        try:
            pid = start_now(self, spec, self.extra_arguments, caught=False)
        except StartFailed as e:
            raise StartError(e.reason, f"child failed to start: {cut(inspect(e.reason), 500)}") from e
        if not (pid is None or type(pid) is Pid):
            pid.close()
            raise TypeError("this child's start must be awaited: use `await supervisor.start_child(spec)`")
        if pid is not None:
            self._children[pid] = spec
        return pid

    async def start_child(self, spec: ChildSpec) -> Pid | None:
        """`DynamicSupervisor.start_child/2`, through the supervisor's mailbox (so it waits for
        whatever the supervisor is doing). Returns the pid, None for ignore; raises StartError."""
        reply = await call(self.node, self.pid, (START_CHILD, spec), timeout=None)
        if reply is IGNORE:
            return None
        if type(reply) is tuple and reply[0] is OK:
            return reply[1]
        raise StartError(reply[1] if type(reply) is tuple and len(reply) == 2 else reply,
                         f"child failed to start: {cut(inspect(reply), 500)}")

    def _call_start_child(self, child: Any) -> Any:
        if isinstance(child, ChildSpec):
            spec = child
        elif type(child) is tuple and len(child) == 5:  # what Elixir's client sends, validated
            mfa, restart, shutdown_, type_, modules = child
            try:
                spec = ChildSpec(UNDEFINED, mfa, restart=restart, shutdown=shutdown_, type=type_, modules=modules)
            except ValueError as e:
                return (ERROR, (Atom("invalid_child_spec"), sys_protocol.as_term(str(e))))
        else:
            raise ErlangError(Atom("function_clause"))  # Elixir's handle_start_child/2 has no clause
        if self.max_children is not None and len(self._children) >= self.max_children:
            return (ERROR, MAX_CHILDREN)
        try:
            result = start_now(self, spec, self.extra_arguments, caught=False)
        except StartFailed as e:
            return (ERROR, e.reason)
        if result is None or type(result) is Pid:
            return self._started(spec, result)

        async def later() -> Any:
            try:
                pid = await result
            except StartFailed as e:
                return (ERROR, e.reason)
            return self._started(spec, pid)
        return later()

    def _started(self, spec: ChildSpec, pid: Pid | None) -> Any:
        if pid is None:
            return IGNORE
        self._children[pid] = spec
        return (OK, pid)

    # -- children exiting -----------------------------------------------------------------------

    def handle_info(self, message: Any) -> Any:
        if type(message) is tuple:
            if len(message) == 3 and message[0] is EXIT_TAG:
                return self._child_exited(message[1], message[2])
            if len(message) == 2 and message[0] is GEN_RESTART:
                entry = self._children.get(message[1])
                if isinstance(entry, _Restarting):
                    return self._restart(message[1], entry.spec)
                return None
        log.error("DynamicSupervisor received unexpected message: %s", cut(inspect(message), 1000))
        return None

    def handle_cast(self, request: Any) -> None:
        pass  # as Elixir's DynamicSupervisor: any cast is ignored

    def _child_exited(self, pid: Any, reason: Any) -> Any:
        spec = self._children.get(pid)
        if spec is None or isinstance(spec, _Restarting):
            return None
        restart = spec.restart
        if restart is PERMANENT or (restart is TRANSIENT and not is_shutdown(reason)):
            report(self, CHILD_TERMINATED, reason, spec, pid, dynamic=True, mfa=self._mfa(spec))
            return self._restart(pid, spec)
        if restart is TEMPORARY and not is_shutdown(reason):
            report(self, CHILD_TERMINATED, reason, spec, pid, dynamic=True, mfa=self._mfa(spec))
        del self._children[pid]
        return None

    def _restart(self, old: Pid, spec: ChildSpec) -> Awaitable[None] | None:
        if not self.intensity.add():
            report(self, SHUTDOWN, REACHED_MAX, spec, old, dynamic=True, mfa=self._mfa(spec))
            self._children.pop(old, None)
            self.gave_up = True
            raise Exit(SHUTDOWN)  # the loop runs terminate (the other children), then exits
        try:
            result = start_now(self, spec, self.extra_arguments, caught=False)
        except StartFailed as e:
            self._retry(old, spec, e.reason)
            return None
        if result is None or type(result) is Pid:
            self._restarted(old, spec, result)
            return None

        async def later() -> None:
            try:
                pid = await result
            except StartFailed as e:
                self._retry(old, spec, e.reason)
                return
            self._restarted(old, spec, pid)
        return later()

    def _restarted(self, old: Pid, spec: ChildSpec, pid: Pid | None) -> None:
        self._children.pop(old, None)
        if pid is not None:
            self._children[pid] = spec

    def _retry(self, old: Pid, spec: ChildSpec, reason: Any) -> None:
        report(self, START_ERROR, reason, spec, (RESTARTING, old), dynamic=True, mfa=self._mfa(spec))
        self._children[old] = _Restarting(spec)
        self.node.route(self.pid, self.pid, (GEN_RESTART, old))

    def _mfa(self, spec: ChildSpec) -> Any:
        module, function, args = spec.mfa
        if spec.restart is TEMPORARY:
            return (module, function, UNDEFINED)
        return (module, function, self.extra_arguments + args) if type(args) is list else spec.mfa

    # -- stopping ---------------------------------------------------------------------------------

    async def terminate(self, reason: Any) -> None:
        children, self._children = self._children, {}
        running = ((pid, spec) for pid, spec in children.items() if type(spec) is not _Restarting)
        for pid, spec, why in await shutdown(self, running):
            report(self, SHUTDOWN_ERROR, why, spec, pid, dynamic=True, mfa=self._mfa(spec))

    async def _call_terminate_child(self, pid: Any) -> Any:
        entry = self._children.pop(pid, None)
        if entry is None:
            return (ERROR, NOT_FOUND)
        if not isinstance(entry, _Restarting):
            for _, spec, why in await shutdown(self, [(pid, entry)]):
                report(self, SHUTDOWN_ERROR, why, spec, pid, dynamic=True, mfa=self._mfa(spec))
        return OK

    # -- calls --------------------------------------------------------------------------------------

    def handle_call(self, request: Any, from_: Any) -> Any:
        if request is WHICH_CHILDREN:
            return self.which_children()
        if request is COUNT_CHILDREN:
            return self.count_children()
        if type(request) is tuple:
            if len(request) == 2 and request[0] is START_CHILD:
                return self._call_start_child(request[1])
            if len(request) == 2 and request[0] is TERMINATE_CHILD:
                if request[1] not in self._children:
                    return (ERROR, NOT_FOUND)
                return self._call_terminate_child(request[1])
            if len(request) == 4 and request[0] is START_TASK:
                return self._start_task(request, from_)
        return super().handle_call(request, from_)

    def _start_task(self, request: Any, from_: Any) -> Any:
        # Elixir's DynamicSupervisor serves start_task for Task.Supervisor, whose defaults are
        # in its process dictionary; a plain DynamicSupervisor fails to match them (badmatch)
        raise ErlangError((Atom("badmatch"), None))

    def which_children(self) -> list[Any]:
        """`[{:undefined, pid | :restarting, type, modules}]`."""
        return [(UNDEFINED, RESTARTING if isinstance(entry, _Restarting) else pid,
                 (entry.spec if isinstance(entry, _Restarting) else entry).type,
                 (entry.spec if isinstance(entry, _Restarting) else entry).modules)
                for pid, entry in self._children.items()]

    def count_children(self) -> list[Any]:
        """`[specs: n, active: n, supervisors: n, workers: n]`, as Elixir's handle_call does."""
        active = supervisors = 0
        for entry in self._children.values():
            if isinstance(entry, _Restarting):
                spec = entry.spec
            else:
                spec = entry
                active += 1
            if spec.type is Atom("supervisor"):
                supervisors += 1
        n = len(self._children)
        return [(SPECS, n), (ACTIVE, active), (SUPERVISORS, supervisors), (WORKERS, n - supervisors)]

    # -- :sys -----------------------------------------------------------------------------------------

    def system_get_state(self) -> Any:
        """The `%DynamicSupervisor{}` struct, as Elixir's shows in `:sys.get_state`."""
        children = {}
        for pid, entry in self._children.items():
            spec = entry.spec if isinstance(entry, _Restarting) else entry
            child = (self._mfa(spec), spec.restart, spec.shutdown, spec.type, spec.modules)
            children[pid] = (RESTARTING, child) if isinstance(entry, _Restarting) else child
        return {
            Atom("__struct__"): Atom("Elixir.DynamicSupervisor"), Atom("args"): Atom("undefined"),
            Atom("extra_arguments"): self.extra_arguments, Atom("mod"): self.beam_callback_atom(),
            Atom("name"): self._registered_name(), Atom("strategy"): self.strategy,
            Atom("max_children"): INFINITY if self.max_children is None else self.max_children,
            Atom("max_restarts"): self.intensity.max_restarts, Atom("max_seconds"): self.intensity.max_seconds,
            Atom("children"): children, Atom("restarts"): self.intensity.as_term(),
        }
