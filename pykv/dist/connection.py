"""One TCP connection to another node: the handshake, then 4-byte-length frames and ticks.

Frames after the handshake: a 4-byte length, then (without the atom-cache header flag) the
byte 112 ("pass through"), the control term and, for message-carrying operations, the
payload term. Length 0 is a tick (wire-notes, "Frames after the handshake").
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from typing import TYPE_CHECKING, Any

from ..logs import cut, peer_warnings
from ..term import TermError, decode, encode_into
from .handshake import Completed, Handshake, HandshakeError, PeerAlive, PeerNamed, Role

if TYPE_CHECKING:
    from ..node import Node, Peer

log = logging.getLogger("pykv.dist")

PASS_THROUGH = 112
TICK = b"\0\0\0\0"
MAX_FRAME = 256 * 1024 * 1024  # a longer length field is garbage, not a message
HANDSHAKE_TIMEOUT = 7.0        # OTP's net_setuptime default
_NO_PAYLOAD: Any = object()
_LENGTH = struct.Struct(">I")


class FrameError(Exception):
    pass


def encode_frame(control: Any, payload: Any = _NO_PAYLOAD) -> bytearray:
    frame = bytearray(b"\0\0\0\0p")
    encode_into(frame, control)
    if payload is not _NO_PAYLOAD:
        encode_into(frame, payload)
    _LENGTH.pack_into(frame, 0, len(frame) - 4)
    return frame


def decode_frame(frame: memoryview) -> tuple[Any, Any]:
    """(control, payload) of one frame's body; payload is _NO_PAYLOAD when absent."""
    if not frame or frame[0] != PASS_THROUGH:
        raise FrameError(f"frame does not start with 112 (got {frame[0] if frame else 'nothing'}): "
                         "a distribution header was not negotiated")
    control, offset = decode(frame, 1)
    if offset == len(frame):
        return control, _NO_PAYLOAD
    payload, offset = decode(frame, offset)
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} stray bytes after the payload")
    return control, payload


# Connections with frames queued while received frames are being handled (the first item
# is a marker). One event-loop thread per node, so module state is safe; they are flushed
# together when the batch of received frames is done, without waiting for the next loop pass.
_handling: list["Connection | None"] = []


def flush_handled() -> None:
    connections = _handling[1:]
    _handling.clear()
    for conn in connections:
        if conn is not None:
            conn.flush()


