"""Differential test of the term codec against a real BEAM.

tests/beam/term_corpus.erl (run with the `erl` first on PATH, so CI can pick the OTP
release) encodes a corpus of edge cases, terms nested up to 100,000 deep (lists, tuples, maps
by value and by key, improper lists, closures), maps whose keys collide in Python (1 and 1.0,
true and 1, 0.0 and -0.0...) and seeded random terms with term_to_binary, in several
encodings (OTP 25 and 26+ atoms, text floats, compressed). Python decodes and re-encodes
each term; the same BEAM then checks binary_to_term(Python's bytes) =:= Original.
"""

import os
import shutil
import subprocess
import traceback
from pathlib import Path

import pytest

from pykv.term import decode_all, encode

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("codec_implementation")]

CORPUS_SCRIPT = Path(__file__).parent / "beam" / "term_corpus.erl"
MIN_CORPUS = 300
LOAD_AND_RUN = (
    'Src = "{src}", '
    "{{ok, Mod, Bin}} = compile:file(Src, [binary, return_errors]), "
    "{{module, Mod}} = code:load_binary(Mod, Src, Bin), "
    "Mod:main(init:get_plain_arguments())."
)


def _records(data: bytes):
    """Split the corpus file into <<Len:32, Bin>> records, as views of one buffer."""
    view, pos = memoryview(data), 0
    while pos < len(data):
        size = int.from_bytes(view[pos:pos + 4], "big")
        yield view[pos + 4:pos + 4 + size]
        pos += 4 + size


def _round_trip(record) -> bytes:
    try:
        encoded = encode(decode_all(record))
    except Exception:  # reported to the BEAM, which prints it with the original term
        message = traceback.format_exc(limit=3).encode()
        return b"\x01" + len(message).to_bytes(4, "big") + message
    return b"\x00" + len(encoded).to_bytes(4, "big") + encoded


def test_beam_decodes_what_python_reencodes(tmp_path):
    erl = shutil.which("erl")
    if erl is None:
        pytest.skip("no `erl` on PATH: this test needs Erlang/OTP installed")
    corpus_path, result_path = tmp_path / "corpus.bin", tmp_path / "results.bin"
    beam = subprocess.Popen(
        [erl, "-noshell", "-eval", LOAD_AND_RUN.format(src=CORPUS_SCRIPT),
         "-extra", str(corpus_path), str(result_path)],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        encoding="utf-8", errors="replace",  # OTP 25 prints Latin-1 atoms as raw bytes
        env={**os.environ, "ERL_CRASH_DUMP_SECONDS": "0"})
    try:
        output = []
        for line in beam.stdout:
            output.append(line)
            if line.startswith("CORPUS "):
                break
        else:
            pytest.fail("the BEAM did not write its corpus:\n" + "".join(output))
        records = list(_records(corpus_path.read_bytes()))
        assert len(records) == int(line.split()[1])
        result_path.write_bytes(b"".join(_round_trip(record) for record in records))
        beam.stdin.write("checked\n")
        beam.stdin.flush()
        output.append(beam.stdout.read())
        assert beam.wait(timeout=60) == 0, "".join(output)
    finally:
        if beam.poll() is None:
            beam.kill()
            beam.wait()
    report = "".join(output)
    result = [line for line in report.splitlines() if line.startswith("RESULT ")]
    assert result, report
    _, count, problems = result[0].split()
    assert int(problems) == 0, report
    assert int(count) == len(records) >= MIN_CORPUS


