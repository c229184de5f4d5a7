"""External Term Format codec, from bytes alone.

Golden encodings were produced by `term_to_binary/1` on Erlang/OTP 27 (UTF-8 atoms; OTP 25
writes ATOM_EXT by default, and NEW_PORT_EXT for ports: both are decoded below too).
"""

import enum
import random
import struct
import sys
import zlib
from collections import OrderedDict, namedtuple

import pytest

from pykv import term as term_module
from pykv.term import (
    DEFAULT_MAX_ATOMS, FAST_DEPTH, Atom, AtomTableFull, BitBinary, ExportFun, FrozenDict,
    FrozenList, Fun, HashedTerm, ImproperList, Map, Pid, Port, Record, Reference, TermError, atom_count,
    decode, decode_all, encode, encode_into, exactly_equal, freeze, inspect, set_max_atoms,
)
from pykv.term import codec

pytestmark = pytest.mark.usefixtures("codec_implementation")

NONODE = Atom("nonode@nohost")
NONODE_UTF8 = bytes([119, 13]) + b"nonode@nohost"


def b(*parts):
    """Build expected bytes from ints and byte strings."""
    out = bytearray()
    for part in parts:
        out += bytes([part]) if isinstance(part, int) else part
    return bytes(out)


GOLDEN = [
    (Atom("ok"), b(131, 119, 2, b"ok")),
    (True, b(131, 119, 4, b"true")),
    (False, b(131, 119, 5, b"false")),
    (None, b(131, 119, 3, b"nil")),
    (Atom(""), b(131, 119, 0)),
    (Atom("hello world"), b(131, 119, 11, b"hello world")),
    (Atom("é"), b(131, 119, 2, 195, 169)),
    (Atom("日本"), b(131, 119, 6, 230, 151, 165, 230, 156, 172)),
    (Atom("a" * 255), b(131, 119, 255, b"a" * 255)),
    (Atom("日" * 100), b(131, 118, 1, 44, "日".encode() * 100)),  # 300 bytes: ATOM_UTF8_EXT
    (0, b(131, 97, 0)),
    (255, b(131, 97, 255)),
    (256, b(131, 98, 0, 0, 1, 0)),
    (-1, b(131, 98, 255, 255, 255, 255)),
    (2**31 - 1, b(131, 98, 127, 255, 255, 255)),
    (2**31, b(131, 110, 4, 0, 0, 0, 0, 128)),
    (-2**31, b(131, 98, 128, 0, 0, 0)),
    (-2**31 - 1, b(131, 110, 4, 1, 1, 0, 0, 128)),
    (2**63 - 1, b(131, 110, 8, 0, b"\xff" * 7, 127)),
    (-2**63, b(131, 110, 8, 1, bytes(7), 128)),
    (2**64, b(131, 110, 9, 0, bytes(8), 1)),
    (-(2**2039), b(131, 110, 255, 1, bytes(254), 128)),
    (-(2**2040), b(131, 111, 0, 0, 1, 0, 1, bytes(255), 1)),
    (2**2048, b(131, 111, 0, 0, 1, 1, 0, bytes(256), 1)),
    (1.5, b(131, 70, 63, 248, 0, 0, 0, 0, 0, 0)),
    (-0.0, b(131, 70, 128, 0, 0, 0, 0, 0, 0, 0)),
    (0.0, b(131, 70, 0, 0, 0, 0, 0, 0, 0, 0)),
    (1.0e300, b(131, 70, 126, 55, 228, 60, 136, 0, 117, 156)),
    (5.0e-324, b(131, 70, 0, 0, 0, 0, 0, 0, 0, 1)),
    (b"", b(131, 109, 0, 0, 0, 0)),
    (b"abc", b(131, 109, 0, 0, 0, 3, b"abc")),
    (BitBinary(b"\x80", 1), b(131, 77, 0, 0, 0, 1, 1, 128)),
    (BitBinary(b"\xff\x60", 3), b(131, 77, 0, 0, 0, 2, 3, 255, 96)),
    ((), b(131, 104, 0)),
    ((1,), b(131, 104, 1, 97, 1)),
    ((Atom("a"), b"b", [Atom("c")]),
     b(131, 104, 3, 119, 1, b"a", 109, 0, 0, 0, 1, b"b", 108, 0, 0, 0, 1, 119, 1, b"c", 106)),
    ((0,) * 256, b(131, 105, 0, 0, 1, 0, b"\x61\x00" * 256)),
    ([], b(131, 106)),
    ([1, 2, 3], b(131, 107, 0, 3, 1, 2, 3)),
    ([1, 300], b(131, 108, 0, 0, 0, 2, 97, 1, 98, 0, 0, 1, 44, 106)),
    (ImproperList([Atom("a")], Atom("b")), b(131, 108, 0, 0, 0, 1, 119, 1, b"a", 119, 1, b"b")),
    (ImproperList([1, 2], 3), b(131, 108, 0, 0, 0, 2, 97, 1, 97, 2, 97, 3)),
    ([[]], b(131, 108, 0, 0, 0, 1, 106, 106)),
    (list(range(1, 301)),
     b(131, 108, 0, 0, 1, 44, b"".join(b(97, i) for i in range(1, 256)),
       b"".join(b(98, 0, 0, i >> 8, i & 255) for i in range(256, 301)), 106)),
    ([b"x", -1], b(131, 108, 0, 0, 0, 2, 109, 0, 0, 0, 1, b"x", 98, 255, 255, 255, 255, 106)),
    ({}, b(131, 116, 0, 0, 0, 0)),
    ({Atom("a"): 1}, b(131, 116, 0, 0, 0, 1, 119, 1, b"a", 97, 1)),
    (ExportFun(Atom("lists"), Atom("map"), 2),
     b(131, 113, 119, 5, b"lists", 119, 3, b"map", 97, 2)),
    (ExportFun(Atom("erlang"), Atom("++"), 2),
     b(131, 113, 119, 6, b"erlang", 119, 2, b"++", 97, 2)),
    (Pid(NONODE, 85, 0, 0), b(131, 88, NONODE_UTF8, 0, 0, 0, 85, bytes(8))),
    (Port(NONODE, 0, 0), b(131, 120, NONODE_UTF8, bytes(12))),
    (Reference(NONODE, 0, (84225, 560201730, 286872798)),
     b(131, 90, 0, 3, NONODE_UTF8, 0, 0, 0, 0, 0, 1, 73, 1, 33, 100, 0, 2, 17, 25, 84, 222)),
]


