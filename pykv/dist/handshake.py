"""The distribution handshake as a sans-I/O state machine: bytes in, events and bytes out.

Spec: OTP erts/doc "Distribution Protocol", "Distribution Handshake" (v6, OTP 23+), with the
v5 name message accepted from older initiators. digest = md5(cookie ++ decimal(challenge)),
cookie first (dist_util.erl; wire-notes). During the handshake frames carry a 2-byte length
(a 4-byte one over TLS: inet_tls_dist runs the handshake on a {packet, 4} socket).

Use: create a Handshake, call `start()` (the initiator sends its name), feed received bytes
to `receive_data`, act on the events it returns, and write out `data_to_send()` after each
call. A protocol violation raises HandshakeError; the caller closes the socket.
"""

from __future__ import annotations

import hashlib
import secrets
import struct
from dataclasses import dataclass
from enum import Enum

from ..logs import cut
from . import flags as F


MAX_MESSAGE = 0xFFFF  # what a 2-byte length allows; a name is at most 255 bytes


class HandshakeError(Exception):
    pass


class Role(Enum):
    INITIATOR = "initiator"
    ACCEPTOR = "acceptor"


@dataclass(frozen=True)
class PeerNamed:
    """Acceptor: the initiator said who it is; answer with `send_status`."""

    name: str
    flags: int
    creation: int


@dataclass(frozen=True)
class PeerAlive:
    """Initiator: the peer says it already has a connection to a node of our name; answer
    with `answer_alive(True)` to replace it (we are a new incarnation) or False to give up."""


@dataclass(frozen=True)
class Completed:
    name: str
    flags: int      # the flags in force: ours AND theirs
    creation: int


def digest(challenge: int, cookie: str) -> bytes:
    return hashlib.md5(cookie.encode() + str(challenge).encode()).digest()


def _check_node_name(name: str) -> None:
    alive, sep, host = name.partition("@")
    if not (sep and alive and host) or len(name) > 255:
        raise HandshakeError(f"invalid node name {cut(repr(name), 80)}")  # peer's text: cut short


