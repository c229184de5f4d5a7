"""Fragmented messages (DFLAG_FRAGMENTS): reassembling what arrives, cutting what leaves.

Spec: OTP erts/doc "Distribution Protocol", "Distribution Header for Fragmented Messages";
the BEAM's checks are erts_net_message in erts/emulator/beam/dist.c. A message too long for
one fragment goes as a first fragment `131, 69, SequenceId:64, FragmentId:64, header...,
data` and continuations `131, 70, SequenceId:64, FragmentId:64, data`, each its own frame.
FragmentId starts at the number of fragments and counts down to 1 (the last). The fragments
of one sequence come in order; those of different sequences (senders) interleave. The BEAM
cuts the encoded control message and payload into pieces of 64 KiB (ERTS_DIST_FRAGMENT_SIZE,
observed: the first fragment also carries the header), and puts the whole control message in
the first one (it decodes it from there). Sequence id 0 means "not fragmented".
"""

from __future__ import annotations

import struct
from typing import Any

from .buffers import Buffer

FRAGMENT_SIZE = 1 << 16
DIST_FRAG_HEADER = 69
DIST_FRAG_CONT = 70

# Bounds on what one peer can make a connection hold while its messages are incomplete.
MAX_MESSAGE = 256 * 1024 * 1024     # one sequence: as for a whole frame
MAX_IN_FLIGHT = 512 * 1024 * 1024   # every sequence of one connection together
MAX_SEQUENCES = 4096                # incomplete sequences at once (the BEAM: one per sending process)
_SEQUENCE_OVERHEAD = 256            # what an empty sequence costs, counted against MAX_IN_FLIGHT

_FRAGMENT_HEAD = struct.Struct(">IBBQQ")  # frame length, 131, 69 | 70, SequenceId, FragmentId


class BadFragment(ValueError):
    """A fragment the BEAM would refuse, or one past this connection's bounds."""


class _Sequence:
    __slots__ = ("buf", "next_id", "atom_refs")

    def __init__(self, buf: Buffer, next_id: int, atom_refs: tuple[Any, ...]) -> None:
        self.buf = buf
        self.next_id = next_id
        self.atom_refs = atom_refs


