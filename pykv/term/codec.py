"""Erlang External Term Format (ETF) codec.

Follows OTP's erts/doc "External Term Format". Every term starts with the version byte 131;
the tag constants below are that document's names. An atom cache reference (ATOM_CACHE_REF,
Index:8) names an atom of the frame's distribution header: the framing layer passes the atoms
that header lists as `decode(..., atom_refs=...)`; without them (as in binary_to_term) such a
reference is malformed. The BEAM reads one wherever it reads an atom (external.c, dec_atom):
as a term, and as the node of a pid, port or reference, the module and name of an export fun,
the module of a closure.

Decoding walks one buffer (bytes, or a memoryview of a large frame, read in place) with an
integer offset and a 256-entry dispatch table indexed by tag byte. Every decoder takes
`(data, pos, depth)` with `pos` just past its tag byte and returns `(term, next_pos)`.
Atoms and pids are cached by their encoding. Encoding appends to one bytearray through a
type -> function table, with atom encodings cached.

Nesting has no limit, as on the BEAM (whose binary_to_term and term_to_binary are iterative
and take lists, tuples and map keys nested 10,000,000 deep on OTP 25, 27 and 29). The
recursive decoders and encoders above are the fast path for terms nested up to FAST_DEPTH
containers deep (all of everyday traffic); one that meets a deeper container gives up
(_TooDeep), and decode()/encode_into() start that term again with the iterative walkers of
the "deep terms" section, which keep their own stack (and, encoding, refuse cycles).

Maps: a dict holds most maps. A map whose keys collide in Python (1 and 1.0, true and 1, 0.0
and -0.0, or terms holding them) or has a key nested FAST_DEPTH containers deep or more
(hashing such a key recurses in C, with no limit but the C stack) decodes as a `Map`: its
pairs, in wire order, which encode back to the same map. Keys the BEAM also takes for one
(true duplicates) make the map malformed, as binary_to_term has it.

Safety: anything malformed raises TermError. Element counts and lengths are checked against
the bytes remaining before anything is built; compressed terms never inflate beyond their
declared size nor MAX_DECOMPRESSED.
"""

from __future__ import annotations

import importlib
import os
import re
import struct
import threading
import zlib
from typing import Any, Callable, Sequence

from .types import (
    Atom, BitBinary, ExportFun, FrozenDict, FrozenList, Fun, ImproperList, Map, Pid, Port,
    HashedTerm, Record, Reference, TermError, exactly_equal,
)

__all__ = ["encode", "encode_into", "decode", "decode_all", "freeze", "TermError",
           "FAST_DEPTH", "MAX_DECOMPRESSED"]

# Containers (tuples, lists, maps, funs) nested up to this deep take the recursive fast path;
# deeper terms the iterative walkers. Map keys nested this deep or more are not hashed (see
# Map). A list's elements-then-tail layout is flat: a long list is one level.
FAST_DEPTH = 256
MAX_DECOMPRESSED = 64 * 1024 * 1024

VERSION = 131
# Tags, as named in the External Term Format chapter.
RECORD_EXT = 67  # OTP 29 native records (external.c)
NEW_FLOAT_EXT = 70
BIT_BINARY_EXT = 77
COMPRESSED = 80
ATOM_CACHE_REF = 82
NEW_PID_EXT = 88
NEW_PORT_EXT = 89
NEWER_REFERENCE_EXT = 90
SMALL_INTEGER_EXT = 97
INTEGER_EXT = 98
FLOAT_EXT = 99
ATOM_EXT = 100
REFERENCE_EXT = 101
PORT_EXT = 102
PID_EXT = 103
SMALL_TUPLE_EXT = 104
LARGE_TUPLE_EXT = 105
NIL_EXT = 106
STRING_EXT = 107
LIST_EXT = 108
BINARY_EXT = 109
SMALL_BIG_EXT = 110
LARGE_BIG_EXT = 111
NEW_FUN_EXT = 112
EXPORT_EXT = 113
NEW_REFERENCE_EXT = 114
SMALL_ATOM_EXT = 115
MAP_EXT = 116
ATOM_UTF8_EXT = 118
SMALL_ATOM_UTF8_EXT = 119
V4_PORT_EXT = 120

MAX_ATOM_CHARACTERS = 255  # the BEAM refuses longer atoms, in both directions
MAX_REFERENCE_WORDS = 5  # NEWER_REFERENCE_EXT Len; OTP 24+ pid-bound refs use 5


class _TooDeep(Exception):
    """A fast-path decoder or encoder met a container FAST_DEPTH deep: walk it iteratively."""


_u16 = struct.Struct(">H").unpack_from
_u32 = struct.Struct(">I").unpack_from
_i32 = struct.Struct(">i").unpack_from
_f64 = struct.Struct(">d").unpack_from
_u32_u32 = struct.Struct(">II").unpack_from
_u32_u8 = struct.Struct(">IB").unpack_from
_u32_u32_u8 = struct.Struct(">IIB").unpack_from
_u32_u32_u32 = struct.Struct(">III").unpack_from
_u64_u32 = struct.Struct(">QI").unpack_from
_u32_words = [struct.Struct(f">{n}I").unpack_from for n in range(MAX_REFERENCE_WORDS + 1)]

_pack_tag_u8 = struct.Struct(">BB").pack
_pack_tag_u16 = struct.Struct(">BH").pack
_pack_tag_u32 = struct.Struct(">BI").pack
_pack_tag_i32 = struct.Struct(">Bi").pack
_pack_tag_f64 = struct.Struct(">Bd").pack
_pack_small_big_head = struct.Struct(">BBB").pack
_pack_large_big_head = struct.Struct(">BIB").pack
_pack_bit_binary_head = struct.Struct(">BIB").pack
_pack_pid_tail = struct.Struct(">III").pack
_pack_port_tail = struct.Struct(">QI").pack
_pack_u32 = struct.Struct(">I").pack
_pack_u32_words = [struct.Struct(f">{n}I").pack for n in range(MAX_REFERENCE_WORDS + 1)]

_ATOM_TRUE = Atom("true")
_ATOM_FALSE = Atom("false")
_ATOM_NIL = Atom("nil")
# Decoded atoms are cached by their whole encoding, tag and length included (so a truncated
# buffer never hits the entry of a shorter atom): as terms (true -> True...) and as Atoms.
_CACHE_LIMIT = 1 << 16
_atom_terms: dict[bytes, Any] = {}
_atoms: dict[bytes, Atom] = {}
_AS_TERM = {"true": True, "false": False, "nil": None}  # atoms with a native Python value


class _DecodeState(threading.local):
    """What one decode() call was given beyond the bytes, for the decoders deep inside it
    (per thread: blocking exports may decode in worker threads)."""

    atom_refs: Sequence[Atom] | None = None


_state = _DecodeState()


def _cached_atom(index: int) -> Atom:
    """ATOM_CACHE_REF Index: the atom the distribution header lists at that index."""
    refs = _state.atom_refs
    if refs is None:
        raise TermError("ATOM_CACHE_REF outside a distribution header (no atom cache "
                        "references were given)")
    if index >= len(refs):
        raise TermError(f"ATOM_CACHE_REF {index}: the distribution header lists "
                        f"{len(refs)} atoms")
    atom = refs[index]
    if atom.__class__ is not Atom:
        raise TypeError(f"atom_refs must hold Atoms, not {type(atom).__name__}")
    return atom


def _decode_atom_cache_ref(data: Any, pos: int, depth: int) -> tuple[Any, int]:
    # ATOM_CACHE_REF: Index:8
    atom = _cached_atom(data[pos])
    return _AS_TERM.get(atom.name, atom), pos + 1


