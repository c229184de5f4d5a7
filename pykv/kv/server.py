"""The guide's KVServer line protocol over TCP, every command routed through KV.Router.

  CREATE b          -> OK
  PUT b k v         -> OK                 GET b k -> v\\r\\nOK (a missing key: an empty line)
  DELETE b k        -> OK                 SUBSCRIBE b -> OK, then "k SET TO v" / "k DELETED"
An unknown bucket: NOT FOUND. A bad line: UNKNOWN COMMAND. Any other failure (no route, a
node down): ERROR, then the connection closes. Each connection is a process of its own.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any

from ..atoms import DOWN_TAG, OK as OK_ATOM
from ..dist.tls_transport import tls_server
from ..logs import cut
from ..process import Process
from ..term import Atom, inspect
from . import bucket as kv_bucket
from .registry import CREATE, LOOKUP

if TYPE_CHECKING:
    from ..node import Node
    from .router import Router

log = logging.getLogger("pykv.kv.server")

REGISTRY = Atom("Elixir.KV.Registry")
PUT, DELETE = Atom("put"), Atom("delete")
MAX_LINE = 64 * 1024
MAX_BACKLOG = 4 * 1024 * 1024  # bytes of events queued for a subscriber that does not read
MAX_TOTAL_BACKLOG = 64 * 1024 * 1024  # ... and for all of them together


class Backlogs:
    """What waits in the write buffers of all subscribers, bounded in total: many slow
    subscribers, each under its own bound, must not together hold unbounded memory. Each
    session's figure is refreshed when it writes; the true sum is taken only when the
    running one crosses the bound (a buffer may have drained since its last write)."""

    def __init__(self, limit: int | None = None) -> None:
        self.limit = MAX_TOTAL_BACKLOG if limit is None else limit
        self.sizes: dict["Session", int] = {}
        self.total = 0

    def update(self, session: "Session", size: int) -> "Session | None":
        """Record `session`'s backlog; returns the session to drop if the total is too big
        (the one with the most waiting: the slowest reader)."""
        self.total += size - self.sizes.get(session, 0)
        self.sizes[session] = size
        if self.total <= self.limit:
            return None
        for other in self.sizes:
            self.sizes[other] = other.backlog()
        self.total = sum(self.sizes.values())
        if self.total <= self.limit:
            return None
        return max(self.sizes, key=self.sizes.__getitem__)

    def forget(self, session: "Session") -> None:
        self.total -= self.sizes.pop(session, 0)


class UnknownCommand(Exception):
    pass


class NotFound(Exception):
    pass


def parse(line: bytes) -> tuple[Any, ...]:
    """`b"PUT shopping milk 1\\r\\n"` -> `("PUT", b"shopping", b"milk", b"1")`."""
    words = line.split()
    arity = {b"CREATE": 1, b"GET": 2, b"PUT": 3, b"DELETE": 2, b"SUBSCRIBE": 1}
    if not words or arity.get(words[0]) != len(words) - 1:
        raise UnknownCommand(line)
    return (words[0].decode(), *words[1:])


def fmt(value: Any) -> bytes:
    """As elixir_peer: nil is empty, a binary as is, any other term inspected."""
    if value is None:
        return b""
    if isinstance(value, bytes):
        return value
    if isinstance(value, str):
        return value.encode()
    return inspect(value).encode()


def event_line(message: Any) -> bytes | None:
    if type(message) is tuple:
        if len(message) == 3 and message[0] is PUT:
            return fmt(message[1]) + b" SET TO " + fmt(message[2]) + b"\r\n"
        if len(message) == 2 and message[0] is DELETE:
            return fmt(message[1]) + b" DELETED\r\n"
    return None


class Session:
    """One client connection, running in its own process."""

    def __init__(self, router: "Router", proc: Process,
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter,
                 backlogs: Backlogs | None = None) -> None:
        self.router = router
        self.proc = proc
        self.reader = reader
        self.writer = writer
        self.events: asyncio.Task[None] | None = None
        self.subscriptions: dict[Any, Any] = {}  # monitor ref -> bucket pid
        self.backlogs = backlogs if backlogs is not None else Backlogs()
        address = writer.get_extra_info("peername")
        self.client = f"{address[0]} port {address[1]}" if isinstance(address, tuple) else "a client"

    def backlog(self) -> int:
        return self.writer.transport.get_write_buffer_size()

    def drop(self, why: str) -> None:
        log.warning("line server: %s %s: dropping it", self.client, why)
        self.writer.transport.abort()  # close() would wait for it to read

    async def serve(self) -> None:
        spin = self.proc.node.busy_wait
        while True:
            if spin is not None:  # the next line is likely to follow soon
                spin.poke()
            try:
                line = await self.reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as e:
                line = e.partial
                if not line:
                    return
            except asyncio.LimitOverrunError:
                self.writer.write(b"ERROR\r\n")
                log.warning("line server: %s sent a line longer than %d bytes: closing that connection",
                            self.client, MAX_LINE)
                return
            try:
                reply = await self.run(parse(line))
            except UnknownCommand:
                reply = b"UNKNOWN COMMAND\r\n"
            except NotFound:
                reply = b"NOT FOUND\r\n"
            except Exception as e:
                log.warning("line server: %s failed: %s", cut(line.rstrip(b"\r\n")), cut(e, 300))
                self.writer.write(b"ERROR\r\n")
                await self.writer.drain()
                return
            self.writer.write(reply)
            await self.writer.drain()

    async def run(self, command: tuple[Any, ...]) -> bytes:
        op, bucket = command[0], command[1]
        route = self.router.route
        if op == "CREATE":
            await route(bucket, REGISTRY, CREATE, [REGISTRY, bucket])
            return b"OK\r\n"
        found = await route(bucket, REGISTRY, LOOKUP, [REGISTRY, bucket])
        if not (type(found) is tuple and len(found) == 2 and found[0] is OK_ATOM):
            raise NotFound(bucket)
        pid = found[1]
        if op == "GET":
            return fmt(await kv_bucket.get(pid, command[2])) + b"\r\nOK\r\n"
        if op == "PUT":
            await kv_bucket.put(pid, command[2], command[3])
        elif op == "DELETE":
            await kv_bucket.delete(pid, command[2])
        elif op == "SUBSCRIBE":
            if pid not in self.subscriptions.values():
                self.subscriptions[self.proc.monitor(pid)] = pid
            await kv_bucket.subscribe(pid, self.proc.pid)
            if self.events is None:
                self.events = asyncio.get_running_loop().create_task(self.forward_events())
        return b"OK\r\n"

    async def forward_events(self) -> None:
        """Bucket changes, as lines, after the reply to the command that caused them. A
        client that stops reading is disconnected once MAX_BACKLOG bytes wait for it."""
        subscriptions = self.subscriptions

        def ours(m: Any) -> bool:  # other DOWNs belong to the calls `run` makes
            return event_line(m) is not None or (
                type(m) is tuple and len(m) == 5 and m[0] is DOWN_TAG and m[1] in subscriptions)

        while True:
            message = await self.proc.receive(ours)
            line = event_line(message)
            if line is None:
                subscriptions.pop(message[1], None)  # that bucket is gone
                continue
            if self.writer.transport.is_closing():
                return  # the client went away: serve() ends the session
            self.writer.write(line)
            backlog = self.backlog()
            if backlog > MAX_BACKLOG:
                self.drop(f"stopped reading its subscriptions ({backlog} bytes waiting)")
                return
            slowest = self.backlogs.update(self, backlog)
            if slowest is not None:
                slowest.drop(f"is the slowest of the subscribers, who together have {self.backlogs.total} "
                             f"bytes waiting (at most {self.backlogs.limit})")
                self.backlogs.forget(slowest)
                if slowest is self:
                    return


async def serve(node: "Node", router: "Router", port: int, host: str | None = "0.0.0.0",
                tls: ssl.SSLContext | None = None) -> asyncio.base_events.Server:
    """The line server on host:port; with `tls`, each client's connection is TLS from its
    first byte (a failed handshake: one log line saying why, tls_transport.py)."""
    backlogs = Backlogs()

    async def client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        async def body(proc: Process) -> None:
            session = Session(router, proc, reader, writer, backlogs)
            try:
                await session.serve()
            except ConnectionError as e:  # the client reset or went away: routine
                log.info("line server: %s went away (%s)", session.client, e.strerror or type(e).__name__)
            finally:
                backlogs.forget(session)
                if session.events is not None:
                    session.events.cancel()
                writer.close()
        node.spawn(body)

    host = host or "0.0.0.0"  # a node listening on every address: the line server on every IPv4 one
    if tls is None:
        server = await asyncio.start_server(client, host, port, limit=MAX_LINE)
    else:
        loop = asyncio.get_running_loop()

        def stream() -> asyncio.StreamReaderProtocol:  # as asyncio.start_server makes them
            return asyncio.StreamReaderProtocol(asyncio.StreamReader(limit=MAX_LINE, loop=loop), client, loop=loop)
        server = await tls_server(stream, tls, host, port, "line server")
    log.info("line server (KVServer protocol) listening on %s port %d%s", host,
             server.sockets[0].getsockname()[1], " (TLS)" if tls is not None else "")
    return server
