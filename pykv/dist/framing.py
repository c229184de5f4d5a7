"""The frames of one connection after the handshake, as a sans-I/O codec: bodies in,
(control, payload) out; (control, payload) in, frames out.

Spec: OTP erts/doc "Distribution Protocol" ("Protocol between connected nodes") and "External
Term Format" ("Distribution Header"); what the BEAM accepts is erts_prepare_dist_ext and
erts_decode_dist_ext_size in erts/emulator/beam/external.c. Which form a connection uses
depends on the flags in force (ours AND the peer's):

- neither DIST_HDR_ATOM_CACHE nor FRAGMENTS (erl_call, Jinterface): `112` ("pass through"),
  then the control message and the payload, each a term with its version byte 131;
- either of them (every BEAM of OTP 22+): `131, 68` and a distribution header (atom cache
  refs; zero of them when only FRAGMENTS is in force), then the two terms *without* their
  version byte (the BEAM refuses one that starts with 131); with FRAGMENTS, a message longer
  than 64 KiB goes as fragments (`131, 69` then `131, 70`, see fragments.py).

A frame of the other form, or a COMPRESSED term (tag 80: no BEAM of OTP 25, 27 or 29 accepts
one on the distribution channel; each logs "got a corrupted external term" and disconnects),
raises FrameError: the connection that sent it is closed.
"""

from __future__ import annotations

import struct
from typing import Any, Callable

from ..term import codec, decode, encode_into
from . import control as C
from . import flags as F
from .atom_cache import AtomCache, BadHeader
from .fragments import (
    DIST_FRAG_CONT, DIST_FRAG_HEADER, FRAGMENT_SIZE, MAX_IN_FLIGHT, MAX_MESSAGE, BadFragment,
    OutgoingSequence, Reassembly,
)

PASS_THROUGH = 112
VERSION = 131
DIST_HEADER = 68
COMPRESSED = 80
NO_PAYLOAD: Any = object()
_LENGTH = struct.Struct(">I")
_pack_length = _LENGTH.pack_into
_FRAGMENT_ABOVE = 7 + FRAGMENT_SIZE  # frame size (length, 131, 68, 0 included) past one fragment
_IDS = struct.Struct(">QQ")
_HEADER_FLAGS = F.DIST_HDR_ATOM_CACHE | F.FRAGMENTS
_HEADER_FRAME_START = b"\0\0\0\0\x83D"  # length (set last), VERSION, DIST_HEADER
# A frame up to this long is decoded from a copy of each term with its version byte (the
# codec's fast path for bytes); a longer one in place, after one copy if it is read-only.
_BARE_COPY_UP_TO = 4096


class FrameError(Exception):
    pass


# -- pass-through frames (no distribution header) ------------------------------------------------

def encode_frame(control: Any, payload: Any = NO_PAYLOAD) -> bytearray:
    """A whole pass-through frame, its 4-byte length included."""
    frame = bytearray(b"\0\0\0\0p")
    encode_into(frame, control)
    if payload is not NO_PAYLOAD:
        encode_into(frame, payload)
    _LENGTH.pack_into(frame, 0, len(frame) - 4)
    return frame


def decode_frame(frame: memoryview) -> tuple[Any, Any]:
    """(control, payload) of a pass-through frame's body; payload is NO_PAYLOAD when absent."""
    if not frame or frame[0] != PASS_THROUGH:
        raise FrameError(f"frame does not start with 112 (got {frame[0] if frame else 'nothing'}): "
                         "a distribution header was not negotiated")
    _refuse_compressed(frame, 1)
    control, offset = decode(frame, 1)
    if offset == len(frame):
        return control, NO_PAYLOAD
    _refuse_compressed(frame, offset)
    payload, offset = decode(frame, offset)
    if offset != len(frame):
        raise FrameError(f"{len(frame) - offset} stray bytes after the payload")
    return control, payload


def _refuse_compressed(frame: Any, pos: int) -> None:
    if pos + 1 < len(frame) and frame[pos + 1] == COMPRESSED and frame[pos] == VERSION:
        raise FrameError("a compressed term on the distribution channel (the BEAM refuses them too)")


# -- terms after a distribution header ------------------------------------------------------------

def _decode_bare(frame: memoryview, pos: int, atom_refs: tuple[Any, ...]) -> tuple[Any, int]:
    """The term at `pos` of a frame we may write to, written without its version byte, as
    after a distribution header. The codec reads a term from its version byte: one is put in
    the byte before the term (a header byte, or the last byte of the control message, both
    read already), and that byte is restored afterwards."""
    if pos >= len(frame):
        raise FrameError("a distribution header with no control message after it")
    _check_bare(frame[pos])
    saved = frame[pos - 1]
    frame[pos - 1] = VERSION
    try:
        return decode(frame, pos - 1, atom_refs=atom_refs) if atom_refs else decode(frame, pos - 1)
    finally:
        frame[pos - 1] = saved


