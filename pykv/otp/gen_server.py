"""gen_server on both sides of the wire.

Server: subclass GenServer; `handle_call`, `handle_cast`, `handle_info` may be plain or
`async def`. Calls arrive as `{:"$gen_call", {pid, tag}, request}` where tag is a ref or,
from OTP 24 on, the improper list `[:alias | ref]` (wire-notes, "GenServer.call").
Client: `await call(via, server, request)` monitors the server as gen:call does, so a dead
server or node fails at once instead of waiting out the timeout.
"""

from __future__ import annotations

import asyncio
import contextvars
import inspect as pyinspect
import logging
from typing import TYPE_CHECKING, Any, Awaitable

from ..atoms import ALIAS, DOWN_TAG, GEN_CALL, GEN_CAST, KILLED, NOCONNECTION, NOPROC, NORMAL, OK, SHUTDOWN
from ..exports import module_atom
from ..errors import Exit, NoConnection, NoProc, Timeout, exit_reason
from ..process import Process, enter
from ..term import Atom, ImproperList, Pid, inspect

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.gen_server")

SYSTEM = Atom("system")
GLOBAL, VIA = Atom("global"), Atom("via")  # {global, Name}, {via, Module, Name} destinations
TERMINATE = Atom("terminate")


class _NoReply:
    def __repr__(self) -> str:
        return "NOREPLY"


NOREPLY: Any = _NoReply()
"""Return from handle_call to answer later with `self.reply(from_, value)`."""


class GenServer(Process):
    """A server process with no task of its own while idle.

        class Counter(GenServer):
            def init(self, start=0):
                self.count = start
            def handle_call(self, request, from_):
                self.count += 1
                return self.count

        counter = Counter.start(node, 10, name="Counter")
    """

    _busy = False

    @classmethod
    def start(cls, node: "Node", *args: Any, name: str | Atom | None = None,
              link: Process | None = None, **kwargs: Any) -> Any:
        server = cls(node, node.make_pid())
        node.add_process(server, name)
        if link is not None:
            node.link(link, server.pid)
        server.init(*args, **kwargs)
        return server

    # -- callbacks -------------------------------------------------------------------------------

    def init(self, *args: Any, **kwargs: Any) -> None:
        pass

    def handle_call(self, request: Any, from_: tuple[Pid, Any]) -> Any:
        raise RuntimeError(f"attempted to call GenServer {self.pid!r} but no handle_call "
                           f"clause accepts {inspect(request)}")

    def handle_cast(self, request: Any) -> Any:
        raise RuntimeError(f"attempted to cast GenServer {self.pid!r} but no handle_cast "
                           f"clause accepts {inspect(request)}")

    def handle_info(self, message: Any) -> Any:
        log.debug("%r received unexpected message in handle_info: %s", self, inspect(message)[:200])

    def terminate(self, reason: Any) -> None:
        pass

    def reply(self, from_: Any, value: Any) -> None:
        self.node.reply(from_, value, self.pid)

    # -- the message loop ----------------------------------------------------------------------

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

    def _handle(self, message: Any) -> Awaitable[Any] | None:
        """Handle one message; returns an awaitable when a callback was `async def`."""
        if type(message) is tuple:
            if len(message) == 3 and message[0] is GEN_CALL:
                from_, request = message[1], message[2]
                result = self.handle_call(request, from_)
                if pyinspect.iscoroutine(result):
                    return self._reply_later(from_, result)
                if result is not NOREPLY:
                    self.node.reply(from_, result, self.pid)
                return None
            if len(message) == 2 and message[0] is GEN_CAST:
                result = self.handle_cast(message[1])
                return result if pyinspect.iscoroutine(result) else None
            if len(message) == 3 and message[0] is SYSTEM:
                self._system_message(message[1], message[2])
                return None
        result = self.handle_info(message)
        return result if pyinspect.iscoroutine(result) else None

    def _system_message(self, from_: Any, request: Any) -> None:
        """`sys` requests (OTP sys.erl): `GenServer.stop/3` sends `{terminate, Reason}`,
        answered `ok` before the server exits with Reason. Others are refused as sys does
        for a request it does not know, so that callers get an answer instead of hanging."""
        if type(request) is tuple and len(request) == 2 and request[0] is TERMINATE:
            self.node.reply(from_, OK, self.pid)
            self._terminate(request[1])
            return
        self.node.reply(from_, (Atom("error"), (Atom("unknown_system_msg"), request)), self.pid)

    async def _reply_later(self, from_: Any, pending: Awaitable[Any]) -> None:
        result = await pending
        if result is not NOREPLY:
            self.node.reply(from_, result, self.pid)

    def _drain(self) -> None:
        try:
            while self.alive and self.mailbox:
                pending = self._handle(self.mailbox.popleft())
                if pending is not None:
                    self._task = asyncio.get_running_loop().create_task(self._drain_async(pending))
                    self._task.add_done_callback(self._task_finished)
                    return
        except BaseException as e:  # noqa: B036 - a crash ends the process, as on the BEAM
            self._crash(e)
            return
        self._busy = False

    async def _drain_async(self, pending: Awaitable[Any]) -> None:
        try:
            await pending
            while self.alive and self.mailbox:
                pending2 = self._handle(self.mailbox.popleft())
                if pending2 is not None:
                    await pending2
        except asyncio.CancelledError:
            self._terminate(self._pending_exit if self._pending_exit is not None else KILLED)
            return
        except BaseException as e:  # noqa: B036
            self._crash(e)
            return
        self._task = None
        self._busy = False

    def _crash(self, error: BaseException) -> None:
        reason = exit_reason(error)
        if not isinstance(error, Exit) or reason not in (NORMAL, SHUTDOWN):
            log.error("GenServer %r terminating: %s", self, error, exc_info=error)
        self._terminate(reason)

    def _terminate(self, reason: Any) -> None:
        if self.alive:
            try:
                self.terminate(reason)
            except Exception:
                log.exception("%r: terminate/1 failed", self)
        super()._terminate(reason)


# -- the client --------------------------------------------------------------------------------

def _is_reply_or_down(ref: Any, tag: Any = None) -> Any:
    def match(m: Any) -> bool:
        return type(m) is tuple and ((len(m) == 2 and (m[0] == ref or m[0] == tag))
                                     or (len(m) == 5 and m[0] is DOWN_TAG and m[1] == ref))
    return match


async def call(via: "Process | Node", server: Any, request: Any, timeout: float | None = 5.0) -> Any:
    """`GenServer.call(server, request, timeout)`: server is a pid, a name, `(name, node)`,
    `(:global, name)` or `(:via, registry, name)` (see otp/global_names.py).

    `via` is the calling process, or a Node (a short-lived process then makes the call).
    Raises Timeout, NoProc, NoConnection, or Exit with the server's exit reason."""
    if not isinstance(via, Process):
        proc = via.process()
        try:
            return await call(proc, server, request, timeout)
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
    via.send(server, (GEN_CALL, (via.pid, tag), request))
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
