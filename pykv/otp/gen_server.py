"""gen_server on both sides of the wire.

Server: subclass GenServer; `init`, `handle_call`, `handle_cast`, `handle_info` and
`terminate` may be plain or `async def` (init: plain). Calls arrive as
`{:"$gen_call", {pid, tag}, request}` where tag is a ref or, from OTP 24 on, the improper list
`[:alias | ref]` (wire-notes, "GenServer.call"). The defaults are Elixir's `use GenServer`:
a call or cast no clause accepts crashes the server (RuntimeError, or FunctionClauseError when
the class has clauses of its own), an unexpected info message is logged and dropped. Every
server answers the `:sys` protocol (`sys.py`) and is started as proc_lib starts one: parent,
ancestors, initial call, and a crash report in Elixir's words when it dies.
Client: `await call(via, server, request)` monitors the server as gen:call does, so a dead
server or node fails at once instead of waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect as pyinspect
import logging
from typing import TYPE_CHECKING, Any, Awaitable, ClassVar

from ..atoms import (ALIAS, DOWN_TAG, EXIT_TAG, GEN_CALL, GEN_CAST, KILL, KILLED, NOCONNECTION,
                     NOPROC, NORMAL, SHUTDOWN)
from ..exports import module_atom
from ..errors import (ErlangError, Exit, NoConnection, NoProc, Timeout, cut, exception_struct, exit_reason,
                      format_exception)
from ..process import Process, enter
from ..term import Atom, ImproperList, Pid, inspect
from . import sys as sys_protocol
from .child_spec import IGNORE, PERMANENT, WORKER, ChildSpec, StartError

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.gen_server")

SYSTEM = sys_protocol.SYSTEM
TERMINATE = sys_protocol.TERMINATE
ALREADY_STARTED = Atom("already_started")
INITIAL_CALL, ANCESTORS = Atom("$initial_call"), Atom("$ancestors")
INIT, NAME = Atom("init"), Atom("name")
FUNCTION_CLAUSE = Atom("function_clause")
BATCH = 100  # messages a server handles before it lets the event loop run others
GLOBAL, VIA = Atom("global"), Atom("via")  # {global, Name}, {via, Module, Name} destinations


class _NoReply:
    def __repr__(self) -> str:
        return "NOREPLY"


NOREPLY: Any = _NoReply()
"""Return from handle_call to answer later with `self.reply(from_, value)`."""

_NOTHING: Any = object()

# What Process itself keeps on a server: machinery, not the server's state
_PROCESS_FIELDS = frozenset({
    "node", "pid", "name", "mailbox", "links", "monitors", "monitored_by", "aliases",
    "trap_exit", "group_leader", "alive", "exit_reason",
})


def is_shutdown(reason: Any) -> bool:
    """normal, shutdown and {shutdown, _}: the exits OTP does not report as crashes."""
    return reason is NORMAL or reason is SHUTDOWN or (
        type(reason) is tuple and len(reason) == 2 and reason[0] is SHUTDOWN)


class FunctionClauseError(ErlangError):
    """No clause of a callback accepts the message: `{function_clause, [{Mod, Fun, Args, _}]}`,
    as the BEAM's FunctionClauseError in a handle_call/3 without a catch-all."""

    def __init__(self, module: Atom, function: str, args: list[Any]) -> None:
        super().__init__(FUNCTION_CLAUSE)
        self.mfa = (module, Atom(function), args)

    def __str__(self) -> str:
        module, function, args = self.mfa
        return f"no function clause matching in {inspect(module)}.{function.name}/{len(args)}"