@pytest.mark.parametrize("value, encoded", GOLDEN, ids=[inspect(v)[:40] for v, _ in GOLDEN])
def test_golden_encoding(value, encoded):
    assert encode(value) == encoded
    decoded = decode_all(encoded)
    assert decoded == value
    assert type(decoded) is type(value)


def test_negative_zero_keeps_its_sign():
    assert str(decode_all(encode(-0.0))) == "-0.0"


def test_map_with_composite_keys_from_beam():
    # #{[1] => 2, #{a => b} => c, {t} => d}, in the BEAM's key order
    encoded = b(131, 116, 0, 0, 0, 3, 104, 1, 119, 1, b"t", 119, 1, b"d",
                116, 0, 0, 0, 1, 119, 1, b"a", 119, 1, b"b", 119, 1, b"c", 107, 0, 1, 1, 97, 2)
    decoded = decode_all(encoded)
    assert decoded == {(Atom("t"),): Atom("d"), FrozenDict({Atom("a"): Atom("b")}): Atom("c"),
                       FrozenList([1]): 2}
    assert decode_all(encode(decoded)) == decoded




# Native records, as OTP 29's term_to_binary writes them: RECORD_EXT (67), NumFields:32,
# Flags:8 (1: exported), Module, Name, the field names, then the values.
POINT = b(131, 67, 0, 0, 0, 2, 0, 119, 2, b"nr", 119, 5, b"point", 119, 1, b"x", 119, 1, b"y",
          97, 1, 97, 2)  # #nr:point{x = 1, y = 2}
EXPORTED = b(131, 67, 0, 0, 0, 2, 1, 119, 2, b"nr", 119, 3, b"pub", 119, 1, b"a", 119, 1, b"b",
             109, 0, 0, 0, 1, b"v", 119, 7, b"default")  # -export_record: #nr:pub{a = <<"v">>}


def test_native_records_decode_and_encode_byte_exact():
    point = decode_all(POINT)
    assert type(point) is Record and not point.exported
    assert point == Record(Atom("nr"), Atom("point"), [(Atom("x"), 1), (Atom("y"), 2)])
    assert point[Atom("x")] == 1 and point["y"] == 2
    assert repr(point) == "#nr:point{x = 1, y = 2}"
    assert encode(point) == POINT
    public = decode_all(EXPORTED)
    assert public.exported and public["a"] == b"v" and encode(public) == EXPORTED
    # fields stay in wire order (the BEAM keeps them so); no fields; as map keys and values
    unsorted = Record(Atom("nr"), Atom("point"), [(Atom("y"), 1), (Atom("x"), [2])])
    assert decode_all(encode(unsorted)) == unsorted and encode(decode_all(encode(unsorted))) == encode(unsorted)
    empty = b(131, 67, 0, 0, 0, 0, 0, 119, 1, b"m", 119, 1, b"e")
    assert encode(decode_all(empty)) == empty
    keyed = b(131, 116, 0, 0, 0, 1, encode(unsorted)[1:], POINT[1:])
    assert encode(decode_all(keyed)) == keyed
    assert repr(Record(Atom("Elixir.Foo"), Atom("a b"), {Atom("x"): None})) == "#'Elixir.Foo':'a b'{x = nil}"


@pytest.mark.parametrize("data, message", [
    (b(131, 67, 0, 0, 0, 1, 2, 119, 1, b"m", 119, 1, b"r", 119, 1, b"x", 97, 1), "flags 2"),
    (b(131, 67, 0, 0, 0, 2, 0, 119, 1, b"m", 119, 1, b"r", 119, 1, b"x", 119, 1, b"x", 97, 1, 97, 2),
     "field twice"),
    (b(131, 67, 0, 0, 0, 1, 0, 119, 1, b"m", 119, 1, b"r", 97, 1, 97, 2), "expected an atom"),
    (b(131, 67, 0, 0, 0, 0, 0, 97, 1, 119, 1, b"r"), "expected an atom"),
    (b(131, 67, 255, 255, 255, 255, 0, 119, 1, b"m", 119, 1, b"r"), "cannot fit"),
])
def test_malformed_records_fail_as_binary_to_term_does(data, message):
    with pytest.raises(TermError, match=message):
        decode_all(data)


def test_records_python_cannot_encode():
    for bad in [Record(Atom("m"), Atom("r"), [(Atom("x"), 1), (Atom("x"), 2)]),
                Record("m", Atom("r")), Record(Atom("m"), Atom("r"), [("x", 1)])]:
        with pytest.raises(TermError):
            encode(bad)

COLLIDING = [
    # (the BEAM's encoding, pairs): keys the BEAM tells apart and a dict would merge
    (b(131, 116, 0, 0, 0, 2, 97, 1, 119, 1, b"a", 70, 63, 240, 0, 0, 0, 0, 0, 0, 119, 1, b"b"),
     [(1, Atom("a")), (1.0, Atom("b"))]),  # %{1 => :a, 1.0 => :b}
    (b(131, 116, 0, 0, 0, 2, 97, 1, 97, 2, 119, 4, b"true", 97, 1),
     [(1, 2), (True, 1)]),  # %{1 => 2, true => 1}
    (b(131, 116, 0, 0, 0, 2, 70, 128, 0, 0, 0, 0, 0, 0, 0, 119, 1, b"b", 70, 0, 0, 0, 0, 0, 0, 0,
       0, 119, 1, b"a"), [(-0.0, Atom("b")), (0.0, Atom("a"))]),  # OTP 27+: two keys
    (b(131, 116, 0, 0, 0, 2, 104, 1, 97, 1, 97, 1, 104, 1, 70, 63, 240, 0, 0, 0, 0, 0, 0, 97, 2),
     [((1,), 1), ((1.0,), 2)]),  # %{{1} => 1, {1.0} => 2}
    (b(131, 116, 0, 0, 0, 2, 107, 0, 1, 1, 97, 1,
       108, 0, 0, 0, 1, 119, 4, b"true", 106, 97, 2),
     [(FrozenList([1]), 1), (FrozenList([True]), 2)]),  # %{[1] => 1, [true] => 2}
]


@pytest.mark.parametrize("encoded, pairs", COLLIDING)
def test_maps_whose_keys_collide_in_python_are_maps(encoded, pairs):
    decoded = decode_all(encoded)
    assert type(decoded) is Map
    assert exactly_equal(list(decoded.items()), pairs)
    assert encode(decoded) == encoded
    key, value = pairs[-1]
    assert decoded[key] == value and key in decoded
    # inside other terms, as a key of another map too (a Map is hashable)
    outer = b(131, 116, 0, 0, 0, 1, encoded[1:], 108, 0, 0, 0, 1, encoded[1:], 106)
    decoded_outer = decode_all(outer)
    ((inner_key, inner_list),) = decoded_outer.items()
    assert type(decoded_outer) is dict and type(inner_key) is Map and type(inner_list[0]) is Map
    assert encode(decoded_outer) == outer