class Handshake:
    def __init__(self, role: Role, *, name: str, cookie: str, creation: int,
                 flags: int = F.OURS, peer_name: str | None = None,
                 challenge: int | None = None, length_size: int = 2) -> None:
        if role is Role.INITIATOR and peer_name is None:
            raise ValueError("the initiator must know whom it dials")
        if length_size not in (2, 4):
            raise ValueError("handshake messages carry a 2-byte length (4 over TLS)")
        self.role = role
        # the length before each message: 2 bytes over TCP, 4 over TLS (inet_tls_dist runs
        # the handshake on a {packet, 4} socket)
        self._length = struct.Struct(">H" if length_size == 2 else ">I")
        self.name = name
        self.cookie = cookie
        self.creation = creation
        self.flags = flags
        self.peer_name = peer_name
        self.peer_flags = 0
        self.peer_creation = 0
        self.our_challenge = secrets.randbits(32) if challenge is None else challenge
        self._buf = bytearray()
        self._out = bytearray()
        self._state = "send_name" if role is Role.INITIATOR else "recv_name"
        self._peer_v5 = False
        self.done = False
        self.lost_simultaneous = False  # initiator told `nok`: the peer's own attempt wins

    # -- output -----------------------------------------------------------------------

    def data_to_send(self) -> bytes:
        out = bytes(self._out)
        self._out.clear()
        return out

    def _send(self, payload: bytes) -> None:
        self._out += self._length.pack(len(payload)) + payload

    # -- the initiator's moves -------------------------------------------------------------

    def start(self) -> None:
        if self._state != "send_name":
            raise HandshakeError("start() is for a fresh initiator")
        name = self.name.encode()
        self._send(b"N" + struct.pack(">QIH", self.flags, self.creation, len(name)) + name)
        self._state = "recv_status"

    def answer_alive(self, proceed: bool) -> None:
        if self._state != "answer_alive":
            raise HandshakeError("no alive status to answer")
        self._send(b"strue" if proceed else b"sfalse")
        if not proceed:
            raise HandshakeError("gave up: the peer already has a connection to this node")
        self._state = "recv_challenge"

    # -- the acceptor's move -------------------------------------------------------------

    def send_status(self, status: str) -> None:
        """ok | ok_simultaneous | nok | not_allowed | alive. The last three end (or, for
        alive, suspend) the handshake."""
        if self._state != "send_status":
            raise HandshakeError("no name to answer")
        self._send(b"s" + status.encode())
        if status in ("ok", "ok_simultaneous"):
            self._send_challenge()
        elif status == "alive":
            self._state = "recv_alive_answer"
        else:
            self._state = "refused"

    def _send_challenge(self) -> None:
        name = self.name.encode()
        if self._peer_v5 and not self.peer_flags & F.HANDSHAKE_23:
            self._send(b"n" + struct.pack(">HII", 5, self.flags & 0xFFFFFFFF, self.our_challenge) + name)
            self._state = "recv_reply"
        else:
            self._send(b"N" + struct.pack(">QIIH", self.flags, self.our_challenge,
                                          self.creation, len(name)) + name)
            # a v5 initiator that knows HANDSHAKE_23 sends its high flags in a complement
            self._state = "recv_complement" if self._peer_v5 else "recv_reply"

    # -- input ---------------------------------------------------------------------------

    def receive_data(self, data: bytes) -> list[object]:
        self._buf += data
        events: list[object] = []
        size = self._length.size
        while not self.done and len(self._buf) >= size:
            (length,) = self._length.unpack_from(self._buf)
            if length > MAX_MESSAGE:  # (a 4-byte length: a peer must not make us wait for 4 GB)
                raise HandshakeError(f"a handshake message of {length} bytes (at most {MAX_MESSAGE})")
            if len(self._buf) < size + length:
                break
            msg = bytes(self._buf[size:size + length])
            del self._buf[:size + length]
            if not msg:
                raise HandshakeError("empty handshake message")
            event = self._handle(msg)
            if event is not None:
                events.append(event)
        return events

    @property
    def awaiting_ack(self) -> bool:
        """Initiator: our challenge reply is out and the peer has not acknowledged it yet
        (a peer that closes now did not accept our digest: the cookies differ)."""
        return self._state == "recv_ack"

    def leftover(self) -> bytes:
        """Bytes received after the handshake completed (the first 4-byte-framed data)."""
        rest = bytes(self._buf)
        self._buf.clear()
        return rest

    def _handle(self, msg: bytes) -> object | None:
        state, tag = self._state, msg[:1]
        try:
            if state == "recv_name" and tag == b"N":
                self.peer_flags, self.peer_creation, nlen = struct.unpack_from(">QIH", msg, 1)
                return self._named(msg[15:15 + nlen], nlen)
            if state == "recv_name" and tag == b"n":
                self._peer_v5 = True
                _version, self.peer_flags = struct.unpack_from(">HI", msg, 1)
                return self._named(msg[7:], len(msg) - 7)
            if state == "recv_status" and tag == b"s":
                return self._status(msg[1:].decode("ascii", "replace"))
            if state == "recv_challenge" and tag == b"N":
                self.peer_flags, challenge, self.peer_creation, nlen = struct.unpack_from(">QIIH", msg, 1)
                self._challenged(msg[19:19 + nlen], nlen, challenge)
                return None
            if state == "recv_complement" and tag == b"c":
                high, self.peer_creation = struct.unpack_from(">II", msg, 1)
                self.peer_flags |= high << 32
                self._check_flags()
                self._state = "recv_reply"
                return None
            if state == "recv_reply" and tag == b"r" and len(msg) == 21:
                return self._replied(msg)
            if state == "recv_alive_answer" and tag == b"s":
                if msg[1:] != b"true":
                    raise HandshakeError("the initiator withdrew (it answered alive with false)")
                self._send_challenge()
                return None
            if state == "recv_ack" and tag == b"a" and len(msg) == 17:
                if not secrets.compare_digest(msg[1:], digest(self.our_challenge, self.cookie)):
                    raise HandshakeError(f"{self.peer_name} answered our challenge wrongly: "
                                         "the cookies differ")
                return self._complete()
        except struct.error:
            raise HandshakeError(f"truncated handshake message {msg[:1]!r} in state {state}") from None
        raise HandshakeError(f"unexpected handshake message {msg[:24]!r} in state {state}")

    def _named(self, raw: bytes, nlen: int) -> PeerNamed:
        if len(raw) != nlen:
            raise HandshakeError("truncated node name")
        name = raw.decode("utf-8", "replace")
        _check_node_name(name)  # before it is ours to show in log lines
        self.peer_name = name
        # a v5 'n' name carries only the low 32 flag bits: the high ones (V4_NC...) come in
        # the complement and are checked then, as OTP's check_dflags does
        self._check_flags(0xFFFFFFFF if self._peer_v5 else ~0)
        self._state = "send_status"
        return PeerNamed(self.peer_name, self.peer_flags, self.peer_creation)

    def _status(self, status: str) -> object | None:
        if status in ("ok", "ok_simultaneous"):
            self._state = "recv_challenge"
            return None
        if status == "alive":
            self._state = "answer_alive"
            return PeerAlive()
        if status == "nok":
            self.lost_simultaneous = True
        reasons = {
            "nok": "a simultaneous connection from the peer won",
            "not_allowed": "the peer refused us (missing capability flags, or not allowed)",
        }
        raise HandshakeError(f"{self.peer_name} refused the connection: {cut(status, 40)} "
                             f"({reasons.get(status, 'unknown status')})")

    def _challenged(self, raw: bytes, nlen: int, challenge: int) -> None:
        name = raw.decode("utf-8", "replace")
        if len(raw) != nlen or name != self.peer_name:
            raise HandshakeError(f"dialled {self.peer_name} but {cut(repr(name), 80)} answered")
        self._check_flags()
        self._send(b"r" + struct.pack(">I", self.our_challenge) + digest(challenge, self.cookie))
        self._state = "recv_ack"

    def _replied(self, msg: bytes) -> Completed:
        (their_challenge,) = struct.unpack_from(">I", msg, 1)
        if not secrets.compare_digest(msg[5:21], digest(self.our_challenge, self.cookie)):
            raise HandshakeError(f"connection attempt from {self.peer_name} with a wrong cookie")
        if their_challenge == self.our_challenge:
            raise HandshakeError("the peer echoed our own challenge")
        self._send(b"a" + digest(their_challenge, self.cookie))
        return self._complete()

    def _check_flags(self, mask: int = ~0) -> None:
        missing = F.MANDATORY & mask & ~self.peer_flags
        if missing:
            if self.role is Role.ACCEPTOR and self._state == "recv_name":
                self._send(b"snot_allowed")  # as OTP does; the caller flushes, then closes
            raise HandshakeError(f"{self.peer_name} rejected since it cannot handle "
                                 f"{F.describe(missing)}")

    def _complete(self) -> Completed:
        self.done = True
        self._state = "done"
        return Completed(self.peer_name or "", self.flags & self.peer_flags, self.peer_creation)
