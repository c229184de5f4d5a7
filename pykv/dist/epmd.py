"""epmd, the Erlang port mapper: a client for it, and an embedded server for machines without one.

Protocol: OTP erts/doc "Distribution Protocol", section "EPMD Protocol". Every request is a
2-byte length plus the request; replies have no length prefix. Facts seen on the wire are
in shared/docs/wire-notes.md ("epmd").
"""

from __future__ import annotations

import asyncio
import logging
import os
import secrets
import socket
import struct
from dataclasses import dataclass

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


def _loopback_addresses() -> list[str]:
    hosts = ["127.0.0.1"]
    try:
        own = socket.gethostbyname(socket.gethostname())
    except OSError:
        return hosts
    if own.startswith("127.") and own not in hosts:
        hosts.append(own)
    return hosts


class EmbeddedEpmd:
    """An epmd server in this process, used when nothing listens on the epmd port.

    It serves BEAM nodes started later just as the real epmd would; they lose their
    registration when this process exits (as with a real epmd that dies).
    """

    def __init__(self) -> None:
        self.nodes: dict[str, NodeInfo] = {}
        self._creation = secrets.randbelow(2**31) + 4
        self._server: asyncio.base_events.Server | None = None
        self.port = EPMD_PORT

    async def start(self, host: str | None = None, port: int = EPMD_PORT) -> None:
        """Listen on loopback: 127.0.0.1, plus the loopback address this host's name
        resolves to (Debian's 127.0.1.1), where BEAM nodes look up `name@host`."""
        hosts = [host] if host else _loopback_addresses()
        self._server = await asyncio.start_server(self._serve, hosts, port)
        self.port = self._server.sockets[0].getsockname()[1]
        log.info("no epmd was running: serving epmd on %s port %d from this process",
                 ", ".join(hosts), self.port)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()

    def _next_creation(self) -> int:
        self._creation = self._creation % (2**32 - 4) + 1
        return self._creation

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        registered: str | None = None
        try:
            (length,) = struct.unpack(">H", await reader.readexactly(2))
            body = await reader.readexactly(length)
            if not body:
                return
            tag = body[0]
            if tag == ALIVE2_REQ:
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
                await reader.read()  # registered while this connection stays open
            elif tag == PORT_PLEASE2_REQ:
                writer.write(port2_response(self.nodes.get(body[1:].decode(errors="replace"))))
            elif tag == NAMES_REQ:
                lines = "".join(f"name {n} at port {i.port}\n" for n, i in self.nodes.items())
                writer.write(struct.pack(">I", self.port) + lines.encode())  # epmd's own port
            else:
                log.warning("embedded epmd: unsupported request %d", tag)
        except (asyncio.IncompleteReadError, ConnectionError, EpmdError) as e:
            log.debug("embedded epmd: dropped a client: %s", e)
        except asyncio.CancelledError:
            pass  # the loop is shutting down: this client's service simply ends
        finally:
            if registered is not None and self.nodes.get(registered) is not None:
                del self.nodes[registered]
            writer.close()