def test_map_built_in_python_encodes_its_pairs():
    assert encode(Map([(1, Atom("a")), (1.0, Atom("b"))])) == COLLIDING[0][0]
    assert encode(Map({Atom("a"): 1})) == encode({Atom("a"): 1})
    assert inspect(Map([(1, Atom("a")), (1.0, Atom("b"))])) == "%{1 => :a, 1.0 => :b}"
    m = Map([(1, Atom("a")), (True, Atom("b"))])
    assert m[1] is Atom("a") and m[True] is Atom("b") and m.get(1.0) is None
    assert m == Map(m) and hash(m) == hash(Map(m)) and m != Map([(True, Atom("b"))])


def test_map_keys_too_deep_to_hash_make_a_map():
    deep_key = _deep_tuple(FAST_DEPTH)
    data = encode(Map([(deep_key, 1), (Atom("k"), 2)]))
    decoded = decode_all(data)
    assert type(decoded) is Map and encode(decoded) == data
    shallow = decode_all(encode({_deep_tuple(FAST_DEPTH - 2): 1}))
    assert type(shallow) is dict


def test_exactly_equal_is_the_beams_exact_equality():
    assert exactly_equal([1, (2, {Atom("a"): b"x"})], [1, (2, {Atom("a"): b"x"})])
    assert not exactly_equal(1, 1.0) and not exactly_equal(True, 1) and not exactly_equal(0.0, -0.0)
    assert not exactly_equal({1: (1,)}, {1: (1.0,)}) and not exactly_equal({1: 2}, {1.0: 2})
    assert exactly_equal({1: 2, 3: 4}, {3: 4, 1: 2}) and exactly_equal([1], FrozenList([1]))
    assert not exactly_equal([1], (1,))
    deep_a, deep_b = _deep_tuple(100_000), _deep_tuple(100_000)
    assert exactly_equal(deep_a, deep_b)


def test_freeze_and_inspect_take_any_depth():
    deep = []
    for _ in range(50_000):
        deep = [{Atom("k"): deep}, ImproperList([1], 2)]
    frozen = freeze(deep)
    assert type(frozen) is FrozenList and type(frozen[0]) is FrozenDict
    text = inspect(deep)
    assert text.startswith("[%{:k => [%{:k => [") and text.endswith("[1 | 2]]")
    assert inspect(deep, limit=30) == text[:30] + "..."
    assert repr(ImproperList([deep], 1)).startswith("[[%{:k => ")
    assert freeze({Atom("a"): [1, [2]]}) == FrozenDict({Atom("a"): FrozenList([1, FrozenList([2])])})

def test_list_and_tuple_keys_stay_apart():
    # #{[1] => a, {1} => b}: FrozenList([1]) is not equal to (1,)
    decoded = decode_all(b(131, 116, 0, 0, 0, 2, 107, 0, 1, 1, 119, 1, b"a",
                           104, 1, 97, 1, 119, 1, b"b"))
    assert decoded == {FrozenList([1]): Atom("a"), (1,): Atom("b")}
    assert decoded[(1,)] is Atom("b") and decoded[FrozenList([1])] is Atom("a")
    assert FrozenList([1]) == [1] and FrozenList([1]) != (1,)
    assert decode_all(encode(decoded)) == decoded


def test_unhashable_keys_are_frozen_recursively():
    key = [[1, 2], {Atom("k"): [3]}, (4, [5]), ImproperList([[6]], 7)]
    # #{Key => 1}, built by hand: a Python dict cannot hold that key
    decoded = decode_all(b(131, 116, 0, 0, 0, 1, encode(key)[1:], 97, 1))
    (frozen,) = decoded
    assert isinstance(frozen, FrozenList)
    assert isinstance(frozen[0], FrozenList)
    assert isinstance(frozen[1], FrozenDict) and isinstance(frozen[1][Atom("k")], FrozenList)
    assert isinstance(frozen[2][1], FrozenList)
    assert isinstance(frozen[3].items[0], FrozenList)
    assert decoded[frozen] == 1
    assert decode_all(encode(decoded)) == decoded


# A GenServer call from OTP 27: {'$gen_call', {Pid, [alias | Ref]}, {get, <<"key">>}}
GEN_CALL = b(
    131, 104, 3, 119, 9, b"$gen_call", 104, 2, 88, NONODE_UTF8, 0, 0, 0, 10, bytes(8),
    108, 0, 0, 0, 1, 119, 5, b"alias",
    90, 0, 3, NONODE_UTF8, 0, 0, 0, 0, 0, 1, 73, 5, 33, 100, 0, 2, 17, 25, 84, 222,
    104, 2, 119, 3, b"get", 109, 0, 0, 0, 3, b"key")


def test_gen_call_decodes_and_reencodes_byte_exact():
    message = decode_all(GEN_CALL)
    tag, (caller, alias_tag), request = message
    assert tag is Atom("$gen_call")
    assert caller == Pid(NONODE, 10, 0, 0)
    assert isinstance(alias_tag, ImproperList)
    assert alias_tag.items == (Atom("alias"),)
    assert alias_tag.tail == Reference(NONODE, 0, (84229, 560201730, 286872798))
    assert request == (Atom("get"), b"key")
    assert encode(message) == GEN_CALL
    assert encode(alias_tag)[1:] in GEN_CALL


