"""`python -m bench.atom_cache`: what sending with the atom cache could give.

With DIST_HDR_ATOM_CACHE a sender lists a message's atoms in its distribution header and
refers to them by index (ATOM_CACHE_REF); after the first message an atom costs its peer
an array lookup instead of reading its text. pykv does not send that way: this measures the
most it could give, on the BEAM that receives, and what receiving it costs pykv.

1. BEAM side: a pykv node blasts N pre-encoded messages (REG_SEND of a gen_server reply-like
   tuple, four atoms and a pid) at a BEAM process, in each framing: 112 pass-through frames,
   the header without refs (what pykv sends), the header with refs (what sending with the cache
   would send, frames made by bench/atom_cache_frames.py). The BEAM process reports the time
   from the first message to the last: its receive rate is the upper bound of the gain.
2. pykv side: `python -m bench.hotpath --framing atom-cache` (receiving frames with refs).

    python -m bench.atom_cache [-n 200000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import textwrap

from pykv import Atom, Node
from pykv.dist import flags as F
from pykv.dist.framing import Framing
from pykv.term import Pid

from .atom_cache_frames import AtomCacheFrames

VARIANTS = {
    "pass-through (112)": F.OURS & ~(F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE),
    "header, no refs (pykv's)": F.OURS,
    "header with atom cache refs": F.OURS | F.DIST_HDR_ATOM_CACHE,
}

SINK = """
defmodule Sink do
  def loop(0), do: :ok
  def loop(k), do: (receive do {:reply, _, _, _} -> loop(k - 1) end)
end
n = String.to_integer(System.get_env("BENCH_N"))
Process.register(self(), :sink)
IO.puts("ready")
receive do {:reply, _, _, _} -> :ok end
t0 = System.monotonic_time(:microsecond)
Sink.loop(n - 1)
IO.puts("RESULT #{System.monotonic_time(:microsecond) - t0}")
"""


async def one_round(flags: int, n: int) -> float:
    cookie = "bench-" + secrets.token_hex(6)
    node = Node("acbench" + secrets.token_hex(3), cookie=cookie)
    node.flags = flags | (node.flags & F.PUBLISHED)
    beam = "acsink" + secrets.token_hex(3)
    with tempfile.NamedTemporaryFile("w", suffix=".exs", delete=False) as f:
        f.write(textwrap.dedent(SINK))
    proc = await asyncio.create_subprocess_exec(
        shutil.which("elixir") or "elixir", "--sname", beam, "--cookie", cookie, "--hidden",
        "-e", f'Code.eval_file("{f.name}")', env={**os.environ, "BENCH_N": str(n)},
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        async with node:
            assert proc.stdout is not None
            line = await asyncio.wait_for(proc.stdout.readline(), 60)
            assert line.strip() == b"ready", line
            peer = f"{beam}@{node.name.name.split('@')[1]}"
            await node.connect(peer)
            conn = node.peers[Atom(peer)].conn
            assert conn is not None and conn.flags & F.DIST_HDR_ATOM_CACHE == flags & F.DIST_HDR_ATOM_CACHE
            sender = Pid(node.name, 7, 0, node.creation)
            control = (6, sender, Atom(""), Atom("sink"))
            payload = (Atom("reply"), Atom("ok"), sender, (Atom("value"), Atom("Elixir.KV.Bucket"), 42))
            if flags & F.DIST_HDR_ATOM_CACHE:
                encoder = AtomCacheFrames()
                frames = [encoder.message(control, payload) for _ in range(n)]
                assert frames[1][6] != 0 and frames[1] == frames[2]  # refs, all old after the first
            else:
                frame = bytes(Framing(flags).message(control, payload))  # type: ignore[arg-type]
                frames = [frame] * n
            blob = b"".join(frames)
            assert conn.transport is not None
            conn.transport.write(blob)
            out = await asyncio.wait_for(proc.stdout.read(), 300)
        for text in out.decode().splitlines():
            if text.startswith("RESULT "):
                return int(text.split()[1]) / 1e6
        raise RuntimeError(f"the BEAM sink gave no result:\n{out.decode()}")
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()
        os.unlink(f.name)


async def main_async(n: int, rounds: int) -> None:
    otp = subprocess.run(["erl", "-noshell", "-eval",
                          'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
                         capture_output=True, text=True).stdout
    print(f"BEAM receiving {n} messages from pykv (OTP {otp}), best and median of {rounds} rounds")
    times: dict[str, list[float]] = {label: [] for label in VARIANTS}
    for _ in range(rounds):  # the variants in turn, so that the machine's load weighs on each
        for label, flags in VARIANTS.items():
            times[label].append(await one_round(flags, n))
    for label, taken in times.items():
        best, median = min(taken), statistics.median(taken)
        print(f"  {label:30} {n / best:>10,.0f} msgs/s best, {n / median:>10,.0f} median "
              f"({median / n * 1e6:.2f} µs per message)")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.atom_cache", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("-n", type=int, default=200_000)
    p.add_argument("--rounds", type=int, default=3)
    args = p.parse_args()
    asyncio.run(main_async(args.n, args.rounds))


if __name__ == "__main__":
    sys.exit(main())