def _object_builder(cls: type) -> Callable[..., Any]:
    """A constructor for a frozen slots dataclass that fills its slots directly, in
    `__slots__` order: decoding makes many pids, refs and call tags, and the dataclass
    __init__ (one object.__setattr__ per field) costs about twice as much."""
    new = object.__new__
    setters = [getattr(cls, name).__set__ for name in cls.__slots__]
    if len(setters) == 2:
        set_a, set_b = setters

        def build2(a: Any, b: Any) -> Any:
            obj = new(cls)
            set_a(obj, a)
            set_b(obj, b)
            return obj
        return build2
    if len(setters) == 3:
        set_a, set_b, set_c = setters

        def build3(a: Any, b: Any, c: Any) -> Any:
            obj = new(cls)
            set_a(obj, a)
            set_b(obj, b)
            set_c(obj, c)
            return obj
        return build3
    set_a, set_b, set_c, set_d = setters

    def build4(a: Any, b: Any, c: Any, d: Any) -> Any:
        obj = new(cls)
        set_a(obj, a)
        set_b(obj, b)
        set_c(obj, c)
        set_d(obj, d)
        return obj
    return build4


_new_pid = _object_builder(Pid)  # (node, id, serial, creation)
_new_reference = _object_builder(Reference)  # (node, creation, ids)
_new_improper_list = _object_builder(ImproperList)  # (items: tuple, tail)


# ----------------------------------------------------------------------------- decode


def decode(data: bytes | bytearray | memoryview, offset: int = 0, *,
           atom_refs: Sequence[Atom] | None = None) -> tuple[Any, int]:
    """Decode the term starting at `offset` (its 131 version byte).

    Returns (term, offset just past the term). A memoryview is read in place. `atom_refs`
    are the atoms of the frame's distribution header (ATOM_CACHE_REF Index is
    `atom_refs[Index]`); without them an ATOM_CACHE_REF is a TermError."""
    if atom_refs is not None:
        _state.atom_refs = atom_refs
        try:
            return decode(data, offset)
        finally:
            _state.atom_refs = None
    if data.__class__ is not bytes:
        data = _readable(data)
    if offset < 0:
        raise TermError(f"negative offset {offset}")
    try:
        if data[offset] != VERSION:
            raise TermError(f"expected version byte 131 at offset {offset}, got {data[offset]}")
        tag = data[offset + 1]
        if tag == COMPRESSED:
            return _decode_compressed(data, offset + 2, _fast_decode)
        if _c_decode is not None:
            return _c_decode(data, offset + 1, 0)
        return _DECODERS[tag](data, offset + 2, 0)
    except (IndexError, struct.error):
        raise TermError("truncated term") from None
    except (_TooDeep, RecursionError):  # (RecursionError: a caller deep in its own stack)
        return _decode_deep_at(data, offset)


def _decode_deep_at(data: Any, offset: int) -> tuple[Any, int]:
    """decode() again, by the iterative walker."""
    try:
        if data[offset + 1] == COMPRESSED:
            return _decode_compressed(data, offset + 2, _deep_decode)
        return _deep_decode(data, offset + 1)
    except (IndexError, struct.error):
        raise TermError("truncated term") from None


def _fast_decode(data: Any, pos: int) -> tuple[Any, int]:
    """The term whose tag is at `pos`, by the recursive decoders (C where built)."""
    if _c_decode is not None:
        return _c_decode(data, pos, 0)
    return _DECODERS[data[pos]](data, pos + 1, 0)


def _deep_decode(data: Any, pos: int) -> tuple[Any, int]:
    """The term whose tag is at `pos`, however deep, by the iterative walker (C where built)."""
    if _c_decode_deep is not None:
        return _c_decode_deep(data, pos)
    term, end, _ = _walk_decode(data, pos)
    return term, end


def decode_all(data: bytes | bytearray | memoryview, *,
               atom_refs: Sequence[Atom] | None = None) -> Any:
    """Decode a buffer holding exactly one term."""
    term, end = decode(data) if atom_refs is None else decode(data, atom_refs=atom_refs)
    if end != len(data):
        raise TermError(f"{len(data) - end} bytes left after the term")
    return term


_COPY_VIEWS_UP_TO = 4096


def _readable(data: Any) -> bytes | memoryview:
    """bytes as is; a bytearray or memoryview as a flat byte view, read in place unless it is
    small enough that one copy costs less than slicing the view for each atom and binary."""
    if isinstance(data, bytes):
        return data
    if isinstance(data, (bytearray, memoryview)):
        view = data if data.__class__ is memoryview else memoryview(data)
        if view.nbytes <= _COPY_VIEWS_UP_TO or not view.c_contiguous:
            return view.tobytes()  # (a strided view is read as the bytes it shows)
        return view if view.format == "B" and view.ndim == 1 else view.cast("B")
    raise TypeError(f"decode needs bytes, bytearray or memoryview, not {type(data).__name__}")


def _check_room(data: Any, end: int, what: str) -> None:
    if end > len(data):
        raise _past_end(what)


def _past_end(what: str) -> TermError:
    return TermError(f"{what} runs past the end of the data")


def _check_count(data: Any, pos: int, count: int, min_size: int, what: str) -> None:
    """Each element takes at least `min_size` bytes: refuse counts the data cannot hold."""
    if count * min_size > len(data) - pos:
        raise TermError(f"{what} of {count} elements cannot fit in the "
                        f"{len(data) - pos} bytes left")


def _decode_small_integer(data: Any, pos: int, depth: int) -> tuple[int, int]:
    return data[pos], pos + 1


def _decode_integer(data: Any, pos: int, depth: int) -> tuple[int, int]:
    return _i32(data, pos)[0], pos + 4


def _decode_big(data: Any, pos: int, depth: int) -> tuple[int, int]:
    # SMALL_BIG_EXT: n:8, sign:8, digits; LARGE_BIG_EXT: n:32, sign:8, digits (little-endian)
    if data[pos - 1] == SMALL_BIG_EXT:
        size = data[pos]
        pos += 1
    else:
        size = _u32(data, pos)[0]
        pos += 4
    sign = data[pos]
    end = pos + 1 + size
    if sign > 1:
        raise TermError(f"bignum sign byte {sign} is neither 0 nor 1")
    _check_room(data, end, "bignum")
    value = int.from_bytes(data[pos + 1:end], "little")
    return (-value if sign else value), end


def _decode_new_float(data: Any, pos: int, depth: int) -> tuple[float, int]:
    value = _f64(data, pos)[0]
    if value - value != 0.0:  # inf or NaN: not Erlang floats (binary_to_term refuses them)
        raise TermError(f"non-finite float {value}")
    return value, pos + 8


_C_FLOAT = re.compile(rb"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\x00*\Z")


def _decode_float(data: Any, pos: int, depth: int) -> tuple[float, int]:
    # FLOAT_EXT: 31 bytes of "%.20e" text, zero-padded
    end = pos + 31
    _check_room(data, end, "FLOAT_EXT")
    text = bytes(data[pos:end])
    if not _C_FLOAT.match(text):
        raise TermError(f"FLOAT_EXT text {text!r} is not a float")
    value = float(text.rstrip(b"\x00"))
    if value - value != 0.0:
        raise TermError(f"non-finite float {text!r}")
    return value, end


def _new_atom(data: Any, start: int, end: int) -> Atom:
    """Decode an atom not in the caches; `start` is its tag, `end` is past its text."""
    _check_room(data, end, "atom")
    tag = data[start]
    # ATOM_EXT / SMALL_ATOM_EXT are Latin-1; the *_UTF8_EXT forms UTF-8
    short = tag in (SMALL_ATOM_UTF8_EXT, SMALL_ATOM_EXT)
    encoding = "utf-8" if tag in (SMALL_ATOM_UTF8_EXT, ATOM_UTF8_EXT) else "latin-1"
    try:
        name = str(data[start + (2 if short else 3):end], encoding)
    except UnicodeDecodeError:
        raise TermError("atom text is not valid UTF-8") from None
    if len(name) > MAX_ATOM_CHARACTERS:
        raise TermError(f"atom of {len(name)} characters (the limit is 255)")
    return Atom(name)


