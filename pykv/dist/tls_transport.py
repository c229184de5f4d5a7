"""TLS carriers: inet_tls (and inet6_tls) node connections, and TLS servers for other protocols.

As OTP's inet_tls_dist: epmd stays plaintext; a connection is TLS from its first byte, and
the TLS handshake (the peer's certificate checked against the cacertfile, and, when we dial,
against the host part of the node name) completes before the distribution handshake starts.

An accepted connection's TLS handshake is done here rather than by `create_server(ssl=...)`,
which drops a failed handshake without a word: a refused peer gets one rate-limited log
line that says why, and the node goes on serving the others. A handshake is bounded by
net_setuptime, and at most MAX_HANDSHAKING run at once (OTP's accept loop bounds them too).
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
from .transport import INET6_TCP, INET_TCP, DistProtocol, ProtocolFactory

log = logging.getLogger("pykv.dist")

HANDSHAKE_TIMEOUT = 7.0  # net_setuptime, as for the distribution handshake after it
MAX_HANDSHAKING = 64     # accepted connections in their TLS handshake at once, per listener


class _Held(asyncio.Protocol):
    """What the TLS transport delivers between the end of its handshake and the moment the
    real protocol takes over (the peer's first frame can come with its last handshake
    record): kept, then handed over in order."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []

    def data_received(self, data: bytes) -> None:
        self.events.append(("data", data))

    def eof_received(self) -> bool | None:
        self.events.append(("eof", None))
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        self.events.append(("lost", exc))

    def hand_over(self, protocol: asyncio.Protocol) -> None:
        for kind, value in self.events:
            if kind == "data":
                protocol.data_received(value)
            elif kind == "eof":
                protocol.eof_received()
            else:
                protocol.connection_lost(value)
                return


class _TlsAcceptor(asyncio.Protocol):
    """An accepted TCP connection until its TLS handshake is done; then `factory()`'s
    protocol gets the TLS transport."""

    def __init__(self, factory: ProtocolFactory, context: ssl.SSLContext, what: str,
                 pending: set["_TlsAcceptor"], timeout: float) -> None:
        self.factory = factory
        self.context = context
        self.what = what
        self.pending = pending
        self.timeout = timeout
        self.task: asyncio.Task[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        raw: asyncio.Transport = transport  # type: ignore[assignment]
        raw.pause_reading()  # start_tls resumes it, under its own protocol
        if len(self.pending) >= MAX_HANDSHAKING:
            peer_warnings.log(log, logging.WARNING, ("tls-busy", self.what),
                              "%s: %d TLS handshakes already under way: refusing %s", self.what,
                              MAX_HANDSHAKING, _remote(raw))
            raw.abort()
            return
        self.pending.add(self)
        self.task = asyncio.get_running_loop().create_task(self._handshake(raw))

    def connection_lost(self, exc: Exception | None) -> None:
        # before start_tls took the transport over: the peer left at once
        if self.task is not None and not self.task.done():
            self.task.cancel()
        self.pending.discard(self)

    async def _handshake(self, raw: asyncio.Transport) -> None:
        remote = _remote(raw)
        held = _Held()
        try:
            tls = await asyncio.get_running_loop().start_tls(
                raw, held, self.context, server_side=True, ssl_handshake_timeout=self.timeout)
        except (OSError, ssl.SSLError, TimeoutError, asyncio.TimeoutError, ConnectionError) as e:
            refused(self.what, remote, e)
            raw.abort()
            return
        finally:
            self.pending.discard(self)
        protocol = self.factory()
        tls.set_protocol(protocol)
        protocol.connection_made(tls)
        held.hand_over(protocol)


def refused(what: str, remote: str, error: BaseException) -> None:
    """One line (rate-limited per peer address and reason) for a peer whose TLS handshake failed."""
    why = why_failed(error)
    host = remote.partition(" port ")[0]
    peer_warnings.log(log, logging.WARNING, ("tls", what, host, why),
                      "%s: TLS handshake with %s failed, connection refused: %s", what, remote, cut(why, 300))


def _remote(transport: asyncio.BaseTransport) -> str:
    address = transport.get_extra_info("peername")
    return f"{address[0]} port {address[1]}" if isinstance(address, tuple) else "a peer"


async def tls_server(factory: ProtocolFactory, context: ssl.SSLContext, host: str, port: int,
                     what: str, family: int = socket.AF_UNSPEC,
                     timeout: float = HANDSHAKE_TIMEOUT) -> asyncio.base_events.Server:
    """A server on host:port whose connections are TLS: `factory()`'s protocol gets each one
    once its handshake is done; a failed one is logged (`what` says which server)."""
    pending: set[_TlsAcceptor] = set()
    return await asyncio.get_running_loop().create_server(
        lambda: _TlsAcceptor(factory, context, what, pending, timeout), host, port, family=family)


@dataclass(frozen=True)
class TlsDistProtocol(DistProtocol):
    """inet_tls / inet6_tls: node connections over TLS, as the optfile says."""

    tls: DistTls = field(default=None, repr=False)  # type: ignore[assignment]

    async def listen(self, factory: ProtocolFactory, interface: str | None,
                     ports: tuple[int, int]) -> asyncio.base_events.Server:
        pending: set[_TlsAcceptor] = set()
        what = f"node connections ({self.name})"
        return await super().listen(
            lambda: _TlsAcceptor(factory, self.tls.server, what, pending, HANDSHAKE_TIMEOUT),
            interface, ports)

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