OLD_FORMS = [
    # OTP 25 default atoms: ATOM_EXT / SMALL_ATOM_EXT, latin-1
    (b(131, 100, 0, 2, b"ok"), Atom("ok")),
    (b(131, 100, 0, 1, 233), Atom("é")),
    (b(131, 115, 4, b"true"), True),
    (b(131, 115, 3, b"nil"), None),
    (b(131, 104, 3, 108, 0, 0, 0, 1, 100, 0, 1, b"a", 100, 0, 1, b"b", 109, 0, 0, 0, 1, 233,
       100, 0, 1, 233),
     (ImproperList([Atom("a")], Atom("b")), b"\xe9", Atom("é"))),
    (b(131, 89, 100, 0, 13, b"nonode@nohost", bytes(8)), Port(NONODE, 0, 0)),  # NEW_PORT_EXT
    (b(131, 102, 100, 0, 13, b"nonode@nohost", 0, 0, 0, 7, 2), Port(NONODE, 7, 2)),  # PORT_EXT
    (b(131, 103, 100, 0, 13, b"nonode@nohost", 0, 0, 0, 85, 0, 0, 0, 1, 3),  # PID_EXT
     Pid(NONODE, 85, 1, 3)),
    (b(131, 114, 0, 2, 115, 13, b"nonode@nohost", 1, 0, 0, 0, 5, 0, 0, 0, 6),  # NEW_REFERENCE
     Reference(NONODE, 1, (5, 6))),
    (b(131, 101, 115, 13, b"nonode@nohost", 0, 0, 0, 9, 2), Reference(NONODE, 2, (9,))),
    (b(131, 99, b"1.50000000000000000000e+00", bytes(5)), 1.5),  # FLOAT_EXT
    (b(131, 99, b"-2.5e-03", bytes(23)), -0.0025),
    (b(131, 90, 0, 5, NONODE_UTF8, 0, 0, 0, 1, bytes(16), 0, 0, 0, 4),
     Reference(NONODE, 1, (0, 0, 0, 0, 4))),
    (b(131, 110, 2, 0, 1, 0), 1),  # non-canonical bignum, accepted like binary_to_term does
    (b(131, 77, 0, 0, 0, 1, 8, 255), b"\xff"),  # 8 bits in the last byte: a binary
    (b(131, 77, 0, 0, 0, 1, 1, 255), BitBinary(b"\x80", 1)),  # unused bits are ignored
    (b(131, 108, 0, 0, 0, 0, 97, 1), 1),  # LIST_EXT of no elements is its tail
    (b(131, 108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 1, 97, 2, 106), [1, 2]),  # [1 | [2]]
    (b(131, 108, 0, 0, 0, 1, 97, 1, 108, 0, 0, 0, 1, 97, 2, 97, 3), ImproperList([1, 2], 3)),
    (b(131, 108, 0, 0, 0, 1, 97, 1, 107, 0, 2, 2, 3), [1, 2, 3]),  # [1 | "\2\3"]
]


@pytest.mark.parametrize("encoded, value", OLD_FORMS)
def test_older_and_non_canonical_forms_decode(encoded, value):
    decoded = decode_all(encoded)
    assert decoded == value
    assert type(decoded) is type(value)


OTP25_CLOSURE = b(
    131, 112, 0, 0, 0, 72, 1, 113, 234, 49, 73, 141, 53, 22, 175, 241, 13, 167, 138, 75, 240,
    19, 139, 0, 0, 0, 0, 0, 0, 0, 0, 100, 0, 4, b"clos", 97, 0, 98, 3, 143, 81, 138, 88, 100,
    0, 13, b"nonode@nohost", 0, 0, 0, 9, 0, 0, 0, 0, 0, 0, 0, 0)
# clos:mk(7, [a]) on OTP 27: fun(Y) -> {X, Y, Z} end with two free variables
OTP27_CLOSURE_WITH_ENV = b(
    131, 112, 0, 0, 0, 81, 1, 43, 25, 168, 233, 124, 195, 164, 116, 56, 49, 2, 69, 180, 12, 66,
    99, 0, 0, 0, 0, 0, 0, 0, 2, 119, 4, b"clos", 97, 0, 98, 1, 88, 205, 71, 88, NONODE_UTF8,
    bytes(12), 97, 7, 108, 0, 0, 0, 1, 119, 1, b"a", 106)


@pytest.mark.parametrize("encoded", [OTP25_CLOSURE, OTP27_CLOSURE_WITH_ENV])
def test_closures_are_opaque_and_byte_exact(encoded):
    fun = decode_all(encoded)
    assert isinstance(fun, Fun)
    assert fun.module is Atom("clos") and fun.arity == 1
    assert fun.raw == encoded[1:]
    assert repr(fun) == "#Function<1/:clos>"
    wrapped = (Atom("call"), fun, [fun])
    assert decode_all(encode(wrapped)) == wrapped
    assert encode(fun) == encoded


def test_closure_size_must_match_contents():
    short = bytearray(OTP27_CLOSURE_WITH_ENV)
    short[5] -= 1  # Size one less than the real length
    with pytest.raises(TermError):
        decode(bytes(short))
    wrong_free = bytearray(OTP27_CLOSURE_WITH_ENV)
    wrong_free[30] = 1  # NumFree 1 instead of 2
    with pytest.raises(TermError, match="size does not match"):
        decode(bytes(wrong_free))


def test_compressed_term():
    # term_to_binary(<<"a" x 42>>, [compressed]) on OTP 27
    encoded = b(131, 80, 0, 0, 0, 47, 120, 156, 203, 101, 96, 96, 208, 74, 36, 26, 0, 0, 113, 118,
                16, 130)
    assert decode_all(encoded) == b"a" * 42
    term, end = decode(encoded + b"rest")
    assert term == b"a" * 42 and end == len(encoded)


def _compressed(inner: bytes, declared: int | None = None) -> bytes:
    size = len(inner) if declared is None else declared
    return b(131, 80, size.to_bytes(4, "big"), zlib.compress(inner))


def test_compressed_term_must_match_its_declared_size():
    inner = encode(list(range(1000)))[1:]
    assert decode_all(_compressed(inner)) == list(range(1000))
    with pytest.raises(TermError, match="beyond its declared"):
        decode(_compressed(inner, len(inner) - 1))
    with pytest.raises(TermError, match="inflates to"):
        decode(_compressed(inner, len(inner) + 1))
    with pytest.raises(TermError, match="size 0"):
        decode(_compressed(inner, 0))
    with pytest.raises(TermError):
        decode(_compressed(inner)[:-3])  # zlib stream cut short
    with pytest.raises(TermError, match="compressed term is"):
        decode(_compressed(inner + b"\x00"))  # inner term shorter than the declared size
    with pytest.raises(TermError, match="corrupt"):
        decode(b(131, 80, 0, 0, 0, 5, b"not zlib at all"))


def test_compression_bomb_is_refused_without_inflating(monkeypatch):
    bomb = zlib.compress(b"\x00" * (8 << 20))
    with pytest.raises(TermError, match="MAX_DECOMPRESSED"):
        decode(b(131, 80, (codec.MAX_DECOMPRESSED + 1).to_bytes(4, "big"), bomb))
    monkeypatch.setattr(codec, "MAX_DECOMPRESSED", 1 << 20)
    with pytest.raises(TermError, match="MAX_DECOMPRESSED"):
        decode(b(131, 80, (2 << 20).to_bytes(4, "big"), bomb))
    with pytest.raises(TermError, match="beyond its declared"):  # lies: far bigger than said
        decode(b(131, 80, 0, 0, 0, 10, bomb))


