"""Elixir's Task.Supervisor, both ways.

Server: a process registered as e.g. `KV.RouterTasks` that BEAM nodes use with
`Task.Supervisor.async/async_nolink/start_child/async_stream`. Shapes (Elixir 1.14 and 1.18,
observed; wire-notes "Task.Supervisor.async"):
  start_task call: {start_task, [{OwnerNode, OwnerNameOrPid, OwnerPid}, monitor|nomonitor], Restart, Shutdown}
      -> {ok, TaskPid}; the owner then links (async) and monitors, and sends the task
      {OwnerPid, Ref, ReplyTo, Callers, {M, F, A}}; the task answers {Ref, Result} to ReplyTo.
  1.14 start_child: {start_task, [Owner, Callers, {M, F, A}], nil, nil}: runs at once.
  children/terminate_child: DynamicSupervisor's which_children, count_children, terminate_child.
Client: `await async_(via, (name, node), M, F, A)` then `await task.await_(timeout)`.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable, ClassVar

from ..atoms import DOWN_TAG, ERROR, KILL, MONITOR, NOCONNECTION, NORMAL, OK, SHUTDOWN
from ..errors import Exit, NoConnection, Timeout, cut, format_exception
from ..exports import module_atom
from ..process import Process
from ..term import Atom, Pid, inspect
from .apply import apply_mfa, apply_now
from .child_spec import TEMPORARY, UNDEFINED, ChildSpec
from .dynamic_supervisor import DynamicSupervisor
from .gen_server import call, destination

if TYPE_CHECKING:
    from ..node import Node

START_TASK = Atom("start_task")
TIMEOUT = Atom("timeout")
TASK_SUPERVISED = Atom("Elixir.Task.Supervised")
TASK_SUPERVISOR = Atom("Elixir.Task.Supervisor")
OWNER_WAIT = 5.0

log = logging.getLogger("pykv.task_supervisor")  # Task.Supervised waits this long for its owner's start message


class TaskSupervisor(DynamicSupervisor):
    """A Task.Supervisor that BEAM nodes can start tasks on: a DynamicSupervisor whose children
    are tasks (temporary, shutdown 5000 unless the caller says otherwise), as Elixir's. Tasks
    run exported functions only.

        TaskSupervisor.start(node, name="KV.RouterTasks")     # or .child_spec(name=...)
    """

    beam_module: ClassVar[str | Atom | None] = "Task.Supervisor"

    def init(self, max_children: int | None = None, *, max_restarts: int = 3,  # type: ignore[override]
             max_seconds: float = 5, restart: str | Atom = TEMPORARY, shutdown: int | Atom = 5000) -> None:
        super().init(max_children=max_children, max_restarts=max_restarts, max_seconds=max_seconds)
        self._task_defaults = (Atom(restart) if isinstance(restart, str) else restart, shutdown)
        self._task_specs: dict[tuple[Any, Any], ChildSpec] = {}
        # tasks waiting for their owner's start message, by deadline (all wait OWNER_WAIT, so
        # in the order started), and the one timer that ends those still waiting at theirs:
        # a timer per task cost more than the rest of its start (bench.hotpath task)
        self._waiting: deque[tuple[float, Pid]] = deque()
        self._expiry: asyncio.TimerHandle | None = None

    @property
    def children(self) -> set[Pid]:
        """The running tasks' pids."""
        return set(self._children)

    def process_dictionary(self) -> list[Any]:
        # Task.Supervisor keeps its defaults under its own key: {Task.Supervisor, {restart, shutdown}}
        return [(TASK_SUPERVISOR, self._task_defaults), *super().process_dictionary()]

    def _start_task(self, request: Any, from_: Any) -> Any:
        _, args, restart, shutdown = request
        restart = self._task_defaults[0] if restart is None else restart
        shutdown = self._task_defaults[1] if shutdown is None else shutdown
        if self.max_children is not None and len(self._children) >= self.max_children:
            return (ERROR, Atom("max_children"))
        if type(args) is list and len(args) == 2:       # async, async_nolink, 1.15+ start_child
            owner, monitor = args[0], args[1] is MONITOR
            task = self._start_task_process(restart, shutdown, args)
            if task.await_owner(owner, monitor):
                self._expect_start(task.pid)
        elif type(args) is list and len(args) == 3:     # 1.14 start_child: run at once
            task = self._start_task_process(restart, shutdown, args)
            task.run(args[2], lambda result: None)
        else:
            return (ERROR, (Atom("badarg"), args))
        return (OK, task.pid)

    def _start_task_process(self, restart: Any, shutdown: Any, args: list[Any]) -> "TaskProcess":
        try:
            spec = self._task_specs[(restart, shutdown)]
        except (KeyError, TypeError):
            # one spec per kind of task: a temporary child keeps no start arguments (Elixir
            # stores {Task.Supervised, :start_link, :undefined} for it)
            spec = ChildSpec(UNDEFINED, self._no_restart, restart=restart, shutdown=shutdown,
                             modules=[TASK_SUPERVISED], mfa=(TASK_SUPERVISED, Atom("start_link"), UNDEFINED))
            self._task_specs[(restart, shutdown)] = spec
        task = TaskProcess(self.node, self.node.make_pid())
        task._ancestors = [self.name or self.pid, *self._ancestors]
        self.node.add_process(task)
        self.node.link(self, task.pid)
        self._children[task.pid] = spec
        return task

    def _expect_start(self, pid: Pid) -> None:
        loop = asyncio.get_running_loop()
        self._waiting.append((loop.time() + OWNER_WAIT, pid))
        if self._expiry is None:
            self._expiry = loop.call_at(self._waiting[0][0], self._expire)

    def _expire(self) -> None:
        """Tasks whose owner sent no start message in OWNER_WAIT s exit `:timeout`."""
        self._expiry = None
        loop = asyncio.get_running_loop()
        now, waiting, processes = loop.time(), self._waiting, self.node.processes
        while waiting and waiting[0][0] <= now:
            task = processes.get(waiting.popleft()[1])
            if type(task) is TaskProcess and not task._started:
                task.exit(TIMEOUT)
        if waiting and self.alive:
            self._expiry = loop.call_at(waiting[0][0], self._expire)

    @staticmethod
    def _no_restart(sup: Process) -> None:
        # a task is started by its owner's request and cannot be started again without it
        return None


