"""Python types for the Erlang terms that have no natural Python equivalent.

Mapping (decode -> Python -> encode):
  atom            -> Atom (true/false -> bool, nil -> None)
  integer         -> int            float -> float
  binary          -> bytes          (str encodes as a UTF-8 binary, as Elixir strings are)
  bitstring       -> BitBinary      tuple -> tuple      list -> list     map -> dict
  improper list   -> ImproperList   pid -> Pid          ref -> Reference port -> Port
  fun M:F/A       -> ExportFun      closure -> Fun (opaque, re-encodes byte-exact)
  map whose keys a dict cannot hold apart (1 and 1.0, true and 1...) -> Map
  native record (OTP 29, RECORD_EXT) -> Record
Reprs follow Elixir's `inspect`, so a value reads the same on both sides. `inspect` walks a
term without recursion: a term nested a million levels deep prints (and `limit` cuts it short).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

__all__ = [
    "TermError", "AtomTableFull", "set_max_atoms", "atom_count", "DEFAULT_MAX_ATOMS",
    "Atom", "Pid", "Reference", "Port", "ImproperList", "BitBinary",
    "ExportFun", "Fun", "FrozenList", "FrozenDict", "HashedTerm", "Map", "Record",
    "exactly_equal", "inspect",
]

class TermError(ValueError):
    """A malformed encoding, or a Python value with no Erlang term form."""


class AtomTableFull(TermError):
    """A new atom past the atom table's bound (set_max_atoms): refused, as the BEAM's own
    table has a size (its default, 1,048,576, is ours). Decoding a term that would add one
    fails with this error, so the connection that brought it is closed; the node goes on."""


DEFAULT_MAX_ATOMS = 1_048_576  # the BEAM's default atom table size (erl +t)


def set_max_atoms(limit: int) -> int:
    """Bound the atom table: past `limit` atoms in all, no new atom is made (AtomTableFull).
    Every atom counts, the program's own as well as those decoded from the wire: atoms are
    never freed, on the BEAM or here, and one table with one bound is what keeps their memory
    bounded whoever asks for them. Returns the previous bound."""
    if limit.__class__ is not int or limit < 1:
        raise ValueError(f"the atom table bound must be a positive int, not {limit!r}")
    previous = Atom._max
    Atom._max = limit
    return previous


def atom_count() -> int:
    """How many atoms exist (each is in the table for good)."""
    return len(Atom._table)


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
    _max: ClassVar[int] = DEFAULT_MAX_ATOMS
    name: str

    def __new__(cls, name: str) -> "Atom":
        atom = cls._table.get(name)
        if atom is None:
            if not isinstance(name, str):
                raise TypeError(f"atom name must be str, not {type(name).__name__}")
            if len(cls._table) >= cls._max:
                raise AtomTableFull(f"the atom table is full ({cls._max} atoms): no new atom "
                                    f"{name[:40]!r}")
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
        return inspect(self)


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


class Record:
    """An OTP 29 native record (`-record #point{x, y}.`; RECORD_EXT on the wire): the module
    that defines it, its name, its fields as (name, value) pairs in the order they arrived,
    and whether the module exports it (`-export_record`). Not a tuple, on the BEAM either.
    `record[Atom("x")]` (or `record["x"]`) is a field's value. Encodes back byte for byte."""

    __slots__ = ("module", "name", "fields", "exported")
    module: Atom
    name: Atom
    fields: tuple[tuple[Atom, Any], ...]
    exported: bool

    def __init__(self, module: Atom, name: Atom, fields: Any = (), exported: bool = False) -> None:
        if isinstance(fields, dict):
            fields = fields.items()
        set_ = object.__setattr__
        set_(self, "module", module)
        set_(self, "name", name)
        set_(self, "fields", tuple((field, value) for field, value in fields))
        set_(self, "exported", exported)

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a Record is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Record, (self.module, self.name, self.fields, self.exported))

    def __getitem__(self, field: Atom | str) -> Any:
        name = field.name if isinstance(field, Atom) else field
        for key, value in self.fields:
            if key.name == name:
                return value
        raise KeyError(field)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Record):
            return NotImplemented
        return exactly_equal(self, other)  # (=:=, and without recursion)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash((self.module, self.name, self.fields))

    def __repr__(self) -> str:
        return inspect(self)