def test_compressed_only_at_top_level():
    inner = _compressed(encode(1)[1:])
    with pytest.raises(TermError, match="top level"):
        decode(b(131, 104, 1) + inner[1:])


ROUND_TRIPS = [
    [Atom("a"), [Atom("b"), [Atom("c")]], ()],
    {b"bin": {Atom("nested"): (1, 2.5, -3)}, 1: [], (): {}, Atom("nil_key"): None},
    ImproperList([1, [2], {Atom("a"): 3}], b"tail"),
    ImproperList([Atom("alias")], Reference(Atom("a@b"), 7, (1, 2, 3))),
    [True, False, None, Atom("truth")],
    [Pid(Atom("n@h"), 2**32 - 1, 2**32 - 1, 2**32 - 1)] * 3,
    Port(Atom("n@h"), 2**64 - 1, 2**32 - 1),
    Reference(Atom("n@h"), 1, (1, 2, 3, 4, 5)),
    [0, 255, 256, -1, 2**31 - 1, -2**31, 2**31, 2**100, -2**100, 10**600, -(10**600)],
    list(range(70000)),  # too long for STRING_EXT
    [255] * 65536,
    BitBinary(b"\xab\xc0", 2),
    ExportFun(Atom("Elixir.Enum"), Atom("map"), 2),
    tuple(range(1000)),
    {Atom(f"k{i}"): i for i in range(100)},
    b"\x00" * 100_000,
    "Ünïcödé" * 10,
    [["nested"] * 3] * 3,
]


@pytest.mark.parametrize("value", ROUND_TRIPS, ids=lambda v: inspect(v)[:30])
def test_round_trip(value):
    encoded = encode(value)
    decoded = decode_all(encoded)
    expected = _as_decoded(value)
    assert decoded == expected
    assert encode(decoded) == encode(expected)


def _as_decoded(value):
    """What the BEAM would hand back: str is a UTF-8 binary."""
    if isinstance(value, str):
        return value.encode()
    if isinstance(value, list):
        return [_as_decoded(item) for item in value]
    if isinstance(value, tuple):
        return tuple(_as_decoded(item) for item in value)
    if isinstance(value, dict):
        return {_as_decoded(k): _as_decoded(v) for k, v in value.items()}
    return value


def test_byte_lists_use_string_ext_like_term_to_binary():
    assert encode([1, 2, 3])[1] == 107
    assert encode([True, 1])[1] == 108  # bools are atoms, not bytes
    assert encode([1, True])[1] == 108
    assert decode_all(encode([1, True])) == [1, True]
    assert encode([1, 256])[1] == 108
    assert encode([1, -1])[1] == 108


class Color(enum.IntEnum):
    RED = 1
    HUGE = 2**80


class Mood(str, enum.Enum):
    HAPPY = "happy"


class Ratio(float):
    pass


Point = namedtuple("Point", "x y")


def test_subclasses_encode_as_their_base_type():
    assert encode(Color.RED) == encode(1)
    assert encode(Color.HUGE) == encode(2**80)
    assert decode_all(encode([Color.RED, 2])) == [1, 2]
    assert encode(Mood.HAPPY) == encode("happy")
    assert encode(Ratio(0.5)) == encode(0.5)
    assert encode(Point(1, 2)) == encode((1, 2))
    assert encode(OrderedDict(a=1)) == encode({"a": 1})
    assert encode(bytearray(b"xy")) == encode(b"xy")
    assert encode(memoryview(b"xyz")[1:]) == encode(b"yz")
    assert encode(FrozenList([1, 300])) == encode([1, 300])
    assert encode(FrozenDict({1: 2})) == encode({1: 2})


def test_unencodable_values_name_their_type():
    for value, name in [(object(), "object"), ({1, 2}, "set"), (1j, "complex"),
                        ([1, {frozenset()}], "set")]:
        with pytest.raises(TermError, match=name):
            encode(value)


@pytest.mark.parametrize("value", [
    float("nan"), float("inf"), -float("inf"),
    Atom("a" * 256), Atom("é" * 256), "\ud800", Atom("\udc00"),
    Pid(Atom("n@h"), 2**32, 0, 0), Pid("n@h", 1, 0, 0), Port(Atom("n@h"), -1, 0),
    Reference(Atom("n@h"), 0, ()), Reference(Atom("n@h"), 0, (1,) * 6),
    Reference(Atom("n@h"), 2**32, (1,)),
    BitBinary(b"", 1), BitBinary(b"\x01", 0), BitBinary(b"\x01", 9),
    ExportFun(Atom("m"), Atom("f"), 256), ExportFun("m", Atom("f"), 1),
    memoryview(bytes(16)).cast("B", (4, 4))[::2],
])
def test_unencodable_values(value):
    with pytest.raises(TermError):
        encode(value)


def test_atom_of_255_multibyte_characters_encodes_as_atom_utf8():
    atom = Atom("é" * 255)
    encoded = encode(atom)
    assert encoded[:4] == b(131, 118, 1, 254)
    assert decode_all(encoded) is atom


def test_encode_into_appends_and_leaves_buffer_intact_on_error():
    buf = bytearray(b"head")
    encode_into(buf, (Atom("ok"), 1))
    encode_into(buf, [])
    assert buf == b"head" + encode((Atom("ok"), 1)) + encode([])
    before = bytes(buf)
    with pytest.raises(TermError):
        encode_into(buf, [1, 2, object()])
    assert buf == before


def test_decode_at_offset_and_from_views():
    one, two = encode((1, Atom("x"))), encode({b"k": [Atom("v")]})
    data = b"junk" + one + two
    term, end = decode(data, 4)
    assert term == (1, Atom("x")) and end == 4 + len(one)
    assert decode(data, end) == ({b"k": [Atom("v")]}, len(data))
    view = memoryview(bytearray(data))[4:]
    term, end = decode(view)
    assert term == (1, Atom("x")) and end == len(one)
    assert decode(view, end)[0] == {b"k": [Atom("v")]}
    assert type(decode(view, end)[0][b"k"]) is list
    assert decode_all(bytearray(two)) == {b"k": [Atom("v")]}