class TaskProcess(Process):
    """A task started for a (BEAM) owner, as Elixir's Task.Supervised: it waits for the
    owner's start message `{OwnerPid, Ref, ReplyTo, Callers, MFA}` (ignoring anything
    else; owner DOWN -> exit `{:shutdown, reason}`; nothing within 5 s -> exit `:timeout`),
    runs the MFA, sends `{Ref, Result}` to ReplyTo and exits `:normal`. Waiting costs no
    asyncio task, and neither does a quick export: only `async def` or blocking ones get one."""

    _owner: Any = None
    _mref: Any = None
    _started = False

    def await_owner(self, owner: Any, monitor: bool) -> bool:
        """Wait for the owner's start message; True when it is awaited for OWNER_WAIT s at
        most (the supervisor ends the wait: TaskSupervisor._expire)."""
        self._owner = owner[2] if type(owner) is tuple and len(owner) == 3 else owner
        if monitor:
            self._mref = self.monitor(self._owner)
        return monitor

    def _deliver(self, message: Any) -> None:
        if self._started:
            super()._deliver(message)  # the running function may receive (e.g. make calls)
        elif type(message) is tuple and len(message) == 5:
            if message[0] == self._owner:
                self._begin(message)
            elif message[0] is DOWN_TAG and self._mref is not None and message[1] == self._mref:
                self.exit((SHUTDOWN, message[4]))

    def _begin(self, start: tuple[Any, ...]) -> None:
        self._started = True
        if self._mref is not None:
            self.demonitor(self._mref, flush=True)
        _, ref, reply_to, _callers, mfa = start
        self.run(mfa, lambda result: self.send(reply_to, (ref, result)))

    def run(self, mfa: Any, answer: Callable[[Any], None]) -> None:
        """Apply the MFA, hand the result to `answer`, exit `:normal` (or with the crash)."""
        self._started = True
        self._mfa = mfa
        try:
            module, function, args = mfa
            done, result = apply_now(self, module, function, args)
            if done:
                answer(result)  # may fail too: a result that is not an Erlang term
        except Exception as e:
            self.exit(self.crash_reason(e))
            return
        if done:
            self.exit(NORMAL)
            return

        async def later(proc: Process) -> None:
            answer(await apply_mfa(proc, module, function, args))

        self._start(later, ())

    def log_crash(self, reason: Any) -> None:
        """As Task.Supervised reports a crash: who started it, the error, the function."""
        mfa = getattr(self, "_mfa", None)
        lines = [f"Task {self.pid!r} started from {inspect(self._owner) if self._owner is not None else 'a caller'} terminating",
                 format_exception(reason) or f"** (exit) {cut(inspect(reason))}"]
        if type(mfa) is tuple and len(mfa) == 3:
            args = mfa[2] if type(mfa[2]) is list else []
            lines.append(f"Function: &{inspect(mfa[0])}.{inspect(mfa[1]).lstrip(':')}/{len(args)}")
            lines.append(f"    Args: {cut(inspect(args), 1000)}")
        log.error("%s", "\n".join(lines))


