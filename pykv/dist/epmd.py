"""epmd, the Erlang port mapper: a client for it, and an embedded server for machines without one.

Protocol: OTP erts/doc "Distribution Protocol", section "EPMD Protocol". Every request is a
2-byte length plus the request; replies have no length prefix. Facts seen on the wire are
in shared/docs/wire-notes.md ("epmd").
"""

from __future__ import annotations

import asyncio
import errno
import ipaddress
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass

from ..logs import peer_warnings

log = logging.getLogger("pykv.epmd")

EPMD_PORT = int(os.environ.get("ERL_EPMD_PORT", "4369"))

ALIVE2_REQ = 120
ALIVE2_RESP = 121     # old reply, 16-bit creation
ALIVE2_X_RESP = 118   # OTP 23+: 32-bit creation
PORT_PLEASE2_REQ = 122
PORT2_RESP = 119
NAMES_REQ = 110

NODE_TYPE_NORMAL = 77
NODE_TYPE_HIDDEN = 72
HIGHEST_VERSION = 6   # a node registered as 5/5 is refused by OTP 25 (wire-notes)
LOWEST_VERSION = 5


class EpmdError(Exception):
    pass


@dataclass(frozen=True)
class NodeInfo:
    """What epmd knows of a registered node (the body of PORT2_RESP)."""

    name: str
    port: int
    node_type: int = NODE_TYPE_HIDDEN
    protocol: int = 0
    highest: int = HIGHEST_VERSION
    lowest: int = LOWEST_VERSION
    extra: bytes = b""


def _request(body: bytes) -> bytes:
    return struct.pack(">H", len(body)) + body


def alive2_request(info: NodeInfo) -> bytes:
    name = info.name.encode()
    return _request(
        struct.pack(">BHBBHHH", ALIVE2_REQ, info.port, info.node_type, info.protocol,
                    info.highest, info.lowest, len(name))
        + name + struct.pack(">H", len(info.extra)) + info.extra
    )


def parse_alive2_request(body: bytes) -> NodeInfo:
    """body: the request without its length prefix, tag byte included."""
    try:
        _, port, node_type, proto, hi, lo, nlen = struct.unpack_from(">BHBBHHH", body)
        name = body[11:11 + nlen].decode()
        (elen,) = struct.unpack_from(">H", body, 11 + nlen)
        extra = body[13 + nlen:13 + nlen + elen]
    except (struct.error, UnicodeDecodeError) as e:
        raise EpmdError(f"malformed ALIVE2_REQ: {e}") from None
    if len(name.encode()) != nlen or not name:
        raise EpmdError("malformed ALIVE2_REQ: bad name")
    return NodeInfo(name, port, node_type, proto, hi, lo, extra)


def port2_response(info: NodeInfo | None) -> bytes:
    if info is None:
        return bytes([PORT2_RESP, 1])
    name = info.name.encode()
    return (
        struct.pack(">BBHBBHHH", PORT2_RESP, 0, info.port, info.node_type, info.protocol,
                    info.highest, info.lowest, len(name))
        + name + struct.pack(">H", len(info.extra)) + info.extra
    )


def parse_port2_response(data: bytes) -> NodeInfo | None:
    """None when epmd does not know the name."""
    if len(data) < 2 or data[0] != PORT2_RESP:
        raise EpmdError(f"unexpected PORT_PLEASE2 reply {data[:16]!r}")
    if data[1] != 0:
        return None
    try:
        _, _, port, node_type, proto, hi, lo, nlen = struct.unpack_from(">BBHBBHHH", data)
        name = data[12:12 + nlen].decode()
        (elen,) = struct.unpack_from(">H", data, 12 + nlen)
        extra = data[14 + nlen:14 + nlen + elen]
    except (struct.error, UnicodeDecodeError) as e:
        raise EpmdError(f"malformed PORT2_RESP: {e}") from None
    return NodeInfo(name, port, node_type, proto, hi, lo, extra)


def split_node_name(node: str) -> tuple[str, str]:
    alive, sep, host = node.partition("@")
    if not sep or not alive or not host:
        raise ValueError(f"not a node name: {node!r} (expected name@host)")
    return alive, host