def test_large_frames_are_read_in_place_from_a_view():
    node = Atom("big@host")
    frame = encode({
        Atom("pids"): [Pid(node, i, 0, 7) for i in range(100)],
        Atom("blob"): bytes(range(256)) * 40,
        Atom("names"): [Atom(f"name_{i}") for i in range(100)],
        (Atom("ref"), Atom("é")): Reference(node, 7, (1, 2, 3)),
        Atom("fun"): decode_all(OTP27_CLOSURE_WITH_ENV),
    })
    assert len(frame) > 10_000
    buffer = bytearray(b"x" * 7 + frame + frame)
    view = memoryview(buffer)
    first, end = decode(view, 7)
    second, end2 = decode(view, end)
    assert first == second == decode_all(frame)
    assert (end, end2) == (7 + len(frame), 7 + 2 * len(frame))
    buffer[:] = bytes(len(buffer))  # decoded values do not alias the buffer
    assert first == decode_all(frame)
    assert type(first[Atom("blob")]) is bytes
    compressed = _compressed(frame[1:])
    assert decode_all(memoryview(bytearray(compressed * 3))[len(compressed):][:len(compressed)]) \
        == decode_all(frame)


def test_pid_and_fun_fields_are_always_atoms():
    for value in [Pid(Atom("true"), 1, 2, 3), Reference(Atom("nil"), 1, (2,)),
                  Port(Atom("false"), 1, 2), ExportFun(Atom("nil"), Atom("true"), 0)]:
        decoded = decode_all(encode(value))
        assert decoded == value
    # the pid cache is keyed by the whole encoding: the same numbers on another node differ
    one, other = Pid(Atom("a@h"), 1, 2, 3), Pid(Atom("b@h"), 1, 2, 3)
    assert decode_all(encode([one, other, one])) == [one, other, one]
    latin1_node = b(131, 88, 100, 0, 3, b"a@h", 0, 0, 0, 1, 0, 0, 0, 2, 0, 0, 0, 3)
    assert decode_all(latin1_node) == one and decode_all(latin1_node) == one
    long_node = Atom("é" * 100 + "@" + "h" * 100)  # 301 bytes: an ATOM_UTF8_EXT node
    assert decode_all(encode([Pid(long_node, 1, 2, 3)] * 2)) == [Pid(long_node, 1, 2, 3)] * 2



def test_atom_cache_refs_name_the_atoms_of_the_distribution_header():
    refs = [Atom("$gen_call"), Atom("foo@h"), Atom("true"), Atom("lists"), Atom("map")]
    r = lambda index: b(82, index)  # ATOM_CACHE_REF Index
    data = b(131, 104, 7, r(0), r(2),  # {:"$gen_call", true,
             88, r(1), 0, 0, 0, 5, 0, 0, 0, 0, 0, 0, 0, 1,  # pid on foo@h
             90, 0, 1, r(1), 0, 0, 0, 1, 0, 0, 0, 9,  # reference on foo@h
             120, r(1), bytes(8), 0, 0, 0, 1,  # port on foo@h
             113, r(3), r(4), 97, 2,  # &:lists.map/2
             108, 0, 0, 0, 1, r(0), r(2))  # [:"$gen_call" | true]}
    foo = Atom("foo@h")
    expected = (Atom("$gen_call"), True, Pid(foo, 5, 0, 1), Reference(foo, 1, (9,)),
                Port(foo, 0, 1), ExportFun(Atom("lists"), Atom("map"), 2),
                ImproperList([Atom("$gen_call")], True))
    assert decode(data, atom_refs=refs) == (expected, len(data))
    assert decode_all(data, atom_refs=tuple(refs)) == expected
    node_true = b(131, 88, r(2), 0, 0, 0, 5, bytes(8))
    assert decode_all(node_true, atom_refs=refs) == Pid(Atom("true"), 5, 0, 0)  # an Atom there
    # a pid whose node is a cache ref is not cached: the same bytes mean another node next time
    pid = b(131, 88, r(0), 0, 0, 0, 5, bytes(8))
    assert decode_all(pid, atom_refs=[Atom("a@h")]).node is Atom("a@h")
    assert decode_all(pid, atom_refs=[Atom("b@h")]).node is Atom("b@h")
    # a closure's module
    closure = decode_all(OTP27_CLOSURE_WITH_ENV)
    module = encode(closure.module)[1:]
    at = OTP27_CLOSURE_WITH_ENV.index(module)
    with_ref = bytearray(OTP27_CLOSURE_WITH_ENV[:at] + r(0) + OTP27_CLOSURE_WITH_ENV[at + len(module):])
    with_ref[2:6] = (int.from_bytes(with_ref[2:6], "big") - len(module) + 2).to_bytes(4, "big")
    assert decode_all(bytes(with_ref), atom_refs=[closure.module]).module is closure.module
    # inside a compressed term too
    assert decode_all(_compressed(data[1:]), atom_refs=refs) == expected


@pytest.mark.parametrize("refs", [None, [], [Atom("a")]])
def test_atom_cache_refs_out_of_range_are_malformed(refs):
    for data in [b(131, 82, 1), b(131, 104, 1, 82, 1), b(131, 88, 82, 1, bytes(12)),
                 b(131, 113, 82, 0, 82, 1, 97, 0)]:
        with pytest.raises(TermError, match="ATOM_CACHE_REF"):
            decode(data, atom_refs=refs)
    # and the next decode without refs knows none
    if refs:
        decode(b(131, 82, 0), atom_refs=refs)
        with pytest.raises(TermError, match="ATOM_CACHE_REF"):
            decode(b(131, 82, 0))

def test_decoded_binaries_do_not_alias_the_buffer():
    buf = bytearray(encode((b"abc", Atom("zzq"))))
    term = decode_all(memoryview(buf))
    buf[:] = bytes(len(buf))
    assert term == (b"abc", Atom("zzq"))
    assert type(term[0]) is bytes


def test_reprs_follow_elixir_inspect():
    decoded = decode_all(GEN_CALL)
    assert inspect(decoded) == (
        '{:"$gen_call", {#PID<nonode@nohost.10.0>, [:alias | '
        '#Reference<nonode@nohost.286872798.560201730.84229>]}, {:get, "key"}}')
    assert inspect(decode_all(encode([BitBinary(b"\xff\x60", 3), ExportFun(
        Atom("Elixir.Enum"), Atom("map"), 2), Port(NONODE, 3, 0), None, {Atom("a"): b"\x00"}])))\
        == "[<<255, 3::size(3)>>, &Enum.map/2, #Port<nonode@nohost.3>, nil, %{:a => <<0>>}]"


