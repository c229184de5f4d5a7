"""Erlang term files, read as `file:consult/1` reads them: terms, each ended by a dot.

A small, strict reader for configuration such as erl's `-ssl_dist_optfile`: lists (proper,
and `[H | T]` with a list tail), tuples, atoms (bare and 'quoted'), "strings", binaries
(`<<"text">>`, `<<1, 2, 3>>`), integers (`42`, `-7`, `16#ff`, `$a`), floats, and `%`
comments. Anything else (a variable, a map, a fun, an expression) is an error that names
its line, as the BEAM would refuse it.

What it returns: an atom is an `Atom`, a string a `str` (Erlang's list of characters; the
empty string and `[]` are the same term there, and are both `[]` here), a list a `list`,
a tuple a `tuple`, a binary `bytes`.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from ..term import Atom

MAX_FILE = 1024 * 1024  # a configuration file, not a data set
MAX_DEPTH = 100


class ConsultError(ValueError):
    """A file that is not Erlang terms: the message names the file and the line."""


_TOKEN = re.compile(r"""
    (?P<space>[ \t\r\n\f\v]+)
  | (?P<comment>%[^\n]*)
  | (?P<float>[0-9]+\.[0-9]+(?:[eE][-+]?[0-9]+)?)
  | (?P<based>[0-9]+\#[0-9a-zA-Z]+)
  | (?P<int>[0-9]+)
  | (?P<char>\$(?:\\(?:x\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|[0-7]{1,3}|\^.|.)|.))
  | (?P<atom>[a-z][a-zA-Z0-9_@]*)
  | (?P<quoted>'(?:[^'\\]|\\.)*')
  | (?P<string>"(?:[^"\\]|\\.)*")
  | (?P<var>[A-Z_][a-zA-Z0-9_@]*)
  | (?P<punct><<|>>|[][{},.|\-])
