"""(7) The term codec alone: pykv.term beside erlang_py and erlpack (PyPI, the `bench` extra).

Each library encodes its own representation of the same logical terms, and decodes the
same bytes: pykv's encoding, with atoms as SMALL_ATOM_UTF8_EXT as OTP sends them between
nodes (erlang_py re-encodes it byte for byte). Before timing, each
library's result is checked through pykv: an encoding must decode to the term, a decoding
must encode back to it. What a library cannot represent, or gets wrong, is n/a, with why.

Timing is timeit's: a loop count that takes about `target_s`, best of `repeats` runs
(taken round robin over the libraries), divided by the count. pykv caches atoms and pids
by their encoding, as any repeated traffic lets it: these loops decode the same bytes again
and again, so they see the cache warm.
"""

from __future__ import annotations

import timeit
from dataclasses import dataclass
from typing import Any, Callable

from pykv import term as pykv_term
from pykv.term import Atom, ImproperList, Pid, Reference

CREATION = 1_700_000_000  # OTP 23+ creations are 32-bit: NEW_PID_EXT, NEWER_REFERENCE_EXT


def mix() -> dict[str, Any]:
    """The fixed mix, as pykv terms."""
    client = Atom("client@host")
    ref = Reference(client, CREATION, (0x1F2E3D, 0x4C5B6A79, 0x8897A6B5))
    return {
        "$gen_call with alias tag": (Atom("$gen_call"),
                                     (Pid(client, 123, 0, CREATION), ImproperList((Atom("alias"),), ref)),
                                     (Atom("get"), b"key")),
        "10-key map atom => binary": {Atom(f"key{i}"): b"value-%d" % i for i in range(10)},
        # not 0..99: a list of small integers would go as a STRING_EXT, a different test
        "100-int list": [i * 997 for i in range(100)],
        "{:put, bucket, 1 KiB}": (Atom("put"), b"bucket", bytes(range(256)) * 4),
        "200 pids": [Pid(Atom("bar@host"), 100 + i, 0, CREATION) for i in range(200)],
    }


@dataclass
class Library:
    name: str
    encode: Callable[[Any], bytes]
    decode: Callable[[bytes], Any]
    # the library's own representation of a pykv term (raises where it has none)
    convert: Callable[[Any], Any]


def _pykv() -> Library:
    """pykv as installed: with its C accelerator when that is built."""
    return Library("pykv", pykv_term.encode, pykv_term.decode_all, lambda t: t)


def _pykv_python() -> Library:
    """pykv's pure-Python codec, which runs where the accelerator is not built: the
    functions behind encode() and decode() minus their argument checks."""
    from pykv.term import codec

    def encode(term: Any) -> bytes:
        buf = bytearray(b"\x83")
        codec._encode_item(buf, term, 0)
        return bytes(buf)

    def decode(data: bytes) -> Any:
        return codec._DECODERS[data[1]](data, 2, 0)[0]

    return Library("pykv_python", encode, decode, lambda t: t)


def _erlang_py() -> Library:
    import erlang  # PyPI erlang_py

    # erlang_py's decoder builds its own types (OtpErlangAtom, OtpErlangPid, improper
    # OtpErlangList, ...): decoding the canonical bytes gives its representation exactly.
    return Library("erlang_py", erlang.term_to_binary, erlang.binary_to_term,
                   lambda t: erlang.binary_to_term(pykv_term.encode(t)))


def _erlpack() -> Library:
    import erlpack

    def convert(t: Any) -> Any:
        if isinstance(t, Atom):
            return erlpack.Atom(t.name)
        if isinstance(t, tuple):
            return tuple(convert(x) for x in t)
        if isinstance(t, list):
            return [convert(x) for x in t]
        if isinstance(t, dict):
            return {convert(k): convert(v) for k, v in t.items()}
        if isinstance(t, (bytes, int, float)):
            return t
        # erlpack's encoder has no pids, references nor improper lists
        raise TypeError(f"no {type(t).__name__} in erlpack")

    return Library("erlpack", erlpack.pack, erlpack.unpack, convert)


def libraries() -> tuple[list[Library], dict[str, str]]:
    """pykv plus those of erlang_py and erlpack that import; and why the others do not."""
    from pykv.term import codec

    found, missing = [_pykv()], {}
    if codec.IMPLEMENTATION == "c":
        found.append(_pykv_python())
    for name, make in (("erlang_py", _erlang_py), ("erlpack", _erlpack)):
        try:
            found.append(make())
        except ImportError as e:
            missing[name] = f"not installed ({e}): pip install -e .[bench]"
    return found, missing


def _prepare(lib: Library, op: str, term: Any, data: bytes) -> tuple[Callable[[Any], Any], Any]:
    """The function and argument to time, once the library's result is checked through
    pykv: its encoding must decode to `term`, its decoding must encode back to it."""
    if op == "encode":
        own = lib.convert(term)
        if pykv_term.decode_all(lib.encode(own)) != term:
            raise ValueError("encodes a different term")
        return lib.encode, own
    if pykv_term.decode_all(lib.encode(lib.decode(data))) != term:
        raise ValueError("decodes to a different term")
    return lib.decode, data


def _calibrated(fn: Callable[[Any], Any], arg: Any, target_s: float) -> tuple[timeit.Timer, int]:
    """A timer and a loop count that takes about `target_s` (as Timer.autorange)."""
    timer = timeit.Timer("fn(arg)", globals={"fn": fn, "arg": arg})
    number = 1
    while timer.timeit(number) < target_s:
        number *= 2 if number < 8 else 4
    return timer, number


def _why(lib: Library, op: str, e: Exception) -> str:
    return f"n/a: {lib.name} {op}: {type(e).__name__}: {str(e)[:80]}"


def run(repeats: int = 7, target_s: float = 0.05) -> dict[str, Any]:
    """µs per encode and per decode of each term of the mix, per library; a value that is
    a string says why that library has none ("n/a: ..."). The repeats go round robin over
    the libraries, so that each sees the same moments of a noisy machine; the best counts."""
    libs, missing = libraries()
    from pykv.term import codec

    results: dict[str, Any] = {"terms": {}, "missing": missing, "libraries": [lib.name for lib in libs],
                               "pykv_implementation": codec.IMPLEMENTATION}
    for label, term in mix().items():
        data = pykv_term.encode(term)
        row: dict[str, Any] = {"bytes": len(data)}
        timers: dict[str, tuple[timeit.Timer, int]] = {}
        for lib in libs:
            for op in ("encode", "decode"):
                try:
                    timers[f"{lib.name}_{op}"] = _calibrated(*_prepare(lib, op, term, data), target_s)
                except Exception as e:
                    row[f"{lib.name}_{op}"] = _why(lib, op, e)
        best = dict.fromkeys(timers, float("inf"))
        for _ in range(repeats):
            for key, (timer, number) in timers.items():
                best[key] = min(best[key], timer.timeit(number) / number)
        row.update({key: seconds * 1e6 for key, seconds in best.items()})
        results["terms"][label] = row
    return results