# ----------------------------------------------------------------------------- malformed

@pytest.mark.parametrize("data, message", [
    (b"", "truncated"),
    (b(130, 97, 1), "version byte"),
    (b(131), "truncated"),
    (b(131, 0), "unknown term tag"),
    (b(131, 255), "unknown term tag"),
    (b(131, 117), "unknown term tag"),  # FUN_EXT: removed from OTP long ago
    (b(131, 82, 0), "ATOM_CACHE_REF"),
    (b(131, 104, 1, 82, 0), "ATOM_CACHE_REF"),
    (b(131, 88, 97, 1, bytes(12)), "expected an atom"),  # pid node not an atom
    (b(131, 70, 127, 248, 0, 0, 0, 0, 0, 0), "non-finite"),  # NaN
    (b(131, 70, 127, 240, 0, 0, 0, 0, 0, 0), "non-finite"),  # inf
    (b(131, 99, b"nan", bytes(28)), "not a float"),
    (b(131, 99, b"1_0", bytes(28)), "not a float"),
    (b(131, 119, 1, 255), "UTF-8"),
    (b(131, 118, 1, 0, b"a" * 256), "256 characters"),
    (b(131, 100, 1, 0, b"a" * 256), "256 characters"),
    (b(131, 77, 0, 0, 0, 0, 0), "bitstring"),
    (b(131, 77, 0, 0, 0, 1, 0, 255), "bitstring"),
    (b(131, 77, 0, 0, 0, 1, 9, 255), "bitstring"),
    (b(131, 110, 1, 2, 1), "sign"),
    (b(131, 90, 0, 0, NONODE_UTF8, 0, 0, 0, 0), "0 words"),
    (b(131, 90, 0, 6, NONODE_UTF8, 0, 0, 0, 0, bytes(24)), "6 words"),
    (b(131, 116, 0, 0, 0, 2, 97, 1, 97, 2, 97, 1, 97, 3), "same key twice"),  # as the BEAM
    (b(131, 116, 0, 0, 0, 3, 104, 1, 97, 1, 97, 2, 104, 1, 70, 63, 240, 0, 0, 0, 0, 0, 0, 97, 3,
       104, 1, 97, 1, 97, 4), "same key twice"),  # {1}, {1.0}, {1}
    (b(131, 113, 119, 1, b"m", 119, 1, b"f", 98, 0, 0, 0, 1), "arity"),
    (b(131, 112, 0, 0, 0, 5, bytes(8)), "smaller than its fixed"),
])
def test_malformed(data, message):
    with pytest.raises(TermError, match=message):
        decode(data)


@pytest.mark.parametrize("head", [
    b(131, 108, 255, 255, 255, 255),  # LIST_EXT of 2**32-1 elements
    b(131, 105, 255, 255, 255, 255),  # LARGE_TUPLE_EXT
    b(131, 116, 255, 255, 255, 255),  # MAP_EXT
    b(131, 116, 0, 0, 0, 5),  # 5 pairs need at least 10 bytes
    b(131, 109, 255, 255, 255, 255),  # BINARY_EXT
    b(131, 77, 255, 255, 255, 255, 3),  # BIT_BINARY_EXT
    b(131, 107, 255, 255),  # STRING_EXT
    b(131, 111, 255, 255, 255, 255, 0),  # LARGE_BIG_EXT
    b(131, 118, 255, 255),  # ATOM_UTF8_EXT
    b(131, 112, 255, 255, 255, 255),  # NEW_FUN_EXT
    b(131, 112, 0, 0, 0, 60, 0, bytes(16), bytes(4), 255, 255, 255, 255, 119, 1, b"m", 97, 0,
      97, 0, 88, 119, 1, b"n", bytes(12), bytes(20)),  # NEW_FUN_EXT NumFree
])
def test_absurd_lengths_fail_at_once(head):
    data = head + bytes(4)
    with pytest.raises(TermError, match="past the end|cannot fit|smaller"):
        decode(data)


@pytest.mark.parametrize("tag", [105, 108])  # LARGE_TUPLE_EXT, LIST_EXT
def test_nested_counts_claiming_every_byte_reserve_no_memory_for_them(tag):
    # 500 levels, each claiming as many elements as bytes follow it: memory reserved per
    # claimed element (not per element present) would come to 500 x 100,000 x 8 bytes
    import tracemalloc

    filler = b"a\0" * 50_000  # SMALL_INTEGER_EXT 0, as many times
    data = bytearray(b"\x83")
    for level in range(500):
        data += struct.pack(">BI", tag, len(filler) + 5 * (499 - level))
    data += filler
    tracemalloc.start()
    try:
        with pytest.raises(TermError):
            decode_all(bytes(data))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20, f"{peak / 2**20:.0f} MiB"


def test_every_truncation_of_valid_encodings_fails_cleanly():
    samples = [GEN_CALL, OTP27_CLOSURE_WITH_ENV, _compressed(encode(list(range(300)))[1:])]
    samples += [encoded for _, encoded in GOLDEN] + [encoded for encoded, _ in OLD_FORMS]
    for encoded in samples:
        for cut in range(len(encoded)):
            with pytest.raises(TermError):
                decode_all(encoded[:cut])


def test_trailing_bytes_are_refused_by_decode_all():
    with pytest.raises(TermError, match="1 bytes left"):
        decode_all(encode(Atom("ok")) + b"\x00")
    assert decode(encode(Atom("ok")) + b"\x00") == (Atom("ok"), 5)


def _nested(kind: str, depth: int) -> bytes:
    open_one = {"tuple": b(104, 1), "list": b(108, 0, 0, 0, 1), "map": b(116, 0, 0, 0, 1, 97, 0)}
    close_one = {"tuple": b"", "list": b(106), "map": b""}
    return b(131, open_one[kind] * depth, 106, close_one[kind] * depth)