def _check_bare(tag: int) -> None:
    if tag == VERSION:
        raise FrameError("a term with a version byte after a distribution header")
    if tag == COMPRESSED:
        raise FrameError("a compressed term on the distribution channel (the BEAM refuses them too)")


def _decode_terms(frame: memoryview, pos: int, atom_refs: tuple[Any, ...]) -> tuple[Any, Any]:
    """(control, payload) from `pos`, where the terms after a distribution header start."""
    c_decode = codec._c_decode
    if c_decode is not None and not atom_refs:
        # the C decoder starts at a term's tag: read where they are, no version byte, no copy
        try:
            return _decode_terms_c(c_decode, frame, pos)
        except (IndexError, struct.error):
            raise codec.TermError("truncated term") from None
        except (codec._TooDeep, RecursionError):
            pass  # deeper than the recursive decoder goes: the iterative walker, below
    end = len(frame)
    if frame.readonly or end <= _BARE_COPY_UP_TO:
        if end > _BARE_COPY_UP_TO:
            frame = memoryview(bytearray(frame))  # one copy, then decoded in place
        else:  # a short frame: a copy of each term with its version byte (the codec's fast path)
            if pos >= end:
                raise FrameError("a distribution header with no control message after it")
            _check_bare(frame[pos])
            data = b"\x83" + frame[pos:]
            control, at = decode(data, 0, atom_refs=atom_refs) if atom_refs else decode(data, 0)
            if at == len(data):
                return control, NO_PAYLOAD
            _check_bare(data[at])
            data = b"\x83" + data[at:]
            payload, at = decode(data, 0, atom_refs=atom_refs) if atom_refs else decode(data, 0)
            if at != len(data):
                raise FrameError(f"{len(data) - at} stray bytes after the payload")
            return control, payload
    control, pos = _decode_bare(frame, pos, atom_refs)
    if pos == end:
        return control, NO_PAYLOAD
    payload, pos = _decode_bare(frame, pos, atom_refs)
    if pos != end:
        raise FrameError(f"{end - pos} stray bytes after the payload")
    return control, payload


def _decode_terms_c(c_decode: Callable[[Any, int, int], tuple[Any, int]], frame: memoryview,
                    pos: int) -> tuple[Any, Any]:
    end = len(frame)
    if pos >= end:
        raise FrameError("a distribution header with no control message after it")
    _check_bare(frame[pos])
    control, at = c_decode(frame, pos, 0)
    if at == end:
        return control, NO_PAYLOAD
    _check_bare(frame[at])
    payload, at = c_decode(frame, at, 0)
    if at != end:
        raise FrameError(f"{end - at} stray bytes after the payload")
    return control, payload


# -- one connection's framing -----------------------------------------------------------------------