class Registration:
    """An open ALIVE2 registration: closing it unregisters the node."""

    def __init__(self, writer: asyncio.StreamWriter, creation: int) -> None:
        self._writer = writer
        self.creation = creation

    def close(self) -> None:
        self._writer.close()


async def register(info: NodeInfo, host: str = "127.0.0.1", port: int = EPMD_PORT) -> Registration:
    """ALIVE2: returns the creation to use in every pid, ref and port this node mints."""
    reader, writer = await asyncio.open_connection(host, port)
    writer.write(alive2_request(info))
    head = await reader.readexactly(2)
    if head[0] == ALIVE2_X_RESP:
        creation = struct.unpack(">I", await reader.readexactly(4))[0]
    elif head[0] == ALIVE2_RESP:
        creation = struct.unpack(">H", await reader.readexactly(2))[0]
    else:
        writer.close()
        raise EpmdError(f"unexpected ALIVE2 reply tag {head[0]}")
    if head[1] != 0:
        writer.close()
        raise EpmdError(f"epmd refused to register {info.name!r} (result {head[1]}): "
                        "is a node of that name already running on this host?")
    return Registration(writer, creation)


async def port_please(name: str, host: str, port: int = EPMD_PORT) -> NodeInfo | None:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_request(bytes([PORT_PLEASE2_REQ]) + name.encode()))
        return parse_port2_response(await reader.read())
    finally:
        writer.close()


async def names(host: str = "127.0.0.1", port: int = EPMD_PORT) -> list[tuple[str, int]]:
    reader, writer = await asyncio.open_connection(host, port)
    try:
        writer.write(_request(bytes([NAMES_REQ])))
        data = await reader.read()
    finally:
        writer.close()
    result = []
    for line in data[4:].decode(errors="replace").splitlines():
        parts = line.split()  # "name foo at port 12345"
        if len(parts) == 5 and parts[0] == "name":
            result.append((parts[1], int(parts[4])))
    return result


def listen_addresses(configured: str | None = None) -> list[str]:
    """Where an epmd listens (epmd_srv.c, run()): every address, IPv4 and IPv6, or the
    addresses of ERL_EPMD_ADDRESS ("10.1.2.3, ::1", commas or spaces) and then loopback too,
    which is always served so that this host's nodes can register."""
    configured = os.environ.get("ERL_EPMD_ADDRESS", "") if configured is None else configured
    listed = [a for a in configured.replace(",", " ").split() if a]
    if not listed:
        return ["0.0.0.0", "::"]
    for address in listed:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            raise EpmdError(f"ERL_EPMD_ADDRESS: cannot parse IP address {address!r}") from None
    loopback = ["127.0.0.1", "::1"]
    return loopback + [a for a in listed if not ipaddress.ip_address(a).is_loopback]


def is_local_peer(peer: str, own: str) -> bool:
    """epmd takes registrations only from its own host (epmd_srv.c, conn_local_peer_check): a
    loopback peer, or one whose address is the address it reached (the host's own)."""
    try:
        return ipaddress.ip_address(peer).is_loopback or peer == own
    except ValueError:
        return False


MAX_REQUEST = 1023       # epmd's INBUF_SIZE less one: a longer request is garbage
REQUEST_TIMEOUT = 10.0   # a client must say what it wants (epmd's packet_timeout, shorter)
MAX_CLIENTS = 1024       # connections at once, registrations included (epmd: its fd limit)


