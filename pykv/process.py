"""Local processes: a pid, a mailbox with selective receive, links, monitors, exit signals.

A Process is cheap: it owns no asyncio task unless it runs a coroutine (`Node.spawn`).
Behaviours (GenServer, tasks) subclass it and override `_deliver` to react to messages
without a task per idle process.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Coroutine

from .atoms import DOWN_TAG, EXIT_TAG, KILL, KILLED, NORMAL
from .errors import Exit, cut, exit_reason, format_exception
from .term import Atom, Pid, Reference, inspect

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("pykv.process")


Match = Callable[[Any], bool]

_current: contextvars.ContextVar["Process"] = contextvars.ContextVar("pykv_current_process")


def enter(proc: "Process") -> None:
    """Make `proc` the current process of this context (a task's, or a copied one)."""
    _current.set(proc)


def current_process() -> "Process":
    """The process whose code is running (inside an exported function: the one serving
    the call). Raises LookupError outside any process."""
    return _current.get()


def _wake_up(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Process:
    """A process living on this node. `send` never blocks; `receive` awaits a message."""

    def __init__(self, node: "Node", pid: Pid) -> None:
        self.node = node
        self.pid = pid
        self.name: Atom | None = None
        self.mailbox: deque[Any] = deque()
        self._waiters: list[asyncio.Future[None]] = []
        self._taken = 0  # messages removed from the middle: other receivers must rescan
        self.links: set[Pid] = set()
        # monitors this process holds: ref -> what it watches (pid, name or {name, node})
        self.monitors: dict[Reference, Any] = {}
        # monitors on this process: ref -> (watcher pid, what the watcher named)
        self.monitored_by: dict[Reference, tuple[Pid, Any]] = {}
        self.aliases: set[Reference] = set()
        self.trap_exit = False
        self.group_leader: Pid | None = None
        self.alive = True
        self.exit_reason: Any = None
        self._task: asyncio.Task[None] | None = None
        self._pending_exit: Any = None

    def __repr__(self) -> str:
        name = f" {inspect(self.name)}" if self.name else ""
        return f"<{type(self).__name__} {self.pid!r}{name}{'' if self.alive else ' dead'}>"

    # -- messages ---------------------------------------------------------------------------

    def send(self, dest: Any, message: Any) -> None:
        """Send to a pid, a registered name, `(name, node)` or an alias. Never blocks;
        like the BEAM, a message to nobody is dropped silently."""
        self.node.route(self.pid, dest, message)

    def _deliver(self, message: Any) -> None:
        self.mailbox.append(message)
        if self._waiters:
            self._wake()

    def _wake(self) -> None:
        for waiter in self._waiters:
            if not waiter.done():
                waiter.set_result(None)

    async def receive(self, match: Match | None = None, timeout: float | None = None) -> Any:
        """The oldest message (that `match` accepts). Raises TimeoutError after `timeout` s.
        Several coroutines may receive on one process at once (e.g. concurrent calls)."""
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        scanned = 0
        taken = self._taken
        while True:
            mailbox = self.mailbox
            if match is None:
                if mailbox:
                    self._taken += 1
                    return mailbox.popleft()
            else:
                if taken != self._taken:
                    scanned, taken = 0, self._taken  # someone removed a message: indices moved
                for i in range(scanned, len(mailbox)):
                    message = mailbox[i]
                    if match(message):
                        del mailbox[i]
                        self._taken += 1
                        return message
                scanned = len(mailbox)
            if not self.alive:
                raise Exit(self.exit_reason, f"{self.pid!r} is no longer alive")
            remaining = None if deadline is None else deadline - loop.time()
            if remaining is not None and remaining <= 0:
                raise TimeoutError(f"receive timed out after {timeout} s")
            waiter = loop.create_future()
            self._waiters.append(waiter)
            # A timer, not asyncio.wait_for: on Python 3.11 wait_for swallows a cancellation
            # (an exit signal) that arrives when the waiter is already done (a message came
            # in the same batch), and the process would run on instead of exiting.
            timer = None if remaining is None else loop.call_later(remaining, _wake_up, waiter)
            try:
                await waiter  # looped: the check above raises once the deadline has passed
            finally:
                if timer is not None:
                    timer.cancel()
                self._waiters.remove(waiter)

    # -- links and monitors --------------------------------------------------------------------

    def link(self, pid: Pid) -> None:
        self.node.link(self, pid)

    def unlink(self, pid: Pid) -> None:
        self.node.unlink(self, pid)

    def monitor(self, target: Any) -> Reference:
        """Monitor a pid, a registered name or `(name, node)`; a DOWN message follows its exit."""
        return self.node.monitor(self, target)

    def demonitor(self, ref: Reference, flush: bool = False) -> None:
        self.node.demonitor(self, ref)
        if flush:
            self.mailbox = deque(m for m in self.mailbox
                                 if not (type(m) is tuple and len(m) == 5 and m[0] is DOWN_TAG and m[1] == ref))
            self._taken += 1

    def alias(self) -> Reference:
        """A reference that, used as a destination, reaches this process (OTP 24 aliases)."""
        ref = self.node.make_ref()
        self.aliases.add(ref)
        self.node.aliases[ref] = self
        return ref

    def unalias(self, ref: Reference) -> None:
        self.aliases.discard(ref)
        self.node.aliases.pop(ref, None)

    # -- exits ---------------------------------------------------------------------------------

    def send_exit(self, pid: Pid, reason: Any) -> None:
        """Send an exit signal to another process, as `Process.exit(pid, reason)`: `:kill`
        cannot be trapped, `:normal` is ignored unless the target traps exits."""
        self.node.send_exit(self.pid, pid, reason)

    def exit_signal(self, sender: Pid, reason: Any, *, from_link: bool) -> None:
        """An exit signal from `sender` arrives (a linked exit, or exit/2)."""
        if not self.alive:
            return
        if reason is KILL and not from_link:
            self.exit(KILLED)
        elif self.trap_exit:
            self._deliver((EXIT_TAG, sender, reason))
        elif reason is NORMAL:
            if sender == self.pid:
                self.exit(NORMAL)
        else:
            self.exit(reason)

    def exit(self, reason: Any = NORMAL) -> None:
        """End this process with `reason`: links get the signal, monitors a DOWN."""
        if not self.alive:
            return
        task = self._task
        if task is not None and not task.done() and task is not asyncio.current_task():
            if self._pending_exit is None:  # the first exit signal is the one that counts
                self._pending_exit = reason
            task.cancel()
        else:
            self._terminate(reason)

    def _terminate(self, reason: Any) -> None:
        if not self.alive:
            return
        self.alive = False
        self.exit_reason = reason
        self._wake()  # a pending receive then raises Exit
        self.node.process_exited(self, reason)

    # -- running a coroutine ------------------------------------------------------------------

    def _start(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(fn, args))
        self._task.add_done_callback(self._task_finished)

    def _task_finished(self, task: "asyncio.Task[Any]") -> None:
        # A task cancelled before its first step never runs its body (so no `except
        # CancelledError` there): an exit signal that arrived that early must still end
        # the process, or it lingers alive and its links and monitors never fire.
        if self.alive and task.cancelled():
            self._terminate(self._pending_exit if self._pending_exit is not None else KILLED)

    async def _run(self, fn: Callable[..., Coroutine[Any, Any, Any]], args: tuple[Any, ...]) -> None:
        _current.set(self)  # this task's own context
        try:
            await fn(self, *args)
            reason: Any = NORMAL
        except asyncio.CancelledError:
            reason = self._pending_exit if self._pending_exit is not None else KILLED
        except Exception as e:
            reason = self.crash_reason(e)
        self._terminate(reason)

    def crash_reason(self, error: Exception) -> Any:
        """The exit reason for an exception in this process's code, logged as a crash
        unless it is a deliberate exit."""
        if isinstance(error, Exit):
            return error.reason
        reason = exit_reason(error)
        self.log_crash(reason)
        return reason

    def log_crash(self, reason: Any) -> None:
        """Log a crash as Elixir's Logger words a plain process's (an error in a process
        spawned without proc_lib): `Process #PID<...> raised an exception`, then the error."""
        name = f"{inspect(self.name)} ({self.pid!r})" if self.name else repr(self.pid)
        log.error("Process %s raised an exception\n%s", name,
                  format_exception(reason) or f"** (exit) {cut(inspect(reason))}")


class Sink(Process):
    """A process that drops what it receives: the sender of messages sent from no
    particular process (`Node.send`), so replies to them do not pile up."""

    def _deliver(self, message: Any) -> None:
        pass