def _remember(cache: dict[bytes, Any], key: Any, value: Any) -> Any:
    if len(cache) >= _CACHE_LIMIT:
        cache.clear()
    cache[bytes(key)] = value
    return value


def _decode_small_atom(data: Any, pos: int, depth: int) -> tuple[Any, int]:
    # SMALL_ATOM_UTF8_EXT / SMALL_ATOM_EXT: Len:8, text
    end = pos + 1 + data[pos]
    key = data[pos - 1:end]
    try:
        return _atom_terms[key if key.__class__ is bytes else key.tobytes()], end
    except KeyError:
        atom = _new_atom(data, pos - 1, end)
        return _remember(_atom_terms, key, _AS_TERM.get(atom.name, atom)), end


def _decode_large_atom(data: Any, pos: int, depth: int) -> tuple[Any, int]:
    # ATOM_UTF8_EXT / ATOM_EXT: Len:16, text
    end = pos + 2 + _u16(data, pos)[0]
    key = data[pos - 1:end]
    try:
        return _atom_terms[key if key.__class__ is bytes else key.tobytes()], end
    except KeyError:
        atom = _new_atom(data, pos - 1, end)
        return _remember(_atom_terms, key, _AS_TERM.get(atom.name, atom)), end


def _decode_atom(data: Any, pos: int) -> tuple[Atom, int]:
    """An atom where the format requires one (node names, fun modules): `pos` is its tag.
    Always an Atom, even for true/false/nil."""
    tag = data[pos]
    if tag == SMALL_ATOM_UTF8_EXT or tag == SMALL_ATOM_EXT:
        end = pos + 2 + data[pos + 1]
    elif tag == ATOM_UTF8_EXT or tag == ATOM_EXT:
        end = pos + 3 + _u16(data, pos + 1)[0]
    elif tag == ATOM_CACHE_REF:
        return _cached_atom(data[pos + 1]), pos + 2
    else:
        raise TermError(f"expected an atom, got tag {tag}")
    key = data[pos:end]
    try:
        return _atoms[key if key.__class__ is bytes else key.tobytes()], end
    except KeyError:
        return _remember(_atoms, key, _new_atom(data, pos, end)), end


def _decode_binary(data: Any, pos: int, depth: int) -> tuple[bytes, int]:
    end = pos + 4 + _u32(data, pos)[0]
    if end > len(data):
        raise _past_end("binary")
    value = data[pos + 4:end]
    return (value if value.__class__ is bytes else value.tobytes()), end


def _decode_bit_binary(data: Any, pos: int, depth: int) -> tuple[BitBinary | bytes, int]:
    # BIT_BINARY_EXT: Len:32, Bits:8 (significant bits of the last byte, 1..8), Data
    size, bits = _u32_u8(data, pos)
    end = pos + 5 + size
    if size == 0 or not 1 <= bits <= 8:
        raise TermError(f"bitstring of {size} bytes with {bits} bits in its last byte")
    _check_room(data, end, "bitstring")
    raw = bytes(data[pos + 5:end])
    if bits == 8:  # a whole number of bytes is a binary (as binary_to_term makes it)
        return raw, end
    # Zero the unused low bits so that equal bitstrings compare equal in Python too.
    return BitBinary(raw[:-1] + bytes((raw[-1] & (0xFF00 >> bits) & 0xFF,)), bits), end


def _decode_string(data: Any, pos: int, depth: int) -> tuple[list[int], int]:
    # STRING_EXT: Length:16, then one byte per list element
    end = pos + 2 + _u16(data, pos)[0]
    _check_room(data, end, "STRING_EXT")
    return list(data[pos + 2:end]), end


def _decode_nil(data: Any, pos: int, depth: int) -> tuple[list[Any], int]:
    return [], pos


def _decode_tuple(data: Any, pos: int, depth: int) -> tuple[tuple[Any, ...], int]:
    if data[pos - 1] == SMALL_TUPLE_EXT:
        count = data[pos]
        pos += 1
    else:
        count = _u32(data, pos)[0]
        pos += 4
        _check_count(data, pos, count, 1, "tuple")
    if depth >= FAST_DEPTH:
        raise _TooDeep
    depth += 1
    decoders = _DECODERS
    items = []
    append = items.append
    for _ in range(count):
        tag = data[pos]
        if tag == SMALL_INTEGER_EXT:
            append(data[pos + 1])
            pos += 2
        else:
            item, pos = decoders[tag](data, pos + 1, depth)
            append(item)
    return tuple(items), pos


def _decode_list(data: Any, pos: int, depth: int) -> tuple[Any, int]:
    # LIST_EXT: Length:32, Elements, Tail (NIL_EXT for a proper list)
    if depth >= FAST_DEPTH:
        raise _TooDeep
    depth += 1
    decoders = _DECODERS
    items: list[Any] = []
    append = items.append
    while True:
        count = _u32(data, pos)[0]
        pos += 4
        _check_count(data, pos, count, 1, "list")
        for _ in range(count):
            tag = data[pos]
            if tag == SMALL_INTEGER_EXT:
                append(data[pos + 1])
                pos += 2
            elif tag == INTEGER_EXT:
                append(_i32(data, pos + 1)[0])
                pos += 5
            else:
                item, pos = decoders[tag](data, pos + 1, depth)
                append(item)
        tag = data[pos]
        if tag == NIL_EXT:
            return items, pos + 1
        if tag != LIST_EXT:
            break
        pos += 1  # a LIST_EXT tail continues the list: [a | [b | t]] is [a, b | t]
    tail, pos = decoders[tag](data, pos + 1, depth)
    if tail.__class__ is list:  # a STRING_EXT tail: [a | "bc"] is [a, 98, 99]
        items.extend(tail)
        return items, pos
    if not items:  # LIST_EXT of no elements is its tail, as binary_to_term has it
        return tail, pos
    return _new_improper_list(tuple(items), tail), pos


def _decode_map(data: Any, pos: int, depth: int) -> tuple[dict[Any, Any], int]:
    # MAP_EXT: Arity:32, then Arity key/value pairs
    count = _u32(data, pos)[0]
    pos += 4
    _check_count(data, pos, count, 2, "map")
    if depth >= FAST_DEPTH:
        raise _TooDeep
    start = pos - 5
    depth += 1
    decoders = _DECODERS
    result: dict[Any, Any] = {}
    for _ in range(count):
        key, pos = decoders[data[pos]](data, pos + 1, depth)
        value, pos = decoders[data[pos]](data, pos + 1, depth)
        try:
            result[key] = value
        except TypeError:  # a list or map key: make it hashable
            result[freeze(key)] = value
    if len(result) != count:  # keys that collide in Python: decoded again, as pairs
        return _walk_decode(data, start)[:2]
    return result, pos


def _build_map(items: list[Any], hash_keys: bool) -> dict[Any, Any] | Map:
    """The map of `items` (keys and values alternating): a dict when Python can hold its keys
    apart (and `hash_keys`: none is too deep to hash), else a Map."""
    if hash_keys:
        result: dict[Any, Any] = {}
        for index in range(0, len(items), 2):
            key = items[index]
            try:
                result[key] = items[index + 1]
            except TypeError:
                result[freeze(key)] = items[index + 1]
        if 2 * len(result) == len(items):
            return result
        # Python merges keys the BEAM keeps apart (1 and 1.0, true and 1, 0.0 and -0.0)
        _refuse_duplicate_keys(items[::2])
    return Map(zip(items[::2], items[1::2]))


def _refuse_duplicate_keys(keys: list[Any]) -> None:
    """binary_to_term refuses a map holding one key twice; keys Python merges but the BEAM
    tells apart are no duplicates. Compared group by group of keys Python finds equal."""
    groups: dict[Any, list[Any]] = {}
    for key in keys:
        try:
            groups.setdefault(key, []).append(key)
        except TypeError:
            groups.setdefault(freeze(key), []).append(key)
    for group in groups.values():
        for index, key in enumerate(group):
            if any(exactly_equal(key, other) for other in group[index + 1:]):
                raise TermError("map holds the same key twice")