@pytest.mark.distributed
def test_deep_terms_colliding_maps_and_records_cross_a_connection_both_ways(cookie):
    """A BEAM node sends each term to a Python process, which sends it back: the BEAM
    compares (===) and the connection stays up throughout. Native records only where the
    BEAM has them (OTP 29+, where they arrive as RECORD_EXT: pykv advertises
    DFLAG_NATIVE_RECORDS, though OTP 29 sends them even to peers that do not)."""
    from conftest import alongside, lit, run, run_elixir, script, unique
    from pykv import Atom, Node

    async def main():
        async with Node(unique("foo"), cookie) as node:
            echo = node.process("echo")

            async def python_side():
                while True:
                    message = await echo.receive(timeout=60)
                    if message == Atom("done"):
                        return
                    sender, term = message
                    echo.send(sender, (Atom("echo"), term))

            r = await alongside(run_elixir(script("""
                py = PY
                true = Node.connect(py)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                nest = fn wrap, n -> Enum.reduce(1..n, [], fn i, acc -> wrap.(acc, i) end) end
                record = fn mod, name, exported, fields ->
                  enc = fn t -> <<131, bin::binary>> = :erlang.term_to_binary(t); bin end
                  :erlang.binary_to_term(IO.iodata_to_binary([131, 67, <<length(fields)::32>>,
                    if(exported, do: 1, else: 0), enc.(mod), enc.(name),
                    Enum.map(fields, fn {f, _} -> enc.(f) end), Enum.map(fields, fn {_, v} -> enc.(v) end)]))
                end
                records =
                  if String.to_integer(System.otp_release()) >= 29 do
                    point = record.(:nr, :point, false, [x: 1, y: 2])
                    [point, record.(:nr, :pub, true, [a: "v", b: :default]), %{point => [point]},
                     nest.(fn acc, i -> record.(:m, :r, false, v: acc, i: i) end, 1000)]
                  else
                    []
                  end
                terms = [
                  nest.(fn acc, _ -> [acc] end, 511), nest.(fn acc, _ -> [acc] end, 100_000),
                  nest.(fn acc, i -> {acc, i} end, 100_000), nest.(fn acc, _ -> %{k: acc} end, 10_000),
                  nest.(fn acc, i -> %{acc => i} end, 1000), nest.(fn acc, _ -> [acc | :tail] end, 100_000),
                  %{1 => :a, 1.0 => :b}, %{true => 1, 1 => 2}, %{0.0 => :a, -0.0 => :b},
                  %{{1} => :a, {1.0} => :b}, [%{[1] => :x, [1.0] => :y}]
                ] ++ records
                for {term, index} <- Enum.with_index(terms) do
                  send({:echo, py}, {self(), term})
                  receive do
                    {:echo, back} -> if back === term, do: :ok, else: IO.puts("MISMATCH #{index}")
                  after 30_000 -> IO.puts("NO ECHO #{index}")
                  end
                end
                send({:echo, py}, :done)
                receive do {:nodedown, ^py, _} -> IO.puts("NODEDOWN") after 0 -> :ok end
                IO.puts("CHECKED #{length(terms)} #{length(records)}")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=120), python_side())
            r.check()
            assert "MISMATCH" not in r.stdout and "NO ECHO" not in r.stdout and "NODEDOWN" not in r.stdout, r.stdout
            assert "CHECKED" in r.stdout, r.stdout
            print(r.stdout)
    run(main(), timeout=150)


@pytest.mark.distributed
def test_a_peer_past_the_atom_table_bound_loses_its_connection_not_the_node(cookie, caplog):
    """New atoms past set_max_atoms close the connection that brought them (logged); the
    node goes on serving, that peer too once it connects again."""
    from conftest import alongside, lit, run, run_elixir, script, unique
    from pykv import Atom, Node
    from pykv.term import atom_count, set_max_atoms

    async def main():
        async with Node(unique("foo"), cookie) as node:
            inbox = node.process("inbox")
            beam_side = run_elixir(script("""
                py = PY
                true = Node.connect(py)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:inbox, py}, {:ready, self()})
                receive do :go -> :ok after 20_000 -> raise "no go" end
                send({:inbox, py}, Enum.map(1..200, &String.to_atom("fresh_atom_#{&1}_#{System.unique_integer()}")))
                receive do {:nodedown, ^py, _} -> IO.puts("NODEDOWN") after 10_000 -> raise "still connected" end
                :pong = Node.ping(py)
                send({:inbox, py}, {:ready, self()})  # atoms it knows still arrive
                receive do :welcome -> IO.puts("SERVED AGAIN") after 10_000 -> raise "not served" end
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)

            async def python_side():
                ready, beam = await inbox.receive(timeout=30)
                go, welcome = Atom("go"), Atom("welcome")  # (made before the table fills)
                previous = set_max_atoms(atom_count() + 50)
                try:
                    inbox.send(beam, go)
                    again, beam = await inbox.receive(timeout=30)
                    assert again is Atom("ready")
                    inbox.send(beam, welcome)
                finally:
                    set_max_atoms(previous)

            r = await alongside(beam_side, python_side())
            r.check()
            assert "NODEDOWN" in r.stdout and "SERVED AGAIN" in r.stdout, r.stdout
    run(main())
    assert any("past the atom table's bound" in record.getMessage() for record in caplog.records)
