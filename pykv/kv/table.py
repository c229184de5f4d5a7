"""The routing table: ordered, inclusive ranges of a bucket name's first byte, each naming
the node that owns those buckets (the seed's `[{?a..?m, :"foo@host"}, {?n..?z, :"bar@host"}]`).

Written as `a-m=foo` (a range), `x=foo` (one character); a node without `@` is on this host:
`foo` is foo@ this node's own host part, whole (`foo@hosta.example.com`, `foo@10.1.2.3` for a
long-named node, `foo@hosta` for a short-named one), as elixir_peer's KV.RoutingTable does. A
node of the other name kind (`bar@hostb` beside long names) could never be connected to
(dist/names.py), so a table naming one is refused at once. A TOML file holds the same under
`[routes]`: `"a-m" = "foo"`.
"""

from __future__ import annotations

import tomllib
from dataclasses import dataclass
from pathlib import Path

from ..dist import names
from ..term import Atom


@dataclass(frozen=True)
class Route:
    first: int
    last: int
    node: Atom

    def __repr__(self) -> str:  # as Elixir inspects `{97..109, :"foo@host"}`
        return f"{{{self.first}..{self.last}, {self.node!r}}}"


class TableError(ValueError):
    pass


def qualify(node: str, host: str, longnames: bool | None = None) -> Atom:
    """`bar` -> bar@host (this node's host part); `bar@otherhost` as it is, when this node
    (long names or not; None: as `host` says) can dial it."""
    if "@" not in node:
        return Atom(f"{node}@{host}")
    kind = names.is_long(host) if longnames is None else longnames
    try:
        names.dialable(node, kind, family=None)
    except names.NodeNameError as e:
        raise TableError(f"{node} cannot be reached from a node with {'long' if kind else 'short'} "
                         f"names: {' '.join(str(e).split())}") from None
    return Atom(node)


def parse_route(text: str, host: str, longnames: bool | None = None) -> Route:
    """`a-m=foo`, `n-z=bar@otherhost`, `x=foo`."""
    spec, sep, node = text.partition("=")
    if not sep or not node or not spec:
        raise TableError(f"bad route {text!r}: expected RANGE=NODE, e.g. a-m=foo")
    if len(spec) == 1:
        first = last = spec
    elif len(spec) == 3 and spec[1] == "-":
        first, last = spec[0], spec[2]
    else:
        raise TableError(f"bad range {spec!r} in {text!r}: expected one character or FIRST-LAST, e.g. a-m")
    lo, hi = ord(first), ord(last)
    if hi > 255:
        raise TableError(f"range {spec!r} is beyond one byte: buckets route on their first byte")
    if lo > hi:
        raise TableError(f"range {spec!r} is empty: {first!r} comes after {last!r}")
    return Route(lo, hi, qualify(node, host, longnames))


def parse_table(routes: list[str], host: str, longnames: bool | None = None) -> list[Route]:
    return [parse_route(r, host, longnames) for r in routes]


def load_toml(path: str | Path, host: str, longnames: bool | None = None) -> list[Route]:
    with open(path, "rb") as f:
        try:
            data = tomllib.load(f)
        except tomllib.TOMLDecodeError as e:
            raise TableError(f"{path}: {e}") from None
    routes = data.get("routes")
    if not isinstance(routes, dict) or not routes:
        raise TableError(f"{path}: expected a [routes] table such as \"a-m\" = \"foo\"")
    return [parse_route(f"{spec}={node}", host, longnames) for spec, node in routes.items()]


def everything_to(node: Atom) -> list[Route]:
    """The default: this node owns every bucket."""
    return [Route(0, 255, node)]