_FREEZE = {list, dict, tuple, ImproperList, Map, Record}


def freeze(term: Any) -> Any:
    """A hashable equivalent of a decoded term, for use as a dict key (lists become
    FrozenList, maps FrozenDict: they encode back as lists and maps). Walks the term without
    recursion, so it takes any depth; and since Python hashes a tuple by hashing its items on
    the C stack (a crash past about 100,000 levels), every FAST_DEPTH levels of containers
    the frozen term holds a HashedTerm, whose hash is computed once, when it is made."""
    if term.__class__ not in _FREEZE:
        return term
    # Post-order, with an explicit stack of [container, its children, their frozen forms,
    # the height of the tallest child since the last HashedTerm].
    stack: list[list[Any]] = [[term, _children(term), [], 0]]
    while True:
        frame = stack[-1]
        for child in frame[1]:
            if child.__class__ in _FREEZE:
                stack.append([child, _children(child), [], 0])
                break
            frame[2].append(child)
        else:
            stack.pop()
            frozen = _frozen(frame[0], frame[2])
            height = frame[3] + 1
            if height >= FAST_DEPTH:
                frozen, height = HashedTerm(frozen), 0
            if not stack:
                return frozen
            parent = stack[-1]
            parent[2].append(frozen)
            if height > parent[3]:
                parent[3] = height


def _children(term: Any) -> Any:
    cls = term.__class__
    if cls is dict or cls is FrozenDict:
        return iter(term.values())  # (keys are hashable already)
    if cls is ImproperList:
        return iter((*term.items, term.tail))
    if cls is Map:
        return (part for pair in term.pairs for part in pair)
    if cls is Record:
        return (value for _, value in term.fields)
    return iter(term)


def _frozen(term: Any, parts: list[Any]) -> Any:
    cls = term.__class__
    if cls is list or cls is FrozenList:
        return FrozenList(parts)
    if cls is tuple:
        return tuple(parts)
    if cls is dict or cls is FrozenDict:
        return FrozenDict(zip(term.keys(), parts))
    if cls is ImproperList:
        return _new_improper_list(tuple(parts[:-1]), parts[-1])
    if cls is Record:
        return Record(term.module, term.name, zip([f for f, _ in term.fields], parts), term.exported)
    return Map(zip(parts[::2], parts[1::2]))


def _record_head(data: Any, pos: int) -> tuple[int, int, tuple[Any, ...]]:
    """RECORD_EXT (OTP 29): NumFields:32, Flags:8 (1: exported, the only flag), Module,
    Name and NumFields field names (atoms), then NumFields values. `pos` is just past the
    tag: returns (pos of the first value, NumFields, (module, name, field names, exported)).
    Unknown flags and a field named twice are malformed, as binary_to_term has them."""
    count = _u32(data, pos)[0]
    flags = data[pos + 4]
    if flags > 1:
        raise TermError(f"RECORD_EXT flags {flags} (only 0 and 1, exported, are known)")
    _check_count(data, pos + 5, count, 3, "record")
    module, pos = _decode_atom(data, pos + 5)
    name, pos = _decode_atom(data, pos)
    names = []
    for _ in range(count):
        field, pos = _decode_atom(data, pos)
        names.append(field)
    if len(set(names)) != count:
        raise TermError(f"record #{module.name}:{name.name} names a field twice")
    return pos, count, (module, name, names, flags == 1)


def _new_record(head: tuple[Any, ...], values: list[Any]) -> Record:
    module, name, names, exported = head
    return Record(module, name, zip(names, values), exported)


def _decode_record(data: Any, pos: int, depth: int) -> tuple[Record, int]:
    pos, count, head = _record_head(data, pos)
    if not count:
        return _new_record(head, []), pos
    if depth >= FAST_DEPTH:
        raise _TooDeep
    depth += 1
    decoders = _DECODERS
    values = []
    for _ in range(count):
        value, pos = decoders[data[pos]](data, pos + 1, depth)
        values.append(value)
    return _new_record(head, values), pos


def _decode_new_pid(data: Any, pos: int, depth: int) -> tuple[Pid, int]:
    # NEW_PID_EXT: Node (atom), ID:32, Serial:32, Creation:32. The same few pids recur in
    # almost every message, so decoded pids are cached by their encoding. The end computed
    # here holds for a SMALL_ATOM(_UTF8) node; for any other, no cached key can match. A node
    # given as an ATOM_CACHE_REF means another atom in another frame: never cached.
    if data[pos] == ATOM_CACHE_REF:
        node, node_end = _decode_atom(data, pos)
        return _new_pid(node, *_u32_u32_u32(data, node_end)), node_end + 12
    end = pos + 14 + data[pos + 1]
    key = data[pos:end]
    if key.__class__ is not bytes:
        key = key.tobytes()
    pid = _pids.get(key)
    if pid is not None:
        return pid, end
    node, node_end = _decode_atom(data, pos)
    pid_id, serial, creation = _u32_u32_u32(data, node_end)
    pid = _new_pid(node, pid_id, serial, creation)
    if node_end + 12 != end:
        end = node_end + 12
        key = bytes(data[pos:end])
    if len(_pids) >= _PID_CACHE_LIMIT:
        _pids.clear()
    _pids[key] = pid
    return pid, end


_PID_CACHE_LIMIT = 4096
_pids: dict[bytes, Pid] = {}


def _decode_pid(data: Any, pos: int, depth: int) -> tuple[Pid, int]:
    # PID_EXT: Node, ID:32, Serial:32, Creation:8
    node, pos = _decode_atom(data, pos)
    pid_id, serial, creation = _u32_u32_u8(data, pos)
    return _new_pid(node, pid_id, serial, creation), pos + 9


def _decode_newer_reference(data: Any, pos: int, depth: int) -> tuple[Reference, int]:
    # NEWER_REFERENCE_EXT: Len:16, Node, Creation:32, ID: Len x 32
    words = _u16(data, pos)[0]
    if not 1 <= words <= MAX_REFERENCE_WORDS:
        raise _bad_reference_length(words)
    node, pos = _decode_atom(data, pos + 2)
    creation = _u32(data, pos)[0]
    return _new_reference(node, creation, _u32_words[words](data, pos + 4)), pos + 4 + 4 * words


def _decode_new_reference(data: Any, pos: int, depth: int) -> tuple[Reference, int]:
    # NEW_REFERENCE_EXT: Len:16, Node, Creation:8, ID: Len x 32
    words = _u16(data, pos)[0]
    if not 1 <= words <= MAX_REFERENCE_WORDS:
        raise _bad_reference_length(words)
    node, pos = _decode_atom(data, pos + 2)
    creation = data[pos]
    return _new_reference(node, creation, _u32_words[words](data, pos + 1)), pos + 1 + 4 * words


def _bad_reference_length(words: int) -> TermError:
    return TermError(f"reference of {words} words (1..{MAX_REFERENCE_WORDS} allowed)")


def _decode_reference(data: Any, pos: int, depth: int) -> tuple[Reference, int]:
    # REFERENCE_EXT: Node, ID:32, Creation:8
    node, pos = _decode_atom(data, pos)
    ref_id, creation = _u32_u8(data, pos)
    return _new_reference(node, creation, (ref_id,)), pos + 5


def _decode_v4_port(data: Any, pos: int, depth: int) -> tuple[Port, int]:
    # V4_PORT_EXT: Node, ID:64, Creation:32
    node, pos = _decode_atom(data, pos)
    port_id, creation = _u64_u32(data, pos)
    return Port(node, port_id, creation), pos + 12


def _decode_new_port(data: Any, pos: int, depth: int) -> tuple[Port, int]:
    # NEW_PORT_EXT: Node, ID:32, Creation:32
    node, pos = _decode_atom(data, pos)
    port_id, creation = _u32_u32(data, pos)
    return Port(node, port_id, creation), pos + 8


