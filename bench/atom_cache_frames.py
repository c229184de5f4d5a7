"""Frames with atom cache references, as a BEAM peer with DIST_HDR_ATOM_CACHE sends them,
for measuring (bench.hotpath --framing atom-cache, and the sending-side estimate).

A measuring tool, not pykv's sender: it rewrites the frames pykv's framing makes (`131, 68,
0` and terms without their version byte) so that every atom becomes an ATOM_CACHE_REF
(tag 82) and the header lists the atoms, new entries the first time an atom takes a cache
slot and references afterwards, as erts_encode_ext_dist_header_finalize (external.c) does
(slot = a hash of the atom modulo 2039; at most 255 atoms per message, the rest inline).
"""

from __future__ import annotations

import struct
from typing import Any

from pykv.dist import flags as F
from pykv.dist.framing import NO_PAYLOAD, Framing

_USE_SLOTS = 2039  # ERTS_USE_ATOM_CACHE_SIZE
_MAX_REFS = 255


class AtomCacheFrames:
    def __init__(self) -> None:
        self._framing = Framing(F.OURS & ~F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE)
        self._out: list[bytes | None] = [None] * 2048  # what the peer has in each slot

    def message(self, control: Any, payload: Any = NO_PAYLOAD) -> bytes:
        frame = self._framing.message(control, payload)
        body = memoryview(frame)[7:]  # past length, 131, 68, 0
        refs: list[bytes] = []
        index: dict[bytes, int] = {}
        out = bytearray()
        pos = 0
        while pos < len(body):
            pos = self._term(body, pos, out, refs, index)
        head = self._header(refs)
        whole = b"\x83D" + head + out
        return struct.pack(">I", len(whole)) + whole

    def _header(self, refs: list[bytes]) -> bytes:
        if not refs:
            return b"\x00"
        count = len(refs)
        long_atoms = any(len(text) > 255 for text in refs)
        flags = bytearray(count // 2 + 1)
        entries = bytearray()
        for i, text in enumerate(refs):
            slot = hash(text) % _USE_SLOTS
            new = self._out[slot] != text
            self._out[slot] = text
            flags[i // 2] |= ((8 if new else 0) | (slot >> 8)) << (4 * (i % 2))
            entries.append(slot & 0xFF)
            if new:
                entries += (struct.pack(">H", len(text)) if long_atoms else bytes([len(text)])) + text
        flags[count // 2] |= int(long_atoms) << (4 * (count % 2))
        return bytes([count]) + flags + entries

    def _atom(self, body: memoryview, pos: int, out: bytearray, refs: list[bytes],
              index: dict[bytes, int]) -> int:
        tag = body[pos]
        if tag in (119, 115):
            end = pos + 2 + body[pos + 1]
            text = bytes(body[pos + 2:end])
        elif tag in (118, 100):
            end = pos + 3 + struct.unpack_from(">H", body, pos + 1)[0]
            text = bytes(body[pos + 3:end])
        else:
            raise ValueError(f"not an atom: tag {tag}")
        i = index.get(text)
        if i is None and len(refs) < _MAX_REFS:
            i = index[text] = len(refs)
            refs.append(text)
        out += bytes((82, i)) if i is not None else body[pos:end]
        return end

    def _term(self, body: memoryview, pos: int, out: bytearray, refs: list[bytes],
              index: dict[bytes, int]) -> int:
        tag = body[pos]
        if tag in (119, 115, 118, 100):
            return self._atom(body, pos, out, refs, index)
        if tag == 104:  # SMALL_TUPLE_EXT
            out += body[pos:pos + 2]
            pos += 2
            for _ in range(body[pos - 1]):
                pos = self._term(body, pos, out, refs, index)
            return pos
        if tag in (108, 116):  # LIST_EXT (elements, tail), MAP_EXT (keys and values)
            (n,) = struct.unpack_from(">I", body, pos + 1)
            out += body[pos:pos + 5]
            pos += 5
            for _ in range(n + 1 if tag == 108 else 2 * n):
                pos = self._term(body, pos, out, refs, index)
            return pos
        if tag == 88:  # NEW_PID_EXT: node, then ID, Serial, Creation
            out.append(88)
            pos = self._atom(body, pos + 1, out, refs, index)
            out += body[pos:pos + 12]
            return pos + 12
        if tag == 90:  # NEWER_REFERENCE_EXT: Len, node, Creation, Len words
            (n,) = struct.unpack_from(">H", body, pos + 1)
            out += body[pos:pos + 3]
            pos = self._atom(body, pos + 3, out, refs, index)
            out += body[pos:pos + 4 + 4 * n]
            return pos + 4 + 4 * n
        sizes = {97: 2, 98: 5, 106: 1, 70: 9}
        if tag in sizes:
            out += body[pos:pos + sizes[tag]]
            return pos + sizes[tag]
        if tag in (109, 107):  # BINARY_EXT, STRING_EXT
            n = struct.unpack_from(">I" if tag == 109 else ">H", body, pos + 1)[0]
            head = 5 if tag == 109 else 3
            out += body[pos:pos + head + n]
            return pos + head + n
        raise ValueError(f"tag {tag} is not handled by this measuring tool")
