"""The C accelerator against the pure-Python codec: same bytes, same terms, same errors.

tests/test_term.py and the BEAM differential test run in full under both implementations
(the `codec_implementation` fixture); this file compares the two directly on random terms
and random damage, and checks how a missing build is reported."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from typing import Any, Callable

import pytest

from conftest import use_codec
from pykv.term import (
    Atom, BitBinary, ExportFun, FrozenList, ImproperList, Map, Pid, Record, Reference, TermError,
    codec, decode_all, encode,
)

NODES = [Atom("foo@vm"), Atom("bar@vm"), Atom("n\u00f6de@h\u00f6st")]
ATOMS = [Atom(a) for a in ("ok", "error", "$gen_call", "Elixir.KV.Registry", "\u00e5ngstr\u00f6m", "")]


def random_term(rng: random.Random, depth: int = 0) -> Any:
    leaf: list[Callable[[], Any]] = [
        lambda: rng.choice(ATOMS), lambda: rng.choice([True, False, None]),
        lambda: rng.randrange(256), lambda: rng.randint(-2**31, 2**31 - 1),
        lambda: rng.randint(-2**80, 2**80), lambda: rng.uniform(-1e6, 1e6),
        lambda: rng.randbytes(rng.randrange(40)), lambda: "t\u00e9xt" * rng.randrange(3),
        lambda: bytearray(rng.randbytes(3)),
        lambda: Pid(rng.choice(NODES), rng.randrange(2**15), rng.randrange(2**13), rng.randrange(2**32)),
        lambda: Reference(rng.choice(NODES), rng.randrange(2**32),
                          tuple(rng.randrange(2**32) for _ in range(rng.randint(1, 5)))),
        lambda: BitBinary(bytes([rng.randrange(256)]) + b"\xf0", rng.randint(1, 7)),
        lambda: ExportFun(Atom("erlang"), Atom("node"), 0),
        lambda: [rng.randrange(256) for _ in range(rng.randrange(5))],  # STRING_EXT
    ]
    if depth > 4:
        return rng.choice(leaf)()
    nested: list[Callable[[], Any]] = [
        lambda: tuple(random_term(rng, depth + 1) for _ in range(rng.randrange(5))),
        lambda: [random_term(rng, depth + 1) for _ in range(rng.randrange(5))],
        lambda: {random_key(rng): random_term(rng, depth + 1) for _ in range(rng.randrange(4))},
        lambda: ImproperList([random_term(rng, depth + 1) for _ in range(rng.randint(1, 3))],
                             rng.choice(ATOMS)),
        lambda: {FrozenList([1, 2]): random_term(rng, depth + 1)},
        lambda: Map([(1, random_term(rng, depth + 1)), (1.0, Atom("b")), (True, [])]),
        lambda: ImproperList([random_term(rng, depth + 1)], (1, [2])),
        lambda: Record(rng.choice(ATOMS), Atom("rec"), [(Atom("a"), random_term(rng, depth + 1)),
                                                       (Atom("b"), [])], rng.random() < 0.5),
    ]
    return rng.choice(leaf + nested)()


def deep_term(rng: random.Random, levels: int) -> Any:
    """A random chain of containers `levels` deep, with random terms beside each link."""
    term: Any = rng.choice([[], (), {}, Atom("bottom")])
    for _ in range(levels):
        side = random_term(rng, 4)
        term = rng.choice([
            lambda: [side, term], lambda: (term, side), lambda: {Atom("k"): term, 7: side},
            lambda: ImproperList([side, term], Atom("t")),
            lambda: ImproperList([side], term) if not isinstance(term, (list, ImproperList)) else [side, term],
            lambda: [term], lambda: Map([(1, term), (1.0, side)]),
            lambda: Record(Atom("m"), Atom("r"), [(Atom("x"), side), (Atom("y"), term)]),
        ])()
    return term


def random_key(rng: random.Random) -> Any:
    while True:
        key = random_term(rng, 9)
        try:
            hash(key)
        except TypeError:
            continue
        return key


def with_each(fn: Callable[[], Any]) -> dict[str, Any]:
    """fn's result, or its exception type, under each implementation."""
    outcome: dict[str, Any] = {}
    for name in ("python", "c"):
        codec.use_implementation(name)
        try:
            outcome[name] = fn()
        except TermError:
            outcome[name] = TermError
    return outcome


@pytest.fixture(autouse=True)
def both_available():
    before = use_codec("c")
    yield
    codec.use_implementation(before)


def test_same_bytes_and_same_terms_on_random_terms():
    rng = random.Random(5)
    for _ in range(3000):
        term = random_term(rng)
        encoded = with_each(lambda: encode(term))
        assert encoded["python"] == encoded["c"], term
        decoded = with_each(lambda: decode_all(encoded["python"]))
        assert encode(decoded["python"]) == encode(decoded["c"]) == encoded["python"]


def walk_encode(term: Any) -> bytes:
    buf = bytearray(b"\x83")
    (codec._c_encode_deep or codec._walk_encode)(buf, term)
    return bytes(buf)


def walk_decode(data: bytes) -> Any:
    if codec._c_decode_deep is not None:
        return codec._c_decode_deep(data, 1)[0]
    return codec._walk_decode(data, 1)[0]


def test_the_iterative_walkers_agree_with_the_fast_path():
    # every shape of term, through the walkers that deep terms take
    rng = random.Random(11)
    for _ in range(1500):
        term = random_term(rng)
        data = encode(term)
        walked = with_each(lambda: walk_encode(term))
        assert walked["python"] == walked["c"] == data, term
        decoded = with_each(lambda: encode(walk_decode(data)))
        assert decoded["python"] == decoded["c"] == data