def _decode_port(data: Any, pos: int, depth: int) -> tuple[Port, int]:
    # PORT_EXT: Node, ID:32, Creation:8
    node, pos = _decode_atom(data, pos)
    port_id, creation = _u32_u8(data, pos)
    return Port(node, port_id, creation), pos + 5


def _decode_export(data: Any, pos: int, depth: int) -> tuple[ExportFun, int]:
    # EXPORT_EXT: Module (atom), Function (atom), Arity (SMALL_INTEGER_EXT)
    module, pos = _decode_atom(data, pos)
    function, pos = _decode_atom(data, pos)
    if data[pos] != SMALL_INTEGER_EXT:
        raise TermError(f"EXPORT_EXT arity has tag {data[pos]}, not SMALL_INTEGER_EXT")
    return ExportFun(module, function, data[pos + 1]), pos + 2


# NEW_FUN_EXT fixed part after the tag: Size:32, Arity:8, Uniq:16 bytes, Index:32, NumFree:32
_FUN_FIXED_SIZE = 4 + 1 + 16 + 4 + 4


def _decode_new_fun(data: Any, pos: int, depth: int) -> tuple[Fun, int]:
    # NEW_FUN_EXT: Size (counts itself, not the tag), Arity, Uniq, Index, NumFree, Module,
    # OldIndex (integer), OldUniq (integer), Pid, then NumFree free variables.
    start, pos, free_count, module, arity, end = _fun_head(data, pos)
    for expected in (int, int, Pid):  # OldIndex, OldUniq, Pid
        field, pos = _DECODERS[data[pos]](data, pos + 1, depth)
        if field.__class__ is not expected:
            raise TermError(f"NEW_FUN_EXT field is {type(field).__name__}, not "
                            f"{expected.__name__}")
    if free_count:
        if depth >= FAST_DEPTH:
            raise _TooDeep
        for _ in range(free_count):
            _, pos = _DECODERS[data[pos]](data, pos + 1, depth + 1)
    if pos != end:
        raise TermError("NEW_FUN_EXT size does not match its contents")
    return Fun(bytes(data[start:end]), module, arity), end


def _decode_compressed(data: Any, pos: int,
                       decode_inner: Callable[[Any, int], tuple[Any, int]]) -> tuple[Any, int]:
    # COMPRESSED: UncompressedSize:32, then a zlib stream of the term without its 131 byte.
    # Only valid right after the version byte.
    size = _u32(data, pos)[0]
    pos += 4
    if size == 0:  # (zlib's max_length=0 would also mean "no limit")
        raise TermError("compressed term declares size 0")
    if size > MAX_DECOMPRESSED:
        raise TermError(f"compressed term declares {size} bytes (MAX_DECOMPRESSED is "
                        f"{MAX_DECOMPRESSED})")
    inflater = zlib.decompressobj()
    try:
        inner = inflater.decompress(memoryview(data)[pos:], size)
        if len(inner) < size:
            raise TermError(f"compressed term inflates to {len(inner)} bytes, declared {size}")
        if not inflater.eof:
            if inflater.decompress(inflater.unconsumed_tail, 1):
                raise TermError(f"compressed term inflates beyond its declared {size} bytes")
            if not inflater.eof:
                raise TermError("compressed data is truncated")
    except zlib.error as exc:
        raise TermError(f"corrupt compressed term: {exc}") from None
    term, inner_end = decode_inner(inner, 0)
    if inner_end != size:
        raise TermError(f"compressed term is {inner_end} bytes, declared {size}")
    return term, len(data) - len(inflater.unused_data)


# ----------------------------------------------------------------------------- deep terms

# What the iterative decoder's frames are building.
_TUPLE, _LIST, _LIST_TAIL, _MAP, _FUN, _RECORD = range(6)
_NOTHING = object()  # (a list frame with no element to take: it looks at its tail)


def _walk_decode(data: Any, pos: int) -> tuple[Any, int, int]:
    """The term whose tag is at `pos`, however deeply nested, without recursion: returns
    (term, next_pos, height), height being the number of nested containers (0 for a leaf).
    Containers are opened here, each with a frame on an explicit stack; leaves go to the
    fast-path decoders, which never nest. The same terms and errors as the fast path."""
    stack: list[list[Any]] = []  # [kind, children still due, children, height, extra]
    decoders = _DECODERS
    while True:
        tag = data[pos]
        # -- open a container, or decode a leaf into (value, height)
        if tag == SMALL_TUPLE_EXT or tag == LARGE_TUPLE_EXT:
            if tag == SMALL_TUPLE_EXT:
                count, pos = data[pos + 1], pos + 2
            else:
                count, pos = _u32(data, pos + 1)[0], pos + 5
                _check_count(data, pos, count, 1, "tuple")
            if count:
                stack.append([_TUPLE, count, [], 0, None])
                continue
            value, height = (), 1
        elif tag == LIST_EXT:
            count, pos = _u32(data, pos + 1)[0], pos + 5
            _check_count(data, pos, count, 1, "list")
            frame = [_LIST, count, [], 0, None]
            stack.append(frame)
            if count:
                continue
            value = _NOTHING  # no element yet: look at the tail below
        elif tag == MAP_EXT:
            count, pos = _u32(data, pos + 1)[0], pos + 5
            _check_count(data, pos, count, 2, "map")
            if count:
                stack.append([_MAP, 2 * count, [], 0, False])
                continue
            value, height = {}, 1
        elif tag == NEW_FUN_EXT:
            start, pos, free_count, module, arity, end = _fun_head(data, pos + 1)
            stack.append([_FUN, 3 + free_count, [], 0, (start, end, module, arity)])
            continue
        elif tag == RECORD_EXT:
            pos, count, head = _record_head(data, pos + 1)
            if count:
                stack.append([_RECORD, count, [], 0, head])
                continue
            value, height = _new_record(head, []), 1
        else:
            value, pos = decoders[tag](data, pos + 1, 0)
            height = 0
        # -- hand the value to the frames it completes, innermost first
        while stack:
            frame = stack[-1]
            if value is not _NOTHING:
                kind = frame[0]
                children = frame[2]
                if kind == _MAP and not len(children) & 1 and height >= FAST_DEPTH:
                    frame[4] = True  # a key too deep to hash
                if kind == _FUN and len(children) < 3:
                    expected = Pid if len(children) == 2 else int
                    if value.__class__ is not expected:
                        raise TermError(f"NEW_FUN_EXT field is {type(value).__name__}, not "
                                        f"{expected.__name__}")
                children.append(value)
                if height > frame[3]:
                    frame[3] = height
                frame[1] -= 1
                if frame[1]:
                    break
            kind, _, children, height, extra = frame
            if kind == _LIST:
                # elements done: the tail (NIL, a continuing LIST_EXT, or any term)
                tag = data[pos]
                if tag == NIL_EXT:
                    value, pos = children, pos + 1
                elif tag == LIST_EXT:
                    count, pos = _u32(data, pos + 1)[0], pos + 5
                    _check_count(data, pos, count, 1, "list")
                    frame[1] = count
                    value = _NOTHING
                    if count:
                        break
                    continue
                else:
                    frame[0], frame[1] = _LIST_TAIL, 1
                    break
            elif kind == _TUPLE:
                value = tuple(children)
            elif kind == _LIST_TAIL:
                tail = children.pop()
                if tail.__class__ is list:  # a STRING_EXT tail: [a | "bc"] is [a, 98, 99]
                    children.extend(tail)
                    value = children
                elif not children:  # LIST_EXT of no elements is its tail
                    value = tail
                else:
                    value = _new_improper_list(tuple(children), tail)
            elif kind == _MAP:
                value = _build_map(children, not extra)
            elif kind == _RECORD:
                value = _new_record(extra, children)
            else:  # _FUN: its environment was decoded only to be checked
                start, end, module, arity = extra
                if pos != end:
                    raise TermError("NEW_FUN_EXT size does not match its contents")
                value = Fun(bytes(data[start:end]), module, arity)
            height += 1
            stack.pop()
        else:
            return value, pos, height