class Framing:
    """The framing of one connection, chosen by the flags in force."""

    def __init__(self, flags: int, *, max_message: int = MAX_MESSAGE,
                 max_in_flight: int = MAX_IN_FLIGHT) -> None:
        self.header = bool(flags & _HEADER_FLAGS)
        self.fragments = bool(flags & F.FRAGMENTS)
        # a header may carry atom cache refs even with only FRAGMENTS in force: the BEAM reads them
        self.atom_cache = AtomCache() if self.header else None
        self.reassembly = (Reassembly(max_message=max_message, max_in_flight=max_in_flight)
                           if self.fragments else None)
        self.sequences_out = 0  # fragmented messages sent (and the last sequence id)
        # message(control, payload=NO_PAYLOAD): what to send, a whole frame (its 4-byte length
        # included) or, with FRAGMENTS and more than 64 KiB of terms, a sequence of fragments
        self.message: Callable[..., bytearray | OutgoingSequence] = (
            self._message_with_header if self.header else encode_frame)
        if not flags & F.NATIVE_RECORDS:
            self.message = _refusing_records(self.message)
        self.decode: Callable[[memoryview], tuple[Any, Any] | None] = (
            self._decode_with_header if self.header else decode_frame)

    # receiving

    def _decode_with_header(self, frame: memoryview) -> tuple[Any, Any] | None:
        """(control, payload) of one frame's body, or None for a fragment of a message that is
        not whole yet."""
        if len(frame) < 3 or frame[0] != VERSION:
            raise FrameError(self._not_a_header(frame))
        kind = frame[1]
        try:
            if kind == DIST_HEADER:
                if frame[2] == 0:  # no atom cache refs
                    return _decode_terms(frame, 3, ())
                atom_refs, pos = self.atom_cache.read(frame, 2)  # type: ignore[union-attr]
                return _decode_terms(frame, pos, atom_refs)
            if self.reassembly is None or kind not in (DIST_FRAG_HEADER, DIST_FRAG_CONT) or len(frame) < 18:
                raise FrameError(self._not_a_header(frame))
            seq_id, frag_id = _IDS.unpack_from(frame, 2)
            if kind == DIST_FRAG_HEADER:
                atom_refs, pos = self.atom_cache.read(frame, 18)  # type: ignore[union-attr]
                if seq_id == 0:  # the BEAM takes it as a whole message (dist.c)
                    return _decode_terms(frame, pos, atom_refs)
                whole = self.reassembly.first(seq_id, frag_id, atom_refs, frame[pos:])
            else:
                whole = self.reassembly.more(seq_id, frag_id, frame[18:])
        except (BadHeader, BadFragment) as e:
            raise FrameError(str(e)) from None
        if whole is None:
            return None
        view, atom_refs = whole
        try:
            return _decode_terms(view, 1, atom_refs)
        finally:
            self.reassembly.recycle()  # type: ignore[union-attr]

    def _not_a_header(self, frame: memoryview) -> str:
        start = bytes(frame[:2]).hex(" ") if frame else "nothing"
        kinds = "131, 68/69/70" if self.fragments else "131, 68"
        return f"frame starts with {start or 'nothing'}, not a distribution header ({kinds})"

    # sending

    def _message_with_header(self, control: Any, payload: Any = NO_PAYLOAD) -> bytearray | OutgoingSequence:
        """`131, 68`, a header with no atom cache refs, then the terms without their version
        byte (each term's version byte lands on the byte before it, which is then put back)."""
        frame = bytearray(_HEADER_FRAME_START)
        encode_into(frame, control)
        frame[6] = 0  # NumberOfAtomCacheRefs, where the control message's version byte went
        parts: list[tuple[int, bytes]] = []
        if payload is NO_PAYLOAD:
            control_end = size = len(frame)
        else:
            last = frame.pop()
            control_end = len(frame) + 1
            if self.fragments:  # large binaries are sent from where they are (fragments.py)
                codec.encode_parts_into(frame, payload, parts, FRAGMENT_SIZE)
            else:
                encode_into(frame, payload)
            frame[control_end - 1] = last
            size = len(frame)
            for _, data in parts:
                size += len(data)
        _pack_length(frame, 0, size - 4)
        if size <= _FRAGMENT_ABOVE or not self.fragments:
            return _joined(frame, parts) if parts else frame
        self.sequences_out += 1
        return OutgoingSequence(self.sequences_out, frame, 6, 7, control_end, parts)

    def reset(self) -> None:
        if self.reassembly is not None:
            self.reassembly.clear()


def _joined(frame: bytearray, parts: list[tuple[int, bytes]]) -> bytearray:
    """The frame with the parts left out of it put back (one that needs no fragments)."""
    whole, start = bytearray(), 0
    for offset, data in parts:
        whole += frame[start:offset]
        whole += data
        start = offset
    whole += frame[start:]
    return whole


def _refusing_records(message: Callable[..., Any]) -> Callable[..., Any]:
    """`message` for a peer without DFLAG_NATIVE_RECORDS: a Record in the terms raises
    TermError (codec.RecordNotNegotiated) instead of reaching a peer that cannot read it
    (an OTP 27 node closes the connection on RECORD_EXT; OTP 29 itself sends it anyway)."""
    def without_records(control: Any, payload: Any = NO_PAYLOAD) -> Any:
        codec.refuse_records += 1
        try:
            return message(control, payload)
        finally:
            codec.refuse_records -= 1
    return without_records


# Where a control message names the process that sends it (OTP erts/doc "Protocol between
# connected nodes"). Signals from one process to another must arrive in the order sent: a
# sender's later signals wait behind its fragmented message, other senders' do not.
_SENDER_AT_1 = frozenset({
    C.LINK, C.EXIT, C.UNLINK, C.REG_SEND, C.GROUP_LEADER, C.EXIT2, C.EXIT_TT, C.REG_SEND_TT,
    C.EXIT2_TT, C.MONITOR_P, C.DEMONITOR_P, C.MONITOR_P_EXIT, C.SEND_SENDER, C.SEND_SENDER_TT,
    C.PAYLOAD_EXIT, C.PAYLOAD_EXIT_TT, C.PAYLOAD_EXIT2, C.PAYLOAD_EXIT2_TT,
    C.PAYLOAD_MONITOR_P_EXIT, C.ALIAS_SEND, C.ALIAS_SEND_TT,
})
_SENDER_AT_2 = frozenset({C.SPAWN_REQUEST, C.SPAWN_REQUEST_TT, C.UNLINK_ID, C.UNLINK_ID_ACK,
                          37})  # 37: ALTACT_SIG_SEND {37, Flags, SenderPid, To[, Token]}


def sender_of(control: Any) -> Any:
    """The process a control message speaks for; None where it names none (SEND, SPAWN_REPLY
    of a failed spawn): those keep their order among themselves."""
    op = control[0]
    if op in _SENDER_AT_1:
        return control[1]
    if op in _SENDER_AT_2:
        return control[2]
    if op == C.SPAWN_REPLY or op == C.SPAWN_REPLY_TT:
        return control[4]  # the new process: its reply comes before any signal from it
    return None