@pytest.mark.parametrize("kind", ["tuple", "list", "map"])
@pytest.mark.parametrize("depth", [FAST_DEPTH - 1, FAST_DEPTH, FAST_DEPTH + 1, 511, 100_000])
def test_nesting_has_no_limit(kind, depth):
    # as on the BEAM, which takes 10,000,000 levels: past FAST_DEPTH the iterative walkers
    data = _nested(kind, depth)
    value = decode_all(data)
    assert encode(value) == data
    for _ in range(depth):
        value = value[0]
    assert value == []
    with pytest.raises(TermError):  # a truncated deep term is still an error
        decode_all(data[:-1] if kind != "map" else data[:len(data) // 2])


def test_long_lists_are_flat():
    count = 200_000
    proper = b(131, 108, count.to_bytes(4, "big"), b(104, 1, 97, 7) * count, 106)
    assert decode_all(proper) == [(7,)] * count
    improper = proper[:-1] + b(119, 1, b"t")
    decoded = decode_all(improper)
    assert len(decoded.items) == count and decoded.tail is Atom("t")
    assert encode(decoded) == improper
    # a chain of one-element LIST_EXT tails is flat too
    chain = b(131, b(108, 0, 0, 0, 1, 97, 1) * 50_000, 106)
    assert decode_all(chain) == [1] * 50_000


def test_cyclic_structures_fail_to_encode():
    cyclic = [1]
    cyclic.append(cyclic)
    looped = {}
    looped[Atom("self")] = looped
    through_a_tuple = [1]
    through_a_tuple.append((2, through_a_tuple))
    for value in (cyclic, looped, through_a_tuple, [[cyclic]] * 3):
        buf = bytearray(b"kept")
        with pytest.raises(TermError, match="cyclic"):
            encode_into(buf, value)
        assert buf == b"kept"
    shared = [1, 2]  # the same list twice is no cycle
    assert decode_all(encode([shared, (shared, [shared])])) == [[1, 2], ([1, 2], [[1, 2]])]


def test_a_caller_deep_in_its_own_stack_still_decodes_and_encodes():
    frames, frame = 0, sys._getframe()
    while frame is not None:
        frames, frame = frames + 1, frame.f_back
    limit = sys.getrecursionlimit()
    sys.setrecursionlimit(frames + 60)  # room for fewer than FAST_DEPTH levels
    try:
        term = decode(_nested("list", FAST_DEPTH - 1))[0]
        data = encode(_deep_tuple(FAST_DEPTH - 1))
    finally:
        sys.setrecursionlimit(limit)
    assert encode(term) == _nested("list", FAST_DEPTH - 1)
    assert decode_all(data) == _deep_tuple(FAST_DEPTH - 1)


def _deep_tuple(depth):
    value = ()
    for _ in range(depth):
        value = (value,)
    return value


def test_fuzz_only_term_errors_escape():
    rng = random.Random(20240611)
    seeds = [GEN_CALL, OTP27_CLOSURE_WITH_ENV, OTP25_CLOSURE,
             _compressed(encode([Atom("x"), list(range(50)), b"abc" * 20])[1:])]
    seeds += [encoded for _, encoded in GOLDEN if len(encoded) < 600]
    seeds += [encoded for encoded, _ in OLD_FORMS]
    seeds += [encode(value) for value in ROUND_TRIPS if len(encode(value)) < 5000]
    seeds.append(encode([decode_all(GEN_CALL), decode_all(OTP27_CLOSURE_WITH_ENV)] * 30))
    outcomes = {"ok": 0, "error": 0}
    for case in range(5000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 4)):
            action = rng.random()
            if action < 0.6 and len(data) > 1:
                data[rng.randrange(1, len(data))] = rng.randrange(256)
            elif action < 0.8:
                data = data[:rng.randrange(1, len(data) + 1)]
            else:
                at = rng.randrange(1, len(data) + 1)
                data[at:at] = rng.randbytes(rng.randint(1, 8))
        try:
            decode_all(memoryview(data) if case % 2 else bytes(data))  # views of > 4 KiB are
            outcomes["ok"] += 1                                         # read in place
        except TermError:
            outcomes["error"] += 1
    assert outcomes["ok"] > 100 and outcomes["error"] > 1000




def test_frozen_deep_terms_hash_without_deep_recursion():
    # Python hashes a tuple nested 200,000 deep by recursing on the C stack (a crash): a
    # frozen term holds a HashedTerm every FAST_DEPTH levels, hashed once
    deep = ()
    for i in range(200_000):
        deep = ([deep], {Atom("k"): i}) if i % 7 == 0 else (deep,)
    key = freeze(deep)
    table = {key: "found"}
    again = freeze(decode_all(encode(deep)))
    assert again is not key and table[again] == "found" and again == key
    assert encode(key) == encode(deep) and inspect(key, limit=12) == inspect(deep, limit=12)
    assert isinstance(freeze(_deep_tuple(FAST_DEPTH - 1)), HashedTerm)  # FAST_DEPTH tuples
    assert type(freeze(_deep_tuple(FAST_DEPTH - 2))) is tuple

@pytest.fixture
def atom_bound():
    """Run with the atom table bound at its present size; restored after."""
    previous = set_max_atoms(atom_count())
    yield
    set_max_atoms(previous)


def test_the_atom_table_has_a_bound(atom_bound):
    assert DEFAULT_MAX_ATOMS == 1_048_576  # the BEAM's default (erl +t)
    known = encode([Atom("ok"), Pid(NONODE, 1, 2, 3), {Atom("error"): True}])
    assert decode_all(known) == [Atom("ok"), Pid(NONODE, 1, 2, 3), {Atom("error"): True}]
    fresh = "never-seen-" + str(random.random())
    count = atom_count()
    for data in [b(131, 119, len(fresh), fresh.encode()),  # as a term, as a node name
                 b(131, 88, 119, len(fresh), fresh.encode(), bytes(12)),
                 b(131, 104, 2, 119, 2, b"ok", 100, 0, len(fresh), fresh.encode())]:
        with pytest.raises(AtomTableFull, match="atom table is full"):
            decode_all(data)
        with pytest.raises(TermError):  # what the connection layer catches
            decode_all(data)
    with pytest.raises(AtomTableFull):  # the program's own new atoms count too
        Atom(fresh)
    assert atom_count() == count
    set_max_atoms(count + 1)
    assert decode_all(b(131, 119, len(fresh), fresh.encode())) is Atom(fresh)
    assert atom_count() == count + 1
    with pytest.raises(ValueError):
        set_max_atoms(0)

def test_public_api():
    for name in ["encode", "encode_into", "decode", "decode_all", "TermError", "FAST_DEPTH",
                 "MAX_DECOMPRESSED", "Atom", "Pid", "Reference", "Port", "ImproperList",
                 "BitBinary", "ExportFun", "Fun", "FrozenList", "FrozenDict", "Map", "Record",
                 "exactly_equal", "freeze", "inspect", "AtomTableFull", "set_max_atoms",
                 "atom_count", "DEFAULT_MAX_ATOMS"]:
        assert name in term_module.__all__ and hasattr(term_module, name)
    assert issubclass(TermError, ValueError)
