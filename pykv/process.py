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


class PriorityMailbox(deque):
    """The mailbox of a process that accepts priority messages (OTP 28, EEP 76): its first
    `priority` messages are the priority messages received, in their arrival order, ahead of
    every ordinary message (erts ref_man_processes "Adding Messages to the Message Queue").
    Taking a message from that region shrinks it; nothing else moves a message."""

    __slots__ = ("priority",)

    def __init__(self, messages: Any = ()) -> None:
        super().__init__(messages)
        self.priority = 0

    def insert_priority(self, message: Any) -> None:
        self.insert(self.priority, message)
        self.priority += 1

    def popleft(self) -> Any:
        message = super().popleft()
        if self.priority:
            self.priority -= 1
        return message

    def __delitem__(self, index: int) -> None:  # type: ignore[override]
        if index < 0:
            index += len(self)
        super().__delitem__(index)
        if index < self.priority:
            self.priority -= 1

    def clear(self) -> None:
        super().clear()
        self.priority = 0


def _wake_up(waiter: "asyncio.Future[None]") -> None:
    if not waiter.done():
        waiter.set_result(None)


class Process:
    """A process living on this node. `send` never blocks; `receive` awaits a message."""

    # aliases through which priority messages arrive (`alias(priority=True)`); a set of its
    # own only once the process makes one, as most never do
    priority_aliases: "set[Reference] | frozenset[Reference]" = frozenset()

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

    def send(self, dest: Any, message: Any, *, priority: bool = False) -> None:
        """Send to a pid, a registered name, `(name, node)` or an alias. Never blocks;
        like the BEAM, a message to nobody is dropped silently. `priority=True` is
        `erlang:send(Dest, Msg, [priority])`: a priority message if Dest is an active
        priority alias (`alias(priority=True)`), an ordinary one otherwise."""
        self.node.route(self.pid, dest, message, priority)

    def _deliver(self, message: Any) -> None:
        self.mailbox.append(message)
        if self._waiters:
            self._wake()

    def _deliver_priority(self, message: Any) -> None:
        """A priority message arrives through one of our priority aliases: it goes ahead of
        every ordinary message, behind the priority messages that came before it."""
        mailbox = self.mailbox
        if type(mailbox) is not PriorityMailbox:
            self._deliver(message)
        elif mailbox.priority == len(mailbox):
            # nothing to overtake: delivered as any message (a behaviour may handle it at
            # once), counted as heading the priority region while it waits
            mailbox.priority += 1
            self._deliver(message)
            if mailbox.priority > len(mailbox):  # handled, or not queued at all
                mailbox.priority = len(mailbox)
        else:
            mailbox.insert_priority(message)
            self._taken += 1  # indices moved: a receive in progress rescans
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
            self._drop_messages(lambda m: type(m) is tuple and len(m) == 5 and m[0] is DOWN_TAG and m[1] == ref)

    def _drop_messages(self, drop: Match) -> None:
        mailbox = self.mailbox
        if not mailbox:  # (a demonitor with flush, most often)
            return
        if type(mailbox) is PriorityMailbox:
            kept = PriorityMailbox(m for m in mailbox if not drop(m))
            kept.priority = mailbox.priority - sum(1 for i in range(mailbox.priority) if drop(mailbox[i]))
            self.mailbox = kept
        else:
            self.mailbox = deque(m for m in mailbox if not drop(m))
        self._taken += 1

    def alias(self, *, priority: bool = False) -> Reference:
        """A reference that, used as a destination, reaches this process (OTP 24 aliases).
        `priority=True` is OTP 28's `alias([priority])`: messages and exit signals sent to
        it with the priority option overtake the ordinary messages in the mailbox."""
        ref = self.node.make_ref()
        self.aliases.add(ref)
        self.node.aliases[ref] = self
        if priority:
            if not isinstance(self.priority_aliases, set):
                self.priority_aliases = set()
            self.priority_aliases.add(ref)
            if type(self.mailbox) is not PriorityMailbox:
                self.mailbox = PriorityMailbox(self.mailbox)
        return ref

    def unalias(self, ref: Reference) -> None:
        self.aliases.discard(ref)
        self.node.aliases.pop(ref, None)
        if ref in self.priority_aliases:
            self.priority_aliases.discard(ref)  # type: ignore[union-attr]

    # -- exits ---------------------------------------------------------------------------------

    def send_exit(self, dest: Pid | Reference, reason: Any, *, priority: bool = False) -> None:
        """Send an exit signal to another process, as `Process.exit(pid, reason)`: `:kill`
        cannot be trapped, `:normal` is ignored unless the target traps exits. `dest` may
        be an alias (OTP 28's `exit_signal/3`; dropped by a node older than OTP 28), and
        `priority=True` makes it a priority exit signal: its `{:EXIT, ...}` message
        overtakes ordinary ones if `dest` is a priority alias of a process trapping exits."""
        self.node.send_exit(self.pid, dest, reason, priority)

    def exit_signal(self, sender: Pid, reason: Any, *, from_link: bool, priority: bool = False) -> None:
        """An exit signal from `sender` arrives (a linked exit, or exit/2)."""
        if not self.alive:
            return
        if reason is KILL and not from_link:
            self.exit(KILLED)
        elif self.trap_exit:
            if priority:
                self._deliver_priority((EXIT_TAG, sender, reason))
            else:
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