def test_same_bytes_and_same_terms_on_random_deep_terms():
    rng = random.Random(13)
    for levels in [codec.FAST_DEPTH - 1, codec.FAST_DEPTH, 600, 3000]:
        for _ in range(4):
            term = deep_term(rng, levels)
            encoded = with_each(lambda: encode(term))
            assert encoded["python"] == encoded["c"]
            decoded = with_each(lambda: encode(decode_all(encoded["python"])))
            assert decoded["python"] == decoded["c"] == encoded["python"]


def test_same_outcome_on_damaged_deep_encodings():
    rng = random.Random(17)
    seeds = [encode(deep_term(rng, 400)) for _ in range(10)]
    outcomes = {"ok": 0, "error": 0}
    for case in range(600):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.7:
                data[rng.randrange(1, len(data))] = rng.randrange(256)
            else:
                data = data[:rng.randrange(1, len(data) + 1)]
        outcome = with_each(lambda: decode_all(bytes(data)))
        if outcome["python"] is TermError:
            assert outcome["c"] is TermError, bytes(data).hex()
            outcomes["error"] += 1
        else:
            assert outcome["c"] is not TermError, bytes(data).hex()
            assert encode(outcome["c"]) == encode(outcome["python"])
            outcomes["ok"] += 1
    assert outcomes["error"] > 100 and outcomes["ok"] > 10


def test_same_outcome_on_damaged_encodings():
    rng = random.Random(7)
    seeds = [encode(random_term(rng)) for _ in range(200)]
    agreed = {"ok": 0, "error": 0}
    for case in range(6000):
        data = bytearray(rng.choice(seeds))
        for _ in range(rng.randint(1, 3)):
            if rng.random() < 0.6 and len(data) > 1:
                data[rng.randrange(1, len(data))] = rng.randrange(256)
            else:
                data = data[:rng.randrange(1, len(data) + 1)]
        view = memoryview(bytes(data)) if case % 2 else bytes(data)
        outcome = with_each(lambda: decode_all(view))
        if outcome["python"] is TermError:
            assert outcome["c"] is TermError, bytes(data).hex()
            agreed["error"] += 1
        else:
            assert outcome["c"] is not TermError, bytes(data).hex()
            assert encode(outcome["c"]) == encode(outcome["python"])
            agreed["ok"] += 1
    assert agreed["ok"] > 300 and agreed["error"] > 1000


def test_unencodable_values_fail_alike_and_leave_the_buffer():
    for bad in [{1, 2}, object(), ("ok", float("nan")), ["x", "\udc80"], (Atom("a"), Pid(NODES[0], -1, 0, 0))]:
        assert with_each(lambda: encode(bad)) == {"python": TermError, "c": TermError}


def test_a_missing_build_is_an_explained_error(monkeypatch):
    monkeypatch.setitem(sys.modules, "pykv.term._speedups", None)  # import now fails
    with pytest.raises(ImportError, match="C codec .* is not built"):
        codec.use_implementation("c")
    assert codec.use_implementation("auto") == "python"  # auto falls back quietly
    with pytest.raises(ValueError, match="PYKV_CODEC"):
        codec.use_implementation("fast")


def test_pykv_codec_variable_chooses_at_import():
    probe = "from pykv.term import codec; print(codec.IMPLEMENTATION)"
    for choice, expected in [("python", "python"), ("c", "c"), ("auto", "c")]:
        result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True,
                                env={**os.environ, "PYKV_CODEC": choice}, timeout=60)
        assert result.stdout.strip() == expected, result.stderr


def test_list_tails_are_decoded_in_c_not_handed_back():
    # [[... [a, a | ""] ... | ""] | ""]: were each level handed back to the Python decoder
    # after decoding its children in C, the work would grow with the square of the depth
    calls = 0
    python_list_decoder = codec._DECODERS[108]

    def counting(data, pos, depth):
        nonlocal calls
        calls += 1
        return python_list_decoder(data, pos, depth)

    codec._DECODERS[108] = counting
    try:
        levels = codec.FAST_DEPTH - 1
        data = (b"\x83" + b"l\x00\x00\x00\x01" * levels + b"l\x00\x00\x00\x02w\x01aw\x01aj" + b"k\x00\x00" * levels)
        term = decode_all(data)
        continued = decode_all(b"\x83l\x00\x00\x00\x01a\x01l\x00\x00\x00\x01a\x02j")
        empty_with_tail = decode_all(b"\x83l\x00\x00\x00\x00a\x07")
    finally:
        codec._DECODERS[108] = python_list_decoder
    assert calls == 0
    for _ in range(levels):
        assert len(term) == 1
        term = term[0]
    assert term == [Atom("a"), Atom("a")]
    # a LIST_EXT tail continues the list; an empty LIST_EXT with a tail is that tail
    assert continued == [1, 2]
    assert empty_with_tail == 7


def test_strided_views_decode_as_the_bytes_they_show():
    data = encode([b"x" * 5000, list(range(100))])
    spread = bytearray(len(data) * 2)
    spread[::2] = data
    view = memoryview(bytes(spread))[::2]
    outcome = with_each(lambda: decode_all(view))
    assert encode(outcome["python"]) == encode(outcome["c"]) == data


@pytest.mark.parametrize("pos, depth", [(-1, 0), (0, -1), (0, 10_000)])
def test_the_c_functions_check_their_arguments(pos, depth):
    from pykv.term import _speedups

    with pytest.raises(ValueError):
        _speedups.decode(b"\x83a\x01", pos, depth)
    if depth:
        with pytest.raises(ValueError):
            _speedups.encode(bytearray(), (), depth)