class EmbeddedEpmd:
    """An epmd server in this process, used when nothing listens on the epmd port.

    It answers other hosts as the real epmd does (PORT_PLEASE2 and NAMES from anywhere,
    ALIVE2 only from this host) and serves BEAM nodes started later just as the real epmd
    would; they lose their registration when this process exits (as with a real epmd that
    dies).
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._creation = secrets.randbelow(2**31) + 4
        self._servers: list[asyncio.base_events.Server] = []
        self._clients = 0
        self.port = EPMD_PORT
        self.addresses: list[str] = []

    async def start(self, host: str | list[str] | None = None, port: int = EPMD_PORT) -> None:
        """Listen as epmd does (`listen_addresses`), or on `host` (an address or a list). With
        port 0, every address gets the port the first one was given."""
        addresses = [host] if isinstance(host, str) else host or listen_addresses()
        sockets: list[socket.socket] = []
        try:
            for address in addresses:
                sock = self._bind(address, port, optional=ipaddress.ip_address(address).is_loopback
                                  or address == "::")
                if sock is not None:
                    sockets.append(sock)
                    port = sock.getsockname()[1]
            if not sockets:
                raise OSError(f"epmd: unable to bind any of {', '.join(addresses)}")
            for sock in sockets:
                self._servers.append(await asyncio.start_server(self._serve, sock=sock))
        except BaseException:
            for sock in sockets:
                sock.close()
            self.close()
            raise
        self.port = port
        self.addresses = [s.getsockname()[0] for s in sockets]
        log.info("no epmd was running: serving epmd on %s port %d from this process",
                 ", ".join(self.addresses), self.port)

    @staticmethod
    def _bind(address: str, port: int, optional: bool) -> socket.socket | None:
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError as e:
            if optional and e.errno in (errno.EAFNOSUPPORT, errno.EPROTONOSUPPORT):
                return None  # no IPv6 here: epmd goes on without it
            raise
        try:
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)  # IPv4 has its own
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((address, port))
            sock.setblocking(False)
            sock.listen(socket.SOMAXCONN)
            return sock
        except OSError as e:
            sock.close()
            if optional and e.errno in (errno.EADDRNOTAVAIL, errno.EAFNOSUPPORT):
                return None  # as epmd: loopback of a family this host lacks is not fatal
            raise

    def close(self) -> None:
        for server in self._servers:
            server.close()
        self._servers.clear()

    def _next_creation(self) -> int:
        self._creation = self._creation % (2**32 - 4) + 1
        return self._creation

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        registered: str | None = None
        self._clients += 1
        try:
            if self._clients > MAX_CLIENTS:
                return
            (length,) = struct.unpack(">H", await asyncio.wait_for(reader.readexactly(2), REQUEST_TIMEOUT))
            if not 0 < length <= MAX_REQUEST:
                return
            body = await asyncio.wait_for(reader.readexactly(length), REQUEST_TIMEOUT)
            tag = body[0]
            if tag == ALIVE2_REQ:
                peer, own = writer.get_extra_info("peername"), writer.get_extra_info("sockname")
                if not is_local_peer(peer[0], own[0]):
                    # as epmd: no reply, and the connection closes
                    peer_warnings.log(log, logging.WARNING, ("epmd ALIVE2", peer[0]),
                                      "embedded epmd: refused to register a node for %s: "
                                      "registrations come only from this host, as epmd takes them",
                                      peer[0])
                    return
                info = parse_alive2_request(body)
                ok = info.name not in self.nodes
                creation = self._next_creation() if ok else 0
                if info.highest >= 6:
                    writer.write(struct.pack(">BBI", ALIVE2_X_RESP, 0 if ok else 1, creation))
                else:
                    writer.write(struct.pack(">BBH", ALIVE2_RESP, 0 if ok else 1, creation & 0xFFFF))
                if not ok:
                    return
                registered = info.name
                self.nodes[info.name] = info
                await writer.drain()
                # registered while this connection stays open; anything sent on it ends the
                # registration too ("got more than expected on ALIVE socket")
                await reader.read(1)
            elif tag == PORT_PLEASE2_REQ:
                writer.write(port2_response(self.nodes.get(body[1:].decode(errors="replace"))))
            elif tag == NAMES_REQ:
                lines = "".join(f"name {n} at port {i.port}\n" for n, i in self.nodes.items())
                writer.write(struct.pack(">I", self.port) + lines.encode())  # epmd's own port
            else:
                peer = writer.get_extra_info("peername")
                host = peer[0] if isinstance(peer, tuple) else "?"
                peer_warnings.log(log, logging.WARNING, ("epmd request", host),
                                  "embedded epmd: unsupported request %d from %s", tag, host)
        except (asyncio.IncompleteReadError, asyncio.TimeoutError, ConnectionError, EpmdError) as e:
            log.debug("embedded epmd: dropped a client: %s", e)
        except asyncio.CancelledError:
            pass  # the loop is shutting down: this client's service simply ends
        finally:
            self._clients -= 1
            if registered is not None and self.nodes.get(registered) is not None:
                del self.nodes[registered]
            writer.close()
