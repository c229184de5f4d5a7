"""The atom cache of the distribution header, as the receiving side keeps it.

Spec: OTP erts/doc "External Term Format", "Distribution Header"; what the BEAM accepts is
erts_prepare_dist_ext in erts/emulator/beam/external.c. A sender with DIST_HDR_ATOM_CACHE
(and, for its first fragment, one with FRAGMENTS) starts each message with

    NumberOfAtomCacheRefs:8, Flags:(NumberOfAtomCacheRefs div 2 + 1 bytes), AtomCacheRefs

Flags holds a half byte per reference, reference i in byte i div 2 (the low half for even i):
bit 3 NewCacheEntryFlag, bits 0-2 SegmentIndex; the half byte after the last reference has
bit 0 LongAtoms (atom text lengths take 2 bytes instead of 1). A reference is
InternalSegmentIndex:8, followed for a new entry by the length and the UTF-8 text of the atom,
which then occupies cache slot SegmentIndex * 256 + InternalSegmentIndex for every later
message on this connection. Terms of the message refer to its references by position
(ATOM_CACHE_REF, tag 82, Index:8).
"""

from __future__ import annotations

from typing import Any

from ..term import Atom

CACHE_SIZE = 2048  # ERTS_ATOM_CACHE_SIZE: 8 segments of 256 slots
MAX_ATOM_CHARACTERS = 255
_LONG_ATOMS = 1
_NEW_ENTRY = 8
_KNOWN_HEADERS_LIMIT = 4096


class BadHeader(ValueError):
    """A distribution header the BEAM would refuse ("got a corrupted distribution header")."""


class AtomCache:
    """The atoms one peer has put in the cache of one connection (2048 slots)."""

    __slots__ = ("slots", "_known")

    def __init__(self) -> None:
        self.slots: list[Atom | None] = [None] * CACHE_SIZE
        # Headers without new entries repeat byte for byte in steady traffic (the same atoms in
        # the same slots): their atoms, by the header's bytes, until a slot changes.
        self._known: dict[bytes, tuple[Atom, ...]] = {}

    def read(self, data: Any, pos: int) -> tuple[tuple[Atom, ...], int]:
        """The atoms of the header at `pos` (its NumberOfAtomCacheRefs byte), and the position
        just past the header; new entries are stored in the cache."""
        end = len(data)
        if pos >= end:
            raise BadHeader("the distribution header ends before its number of atom cache refs")
        count = data[pos]
        if count == 0:
            return (), pos + 1
        flags_at = pos + 1
        refs_at = flags_at + count // 2 + 1
        if refs_at > end:
            raise BadHeader("the distribution header ends within its flags")
        # all old entries: one index byte per reference
        key = bytes(data[pos:refs_at + count])
        known = self._known.get(key)
        if known is not None:
            return known, refs_at + count
        long_atoms = (data[flags_at + count // 2] >> (4 * (count & 1))) & _LONG_ATOMS
        atoms: list[Atom] = []
        slots = self.slots
        fresh = False
        p = refs_at
        for i in range(count):
            flag = (data[flags_at + (i >> 1)] >> (4 * (i & 1))) & 0xF
            if p >= end:
                raise BadHeader("the distribution header ends within its atom cache refs")
            index = ((flag & 7) << 8) | data[p]
            p += 1
            if flag & _NEW_ENTRY:
                if long_atoms:
                    if p + 2 > end:
                        raise BadHeader("the distribution header ends within an atom's length")
                    length = (data[p] << 8) | data[p + 1]
                    p += 2
                else:
                    if p >= end:
                        raise BadHeader("the distribution header ends within an atom's length")
                    length = data[p]
                    p += 1
                if p + length > end:
                    raise BadHeader("the distribution header ends within an atom's text")
                try:
                    name = bytes(data[p:p + length]).decode("utf-8")
                except UnicodeDecodeError:
                    raise BadHeader(f"atom cache entry {index} is not UTF-8 text") from None
                if len(name) > MAX_ATOM_CHARACTERS:
                    raise BadHeader(f"atom cache entry {index} has {len(name)} characters (at most 255)")
                p += length
                atom = Atom(name)
                slots[index] = atom
                fresh = True
            else:
                atom = slots[index]  # type: ignore[assignment]
                if atom is None:
                    raise BadHeader(f"atom cache ref to slot {index}, which no earlier message filled")
            atoms.append(atom)
        found = tuple(atoms)
        if fresh:
            self._known.clear()  # a slot changed: remembered headers may mean other atoms now
        else:
            if len(self._known) >= _KNOWN_HEADERS_LIMIT:
                self._known.clear()
            self._known[key] = found
        return found, p