def _fun_head(data: Any, pos: int) -> tuple[int, int, int, Atom, int, int]:
    """NEW_FUN_EXT up to its Module, `pos` just past the tag: (start, pos of OldIndex,
    NumFree, Module, Arity, end). See _decode_new_fun."""
    start = pos - 1
    end = pos + _u32(data, pos)[0]
    if end - pos < _FUN_FIXED_SIZE:
        raise TermError("NEW_FUN_EXT size is smaller than its fixed fields")
    _check_room(data, end, "NEW_FUN_EXT")
    arity = data[pos + 4]
    free_count = _u32(data, pos + 25)[0]
    module, pos = _decode_atom(data, pos + _FUN_FIXED_SIZE)
    _check_count(data, pos, free_count, 1, "fun environment")
    return start, pos, free_count, module, arity, end


def _decoder_rejecting(reason: str) -> Callable[[Any, int, int], Any]:
    def reject(data: Any, pos: int, depth: int) -> Any:
        raise TermError(f"{reason} (tag {data[pos - 1]} at offset {pos - 1})")
    return reject


_DECODERS: list[Callable[[Any, int, int], tuple[Any, int]]] = (
    [_decoder_rejecting("unknown term tag")] * 256)
_DECODERS[COMPRESSED] = _decoder_rejecting("COMPRESSED is only allowed at the top level")
for _tag, _decoder in {
    ATOM_CACHE_REF: _decode_atom_cache_ref,
    SMALL_ATOM_UTF8_EXT: _decode_small_atom,
    SMALL_ATOM_EXT: _decode_small_atom,
    ATOM_UTF8_EXT: _decode_large_atom,
    ATOM_EXT: _decode_large_atom,
    SMALL_INTEGER_EXT: _decode_small_integer,
    INTEGER_EXT: _decode_integer,
    SMALL_BIG_EXT: _decode_big,
    LARGE_BIG_EXT: _decode_big,
    NEW_FLOAT_EXT: _decode_new_float,
    FLOAT_EXT: _decode_float,
    BINARY_EXT: _decode_binary,
    BIT_BINARY_EXT: _decode_bit_binary,
    SMALL_TUPLE_EXT: _decode_tuple,
    LARGE_TUPLE_EXT: _decode_tuple,
    NIL_EXT: _decode_nil,
    STRING_EXT: _decode_string,
    LIST_EXT: _decode_list,
    MAP_EXT: _decode_map,
    NEW_PID_EXT: _decode_new_pid,
    PID_EXT: _decode_pid,
    NEWER_REFERENCE_EXT: _decode_newer_reference,
    NEW_REFERENCE_EXT: _decode_new_reference,
    REFERENCE_EXT: _decode_reference,
    V4_PORT_EXT: _decode_v4_port,
    NEW_PORT_EXT: _decode_new_port,
    PORT_EXT: _decode_port,
    EXPORT_EXT: _decode_export,
    NEW_FUN_EXT: _decode_new_fun,
    RECORD_EXT: _decode_record,
}.items():
    _DECODERS[_tag] = _decoder
del _tag, _decoder


# ----------------------------------------------------------------------------- encode


def encode(term: Any) -> bytes:
    """The external format of `term`, version byte included."""
    buf = bytearray()
    encode_into(buf, term)
    return bytes(buf)


def encode_into(buf: bytearray, term: Any) -> None:
    """Append 131 and the encoding of `term` to `buf`; on error `buf` is left as it was."""
    start = len(buf)
    buf.append(VERSION)
    try:
        try:
            (_c_encode or _encode_item)(buf, term, 0)
        except (_TooDeep, RecursionError):  # nested FAST_DEPTH deep: walk it iteratively
            del buf[start + 1:]
            (_c_encode_deep or _walk_encode)(buf, term)
    except BaseException:
        del buf[start:]
        raise


def encode_parts_into(buf: bytearray, term: Any, parts: list[tuple[int, bytes]], min_size: int) -> None:
    """encode_into(buf, term), leaving out of `buf` the data of each bytes of at least
    `min_size` bytes (its BINARY_EXT head is written): `(offset, data)` is appended to `parts`
    for each, offset being where its data belongs in `buf`. The encoding is `buf` with each
    data put back at its offset, in order: a sender can write the pieces as they are, and a
    large binary is not copied before the socket takes it. Without the C accelerator (or for
    a term deeper than it goes) everything is in `buf`."""
    if _c_encode_parts is None:
        encode_into(buf, term)
        return
    start = len(buf)
    buf.append(VERSION)
    try:
        try:
            _c_encode_parts(buf, term, parts, min_size)
        except (_TooDeep, RecursionError):
            del buf[start + 1:]
            parts.clear()
            (_c_encode_deep or _walk_encode)(buf, term)
    except BaseException:
        del buf[start:]
        parts.clear()
        raise


def _encode_none(buf: bytearray, term: None, depth: int) -> None:
    buf += _NIL_ATOM


def _encode_bool(buf: bytearray, term: bool, depth: int) -> None:
    buf += _TRUE_ATOM if term else _FALSE_ATOM


def _encode_atom(buf: bytearray, atom: Atom, depth: int) -> None:
    try:
        buf += _atom_encodings[atom.name]
    except KeyError:
        buf += _encode_new_atom(atom)


def _encode_new_atom(atom: Atom) -> bytes:
    name = atom.name
    if len(name) > MAX_ATOM_CHARACTERS:
        raise TermError(f"atom of {len(name)} characters (the BEAM allows 255)")
    try:
        text = name.encode("utf-8")
    except UnicodeEncodeError:
        raise TermError(f"atom {name!r} is not valid Unicode text") from None
    if len(text) < 256:
        encoded = _pack_tag_u8(SMALL_ATOM_UTF8_EXT, len(text)) + text
    else:
        encoded = _pack_tag_u16(ATOM_UTF8_EXT, len(text)) + text
    if len(_atom_encodings) >= _CACHE_LIMIT:
        _atom_encodings.clear()
    _atom_encodings[name] = encoded
    return encoded


_atom_encodings: dict[str, bytes] = {}
_NIL_ATOM = _encode_new_atom(_ATOM_NIL)
_TRUE_ATOM = _encode_new_atom(_ATOM_TRUE)
_FALSE_ATOM = _encode_new_atom(_ATOM_FALSE)


def _atom_encoding(atom: Any, role: str) -> bytes:
    """The encoding of an atom field of a pid, ref, port or fun."""
    if atom.__class__ is not Atom:
        raise TermError(f"{role} must be an Atom, not {type(atom).__name__}")
    return _atom_encodings.get(atom.name) or _encode_new_atom(atom)


_SMALL_INTEGERS = [_pack_tag_u8(SMALL_INTEGER_EXT, n) for n in range(256)]
_INT32_MIN = -(1 << 31)
_INT32_MAX = (1 << 31) - 1


