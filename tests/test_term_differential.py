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
