"""TLS carriers: inet_tls (and inet6_tls) node connections, and TLS servers for other protocols.

As OTP's inet_tls_dist: epmd stays plaintext; a connection is TLS from its first byte, and
the TLS handshake (the peer's certificate checked against the cacertfile, and, when we dial,
against the host part of the node name) completes before the distribution handshake starts.

A refused peer gets one rate-limited log line that says why (TlsServer), and the node goes
on serving the others. A handshake is bounded by net_setuptime, and at most MAX_HANDSHAKING
run at once per listener (OTP's accept loop bounds them too).
"""

from __future__ import annotations

import asyncio
import logging
import socket
import ssl
from dataclasses import dataclass, field
from typing import Any

from ..logs import cut, peer_warnings
from .tls import DistTls, load_optfile, why_failed
from .transport import INET6_TCP, INET_TCP, DistProtocol, ProtocolFactory, first_free_port

log = logging.getLogger("pykv.dist")

HANDSHAKE_TIMEOUT = 7.0  # net_setuptime, as for the distribution handshake after it
MAX_HANDSHAKING = 64     # accepted connections in their TLS handshake at once, per listener


class TlsServer:
    """A listening socket whose connections are TLS: each accepted one is handed to
    `connect_accepted_socket(ssl=...)`, which awaits its handshake and raises when it fails
    (so that we can say why); `factory()`'s protocol gets only those that succeed. Not
    `create_server(ssl=...)`: it drops a failed handshake without a word. Not `start_tls`
    on an accepted connection: uvloop hands the client's first record to the protocol
    being replaced, and the handshake stalls."""

    def __init__(self, sock: socket.socket, factory: ProtocolFactory, context: ssl.SSLContext,
                 what: str, timeout: float) -> None:
        self.sockets = [sock]
        self.factory = factory
        self.context = context
        self.what = what
        self.timeout = timeout
        self._handshakes: set[asyncio.Task[None]] = set()
        self._closed = False
        self._accepting = asyncio.get_running_loop().create_task(self._accept())

    @classmethod
    async def start(cls, factory: ProtocolFactory, context: ssl.SSLContext, host: str, port: int,
                    family: int, what: str, timeout: float = HANDSHAKE_TIMEOUT) -> "TlsServer":
        if family == socket.AF_UNSPEC:
            family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.create_server((host, port), family=family, backlog=128)
        sock.setblocking(False)
        return cls(sock, factory, context, what, timeout)

    async def _accept(self) -> None:
        loop = asyncio.get_running_loop()
        listener = self.sockets[0]
        while not self._closed:
            try:
                conn, address = await loop.sock_accept(listener)
            except (OSError, asyncio.CancelledError) as e:
                if self._closed or isinstance(e, asyncio.CancelledError):
                    return
                log.warning("%s: accept failed: %s", self.what, e)  # EMFILE, say: try again soon
                await asyncio.sleep(0.1)
                continue
            if len(self._handshakes) >= MAX_HANDSHAKING:
                peer_warnings.log(log, logging.WARNING, ("tls-busy", self.what),
                                  "%s: %d TLS handshakes already under way: refusing %s", self.what,
                                  MAX_HANDSHAKING, _address(address))
                conn.close()
                continue
            task = loop.create_task(self._handshake(conn, address))
            self._handshakes.add(task)
            task.add_done_callback(self._handshakes.discard)

    async def _handshake(self, conn: socket.socket, address: Any) -> None:
        try:
            await asyncio.get_running_loop().connect_accepted_socket(
                self.factory, conn, ssl=self.context, ssl_handshake_timeout=self.timeout)
        except (OSError, TimeoutError, asyncio.TimeoutError) as e:  # ssl.SSLError, ConnectionError too
            refused(self.what, _address(address), e)
            conn.close()

    def is_serving(self) -> bool:
        return not self._closed

    def close(self) -> None:
        self._closed = True
        self._accepting.cancel()
        for task in list(self._handshakes):
            task.cancel()
        for sock in self.sockets:
            sock.close()

    async def wait_closed(self) -> None:
        return None


def refused(what: str, remote: str, error: BaseException) -> None:
    """One line (rate-limited per peer address and reason) for a peer whose TLS handshake failed."""
    why = why_failed(error)
    host = remote.partition(" port ")[0]
    peer_warnings.log(log, logging.WARNING, ("tls", what, host, why),
                      "%s: TLS handshake with %s failed, connection refused: %s", what, remote, cut(why, 300))


def _address(address: Any) -> str:
    return f"{address[0]} port {address[1]}" if isinstance(address, tuple) else "a peer"


async def tls_server(factory: ProtocolFactory, context: ssl.SSLContext, host: str, port: int,
                     what: str, family: int = socket.AF_UNSPEC,
                     timeout: float = HANDSHAKE_TIMEOUT) -> TlsServer:
    """A server on host:port whose connections are TLS: `factory()`'s protocol gets each one
    once its handshake is done; a failed one is logged (`what` says which server)."""
    return await TlsServer.start(factory, context, host, port, family, what, timeout)


@dataclass(frozen=True)
class TlsDistProtocol(DistProtocol):
    """inet_tls / inet6_tls: node connections over TLS, as the optfile says."""

    tls: DistTls = field(default=None, repr=False)  # type: ignore[assignment]

    async def listen(self, factory: ProtocolFactory, interface: str | None,
                     ports: tuple[int, int]) -> Any:
        host = interface or self.any_address
        what = f"node connections ({self.name})"
        return await first_free_port(ports, host, lambda port: TlsServer.start(
            factory, self.tls.server, host, port, self.family, what))

    async def connect(self, factory: ProtocolFactory, address: str, port: int,
                      host: str | None = None) -> tuple[Any, Any]:
        try:
            return await asyncio.get_running_loop().create_connection(
                factory, address, port, ssl=self.tls.client,
                server_hostname=self.tls.server_hostname(host or address),
                ssl_handshake_timeout=HANDSHAKE_TIMEOUT)
        except ssl.SSLError as e:  # (ssl.SSLCertVerificationError too)
            raise ConnectionError(f"TLS handshake with {address} port {port} failed: {why_failed(e)}") from None

    def lost(self, error: BaseException | None) -> str | None:
        """Why a connection closed, when TLS says (an alert after our side finished its
        handshake: with TLS 1.3 a server refuses a client's certificate only then)."""
        if isinstance(error, ssl.SSLError):
            return why_failed(error)
        return None


def dist_protocol(name: str, optfile: str) -> TlsDistProtocol:
    """inet_tls or inet6_tls with the contexts the optfile asks for (OptfileError if it cannot)."""
    base = {"inet_tls": INET_TCP, "inet6_tls": INET6_TCP}.get(name)
    if base is None:
        raise ValueError(f"unknown TLS -proto_dist {name!r}: inet_tls or inet6_tls")
    return TlsDistProtocol(name, base.family, base.loopback, base.any_address, handshake_length=4,
                           tls=load_optfile(optfile))


TLS_PROTOCOLS: tuple[str, ...] = ("inet_tls", "inet6_tls")