# -- the client ------------------------------------------------------------------------------

@dataclass
class Task:
    """A task started on a (BEAM or Python) Task.Supervisor; `await task.await_()`."""

    owner: Process
    pid: Pid
    ref: Any
    mfa: tuple[Any, Any, list[Any]]

    async def await_(self, timeout: float | None = 5.0) -> Any:
        """`Task.await/2`: the result; raises Exit with the task's exit reason if it
        crashed, NoConnection if its node went down, Timeout after `timeout` s (the task
        is then killed, as the BEAM does by exiting the linked caller)."""
        owner, ref = self.owner, self.ref

        def ours(m: Any) -> bool:
            return type(m) is tuple and ((len(m) == 2 and m[0] == ref)
                                         or (len(m) == 5 and m[0] is DOWN_TAG and m[1] == ref))
        try:
            message = await owner.receive(ours, timeout)
        except TimeoutError:
            owner.exit(KILL)  # the link takes the task down too, as Task.await's exit does
            raise Timeout(f"Task {inspect(self.mfa[0])}.{self.mfa[1]} on {self.pid.node}") from None
        except BaseException:  # our awaiting coroutine was cancelled: do not leave the task
            owner.exit(KILL)
            raise
        if message[0] is DOWN_TAG:
            owner.exit(NORMAL)
            if message[4] is NOCONNECTION:
                raise NoConnection(self.pid.node)
            raise Exit(message[4], f"task {self.pid!r} exited: {inspect(message[4])[:1000]}")
        owner.demonitor(ref, flush=True)
        owner.unlink(self.pid)
        owner.exit(NORMAL)
        return message[1]


async def async_(node: "Node", supervisor: Any, module: str | Atom, function: str | Atom,
                 args: list[Any]) -> Task:
    """`Task.Supervisor.async(supervisor, module, function, args)`; supervisor is a pid, a
    name or `(name, node)` (names like "KV.RouterTasks" are Elixir aliases)."""
    supervisor = destination(supervisor)
    owner = node.process()
    owner.trap_exit = True  # a crashing task surfaces in await_, not as our own death
    mfa = (module_atom(module), Atom(function) if isinstance(function, str) else function, list(args))
    try:  # with no timeout, as Task.Supervisor's start_task call: a supervisor that cannot be
        # reached fails it with nodedown (once the connection attempt gives up), not a timeout
        reply = await call(owner, supervisor, (START_TASK, [(node.name, owner.pid, owner.pid), MONITOR],
                                               Atom("temporary"), None), timeout=None)
    except BaseException:
        owner.exit(NORMAL)
        raise
    if not (type(reply) is tuple and len(reply) == 2 and reply[0] is OK):
        owner.exit(NORMAL)
        raise Exit(reply, f"Task.Supervisor {inspect(supervisor)} refused the task: {inspect(reply)}")
    pid = reply[1]
    owner.link(pid)
    ref = owner.monitor(pid)
    owner.send(pid, (owner.pid, ref, owner.pid, [owner.pid], mfa))
    return Task(owner, pid, ref, mfa)
