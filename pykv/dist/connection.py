"""One TCP connection to another node: the handshake, then 4-byte-length frames and ticks.

After the handshake each frame is a 4-byte length and a body whose form the flags in force
choose (framing.py: pass-through `112` frames, or the distribution header and fragments);
length 0 is a tick (wire-notes, "Frames after the handshake"). This module does the I/O: it
collects frame bodies from the socket (a large one in a buffer of its own, never copied
again), and sends, letting other senders' messages pass between a large message's fragments.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import struct
from collections import deque
from typing import TYPE_CHECKING, Any

from ..logs import cut, peer_warnings
from ..term import AtomTableFull, TermError, atom_count
from .buffers import Buffer
from .fragments import OutgoingSequence
from .framing import NO_PAYLOAD as _NO_PAYLOAD
from .framing import FrameError, Framing, decode_frame, encode_frame, sender_of
from .handshake import Completed, Handshake, HandshakeError, PeerAlive, PeerNamed, Role

if TYPE_CHECKING:
    from ..node import Node, Peer

log = logging.getLogger("pykv.dist")

__all__ = ["Connection", "FrameError", "encode_frame", "decode_frame", "flush_handled",
           "HANDSHAKE_TIMEOUT", "MAX_FRAME"]

TICK = b"\0\0\0\0"
MAX_FRAME = 256 * 1024 * 1024  # a longer length field is garbage, not a message
HANDSHAKE_TIMEOUT = 7.0        # OTP's net_setuptime default
# Fragments written per turn of the event loop while the socket takes them: about a
# millisecond of the loop, then other work (and other connections) get their turn.
PUMP_BYTES = 1024 * 1024
# Bytes read from one connection before the others get a turn: past them, reading pauses
# until the next turn of the loop, so that a peer sending a large message (uvloop reads up to
# 2 MB at a time) leaves the loop to the others between its fragments. (64 KiB: the other
# peers' p99 while 200 MB arrive went from 50-65 ms with 256 KiB to 6-12 ms, bench.large_messages.)
READ_BYTES = 64 * 1024
# At most this much not yet sent waits in the kernel's socket buffer (TCP_NOTSENT_LOWAT, where
# the system has it); the rest of a large message waits in our lanes, where a small message of
# another sender can still go ahead of it.
UNSENT_BYTES = 128 * 1024
_NOTSENT_LOWAT = getattr(socket, "TCP_NOTSENT_LOWAT", None)
# The event loop reads into memory we give it (asyncio.BufferedProtocol): this buffer, shared
# by every connection (data is handled before the next read; what a read leaves of a frame
# is copied out), or, while a frame of more than a megabyte arrives, that frame's own memory,
# up to DIRECT_READ at a time: its body is never copied between the socket and the decoder.
_READ = bytearray(256 * 1024)
_READ_VIEW = memoryview(_READ)
DIRECT_READ = 1024 * 1024
_LENGTH = struct.Struct(">I")
CLOSE_TIMEOUT = 2.0  # s a stopping node waits for its peers to close their side
# what a peer's bytes can raise: the connection that sent them is closed (_failed)
_FAULTS = (HandshakeError, AtomTableFull, TermError, FrameError)


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


async def closed(connections: "list[Connection]", timeout: float = CLOSE_TIMEOUT) -> None:
    """Wait until connections that close() shut are closed by their peers too (a BEAM node
    closes its side at once); one that is not closed by then is cut off, so that no peer can
    hold up a stop."""
    await asyncio.sleep(0)
    if connections:
        await asyncio.wait([conn.closed for conn in connections], timeout=timeout)
    for conn in connections:
        if not conn.closed.done() and conn.transport is not None:
            conn.transport.abort()


class Connection(asyncio.BufferedProtocol):
    def __init__(self, node: "Node", role: Role, peer_name: str | None = None) -> None:
        self.node = node
        self.role = role
        self.handshake = Handshake(role, name=node.name.name, cookie=node.cookie,
                                   creation=node.creation, flags=node.flags, peer_name=peer_name,
                                   length_size=node.proto_dist.handshake_length)
        self.transport: asyncio.Transport | None = None
        self.peer: "Peer | None" = None
        self.flags = 0  # (sets self.framing)
        self.up = False
        self.done: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.closed: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self._shut = False  # close() shut our side: nothing more is written, input is dropped
        self._head = b""  # the first bytes of a frame's length, when fewer than 4 came
        self._partial: Buffer | None = None  # a frame still arriving, its length bytes first
        self._need = 0  # bytes _partial must hold: 4 + the frame's length
        self._direct = False  # the loop is reading into _partial's memory (get_buffer)
        self._pending: list[bytes | bytearray] | None = None  # frames for this iteration's send
        # Senders with a fragmented message on its way, and what they sent after it: a lane
        # is written out a fragment at a time, taking turns with the other lanes.
        self._lanes: dict[Any, deque[bytearray | OutgoingSequence]] = {}
        self._pump_handle: asyncio.Handle | None = None
        self._paused = False  # the transport's buffer is full (pause_writing)
        self._read = 0  # bytes read since reading last paused (READ_BYTES)
        self._timer: asyncio.TimerHandle | None = None
        self._writelines: Any = None
        self._poke = node.busy_wait.poke if node.busy_wait is not None else None
        # tick bookkeeping, read by Node's ticker
        self.sent_since_tick = False
        self.received_since_tick = False
        self.missed_ticks = 0

    @property
    def flags(self) -> int:
        """The flags in force (ours AND the peer's); they choose the framing."""
        return self._flags

    @flags.setter
    def flags(self, flags: int) -> None:
        self._flags = flags
        self.framing = Framing(flags)

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
        # uvloop's writelines keeps the views it is given and sends them with one writev;
        # asyncio's (3.11) joins them into a copy, as head + data would
        self._writelines = getattr(transport, "writelines", None) if type(transport).__module__.startswith("uvloop") else None
        sock = transport.get_extra_info("socket")
        if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # small frames go now
            if _NOTSENT_LOWAT is not None:
                # what waits to be sent waits in our lanes, where others' frames pass it
                sock.setsockopt(socket.IPPROTO_TCP, _NOTSENT_LOWAT, UNSENT_BYTES)
        self._timer = asyncio.get_event_loop().call_later(HANDSHAKE_TIMEOUT, self._handshake_timeout)
        if self.role is Role.INITIATOR:
            self.handshake.start()
            self._flush_handshake()

    def get_buffer(self, sizehint: int) -> memoryview:
        partial = self._partial
        if partial is not None:
            spare = partial.spare(min(self._need - len(partial), DIRECT_READ))
            if spare is not None:
                self._direct = True
                return spare
        return _READ_VIEW

    def buffer_updated(self, nbytes: int) -> None:
        if self._shut:
            return  # closing: read only so that the socket closes without a reset
        try:
            if self._direct:
                self._direct = False
                self._direct_read(nbytes)
            elif self.up:
                self._frames(_READ_VIEW[:nbytes])
            else:
                self._handshake_data(bytes(_READ_VIEW[:nbytes]))
        except _FAULTS as e:
            self._failed(e)

    def data_received(self, data: bytes | memoryview) -> None:
        """`data` from the peer, as a plain Protocol gets it (the tests' stand-in transports)."""
        if self._shut:
            return
        try:
            if self.up:
                self._frames(data)
            else:
                self._handshake_data(bytes(data))
        except _FAULTS as e:
            self._failed(e)

    def _direct_read(self, nbytes: int) -> None:
        """`nbytes` more of the arriving frame were read into its own memory."""
        self._arrived(nbytes)
        partial = self._partial
        if partial is None:
            return
        partial.grew(nbytes)
        if len(partial) < self._need:
            return
        outermost = not _handling
        if outermost:
            _handling.append(None)
        try:
            self._whole(partial)
        finally:
            if outermost:
                flush_handled()

    def _failed(self, e: Exception) -> None:
        if isinstance(e, HandshakeError):
            self._flush_handshake()
            # losing a simultaneous connect is routine: the peer's own connection follows
            self.abort(f"handshake with {self.peer_name} failed: {e}", quiet=self.handshake.lost_simultaneous)
        elif isinstance(e, AtomTableFull):
            self.abort(f"{self.peer_name} sent a new atom past the atom table's bound "
                       f"({atom_count()} atoms, --max-atoms): closing the connection")
        else:
            self.abort(f"malformed frame from {self.peer_name}, closing the connection: {e}")

    def eof_received(self) -> None:
        # The peer closed. Everything it sent has been dispatched (frames are handled as
        # they arrive), so the node may take it as down now: asyncio would call
        # connection_lost one loop turn later, after what other connections delivered in
        # the meantime, and global's lost_connection relayed by a third node would then
        # come before this nodedown, which the BEAM does not do (otp/global_server.py).
        if self.up and not self._shut:
            self.node.connection_lost(self)

    def connection_lost(self, exc: Exception | None) -> None:
        if self._timer is not None:
            self._timer.cancel()
        if self._pump_handle is not None:
            self._pump_handle.cancel()
        self._lanes.clear()
        self._partial = None
        self._direct = False
        self._head = b""
        self.framing.reset()
        why = "closed"
        carrier = self.node.proto_dist.lost(exc)  # TLS: an alert says why
        if carrier is not None:
            why = f"closed: {carrier}"
            if not self.up:
                peer_warnings.log(log, logging.WARNING, ("tls-closed", self._remote().partition(" ")[0], carrier),
                                  "handshake with %s failed: %s", self.peer_name, cut(why, 300))
        elif not self.up and self.handshake.awaiting_ack:
            # an OTP acceptor closes without a word when our digest is wrong
            why = "closed after our challenge reply: it refused our cookie (the cookies differ)"
            log.warning("handshake with %s failed: %s", self.peer_name, why)
        if not self.done.done():
            self.done.set_exception(ConnectionError(f"connection to {self.peer_name} {why}"))
            self.done.exception()  # retrieved: only an initiator's connect awaits it
        if not self.closed.done():
            self.closed.set_result(None)
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

    def _arrived(self, nbytes: int) -> None:
        self.received_since_tick = True
        if self._poke is not None:
            self._poke()
        self._read += nbytes
        if self._read > READ_BYTES:
            self._take_turns()

    def _frames(self, data: bytes | memoryview) -> None:
        self._arrived(len(data))
        view = memoryview(data)
        end = len(data)
        pos = 0
        dispatch = self.node.dispatch
        decode = self.framing.decode
        outermost = not _handling
        if outermost:
            _handling.append(None)  # marks "handling": replies wait for the batch's end
        try:
            if self._partial is not None or self._head:
                pos = self._fill(view)
                if self._partial is not None or self._head:
                    return  # still arriving: a large frame is not copied again until whole
            while end - pos >= 4:
                (length,) = _LENGTH.unpack_from(data, pos)
                if length > MAX_FRAME:
                    raise FrameError(f"frame length {length} exceeds {MAX_FRAME}")
                stop = pos + 4 + length
                if stop > end:
                    break
                if length:
                    message = decode(view[pos + 4:stop])
                    if message is not None:
                        dispatch(self, *message)
                pos = stop
            if pos < end:
                self._head = bytes(view[pos:pos + 4]) if end - pos < 4 else b""
                if not self._head:
                    self._start_frame(view[pos:])
        finally:
            if outermost:
                flush_handled()

    def _start_frame(self, data: memoryview) -> None:
        """A frame whose length is known and whose body is still arriving: a buffer of its own."""
        (length,) = _LENGTH.unpack_from(data, 0)
        if length > MAX_FRAME:
            raise FrameError(f"frame length {length} exceeds {MAX_FRAME}")
        self._need = 4 + length
        self._partial = Buffer(self._need, self._need)
        self._partial.append(data)

    def _fill(self, view: memoryview) -> int:
        """Add to the frame that is arriving what `view` holds of it; once it is whole, handle
        it. Returns how much of `view` it took."""
        taken = 0
        if self._head:
            taken = min(len(view), 4 - len(self._head))
            head = self._head + bytes(view[:taken])
            if len(head) < 4:
                self._head = head
                return taken
            self._head = b""
            if head == TICK:
                return taken
            self._start_frame(memoryview(head))
        partial = self._partial
        if partial is None:
            return taken
        take = min(len(view) - taken, self._need - len(partial))
        partial.append(view[taken:taken + take])
        taken += take
        if len(partial) < self._need:
            return taken
        self._whole(partial)
        return taken

    def _whole(self, partial: Buffer) -> None:
        """The frame that arrived piece by piece is whole: handle it."""
        self._partial = None
        try:
            message = self.framing.decode(partial.view()[4:])
        finally:
            partial.release()
        if message is not None:
            self.node.dispatch(self, *message)

    def send(self, control: Any, payload: Any = _NO_PAYLOAD) -> None:
        """Queue one control message (and its payload term) in this connection's framing.
        A message long enough to be fragmented leaves a fragment at a time; what its sender
        sends next waits behind it (signal order), what others send does not."""
        out = self.framing.message(control, payload)
        if self._lanes:
            lane = self._lanes.get(sender_of(control))
            if lane is not None:
                lane.append(out)
                return
        if out.__class__ is OutgoingSequence:
            self._lanes[sender_of(control)] = deque((out,))
            self._schedule_pump()
        else:
            self.write(out)  # type: ignore[arg-type]

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
        if frames and transport is not None and not transport.is_closing() and not self._shut:
            transport.write(b"".join(frames) if len(frames) > 1 else frames[0])

    def _take_turns(self) -> None:
        self._read = 0
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.pause_reading()
            asyncio.get_running_loop().call_soon(self._resume_reading)

    def _resume_reading(self) -> None:
        transport = self.transport
        if transport is not None and not transport.is_closing():
            transport.resume_reading()

    # -- fragments out, in turns -------------------------------------------------------------

    def _schedule_pump(self) -> None:
        if self._pump_handle is None:
            self._pump_handle = asyncio.get_running_loop().call_soon(self._pump)

    def _pump(self) -> None:
        """Write the lanes' next fragments, one per lane in turn, while the transport takes
        them (until pause_writing), PUMP_BYTES at most per turn of the loop: with uvloop, all
        of a turn's fragments in one writelines, one writev of views of the messages (a
        syscall and a wake-up of the peer per fragment cost more than the bytes)."""
        self._pump_handle = None
        transport = self.transport
        if transport is None or transport.is_closing() or self._shut:
            self._lanes.clear()
            return
        self.flush()  # what was queued before a lane began goes first
        budget = PUMP_BYTES
        lanes = self._lanes
        if self._writelines is not None:
            pieces: list[bytes | bytearray | memoryview] = []
            while lanes and budget > 0 and not self._paused:
                for key in list(lanes):
                    budget -= self._next_pieces(key, lanes[key], pieces)
            self._writelines(pieces)
        else:
            while lanes and not self._paused and budget > 0:
                for key in list(lanes):
                    budget -= self._write_next(key, lanes[key], transport)
                    if self._paused:
                        break
        self.sent_since_tick = True
        if lanes and not self._paused:
            self._schedule_pump()

    def _next_pieces(self, key: Any, lane: deque[bytearray | OutgoingSequence],
                     pieces: list[bytes | bytearray | memoryview]) -> int:
        """Add the lane's next fragment (or frame) to `pieces`; returns its length."""
        item = lane[0]
        if item.__class__ is OutgoingSequence:
            fragment = item.next_pieces()  # type: ignore[union-attr]
            if item.done:  # type: ignore[union-attr]
                lane.popleft()
            pieces += fragment
            size = 0
            for piece in fragment:
                size += len(piece)
        else:
            chunk = lane.popleft()
            pieces.append(chunk)  # type: ignore[arg-type]
            size = len(chunk)
        if not lane:
            del self._lanes[key]
        return size

    def _write_next(self, key: Any, lane: deque[bytearray | OutgoingSequence],
                    transport: asyncio.Transport) -> int:
        item = lane[0]
        if item.__class__ is OutgoingSequence:
            chunk: bytes | bytearray = item.next_fragment()  # type: ignore[union-attr]
            if item.done:  # type: ignore[union-attr]
                lane.popleft()
        else:
            chunk = lane.popleft()  # type: ignore[assignment]
        if not lane:
            del self._lanes[key]
        transport.write(chunk)
        return len(chunk)

    def pause_writing(self) -> None:
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if self._lanes:
            self._schedule_pump()

    def close(self) -> None:
        """Close after sending what is queued (exit signals of a stopping node, say).

        Our side is shut for writing once the queued bytes are out, and what the peer still
        sends is read and dropped until it closes its side too (`closed`). Closing at once
        would leave its ticks unread in the socket, and Linux answers a close with unread
        bytes by a reset that throws away what we sent and the peer had not yet received."""
        self.flush()
        transport = self.transport
        if transport is None or transport.is_closing() or self._shut:
            return
        while self._lanes:
            key = next(iter(self._lanes))
            self._write_next(key, self._lanes[key], transport)
        self._shut = True
        if self.up and transport.can_write_eof():
            try:
                transport.write_eof()
            except OSError:  # the peer is gone already (ENOTCONN): nothing to wait for
                transport.abort()
        else:
            transport.close()

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