""", re.VERBOSE | re.DOTALL)

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r", "s": " ", "e": "\x1b", "d": "\x7f", "b": "\b",
            "f": "\f", "v": "\v", "\\": "\\", "'": "'", '"': '"'}
_ESCAPE = re.compile(r"\\(x\{[0-9a-fA-F]+\}|x[0-9a-fA-F]{2}|[0-7]{1,3}|\^.|.)", re.DOTALL)


def _unescape(body: str) -> str:
    def one(m: re.Match[str]) -> str:
        e = m.group(1)
        if e.startswith("x{"):
            return chr(int(e[2:-1], 16))
        if e[0] == "x" and len(e) == 3:
            return chr(int(e[1:], 16))
        if e[0] in "01234567":
            return chr(int(e, 8))
        if e[0] == "^":
            return chr(ord(e[1]) % 32)
        return _ESCAPES.get(e, e)
    return _ESCAPE.sub(one, body)


class _Reader:
    def __init__(self, text: str, source: str) -> None:
        self.source = source
        self.tokens: list[tuple[str, str, int]] = []  # (kind, text, line)
        line, pos = 1, 0
        while pos < len(text):
            m = _TOKEN.match(text, pos)
            if m is None:
                raise self.error(line, f"unexpected character {text[pos]!r}")
            kind = m.lastgroup or ""
            if kind not in ("space", "comment"):
                self.tokens.append((kind, m.group(), line))
            line += m.group().count("\n")
            pos = m.end()
        self.end_line = line
        self.at = 0

    def error(self, line: int, what: str) -> ConsultError:
        return ConsultError(f"{self.source}:{line}: {what}")

    def peek(self) -> tuple[str, str, int]:
        if self.at < len(self.tokens):
            return self.tokens[self.at]
        return ("end", "", self.end_line)

    def take(self) -> tuple[str, str, int]:
        token = self.peek()
        self.at += 1
        return token

    def expect(self, text: str) -> None:
        kind, got, line = self.take()
        if got != text or kind not in ("punct",):
            raise self.error(line, f"expected '{text}', got {_shown(kind, got)}")

    def terms(self) -> list[Any]:
        out = []
        while self.peek()[0] != "end":
            out.append(self.term(0))
            kind, got, line = self.take()
            if got != "." or kind != "punct":
                raise self.error(line, f"expected '.' after a term, got {_shown(kind, got)}")
        return out

    def term(self, depth: int) -> Any:
        if depth > MAX_DEPTH:
            raise self.error(self.peek()[2], f"terms nested deeper than {MAX_DEPTH}")
        kind, text, line = self.take()
        if kind == "atom":
            return Atom(text)
        if kind == "quoted":
            return Atom(_unescape(text[1:-1]))
        if kind == "string":
            value = _unescape(text[1:-1])
            while self.peek()[0] == "string":  # "ab" "cd" is "abcd", as in Erlang source
                value += _unescape(self.take()[1][1:-1])
            return value if value else []
        if kind in ("int", "based", "char", "float"):
            return _number(kind, text)
        if kind == "punct" and text == "-" and self.peek()[0] in ("int", "based", "float", "char"):
            nkind, ntext, _ = self.take()
            return -_number(nkind, ntext)
        if kind == "punct" and text == "[":
            return self.list_(depth, line)
        if kind == "punct" and text == "{":
            items = self.sequence("}", depth)
            return tuple(items)
        if kind == "punct" and text == "<<":
            return self.binary(line)
        if kind == "var":
            raise self.error(line, f"a variable ({text}) is not a term: quote it ('{text}') for an atom")
        raise self.error(line, f"expected a term, got {_shown(kind, text)}")

    def sequence(self, close: str, depth: int) -> list[Any]:
        items: list[Any] = []
        if self.peek()[1] == close:
            self.take()
            return items
        while True:
            items.append(self.term(depth + 1))
            kind, text, line = self.take()
            if text == close and kind == "punct":
                return items
            if text != "," or kind != "punct":
                raise self.error(line, f"expected ',' or '{close}', got {_shown(kind, text)}")

    def list_(self, depth: int, line: int) -> list[Any]:
        items: list[Any] = []
        if self.peek()[1] == "]":
            self.take()
            return items
        while True:
            items.append(self.term(depth + 1))
            kind, text, at = self.take()
            if kind == "punct" and text == "]":
                return items
            if kind == "punct" and text == "|":
                tail = self.term(depth + 1)
                self.expect("]")
                if isinstance(tail, str):
                    tail = [ord(c) for c in tail]
                if not isinstance(tail, list):
                    raise self.error(at, "an improper list (its tail is not a list)")
                return items + tail
            if kind != "punct" or text != ",":
                raise self.error(at, f"expected ',', '|' or ']', got {_shown(kind, text)}")

    def binary(self, line: int) -> bytes:
        out = bytearray()
        if self.peek()[1] == ">>":
            self.take()
            return bytes(out)
        while True:
            kind, text, at = self.take()
            if kind == "string":
                out += _unescape(text[1:-1]).encode()
            elif kind in ("int", "based", "char"):
                value = _number(kind, text)
                if not 0 <= value <= 255:
                    raise self.error(at, f"a binary's byte is 0..255, not {value}")
                out.append(value)
            else:
                raise self.error(at, f"a binary holds strings and bytes here, got {_shown(kind, text)}")
            kind, text, at = self.take()
            if text == ">>":
                return bytes(out)
            if text != ",":
                raise self.error(at, f"expected ',' or '>>' in a binary, got {_shown(kind, text)}")


def _number(kind: str, text: str) -> Any:
    if kind == "int":
        return int(text)
    if kind == "float":
        return float(text)
    if kind == "char":
        body = text[1:]
        return ord(_unescape(body) if body.startswith("\\") else body)
    base, _, digits = text.partition("#")
    try:
        return int(digits, int(base))
    except ValueError:
        raise ConsultError(f"bad integer {text!r}") from None


def _shown(kind: str, text: str) -> str:
    if kind == "end":
        return "the end of the file"
    return repr(text[:40])


def parse(text: str, source: str = "<string>") -> list[Any]:
    """The terms of `text`, as `file:consult` would return them."""
    reader = _Reader(text, source)
    return reader.terms()


def consult(path: "str | Path") -> list[Any]:
    """The terms of the file at `path`; ConsultError (or OSError) says why not."""
    path = Path(path)
    with open(path, "rb") as f:
        data = f.read(MAX_FILE + 1)
    if len(data) > MAX_FILE:
        raise ConsultError(f"{path}: larger than {MAX_FILE} bytes: not a configuration file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = data.decode("latin-1")  # what file:consult falls back to
    return parse(text, str(path))