class Connection(asyncio.Protocol):
    def __init__(self, node: "Node", role: Role, peer_name: str | None = None) -> None:
        self.node = node
        self.role = role
        self.handshake = Handshake(role, name=node.name.name, cookie=node.cookie,
                                   creation=node.creation, flags=node.flags, peer_name=peer_name)
        self.transport: asyncio.Transport | None = None
        self.peer: "Peer | None" = None
        self.flags = 0
        self.up = False
        self.done: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self._buf = bytearray()
        self._pending: list[bytes | bytearray] | None = None  # frames for this iteration's send
        self._need = 0  # bytes _buf must hold before the pending frame is whole
        self._timer: asyncio.TimerHandle | None = None
        self._poke = node.busy_wait.poke if node.busy_wait is not None else None
        # tick bookkeeping, read by Node's ticker
        self.sent_since_tick = False
        self.received_since_tick = False
        self.missed_ticks = 0

    @property
    def peer_name(self) -> str:
        """The peer's node name once the handshake has checked it, else where it came from."""
        return self.handshake.peer_name or f"a node at {self._remote()}"

    def _remote(self) -> str:
        address = self.transport.get_extra_info("peername") if self.transport is not None else None
        return f"{address[0]} port {address[1]}" if isinstance(address, tuple) else "?"

    def __repr__(self) -> str:
        return f"<Connection {self.role.value} {self.peer_name} {'up' if self.up else 'handshaking'}>"

    # -- asyncio.Protocol ------------------------------------------------------------------------

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's are not asyncio.Transport
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames go now
        self._timer = asyncio.get_event_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        if self.role is Role.INITIATOR:
            self.handshake.start()
            self._flush_handshake()

    def data_received(self, data: bytes) -> None:
        try:
            if self.up:
                self._frames(data)
            else:
                self._handshake_data(data)
        except HandshakeError as e:
            self._flush_handshake()
            # losing a simultaneous connect is routine: the peer's own connection follows
            self.abort(f"handshake with {self.peer_name} failed: {e}", quiet=self.handshake.lost_simultaneous)
        except (TermError, FrameError) as e:
            self.abort(f"malformed frame from {self.peer_name}, closing the connection: {e}")

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        why = "closed"
        if not self.up and self.handshake.awaiting_ack:
            # an OTP acceptor closes without a word when our digest is wrong
            why = "closed after our challenge reply: it refused our cookie (the cookies differ)"
            log.warning("handshake with %s failed: %s", self.peer_name, why)
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection to {self.peer_name} {why}"))
            self.done.exception()  # retrieved: only an initiator's connect awaits it
        self.node.connection_lost(self)

    # -- handshake ---------------------------------------------------------------------------

    def _handshake_data(self, data: bytes) -> None:
        for event in self.handshake.receive_data(data):
            if isinstance(event, PeerNamed):
                self.handshake.send_status(self.node.handshake_status(self, event))
            elif isinstance(event, PeerAlive):
                self.handshake.answer_alive(True)  # we dialled, so we are the new incarnation
            elif isinstance(event, Completed):
                self._flush_handshake()
                self._completed(event)
        self._flush_handshake()
        if self.up:
            rest = self.handshake.leftover()
            if rest:
                self._frames(rest)

    def _flush_handshake(self) -> None:
        out = self.handshake.data_to_send()
        if out and self.transport is not None:
            self.transport.write(out)

    def _completed(self, event: Completed) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flags = event.flags
        self.up = True
        self.node.connection_up(self, event)
        if not self.done.done():
            self.done.set_result(None)

    def _handshake_timeout(self) -> None:
        if not self.up:
            self.abort(f"handshake with {self.peer_name} timed out")

    # -- frames --------------------------------------------------------------------------------

    def _frames(self, data: bytes) -> None:
        self.received_since_tick = True
        if self._poke is not None:
            self._poke()
        if self._buf:
            self._buf += data
            if len(self._buf) < self._need:
                return  # a large frame still arriving: no copy until it is whole
            data = bytes(self._buf)
            self._buf.clear()
        view = memoryview(data)
        end = len(data)
        pos = 0
        dispatch = self.node.dispatch
        outermost = not _handling
        if outermost:
            _handling.append(None)  # marks "handling": replies wait for the batch's end
        try:
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(data, pos)
                if length > MAX_FRAME:
                    raise FrameError(f"frame length {length} exceeds {MAX_FRAME}")
                stop = pos + 4 + length
                if stop > end:
                    break
                if length:
                    control, payload = decode_frame(view[pos + 4:stop])
                    dispatch(self, control, payload)
                pos = stop
        finally:
            if outermost:
                flush_handled()
        if pos < end:
            self._buf += view[pos:]
            rest = end - pos
            self._need = 4 + _LENGTH.unpack_from(data, pos)[0] if rest >= 4 else 4

    def send(self, control: Any, payload: Any = _NO_PAYLOAD) -> None:
        """Queue one control message (and its payload term) in this connection's framing."""
        self.write(encode_frame(control, payload))

    def write(self, frame: bytes | bytearray) -> None:
        """Queue a frame. What is queued while frames are being handled leaves in one send()
        once they are; anything else at the end of this loop iteration."""
        pending = self._pending
        if pending is None:
            self._pending = [frame]
            if _handling:
                _handling.append(self)
            else:
                asyncio.get_running_loop().call_soon(self.flush)
        else:
            pending.append(frame)
        self.sent_since_tick = True

    def flush(self) -> None:
        frames, self._pending = self._pending, None
        transport = self.transport
        if frames and transport is not None and not transport.is_closing():
            transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def close(self) -> None:
        """Close after sending what is queued (exit signals of a stopping node, say)."""
        self.flush()
        if self.transport is not None:
            self.transport.close()

    def tick(self) -> None:
        self.write(TICK)

    def abort(self, why: str, quiet: bool = False) -> None:
        # a peer that keeps failing the same way gets a few lines, then a count
        address = self.transport.get_extra_info("peername") if self.transport is not None else None
        host = address[0] if isinstance(address, tuple) else None
        kind = why.partition(":")[0].replace(self.peer_name, "")  # the fault, not its details
        peer_warnings.log(log, logging.INFO if quiet else logging.WARNING,
                          (host, self.handshake.peer_name, kind), "%s", cut(why, 400))
        if self.transport is not None:
            self.transport.abort()