class HashedTerm:
    """A frozen term with its hash computed once: `freeze` puts one every FAST_DEPTH levels
    of a deep term, so that hashing the whole (Python hashes tuples by hashing their items,
    recursively on the C stack) never goes deeper than that. Encodes as the term it holds,
    compares with `exactly_equal` (without recursion)."""

    __slots__ = ("term", "_hash")
    term: Any
    _hash: int

    def __init__(self, term: Any) -> None:
        object.__setattr__(self, "term", term)
        object.__setattr__(self, "_hash", hash(term))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a HashedTerm is immutable")

    def __hash__(self) -> int:
        return self._hash

    def __eq__(self, other: object) -> bool:
        if isinstance(other, HashedTerm):
            return self._hash == other._hash and exactly_equal(self.term, other.term)
        return exactly_equal(self.term, other)

    def __ne__(self, other: object) -> bool:
        return not self.__eq__(other)

    def __repr__(self) -> str:
        return inspect(self.term)


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
        return inspect(self)


class FrozenDict(dict):
    """A map used as a map key. Hashable; must not be mutated once used as a key."""

    def __hash__(self) -> int:  # type: ignore[override]
        return hash(frozenset(self.items()))


class Map:
    """An Erlang map that a dict cannot hold: its keys include terms the BEAM tells apart but
    Python takes for one key (`1` and `1.0`, `true` and `1`, `0.0` and `-0.0`, or terms
    holding them, such as `{1}` and `{1.0}`), or a key nested too deeply to hash safely
    (`codec.FAST_DEPTH` levels or more). It keeps the pairs in the order they arrived and
    encodes back to the same map. Every other map decodes as a dict.

    Build one to send such a map: `Map([(1, Atom("a")), (1.0, Atom("b"))])`. Lookups compare
    keys as the BEAM's `=:=` does (by type as well as value): `m[1]` and `m[1.0]` differ."""

    __slots__ = ("pairs",)
    pairs: tuple[tuple[Any, Any], ...]

    def __init__(self, pairs: Any = ()) -> None:
        if isinstance(pairs, (dict, Map)):
            pairs = pairs.items()
        object.__setattr__(self, "pairs", tuple((key, value) for key, value in pairs))

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("a Map is immutable")

    def __reduce__(self) -> tuple[Any, ...]:
        return (Map, (self.pairs,))

    def __len__(self) -> int:
        return len(self.pairs)

    def __iter__(self) -> Any:
        return (key for key, _ in self.pairs)

    def keys(self) -> list[Any]:
        return [key for key, _ in self.pairs]

    def values(self) -> list[Any]:
        return [value for _, value in self.pairs]

    def items(self) -> tuple[tuple[Any, Any], ...]:
        return self.pairs

    def __getitem__(self, key: Any) -> Any:
        for candidate, value in self.pairs:
            if exactly_equal(candidate, key):
                return value
        raise KeyError(key)

    def get(self, key: Any, default: Any = None) -> Any:
        try:
            return self[key]
        except KeyError:
            return default

    def __contains__(self, key: Any) -> bool:
        return any(exactly_equal(candidate, key) for candidate, _ in self.pairs)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, Map):
            return NotImplemented
        return len(self.pairs) == len(other.pairs) and exactly_equal(self.pairs, other.pairs)

    def __ne__(self, other: object) -> bool:
        equal = self.__eq__(other)
        return equal if equal is NotImplemented else not equal

    def __hash__(self) -> int:
        return hash(self.pairs)

    def __repr__(self) -> str:
        return inspect(self)


def exactly_equal(a: Any, b: Any) -> bool:
    """Equality as the BEAM's `=:=`: 1 and 1.0 differ, true and 1 differ, 0.0 and -0.0
    differ, inside containers too; lists and FrozenLists of the same items are equal, and so
    are dicts and FrozenDicts. Walks without recursion."""
    pending = [(a, b)]
    while pending:
        a, b = pending.pop()
        if a is b:
            continue
        while a.__class__ is HashedTerm:
            a = a.term
        while b.__class__ is HashedTerm:
            b = b.term
        kind_a, kind_b = _kind(a), _kind(b)
        if kind_a != kind_b:
            return False
        if kind_a == "list" or kind_a == "tuple":
            if len(a) != len(b):
                return False
            pending.extend(zip(a, b))
        elif kind_a == "map":
            if len(a) != len(b):
                return False
            if isinstance(a, Map) or isinstance(b, Map):
                pending.extend(zip(a.items(), b.items()))  # as they arrived: canonical order
            else:
                stored = {key: key for key in b}  # b's own key objects, to compare kinds too
                try:
                    pending.extend((value, b[key]) for key, value in a.items())
                    pending.extend((key, stored[key]) for key in a)
                except KeyError:
                    return False
        elif kind_a == "improper":
            pending.append((a.items, b.items))
            pending.append((a.tail, b.tail))
        elif kind_a == "record":
            if (a.module is not b.module or a.name is not b.name or a.exported != b.exported
                    or [f for f, _ in a.fields] != [f for f, _ in b.fields]):
                return False
            pending.extend(zip([v for _, v in a.fields], [v for _, v in b.fields]))
        elif kind_a == "float":
            if a != b or str(a) != str(b):  # str tells -0.0 from 0.0
                return False
        elif a != b:
            return False
    return True