class Reassembly:
    """The incomplete fragmented messages of one connection.

    `first` and `more` take a fragment's data and return `(view, atom_refs)` once the
    message is whole: a writable view of one spare byte, then the control message and
    payload as they follow a distribution header (terms without their version byte). A
    message is collected in memory reserved from what its first fragment announces
    (buffers.py): each piece is copied once."""

    def __init__(self, *, max_message: int = MAX_MESSAGE, max_in_flight: int = MAX_IN_FLIGHT,
                 max_sequences: int = MAX_SEQUENCES) -> None:
        self.max_message = max_message
        self.max_in_flight = max_in_flight
        self.max_sequences = max_sequences
        self._sequences: dict[int, _Sequence] = {}
        self.in_flight = 0  # bytes held for incomplete messages, with a little per sequence
        self.completed = 0  # fragmented messages reassembled
        self._last: Buffer | None = None  # the message first or more returned last

    def recycle(self) -> None:
        """The message returned last was decoded: its memory may serve the next one."""
        if self._last is not None:
            self._last.release()
            self._last = None

    def __len__(self) -> int:
        return len(self._sequences)

    def first(self, seq_id: int, frag_id: int, atom_refs: tuple[Any, ...],
              data: Any) -> tuple[memoryview, tuple[Any, ...]] | None:
        if frag_id == 0:
            raise BadFragment(f"sequence {seq_id:#x} starts with fragment id 0")
        if seq_id in self._sequences:
            raise BadFragment(f"sequence {seq_id:#x} started again before its last fragment")
        size = 1 + len(data)
        if frag_id == 1:
            self.completed += 1
            buf = Buffer(size, size)
        else:
            if len(self._sequences) >= self.max_sequences:
                raise BadFragment(f"more than {self.max_sequences} fragmented messages at once")
            self._charge(seq_id, size + _SEQUENCE_OVERHEAD, size)
            # as announced: the fragments to come, each as long as the BEAM's
            buf = Buffer(size + min(frag_id - 1, self.max_message // FRAGMENT_SIZE + 1) * FRAGMENT_SIZE,
                         self.max_message + 1)
        buf.append(b"\0")
        buf.append(data)
        if frag_id == 1:
            self._last = buf
            return buf.view(), atom_refs
        self._sequences[seq_id] = _Sequence(buf, frag_id - 1, atom_refs)
        return None

    def more(self, seq_id: int, frag_id: int, data: Any) -> tuple[memoryview, tuple[Any, ...]] | None:
        seq = self._sequences.get(seq_id)
        if seq is None:
            raise BadFragment(f"continuation of sequence {seq_id:#x}, which has no first fragment")
        if frag_id != seq.next_id:
            raise BadFragment(f"sequence {seq_id:#x}: fragment {frag_id} where {seq.next_id} was due")
        self._charge(seq_id, len(data), len(seq.buf) + len(data))
        seq.buf.append(data)
        if frag_id > 1:
            seq.next_id = frag_id - 1
            return None
        del self._sequences[seq_id]
        self.in_flight -= len(seq.buf) + _SEQUENCE_OVERHEAD
        self.completed += 1
        self._last = seq.buf
        return seq.buf.view(), seq.atom_refs

    def _charge(self, seq_id: int, more: int, message_size: int) -> None:
        if message_size > self.max_message:
            raise BadFragment(f"sequence {seq_id:#x} grows past {self.max_message} bytes")
        if self.in_flight + more > self.max_in_flight:
            raise BadFragment(f"incomplete fragmented messages would hold more than "
                              f"{self.max_in_flight} bytes")
        self.in_flight += more

    def clear(self) -> None:
        self._sequences.clear()
        self.in_flight = 0


class OutgoingSequence:
    """One large message, encoded behind a distribution header, leaving as fragments.

    `frame` is the whole message as it would go in one frame: 4 length bytes, `131, 68`, the
    header from `header_at` (NumberOfAtomCacheRefs...), the terms from `data_at`; but for
    `parts`, the large binaries of the payload, `(offset, data)` each, whose data belongs at
    that offset of `frame` and was left out of it (codec.encode_parts_into): the fragments'
    data are views of `frame` and of those binaries, so a large binary is never copied
    between the term that holds it and the socket (the BEAM sends its refc binaries the
    same way)."""

    __slots__ = ("seq_id", "frame", "header_at", "pos", "frag_id", "_first", "_segments", "_ends", "_at")

    def __init__(self, seq_id: int, frame: bytearray, header_at: int, data_at: int,
                 control_end: int, parts: list[tuple[int, bytes]] | None = None) -> None:
        self.seq_id = seq_id
        self.frame = frame
        self.header_at = header_at
        # the message as pieces in order, and the message offset where each piece ends
        self._segments: list[bytes | bytearray | memoryview] = []
        self._ends: list[int] = []
        self._at = 0  # the piece the next fragment starts in
        size = len(frame)
        if parts:
            view = memoryview(frame)
            start = end = 0
            for offset, data in parts:
                self._add(view[start:offset], end)
                end += offset - start
                self._add(data, end)
                end += len(data)
                start = offset
            self._add(view[start:], end)
            size = self._ends[-1]
        else:
            self._segments.append(frame)
            self._ends.append(size)
        # the whole control message in the first fragment, as the BEAM decodes it from there
        self.pos = min(size, data_at + max(FRAGMENT_SIZE, control_end - data_at))
        self.frag_id = 1 + (size - self.pos + FRAGMENT_SIZE - 1) // FRAGMENT_SIZE
        self._first = True

    def _add(self, piece: Any, start: int) -> None:
        if len(piece):
            self._segments.append(piece)
            self._ends.append(start + len(piece))

    @property
    def done(self) -> bool:
        return self.frag_id == 0

    def next_fragment(self) -> bytes:
        """The next fragment's frame (length prefix included)."""
        pieces = self.next_pieces()
        return b"".join(pieces)

    def next_pieces(self) -> list[bytes | memoryview]:
        """The next fragment's frame as its 22 bytes of head (length, 131, 69 | 70, ids), then
        views of its data in the encoded message (and in its large binaries): written as they
        are (writelines), the data is not copied again before the socket takes it. The
        message is never changed after it is encoded, so a transport may hold the views until
        it has sent them."""
        if self._first:
            self._first = False
            start, stop, kind = self.header_at, self.pos, DIST_FRAG_HEADER
        else:
            start, stop, kind = self.pos, min(self.pos + FRAGMENT_SIZE, self._ends[-1]), DIST_FRAG_CONT
        pieces: list[bytes | memoryview] = [
            _FRAGMENT_HEAD.pack(18 + stop - start, 131, kind, self.seq_id, self.frag_id)]
        segments, ends = self._segments, self._ends
        at = self._at
        while start < stop:
            while ends[at] <= start:
                at += 1
            seg_start = ends[at] - len(segments[at])
            end = min(stop, ends[at])
            pieces.append(memoryview(segments[at])[start - seg_start:end - seg_start])
            start = end
        self._at = at
        self.pos = stop
        self.frag_id -= 1
        if self.frag_id == 0:  # let the message go once the transport lets go of its views
            self.frame = bytearray()
            self._segments = []
        return pieces