class GenServer(Process):
    """A server process with no task of its own while idle.

        class Counter(GenServer):
            beam_module = "Counter"       # how BEAM tools name it (which_children, :sys)
            def init(self, start=0):
                self.count = start
            def handle_call(self, request, from_):
                self.count += 1
                return self.count

        counter = Counter.start(node, 10, name="Counter")
        # or under a supervisor: Counter.child_spec(10, name="Counter")

    `:sys.get_state` shows the instance's attributes as a map (a value that is no term as its
    Python repr); override `system_get_state`/`system_replace_state` to show something else.
    """

    beam_module: ClassVar[str | Atom | None] = None
    """The module BEAM tools see this server as (Elixir alias or Erlang name); by default the
    Python class's dotted name."""
    restart: ClassVar[str | Atom] = PERMANENT
    shutdown: ClassVar[int | str | Atom] = 5000
    child_type: ClassVar[str | Atom] = WORKER

    _busy = False
    _suspended = False
    _debug: sys_protocol.Debug | None = None
    _parent: Pid | None = None
    _ancestors: list[Any] = []
    _children_ancestors: list[Any] | None = None
    _terminate_is_async: ClassVar[bool | None] = None
    _stopping = False
    _last_message: Any = _NOTHING
    _module_atom: ClassVar[Atom | None] = None

    # -- starting ----------------------------------------------------------------------------

    @classmethod
    def start(cls, node: "Node", *args: Any, name: str | Atom | None = None,
              link: Process | None = None, **kwargs: Any) -> Any:
        """Start the server and run `init(*args, **kwargs)` in it; `link` is its parent (as
        `GenServer.start_link` from that process). Returns the server, or None when init
        returned IGNORE. Raises StartError (reason `{:already_started, pid}` for a name in
        use, or the exit reason of an init that failed)."""
        if name is not None:
            existing = node.whereis(name)
            if existing is not None and existing.alive:
                raise StartError((ALREADY_STARTED, existing.pid),
                                 f"{inspect(module_atom(name))} is already started as {existing.pid!r}")
        server = cls(node, node.make_pid())
        server._adopt(link)
        node.add_process(server, name)
        if link is not None:
            node.link(link, server.pid)
        return server._init_or_fail(link, args, kwargs)

    def _adopt(self, parent: Process | None) -> None:
        if parent is not None:
            self._parent = parent.pid
            # proc_lib's $ancestors: the parent, then its ancestors (one list per parent)
            ancestry = getattr(parent, "_children_ancestors", None)
            if ancestry is None or ancestry[0] != (parent.name or parent.pid):
                ancestry = [parent.name or parent.pid, *getattr(parent, "_ancestors", [])]
                if isinstance(parent, GenServer):
                    parent._children_ancestors = ancestry
            self._ancestors = ancestry

    def _init_or_fail(self, link: Process | None, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        self._busy = True  # messages that arrive during init wait for it, as on the BEAM
        try:
            result = contextvars.copy_context().run(self._run_init, args, kwargs)
        except BaseException as e:  # noqa: B036 - a failed init ends the process
            reason = e.reason if isinstance(e, Exit) else exit_reason(e)
            if link is not None:
                self.node.unlink(link, self.pid)  # the starter gets {:error, reason}, not an exit
            if not is_shutdown(reason):
                self._report_crash(reason)
            Process._terminate(self, reason)
            raise StartError(reason, f"{inspect(self.beam_module_atom())}.init failed: "
                                     f"{cut(inspect(reason), 500)}") from e
        if result is IGNORE:
            if link is not None:
                self.node.unlink(link, self.pid)
            Process._terminate(self, NORMAL)
            return None
        self._busy = False
        if self.mailbox:
            self._busy = True
            contextvars.copy_context().run(self._drain_as_self)
        return self

    def _run_init(self, args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
        enter(self)
        return self.init(*args, **kwargs)

    @classmethod
    def beam_module_atom(cls) -> Atom:
        atom = cls.__dict__.get("_module_atom")
        if atom is None:
            module = cls.beam_module
            atom = module_atom(module) if module is not None else Atom(f"{cls.__module__}.{cls.__qualname__}")
            cls._module_atom = atom
        return atom

    @classmethod
    def child_spec(cls, *args: Any, id: Any = None, name: str | Atom | None = None,
                   restart: str | Atom | None = None, shutdown: int | str | Atom | None = None,
                   **kwargs: Any) -> ChildSpec:
        """The child spec that starts this server under a supervisor, as `use GenServer`'s
        `child_spec/1`: id the module, restart and shutdown from the class attributes."""
        module = cls.beam_module_atom()
        options = ([(NAME, module_atom(name))] if name is not None else []) + [
            (Atom(k), sys_protocol.as_term(v)) for k, v in kwargs.items()]
        shown_args = [sys_protocol.as_term(a) for a in args] + ([options] if options else [])
        return ChildSpec(module if id is None else id,
                         lambda sup: cls.start(sup.node, *args, name=name, link=sup, **kwargs),
                         restart=cls.restart if restart is None else restart,
                         shutdown=cls.shutdown if shutdown is None else shutdown,
                         type=cls.child_type, modules=[module],
                         mfa=(module, Atom("start_link"), shown_args))

    # -- callbacks -------------------------------------------------------------------------------

    def init(self, *args: Any, **kwargs: Any) -> Any:
        pass

    def handle_call(self, request: Any, from_: tuple[Pid, Any]) -> Any:
        if type(self).handle_call is GenServer.handle_call:
            raise self._not_provided("call", "handle_call", 3)
        raise FunctionClauseError(self._clause_module("handle_call"), "handle_call",
                                  [request, from_, self._state_for_report()])

    def handle_cast(self, request: Any) -> Any:
        if type(self).handle_cast is GenServer.handle_cast:
            raise self._not_provided("cast", "handle_cast", 2)
        raise FunctionClauseError(self._clause_module("handle_cast"), "handle_cast",
                                  [request, self._state_for_report()])

    def _not_provided(self, verb: str, callback: str, arity: int) -> Exit:
        """use GenServer's default clause: a RuntimeError raised in `Module.callback/arity`
        (the exit reason a BEAM server gives, with that one frame as its stacktrace)."""
        message = (f"attempted to {verb} GenServer {inspect(self.name or self.pid)} "
                   f"but no {callback}/{arity} clause was provided")
        frame = (self.beam_module_atom(), Atom(callback), arity, [])
        return Exit((exception_struct("RuntimeError", message), [frame]), message)

    def handle_info(self, message: Any) -> Any:
        # use GenServer's handle_info/2: {GenServer, :no_handle_info}, logged and ignored
        log.error("%s %s received unexpected message in handle_info/2: %s",
                  inspect(self.beam_module_atom()), inspect(self.name or self.pid), cut(inspect(message), 1000))

    def terminate(self, reason: Any) -> Any:
        """Called once when the server stops (may be `async def`: awaited when the server stops
        on its own or is asked to; a kill or an exit signal it does not trap skips that)."""

    def reply(self, from_: Any, value: Any) -> None:
        self.node.reply(from_, value, self.pid)

    def _clause_module(self, callback: str) -> Atom:
        """The module whose clauses refused a message: the one that defines the callback."""
        for cls in type(self).__mro__:
            if callback in cls.__dict__:
                clauses = cls.__dict__.get("beam_clauses")
                if clauses is not None:
                    return module_atom(clauses)
                return cls.beam_module_atom() if issubclass(cls, GenServer) else self.beam_module_atom()
        return self.beam_module_atom()

    # -- :sys -------------------------------------------------------------------------------------

    def system_get_state(self) -> Any:
        """The state `:sys.get_state` shows: the instance's own attributes as a map."""
        return {Atom(key): sys_protocol.as_term(value) for key, value in vars(self).items()
                if not key.startswith("_") and key not in _PROCESS_FIELDS}

    def system_replace_state(self, state: Any) -> None:
        """Take a state from `:sys.replace_state` (a map like the one system_get_state
        shows): each atom key sets that attribute; the process's own fields are refused."""
        if not isinstance(state, dict) or not all(isinstance(k, Atom) for k in state):
            raise TypeError(f"a state for {type(self).__name__} is a map of its attributes, not {cut(inspect(state), 200)}")
        refused = [k.name for k in state if k.name.startswith("_") or k.name in _PROCESS_FIELDS
                   or not k.name.isidentifier()]
        if refused:
            raise ValueError(f"not state attributes: {', '.join(refused)}")
        for key, value in state.items():
            setattr(self, key.name, value)

    def format_status(self) -> list[Any]:
        """The server's own items at the end of `:sys.get_status`'s Misc."""
        return [(sys_protocol.DATA, [(sys_protocol.charlist("State"), self.system_get_state())])]

    def process_dictionary(self) -> list[Any]:
        """What `:sys.get_status` shows as the process dictionary: proc_lib's two keys."""
        return [(INITIAL_CALL, (self.beam_module_atom(), INIT, 1)), (ANCESTORS, list(self._ancestors))]

    def _state_for_report(self) -> Any:
        try:
            return self.system_get_state()
        except Exception as e:
            return f"<state unavailable: {e!r}>".encode()

    # -- stopping ----------------------------------------------------------------------------------

    async def stop(self, reason: Any = NORMAL, timeout: float | None = None) -> None:
        """`GenServer.stop/3`: ask the server to terminate with `reason` (through the `:sys`
        protocol, so it finishes what it is doing first and runs `terminate`), and wait until
        it has. Raises Timeout after `timeout` s, Exit if it ended with another reason."""
        await stop(self.node, self.pid, reason, timeout)

    def _stop(self, reason: Any) -> Awaitable[None] | None:
        """Stop from inside the message loop: run terminate (awaited when async), then end.
        Returns an awaitable when there is something to wait for."""
        if self._stopping:
            return None
        self._stopping = True
        if self._async_terminate():
            return self._finish_stop(reason)
        try:
            self.terminate(reason)
        except Exception as e:
            log.error("%s: terminate/2 failed: %s", inspect(self.name or self.pid), e, exc_info=e)
        Process._terminate(self, reason)
        return None

    @classmethod
    def _async_terminate(cls) -> bool:
        known = cls.__dict__.get("_terminate_is_async")
        if known is None:
            known = pyinspect.iscoroutinefunction(cls.terminate)
            cls._terminate_is_async = known
        return known

    async def _finish_stop(self, reason: Any) -> None:
        try:
            await self.terminate(reason)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.error("%s: terminate/2 failed: %s", inspect(self.name or self.pid), e, exc_info=e)
        Process._terminate(self, reason)

    def _terminate(self, reason: Any) -> None:
        """The process ends now (an exit signal, a kill, the node stopping): a plain
        terminate still runs, an async one cannot be waited for."""
        if self.alive and not self._stopping:
            self._stopping = True
            if not self._async_terminate():
                try:
                    self.terminate(reason)
                except Exception:
                    log.exception("%s: terminate/2 failed", inspect(self.name or self.pid))
        super()._terminate(reason)

    def exit_signal(self, sender: Pid, reason: Any, *, from_link: bool) -> None:
        """An exit signal that ends a server says so in the log, unless its parent sent a
        shutdown or kill (the supervisor reports that itself)."""
        if self.alive and reason is not NORMAL and not self._stopping:
            dies = not self.trap_exit or (reason is KILL and not from_link)
            if dies and not ((reason is KILL or is_shutdown(reason)) and sender == self._parent):
                how = "a linked process" if from_link else "an exit signal"
                log.error("GenServer %s terminating\n** (exit) %s\nExit from %s %r, not trapped",
                          inspect(self.name or self.pid), cut(inspect(KILLED if reason is KILL else reason)),
                          how, sender)
        super().exit_signal(sender, reason, from_link=from_link)

    # -- the message loop --------------------------------------------------------------------

    def _deliver(self, message: Any) -> None:
        self.mailbox.append(message)
        if self._waiters:  # a handler awaiting a reply (a call it made) looks at the mailbox
            self._wake()
        if not self._busy:
            self._busy = True
            # handlers run in a context of their own, where current_process() is this server
            contextvars.copy_context().run(self._drain_as_self)

    def _drain_as_self(self) -> None:
        enter(self)
        self._drain()

    def _next_message(self) -> Any:
        """The next message to handle: the oldest, or while suspended the oldest `:sys` one."""
        mailbox = self.mailbox
        if not self._suspended:
            return mailbox.popleft()
        for i, message in enumerate(mailbox):
            if sys_protocol.is_system_message(message):
                del mailbox[i]
                self._taken += 1
                return message
        return _NOTHING

    def _handle(self, message: Any) -> Awaitable[Any] | None:
        """Handle one message; returns an awaitable when a callback was `async def`."""
        self._last_message = message
        debug = self._debug
        if type(message) is tuple:
            size = len(message)
            tag = message[0]
            if size == 3 and tag is SYSTEM:
                return sys_protocol.handle(self, message[1], message[2])
            if debug is not None:
                debug.event(self, (sys_protocol.IN, message))
            if size == 3 and tag is GEN_CALL:
                from_, request = message[1], message[2]
                result = self.handle_call(request, from_)
                if pyinspect.iscoroutine(result):
                    return self._reply_later(from_, result)
                self._answer(from_, result)
                return None
            if size == 2 and tag is GEN_CAST:
                result = self.handle_cast(message[1])
                return self._after(result)
            if size == 3 and tag is EXIT_TAG and self._parent is not None and message[1] == self._parent:
                return self._stop(message[2])  # a trapping server follows its parent (gen_server)
        elif debug is not None:
            debug.event(self, (sys_protocol.IN, message))
        return self._after(self.handle_info(message))

    def _answer(self, from_: Any, result: Any) -> None:
        if result is not NOREPLY:
            self.node.reply(from_, result, self.pid)
            if self._debug is not None:
                self._debug.event(self, (sys_protocol.OUT, result, from_, self._state_for_report()))
        elif self._debug is not None:
            self._debug.event(self, (sys_protocol.NOREPLY_EVENT, self._state_for_report()))

    def _after(self, result: Any) -> Awaitable[Any] | None:
        if pyinspect.iscoroutine(result):
            return self._noreply_later(result)
        if self._debug is not None:
            self._debug.event(self, (sys_protocol.NOREPLY_EVENT, self._state_for_report()))
        return None

    async def _reply_later(self, from_: Any, pending: Awaitable[Any]) -> None:
        self._answer(from_, await pending)

    async def _noreply_later(self, pending: Awaitable[Any]) -> None:
        await pending
        if self._debug is not None:
            self._debug.event(self, (sys_protocol.NOREPLY_EVENT, self._state_for_report()))

    def _drain(self) -> None:
        try:
            budget = BATCH
            while self.alive and self.mailbox:
                if not budget:  # let the others run, as the BEAM's scheduler would (a server
                    # that keeps sending itself messages must not hold the loop)
                    asyncio.get_running_loop().call_soon(self._drain_as_self, context=contextvars.copy_context())
                    return
                budget -= 1
                message = self._next_message()
                if message is _NOTHING:
                    break
                pending = self._handle(message)
                if pending is not None:
                    self._go_async(pending)
                    return
                self._last_message = None  # kept only for a crash report: do not hold it
        except BaseException as e:  # noqa: B036 - a crash ends the process, as on the BEAM
            pending = self._crash(e)
            if pending is not None:
                self._go_async(pending)
            return
        self._busy = False

    def _go_async(self, pending: Awaitable[Any]) -> None:
        task = self._task = asyncio.get_running_loop().create_task(self._drain_async(pending))
        task.add_done_callback(lambda done: self._async_done(done, pending))

    def _async_done(self, task: "asyncio.Task[Any]", pending: Awaitable[Any]) -> None:
        if pyinspect.iscoroutine(pending) and pyinspect.getcoroutinestate(pending) == pyinspect.CORO_CREATED:
            pending.close()  # the task was cancelled before it ran (the process was killed)
        self._task_finished(task)

    async def _drain_async(self, pending: Awaitable[Any]) -> None:
        try:
            try:
                await pending
                self._last_message = None
                budget = BATCH
                while self.alive and self.mailbox:
                    if not budget:
                        await asyncio.sleep(0)  # a turn for the others (see _drain)
                        budget = BATCH
                    budget -= 1
                    message = self._next_message()
                    if message is _NOTHING:
                        break
                    pending2 = self._handle(message)
                    if pending2 is not None:
                        await pending2
                    self._last_message = None
            except asyncio.CancelledError:
                raise
            except BaseException as e:  # noqa: B036
                stopping = self._crash(e)
                if stopping is not None:
                    await stopping
        except asyncio.CancelledError:
            self._terminate(self._pending_exit if self._pending_exit is not None else KILLED)
            return
        self._task = None
        self._busy = False

    def _crash(self, error: BaseException) -> Awaitable[None] | None:
        reason = error.reason if isinstance(error, Exit) else exit_reason(error)
        if not is_shutdown(reason):
            self._report_crash(reason)
        return self._stop(reason)

    # -- reports -----------------------------------------------------------------------------------

    def _report_crash(self, reason: Any) -> None:
        """The crash report, in the words of Elixir's Logger: `GenServer X terminating`, the
        reason, the last message and who sent it, the state (cut short), the client."""
        name = inspect(self.name or self.pid)
        text = format_exception(reason) or f"** (stop) {cut(inspect(reason))}"
        message = self._last_message
        if message is _NOTHING:  # it died in init: proc_lib's crash report
            log.error("Process %s terminating\n%s\nInitial Call: %s.init/1\nAncestors: %s", name, text,
                      inspect(self.beam_module_atom()), inspect(self._ancestors))
            return
        client, last = None, message
        if type(message) is tuple and len(message) == 3 and message[0] is GEN_CALL:
            from_, last = message[1], message[2]
            client = from_[0] if type(from_) is tuple and len(from_) == 2 else None
        elif type(message) is tuple and len(message) == 2 and message[0] is GEN_CAST:
            last = (Atom("$gen_cast"), message[1])
        lines = [f"GenServer {name} terminating", text,
                 f"Last message{f' (from {client!r})' if client is not None else ''}: {cut(inspect(last), 1000)}",
                 f"State: {cut(inspect(self._state_for_report()), 1000)}"]
        if type(client) is Pid:
            if client.node is not self.node.name:
                lines.append(f"Client {client!r} is remote on node {inspect(client.node)}")
            else:
                alive = client in self.node.processes
                lines.append(f"Client {client!r} is {'alive' if alive else 'dead'}")
        log.error("%s", "\n".join(lines))


async def stop(via: "Node | Process", server: Any, reason: Any = NORMAL, timeout: float | None = None) -> None:
    """`GenServer.stop(server, reason, timeout)` for any server, Python or BEAM: a `:sys`
    terminate request, then wait for the server's exit (proc_lib:stop's way)."""
    node = via.node if isinstance(via, Process) else via
    proc = node.process()
    try:
        target = destination(server)
        ref = proc.monitor(target)
        proc.send(target, (SYSTEM, (proc.pid, ref), (TERMINATE, reason)))
        try:
            down = await proc.receive(lambda m: type(m) is tuple and len(m) == 5 and m[0] is DOWN_TAG
                                      and m[1] == ref, timeout)
        except TimeoutError:
            raise Timeout(f"GenServer.stop of {inspect(target)}") from None
    finally:
        proc.exit(NORMAL)
    ended = down[4]
    if ended == reason:
        return
    if ended is NOPROC:
        raise NoProc(target)
    if ended is NOCONNECTION:
        raise NoConnection(target[1] if isinstance(target, tuple) else getattr(target, "node", None))
    raise Exit(ended, f"{inspect(target)} ended with {cut(inspect(ended), 500)}, not {cut(inspect(reason), 200)}")


# -- the client --------------------------------------------------------------------------------

def _is_reply_or_down(ref: Any, tag: Any = None) -> Any:
    def match(m: Any) -> bool:
        return type(m) is tuple and ((len(m) == 2 and (m[0] == ref or m[0] == tag))
                                     or (len(m) == 5 and m[0] is DOWN_TAG and m[1] == ref))
    return match


async def call(via: "Process | Node", server: Any, request: Any, timeout: float | None = 5.0,
               *, label: Atom = GEN_CALL) -> Any:
    """`GenServer.call(server, request, timeout)`: server is a pid, a name, `(name, node)`,
    `(:global, name)` or `(:via, registry, name)` (see otp/global_names.py).

    `via` is the calling process, or a Node (a short-lived process then makes the call).
    Raises Timeout, NoProc, NoConnection, or Exit with the server's exit reason. (`label`:
    `:system` makes it a `:sys` request, as gen:call/4 does.)"""
    if not isinstance(via, Process):
        proc = via.process()
        try:
            return await call(proc, server, request, timeout, label=label)
        finally:
            proc.exit(NORMAL)
    server = destination(server)
    if _registry_name(server):
        from .global_names import resolve  # as gen:call, the name first, then a call to its pid
        server = await resolve(via.node, server)
    ref = via.monitor(server)
    # As gen:call does since OTP 24: the monitor ref is also an alias and the tag is
    # `[alias | ref]`; the server answers the alias, and once we drop it a late reply
    # (after a timeout) is discarded instead of lingering in the caller's mailbox.
    via.aliases.add(ref)
    via.node.aliases[ref] = via
    tag = ImproperList((ALIAS,), ref)
    via.send(server, (label, (via.pid, tag), request))  # gen:call's label: $gen_call, or system for :sys
    try:
        message = await via.receive(_is_reply_or_down(ref, tag), timeout)
    except TimeoutError:
        via.demonitor(ref, flush=True)
        raise Timeout(f"GenServer.call to {inspect(server)}") from None
    finally:
        via.unalias(ref)
    if message[0] is DOWN_TAG:
        reason = message[4]
        if reason is NOCONNECTION:
            node = server[1] if isinstance(server, tuple) else getattr(server, "node", None)
            raise NoConnection(node)
        if reason is NOPROC:
            raise NoProc(server)
        raise Exit(reason, f"GenServer {inspect(server)} exited: {inspect(reason)[:500]}")
    via.demonitor(ref, flush=True)
    return message[1]


def destination(server: Any) -> Any:
    """Names given as str become atoms: "KV.Registry" is the Elixir alias
    :"Elixir.KV.Registry", "rex" the atom :rex; `(name, "bar@host")` gets a node atom."""
    if isinstance(server, str):
        return module_atom(server)
    if isinstance(server, tuple) and len(server) == 2:
        name, node = server
        return (module_atom(name) if isinstance(name, str) else name,
                Atom(node) if isinstance(node, str) else node)
    return server


def _registry_name(server: Any) -> bool:
    """`{global, Name}` or `{via, Module, Name}`, as gen.erl tells them from `{Name, Node}`."""
    return type(server) is tuple and ((len(server) == 2 and server[0] is GLOBAL)
                                      or (len(server) == 3 and server[0] is VIA))


def cast(via: "Process | Node", server: Any, request: Any) -> None:
    """`GenServer.cast/2`: fire and forget."""
    server = destination(server)
    if _registry_name(server):
        from .global_names import cast_later
        cast_later(via.node if isinstance(via, Process) else via,
                   via.pid if isinstance(via, Process) else None, server, (GEN_CAST, request))
        return
    if isinstance(via, Process):
        via.send(server, (GEN_CAST, request))
    else:
        via.route(None, server, (GEN_CAST, request))