def _encode_int(buf: bytearray, n: int, depth: int) -> None:
    if 0 <= n <= 255:
        buf += _SMALL_INTEGERS[n]
    elif _INT32_MIN <= n <= _INT32_MAX:
        buf += _pack_tag_i32(INTEGER_EXT, n)
    else:
        # SMALL_BIG_EXT / LARGE_BIG_EXT: digit count, sign, little-endian magnitude
        magnitude = -n if n < 0 else n
        digits = magnitude.to_bytes((magnitude.bit_length() + 7) // 8, "little")
        if len(digits) < 256:
            buf += _pack_small_big_head(SMALL_BIG_EXT, len(digits), n < 0)
        elif len(digits) <= 0xFFFFFFFF:
            buf += _pack_large_big_head(LARGE_BIG_EXT, len(digits), n < 0)
        else:
            raise TermError("integer too large for LARGE_BIG_EXT")
        buf += digits


def _encode_float(buf: bytearray, value: float, depth: int) -> None:
    if value - value != 0.0:
        raise TermError(f"{value} has no Erlang float form")
    buf += _pack_tag_f64(NEW_FLOAT_EXT, value)


def _encode_str(buf: bytearray, text: str, depth: int) -> None:
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise TermError("str holds characters with no UTF-8 form (lone surrogates)") from None
    _encode_bytes(buf, data, depth)


def _encode_bytes(buf: bytearray, data: bytes | bytearray, depth: int) -> None:
    if len(data) > 0xFFFFFFFF:
        raise TermError("binary longer than BINARY_EXT's 32-bit length")
    buf += _pack_tag_u32(BINARY_EXT, len(data))
    buf += data


def _encode_memoryview(buf: bytearray, view: memoryview, depth: int) -> None:
    try:
        flat = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    except TypeError:
        raise TermError("cannot encode a non-contiguous memoryview") from None
    _encode_bytes(buf, flat, depth)


def _encode_tuple(buf: bytearray, items: tuple[Any, ...], depth: int) -> None:
    if depth >= FAST_DEPTH:
        raise _TooDeep
    count = len(items)
    if count < 256:
        buf += _pack_tag_u8(SMALL_TUPLE_EXT, count)
    else:
        buf += _pack_tag_u32(LARGE_TUPLE_EXT, count)
    depth += 1
    get = _ENCODERS.get
    for item in items:
        (get(item.__class__) or _encode_by_base_class)(buf, item, depth)


_INT_ONLY = {int}
_NIL_BYTE = bytes((NIL_EXT,))
_CONTAINERS = (list, tuple, dict, Map, ImproperList, Record)  # (FrozenList, FrozenDict: subclasses)


def _flat_list(buf: bytearray, items: list[Any] | FrozenList) -> bool:
    """Append [] as NIL_EXT, or a list of bytes as STRING_EXT (as term_to_binary does; bools
    are not bytes), and say so; other lists are left to the caller."""
    count = len(items)
    if not count:
        buf.append(NIL_EXT)
        return True
    if items[0].__class__ is int and count <= 0xFFFF:
        try:
            chars = bytes(items)
        except (ValueError, TypeError):
            return False
        if {*map(type, items)} == _INT_ONLY:
            buf += _pack_tag_u16(STRING_EXT, count)
            buf += chars
            return True
    return False


def _encode_list(buf: bytearray, items: list[Any] | FrozenList, depth: int) -> None:
    if _flat_list(buf, items):
        return
    count = len(items)
    if depth >= FAST_DEPTH:
        raise _TooDeep
    buf += _pack_tag_u32(LIST_EXT, count)
    depth += 1
    get = _ENCODERS.get
    for item in items:
        (get(item.__class__) or _encode_by_base_class)(buf, item, depth)
    buf.append(NIL_EXT)


def _encode_improper_list(buf: bytearray, term: ImproperList, depth: int) -> None:
    get = _ENCODERS.get
    if not term.items:  # [ | T] is T
        (get(term.tail.__class__) or _encode_by_base_class)(buf, term.tail, depth)
        return
    if depth >= FAST_DEPTH:
        raise _TooDeep
    buf += _pack_tag_u32(LIST_EXT, len(term.items))
    depth += 1
    for item in term.items:
        (get(item.__class__) or _encode_by_base_class)(buf, item, depth)
    (get(term.tail.__class__) or _encode_by_base_class)(buf, term.tail, depth)


def _encode_map(buf: bytearray, term: dict[Any, Any] | Map, depth: int) -> None:
    if depth >= FAST_DEPTH:
        raise _TooDeep
    buf += _pack_tag_u32(MAP_EXT, len(term))
    depth += 1
    get = _ENCODERS.get
    for key, value in term.items():
        (get(key.__class__) or _encode_by_base_class)(buf, key, depth)
        (get(value.__class__) or _encode_by_base_class)(buf, value, depth)


# > 0 while encoding for a peer that did not offer DFLAG_NATIVE_RECORDS (dist/framing.py):
# such a peer cannot read RECORD_EXT, so a Record is refused before anything is sent
refuse_records = 0


class RecordNotNegotiated(TermError):
    pass


def _record_head_encoding(record: Record) -> bytes:
    """RECORD_EXT up to its values (see _record_head)."""
    if refuse_records:
        raise RecordNotNegotiated(
            f"a native record (#{record.module}:{record.name}{{}}) cannot go to a node that did "
            "not offer DFLAG_NATIVE_RECORDS (OTP 29+): it would take the frame as corrupt")
    fields = record.fields
    if record.exported not in (True, False) or fields.__class__ is not tuple:
        raise TermError(f"a Record needs a tuple of fields and a bool exported, got {record.fields!r}"
                        f" and {record.exported!r}")
    try:
        names = [field for field, _ in fields]
    except (TypeError, ValueError):
        raise TermError("a Record's fields must be (name, value) pairs") from None
    if len(set(names)) != len(names):
        raise TermError(f"record #{record.module}:{record.name} names a field twice")
    head = bytearray(_pack_tag_u32(RECORD_EXT, len(fields)))
    head.append(1 if record.exported else 0)
    head += _atom_encoding(record.module, "record module")
    head += _atom_encoding(record.name, "record name")
    for field in names:
        head += _atom_encoding(field, "record field")
    return bytes(head)


def _encode_record(buf: bytearray, record: Record, depth: int) -> None:
    head = _record_head_encoding(record)
    if not record.fields:
        buf += head
        return
    if depth >= FAST_DEPTH:
        raise _TooDeep
    buf += head
    depth += 1
    get = _ENCODERS.get
    for _, value in record.fields:
        (get(value.__class__) or _encode_by_base_class)(buf, value, depth)


def _walk_encode(buf: bytearray, term: Any) -> None:
    """Append the encoding of `term`, however deeply nested, without recursion: containers
    are opened here, each with an iterator over what follows its head on an explicit stack;
    leaves go to the fast-path encoders. A container met again inside itself is a cycle,
    which has no Erlang form."""
    stack: list[tuple[Any, bytes | None, int]] = [(iter((term,)), None, 0)]
    on_path: set[int] = set()  # ids of the containers being encoded
    get = _ENCODERS.get
    while stack:
        items, trailer, container = stack[-1]
        for item in items:
            cls = item.__class__
            while cls is HashedTerm:  # (freeze's: encodes as the term it holds)
                item = item.term
                cls = item.__class__
            if cls is Atom or not isinstance(item, _CONTAINERS):
                (get(cls) or _encode_by_base_class)(buf, item, 0)
                continue
            if isinstance(item, (list, FrozenList)):
                if _flat_list(buf, item):
                    continue
                head, children, closing = _pack_tag_u32(LIST_EXT, len(item)), iter(item), _NIL_BYTE
            elif isinstance(item, tuple):
                count = len(item)
                head = (_pack_tag_u8(SMALL_TUPLE_EXT, count) if count < 256
                        else _pack_tag_u32(LARGE_TUPLE_EXT, count))
                children, closing = iter(item), None
            elif isinstance(item, (dict, Map)):
                head = _pack_tag_u32(MAP_EXT, len(item))
                children = (part for pair in item.items() for part in pair)
                closing = None
            elif isinstance(item, Record):
                head = _record_head_encoding(item)
                children, closing = (value for _, value in item.fields), None
            else:  # ImproperList: [ | T] is T
                if not item.items:
                    items = iter((item.tail, *items))
                    stack[-1] = (items, stack[-1][1], container)
                    break
                head = _pack_tag_u32(LIST_EXT, len(item.items))
                children, closing = iter((*item.items, item.tail)), None
            if id(item) in on_path:
                raise TermError("cannot encode a cyclic structure (a container that holds "
                                "itself) as an Erlang term")
            buf += head
            on_path.add(id(item))
            stack.append((children, closing, id(item)))
            break
        else:
            stack.pop()
            on_path.discard(container)
            if trailer is not None:
                buf += trailer


def _encode_pid(buf: bytearray, pid: Pid, depth: int) -> None:
    buf.append(NEW_PID_EXT)
    buf += _atom_encoding(pid.node, "pid node")
    try:
        buf += _pack_pid_tail(pid.id, pid.serial, pid.creation)
    except struct.error:
        raise TermError(f"pid field out of the 32-bit range: {pid!r}") from None


def _encode_reference(buf: bytearray, ref: Reference, depth: int) -> None:
    words = len(ref.ids)
    if not 1 <= words <= MAX_REFERENCE_WORDS:
        raise _bad_reference_length(words)
    buf += _pack_tag_u16(NEWER_REFERENCE_EXT, words)
    buf += _atom_encoding(ref.node, "reference node")
    try:
        buf += _pack_u32(ref.creation)
        buf += _pack_u32_words[words](*ref.ids)
    except struct.error:
        raise TermError(f"reference field out of the 32-bit range: {ref!r}") from None


def _encode_port(buf: bytearray, port: Port, depth: int) -> None:
    buf.append(V4_PORT_EXT)
    buf += _atom_encoding(port.node, "port node")
    try:
        buf += _pack_port_tail(port.id, port.creation)
    except struct.error:
        raise TermError(f"port field out of range: {port!r}") from None


def _encode_bit_binary(buf: bytearray, term: BitBinary, depth: int) -> None:
    data, bits = term.data, term.bits
    if not isinstance(data, (bytes, bytearray)) or not data or bits not in range(1, 9):
        raise TermError(f"a BitBinary needs at least one byte of data and 1..8 bits, got "
                        f"{type(data).__name__} data and bits={bits!r}")
    buf += _pack_bit_binary_head(BIT_BINARY_EXT, len(data), bits)
    buf += data[:-1]
    buf.append(data[-1] & (0xFF00 >> bits) & 0xFF)


def _encode_export_fun(buf: bytearray, fun: ExportFun, depth: int) -> None:
    if fun.arity.__class__ is not int or not 0 <= fun.arity <= 255:
        raise TermError(f"fun arity must be 0..255, got {fun.arity!r}")
    buf.append(EXPORT_EXT)
    buf += _atom_encoding(fun.module, "fun module")
    buf += _atom_encoding(fun.function, "fun name")
    buf += _SMALL_INTEGERS[fun.arity]


def _encode_fun(buf: bytearray, fun: Fun, depth: int) -> None:
    buf += fun.raw


def _encode_hashed(buf: bytearray, term: HashedTerm, depth: int) -> None:
    inner = term.term
    (_ENCODERS.get(inner.__class__) or _encode_by_base_class)(buf, inner, depth)


_ENCODERS: dict[type, Callable[[bytearray, Any, int], None]] = {
    Atom: _encode_atom,
    type(None): _encode_none,
    bool: _encode_bool,
    int: _encode_int,
    float: _encode_float,
    str: _encode_str,
    bytes: _encode_bytes,
    bytearray: _encode_bytes,
    memoryview: _encode_memoryview,
    tuple: _encode_tuple,
    list: _encode_list,
    FrozenList: _encode_list,
    dict: _encode_map,
    FrozenDict: _encode_map,
    Map: _encode_map,
    Record: _encode_record,
    Pid: _encode_pid,
    Reference: _encode_reference,
    Port: _encode_port,
    ImproperList: _encode_improper_list,
    BitBinary: _encode_bit_binary,
    ExportFun: _encode_export_fun,
    Fun: _encode_fun,
    HashedTerm: _encode_hashed,
}

# Subclasses (IntEnum, str enums, namedtuples, OrderedDict...): first match wins, so Atom
# comes before anything and FrozenList before tuple (bool cannot be subclassed: the exact
# table has it, ahead of int). Scalars are converted to their base type.
_BASE_CLASS_ENCODERS: list[tuple[type, Callable[[bytearray, Any, int], None]]] = [
    (Atom, _encode_atom),
    (int, lambda buf, term, depth: _encode_int(buf, int(term), depth)),
    (float, lambda buf, term, depth: _encode_float(buf, float(term), depth)),
    (str, lambda buf, term, depth: _encode_str(buf, str.__str__(term), depth)),
    (bytes, lambda buf, term, depth: _encode_bytes(buf, bytes(term), depth)),
    (bytearray, _encode_bytes),
    (FrozenList, _encode_list),
    (tuple, _encode_tuple),
    (list, _encode_list),
    (dict, _encode_map),
    (Map, _encode_map),
    (Record, _encode_record),
    (Pid, _encode_pid),
    (Reference, _encode_reference),
    (Port, _encode_port),
    (ImproperList, _encode_improper_list),
    (BitBinary, _encode_bit_binary),
    (ExportFun, _encode_export_fun),
    (Fun, _encode_fun),
]


def _encode_by_base_class(buf: bytearray, term: Any, depth: int) -> None:
    """Encode an instance of a subclass of a supported type, remembering its class."""
    cls = term.__class__
    for base, encoder in _BASE_CLASS_ENCODERS:
        if isinstance(term, base):
            _ENCODERS[cls] = encoder
            encoder(buf, term, depth)
            return
    raise TermError(f"cannot encode a Python {cls.__module__}.{cls.__qualname__} as an "
                    f"Erlang term")


def _encode_item(buf: bytearray, term: Any, depth: int) -> None:
    (_ENCODERS.get(term.__class__) or _encode_by_base_class)(buf, term, depth)


# ----------------------------------------------------------------------------- C accelerator

# pykv.term._speedups (built from _speedups.c when pip has a C compiler) does the common
# terms in C and hands everything else to the functions above, so both implementations
# give the same results and errors. PYKV_CODEC chooses: "auto" (C when built), "python",
# or "c" (an error if it was not built).
_c_decode: Callable[[Any, int, int], tuple[Any, int]] | None = None
_c_encode: Callable[[bytearray, Any, int], None] | None = None
_c_encode_parts: Callable[[bytearray, Any, list[tuple[int, bytes]], int], None] | None = None
_c_decode_deep: Callable[[Any, int], tuple[Any, int]] | None = None
_c_encode_deep: Callable[[bytearray, Any], None] | None = None
IMPLEMENTATION = "python"


def use_implementation(name: str) -> str:
    """Switch the codec to "c", "python" or "auto"; returns the one now in use."""
    global _c_decode, _c_encode, _c_decode_deep, _c_encode_deep, _c_encode_parts, IMPLEMENTATION
    if name not in ("auto", "c", "python"):
        raise ValueError(f"PYKV_CODEC must be auto, c or python, not {name!r}")
    _c_decode = _c_encode = _c_decode_deep = _c_encode_deep = _c_encode_parts = None
    IMPLEMENTATION = "python"
    if name == "python":
        return IMPLEMENTATION
    try:
        _speedups = importlib.import_module(__package__ + "._speedups")
    except ImportError as e:
        if name == "c":
            raise ImportError(
                "pykv's C codec (pykv.term._speedups) is not built: reinstall with a C compiler "
                "and the Python headers (pip install -e .), or use the pure-Python codec "
                f"(PYKV_CODEC=auto or python). ({e})") from None
        return IMPLEMENTATION
    _speedups.setup(FAST_DEPTH, _DECODERS, _encode_item, freeze, _atom_terms, _atoms, _pids,
                    _atom_encodings, Atom, Pid, Reference, ImproperList, _NIL_ATOM, _TRUE_ATOM,
                    _FALSE_ATOM)
    _speedups.setup_walkers(_walk_decode, _build_map, _walk_encode, TermError)
    _c_decode, _c_encode = _speedups.decode, _speedups.encode
    _c_encode_parts = getattr(_speedups, "encode_parts", None)  # (an extension built before it)
    _c_decode_deep, _c_encode_deep = _speedups.decode_deep, _speedups.encode_deep
    IMPLEMENTATION = "c"
    return IMPLEMENTATION


use_implementation(os.environ.get("PYKV_CODEC", "auto"))
