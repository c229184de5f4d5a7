"""pykv.dist.consult: Erlang term files as file:consult reads them, and what it refuses."""

from __future__ import annotations

import shutil
import subprocess

import pytest

from pykv.dist.consult import ConsultError, consult, parse
from pykv.term import Atom


def test_terms_of_an_optfile():
    text = """
    % the cluster's TLS options
    [{server, [{certfile, "/etc/ssl/node.pem"},   % the node's certificate
               {verify, verify_peer}, {fail_if_no_peer_cert, true},
               {versions, ['tlsv1.2', 'tlsv1.3']}]},
     {client, [{depth, 2}, {password, <<"s3cret">>}]}].
    """
    assert parse(text) == [[
        (Atom("server"), [(Atom("certfile"), "/etc/ssl/node.pem"), (Atom("verify"), Atom("verify_peer")),
                          (Atom("fail_if_no_peer_cert"), Atom("true")),
                          (Atom("versions"), [Atom("tlsv1.2"), Atom("tlsv1.3")])]),
        (Atom("client"), [(Atom("depth"), 2), (Atom("password"), b"s3cret")]),
    ]]


@pytest.mark.parametrize("text, term", [
    ("foo.", Atom("foo")),
    ("'Foo bar'.", Atom("Foo bar")),
    ("'it''s'.", None),  # two quoted atoms side by side: not a term
    ("node@host.", Atom("node@host")),
    ('"a\\nb\\"c\\x41\\101\\s".', 'a\nb"cAA '),
    ('"ab" "cd".', "abcd"),
    ('"".', []),
    ("[].", []),
    ("{}.", ()),
    ("[1, 2 | [3]].", [1, 2, 3]),
    ('[$a | "bc"].', [97, 98, 99]),
    ("<<>>.", b""),
    ('<<"ab", 0, 255, $c>>.', b"ab\x00\xffc"),
    ("-42.", -42),
    ("16#ff.", 255),
    ("2#101.", 5),
    ("$\\n.", 10),
    ("1.5e3.", 1500.0),
    ("{a, {b, [c]}}.", (Atom("a"), (Atom("b"), [Atom("c")]))),
])
def test_one_term(text, term):
    if term is None:
        with pytest.raises(ConsultError):
            parse(text)
    else:
        assert parse(text) == [term]


def test_several_terms_and_comments():
    assert parse("a. % one\n{b}. %% two\n\n[c].\n") == [Atom("a"), (Atom("b"),), [Atom("c")]]
    assert parse("") == []
    assert parse("% only a comment\n") == []


@pytest.mark.parametrize("text, message", [
    ("{a, B}.", r"f\.conf:1: a variable \(B\) is not a term"),
    ("[a,\n b\n", r"f\.conf:3: expected ',', '\|' or '\]', got the end of the file"),
    ("{a, b}", r"f\.conf:1: expected '\.' after a term, got the end of the file"),
    ("\n\n#{a => 1}.", r"f\.conf:3: unexpected character '#'"),
    ("{a,, b}.", r"f\.conf:1: expected a term, got ','"),
    ("[a | b].", r"improper list"),
    ("<<256>>.", r"0\.\.255"),
    ("<<a>>.", r"a binary holds strings and bytes"),
    ("fun() -> ok end.", r"unexpected character '\('"),
    ('"unterminated.', r"unexpected character '\"'"),
    ("[" * 200 + "]" * 200 + ".", r"nested deeper than"),
])
def test_errors_name_the_line(text, message):
    with pytest.raises(ConsultError, match=message):
        parse(text, "f.conf")


def test_a_file(tmp_path):
    path = tmp_path / "opts.conf"
    path.write_text("[{server, [{certfile, \"x.pem\"}]}].\n")
    assert consult(path) == [[(Atom("server"), [(Atom("certfile"), "x.pem")])]]
    path.write_bytes(b"'caf\xe9'.")  # latin-1, as file:consult falls back to
    assert consult(path) == [Atom("café")]
    with pytest.raises(OSError):
        consult(tmp_path / "missing.conf")
    big = tmp_path / "big.conf"
    big.write_text("a." + " " * (1024 * 1024))
    with pytest.raises(ConsultError, match="larger than"):
        consult(big)


@pytest.mark.skipif(shutil.which("erl") is None, reason="no erl to compare with")
def test_the_beam_reads_the_same_terms(tmp_path):
    """file:consult on the same text: the same terms (as the BEAM prints them)."""
    text = ('[{server, [{certfile, "/p/n.pem"}, {versions, [\'tlsv1.2\']}, {depth, -3}, {x, 16#1f}]},'
            ' {client, [{password, <<"pw">>}, {c, $a}, {l, [1 | [2]]}, {t, {}}, {\'Q\', ""}]}].\n')
    path = tmp_path / "same.conf"
    path.write_text(text)
    beam = subprocess.run(["erl", "-noshell", "-eval",
                           f'{{ok, [T]}} = file:consult("{path}"), io:format("~w", [T]), halt().'],
                          capture_output=True, text=True, timeout=60)
    assert beam.returncode == 0, beam.stderr
    assert beam.stdout == _w(parse(text)[0])


def _w(term) -> str:
    """A term as io:format's ~w writes it."""
    import re
    if isinstance(term, Atom):
        return term.name if re.fullmatch(r"[a-z][a-zA-Z0-9_@]*", term.name) else f"'{term.name}'"
    if isinstance(term, str):
        return "[" + ",".join(str(ord(c)) for c in term) + "]"
    if isinstance(term, list):
        return "[" + ",".join(_w(t) for t in term) + "]"
    if isinstance(term, tuple):
        return "{" + ",".join(_w(t) for t in term) + "}"
    if isinstance(term, bytes):
        return "<<" + ",".join(str(b) for b in term) + ">>"
    return str(term)
