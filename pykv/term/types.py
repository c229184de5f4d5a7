"""Python types for the Erlang terms that have no natural Python equivalent.

Mapping (decode -> Python -> encode):
  atom            -> Atom (true/false -> bool, nil -> None)
  integer         -> int            float -> float
  binary          -> bytes          (str encodes as a UTF-8 binary, as Elixir strings are)
  bitstring       -> BitBinary      tuple -> tuple      list -> list     map -> dict
  improper list   -> ImproperList   pid -> Pid          ref -> Reference port -> Port
  fun M:F/A       -> ExportFun      closure -> Fun (opaque, re-encodes byte-exact)
Reprs follow Elixir's `inspect`, so a value reads the same on both sides.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "Atom", "Pid", "Reference", "Port", "ImproperList", "BitBinary",
    "ExportFun", "Fun", "FrozenList", "FrozenDict", "inspect",
]

_PLAIN_ATOM = re.compile(r"[a-zA-Z_][a-zA-Z0-9_@]*[?!]?\Z")  # as Elixir: :DOWN, :Counter, :foo@host
_ALIAS = re.compile(r"Elixir\.[A-Z][a-zA-Z0-9_]*(\.[A-Z][a-zA-Z0-9_]*)*\Z")


class Atom:
    """An Erlang atom. Interned: `Atom("ok") is Atom("ok")`, so equality and hashing are
    identity's, done in C (atoms are compared and hashed on every message).

    An atom is deliberately *not* equal to the str of the same text: an Erlang map may hold
    both `:a` and `"a"` as keys.
    """

    __slots__ = ("name",)
    _table: ClassVar[dict[str, "Atom"]] = {}
    name: str

    def __new__(cls, name: str) -> "Atom":
        atom = cls._table.get(name)
        if atom is None:
            if not isinstance(name, str):
                raise TypeError(f"atom name must be str, not {type(name).__name__}")
            atom = object.__new__(cls)
            object.__setattr__(atom, "name", name)
            atom = cls._table.setdefault(name, atom)  # one atom per name, whatever the thread
        return atom

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("atoms are immutable")

    def __lt__(self, other: "Atom") -> bool:
        if not isinstance(other, Atom):
            return NotImplemented
        return self.name < other.name

    def __reduce__(self) -> tuple[Any, ...]:
        return (Atom, (self.name,))

    def __str__(self) -> str:
        return self.name

    def __repr__(self) -> str:
        name = self.name
        if _ALIAS.match(name):
            return name[len("Elixir."):]
        if _PLAIN_ATOM.match(name):
            return ":" + name
        return ':"' + name.replace("\\", "\\\\").replace('"', '\\"') + '"'


@dataclass(frozen=True, slots=True)
class Pid:
    node: Atom
    id: int
    serial: int
    creation: int

    def __repr__(self) -> str:
        return f"#PID<{self.node.name}.{self.id}.{self.serial}>"


@dataclass(frozen=True, slots=True)
class Reference:
    node: Atom
    creation: int
    ids: tuple[int, ...]

    def __repr__(self) -> str:
        return f"#Reference<{self.node.name}.{'.'.join(map(str, reversed(self.ids)))}>"


@dataclass(frozen=True, slots=True)
class Port:
    node: Atom
    id: int
    creation: int

    def __repr__(self) -> str:
        return f"#Port<{self.node.name}.{self.id}>"


@dataclass(frozen=True, slots=True)
class ImproperList:
    """`[a, b | tail]` where tail is not a list. OTP 24+ call tags are `[:alias | ref]`."""

    items: tuple[Any, ...]
    tail: Any

    def __init__(self, items: Any, tail: Any) -> None:
        object.__setattr__(self, "items", tuple(items))
        object.__setattr__(self, "tail", tail)

    def __repr__(self) -> str:
        return "[" + ", ".join(inspect(i) for i in self.items) + " | " + inspect(self.tail) + "]"


@dataclass(frozen=True, slots=True)
class BitBinary:
    """A bitstring whose last byte holds only `bits` (1..8) significant high bits."""

    data: bytes
    bits: int

    def __repr__(self) -> str:
        if not self.data:
            return "<<>>"
        head = ", ".join(str(b) for b in self.data[:-1])
        last = f"{self.data[-1] >> (8 - self.bits)}::size({self.bits})"
        return "<<" + (head + ", " if head else "") + last + ">>"


@dataclass(frozen=True, slots=True)
class ExportFun:
    """`&Module.function/arity`: portable, names code rather than carrying it."""

    module: Atom
    function: Atom
    arity: int

    def __repr__(self) -> str:
        return f"&{inspect(self.module)}.{self.function.name}/{self.arity}"


@dataclass(frozen=True, slots=True)
class Fun:
    """A closure (NEW_FUN_EXT). Python cannot run BEAM code: kept opaque and re-encoded as is."""

    raw: bytes  # the whole encoded term, tag byte included
    module: Atom
    arity: int

    def __repr__(self) -> str:
        return f"#Function<{self.arity}/{inspect(self.module)}>"


class FrozenList(tuple):
    """A list used where Python needs something hashable (a map key). Encodes as a list.

    Equal to a FrozenList or list of the same items, never to a tuple: `#{[1] => a, {1} => b}`
    has two keys."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        if isinstance(other, FrozenList):
            return tuple.__eq__(self, other)
        if isinstance(other, list):
            return list(self) == other
        if isinstance(other, tuple):
            return False
        return NotImplemented

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    __hash__ = tuple.__hash__

    def __repr__(self) -> str:
        return "[" + ", ".join(inspect(i) for i in self) + "]"


class FrozenDict(dict):
    """A map used as a map key. Hashable; must not be mutated once used as a key."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


def inspect(term: Any) -> str:
    """Render a term as Elixir's `inspect` would (close enough to read across languages)."""
    if term is None:
        return "nil"
    if term is True:
        return "true"
    if term is False:
        return "false"
    if isinstance(term, (bytes, bytearray)):
        try:
            text = bytes(term).decode("utf-8")
            if text.isprintable():
                return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
        except UnicodeDecodeError:
            pass
        return "<<" + ", ".join(str(b) for b in term) + ">>"
    if isinstance(term, str):
        return '"' + term.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(term, tuple) and not isinstance(term, FrozenList):
        return "{" + ", ".join(inspect(i) for i in term) + "}"
    if isinstance(term, list):
        return "[" + ", ".join(inspect(i) for i in term) + "]"
    if isinstance(term, dict):
        return "%{" + ", ".join(f"{inspect(k)} => {inspect(v)}" for k, v in term.items()) + "}"
    return repr(term)