def _kind(term: Any) -> str:
    if term is True or term is False:
        return "bool"
    if isinstance(term, int):
        return "int"
    if isinstance(term, float):
        return "float"
    if isinstance(term, (list, FrozenList)):
        return "list"
    if isinstance(term, tuple):
        return "tuple"
    if isinstance(term, (dict, Map)):
        return "map"
    if isinstance(term, ImproperList):
        return "improper"
    if isinstance(term, Record):
        return "record"
    return type(term).__name__


class _Text(str):
    """Literal text in inspect's work list (as opposed to a term still to render)."""

    __slots__ = ()


_OPEN_TUPLE, _OPEN_LIST, _OPEN_MAP = _Text("{"), _Text("["), _Text("%{")
_CLOSE_TUPLE, _CLOSE_LIST, _CLOSE_MAP = _Text("}"), _Text("]"), _Text("}")
_COMMA, _ARROW, _BAR, _EQUALS = _Text(", "), _Text(" => "), _Text(" | "), _Text(" = ")


def inspect(term: Any, limit: int | None = None) -> str:
    """Render a term as Elixir's `inspect` would (close enough to read across languages).
    With `limit`, stop after about that many characters and end with "..." (for log lines).
    Walks the term without recursion, so any depth prints."""
    out: list[str] = []
    size = 0
    todo: list[Any] = [term]
    pop, push = todo.pop, todo.extend
    while todo:
        item = pop()
        while item.__class__ is HashedTerm:
            item = item.term
        if item.__class__ is _Text:
            text: str = item
        elif item.__class__ is tuple or (isinstance(item, tuple) and not isinstance(item, FrozenList)):
            push(_sequence(_OPEN_TUPLE, item, _CLOSE_TUPLE))
            continue
        elif isinstance(item, (list, FrozenList)):
            push(_sequence(_OPEN_LIST, item, _CLOSE_LIST))
            continue
        elif isinstance(item, (dict, Map)):
            parts: list[Any] = [_CLOSE_MAP]
            for index, (key, value) in enumerate(reversed(list(item.items()))):
                if index:
                    parts.append(_COMMA)
                parts += (value, _ARROW, key)
            parts.append(_OPEN_MAP)
            push(parts)
            continue
        elif isinstance(item, ImproperList):
            parts = [_CLOSE_LIST, item.tail, _BAR]
            parts += _sequence(_OPEN_LIST, item.items, None)[1:]
            push(parts)
            continue
        elif isinstance(item, Record):  # as the BEAM prints it: #module:name{x = 1, y = 2}
            parts = [_CLOSE_TUPLE]
            for index, (field, value) in enumerate(reversed(item.fields)):
                if index:
                    parts.append(_COMMA)
                parts += (value, _EQUALS, _Text(_record_part(field)))
            parts.append(_Text(f"#{_record_part(item.module)}:{_record_part(item.name)}{{"))
            push(parts)
            continue
        else:
            text = _scalar(item)
        out.append(text)
        size += len(text)
        if limit is not None and size >= limit:
            return "".join(out)[:limit] + "..."
    return "".join(out)


def _sequence(open_: _Text, items: Any, close: _Text | None) -> list[Any]:
    """The work-list entries for `open_ item, item... close`, in reverse (popped from the end)."""
    parts: list[Any] = [close]
    for index, item in enumerate(reversed(items)):
        if index:
            parts.append(_COMMA)
        parts.append(item)
    parts.append(open_)
    return parts


def _record_part(atom: Atom) -> str:
    """A record's module, name or field as Erlang writes it (quoted when it must be)."""
    name = atom.name
    if _PLAIN_ATOM.match(name) and not name.endswith(("?", "!")):
        return name
    return "'" + name.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _scalar(term: Any) -> str:
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
    return repr(term)
