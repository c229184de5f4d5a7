"""`python -m bench.workers`: a CPU-bound export from 50 concurrent BEAM callers.

The same work, a loop calibrated to take about 10 ms on one core, served four ways: by a
BEAM node (Elixir), and by a Python node as an export in a thread (one GIL), in one worker
process, and in one worker process per core. Prints calls/s for each; on N cores the ideal is
N / 10 ms. Every node it starts is stopped at the end.

    python -m bench.workers [--callers 50] [--seconds 5] [--ms 10]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import secrets
import shutil
import sys
import textwrap
import time

from pykv import Atom, Node
from pykv.otp import rpc


def spin(n: int) -> int:
    """The work: n rounds of integer arithmetic (module level: workers import it)."""
    x = 0
    for i in range(n):
        x = (x * 31 + i) & 0xFFFF
    return x


def _calibrate_python(ms: float) -> int:
    """Rounds that take `ms` on one core: the fastest of several runs, as a busy machine
    only makes runs slower."""
    n = 10_000
    while True:
        took = min(_timed(spin, n) for _ in range(5))
        if took > 0.05:
            return max(1, int(n * ms / 1000 / took))
        n *= 2


def _timed(fn, *args) -> float:  # type: ignore[no-untyped-def]
    start = time.perf_counter()
    fn(*args)
    return time.perf_counter() - start


ELIXIR = """
defmodule CpuBench do
  def spin(n), do: spin(n, 0, 0)
  defp spin(0, _i, x), do: x
  defp spin(n, i, x), do: spin(n - 1, i + 1, Bitwise.band(x * 31 + i, 0xFFFF))

  def calibrate(ms) do
    Stream.iterate(10_000, &(&1 * 2))
    |> Enum.find_value(fn n ->
      us = Enum.min(for _ <- 1..5, do: elem(:timer.tc(fn -> spin(n) end), 0))
      if us > 50_000, do: max(1, div(n * ms * 1000, us))
    end)
  end

  # `callers` processes call `node` for `seconds`; prints the number of calls that returned
  def load(node, mod, n, callers, seconds) do
    deadline = System.monotonic_time(:millisecond) + seconds * 1000
    me = self()
    for _ <- 1..callers do
      spawn(fn -> send(me, {:done, loop(node, mod, n, deadline, 0)}) end)
    end
    total = Enum.sum(for _ <- 1..callers, do: (receive do {:done, c} -> c end))
    IO.puts("CALLS #{total}")
  end

  defp loop(node, mod, n, deadline, count) do
    if System.monotonic_time(:millisecond) >= deadline do
      count
    else
      :erpc.call(node, mod, :spin, [n], 60_000)
      loop(node, mod, n, deadline, count + 1)
    end
  end
end
"""


async def _elixir(name: str, cookie: str, body: str, *, no_halt: bool = False) -> asyncio.subprocess.Process:
    code = ELIXIR + textwrap.dedent(body)
    args = ["--no-halt"] if no_halt else []
    return await asyncio.create_subprocess_exec(
        shutil.which("elixir") or "elixir", "--sname", name, "--cookie", cookie, *args, "-e", code,
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)


async def _load(target: str, module: str, n: int, cookie: str, callers: int, seconds: float) -> float:
    client = await _elixir(f"client{secrets.token_hex(3)}", cookie,
                           f'CpuBench.load(:"{target}", {module}, {n}, {callers}, {seconds})')
    out, _ = await client.communicate()
    for line in out.decode().splitlines():
        if line.startswith("CALLS "):
            return int(line.split()[1]) / seconds
    raise RuntimeError(f"the load client failed:\n{out.decode()}")


async def main(callers: int, seconds: float, ms: float) -> None:
    cookie = "bench-" + secrets.token_hex(8)
    cores = os.cpu_count() or 1
    host = Node(f"probe{secrets.token_hex(2)}", cookie).name.name.partition("@")[2]
    bar_name = f"bar{secrets.token_hex(3)}"
    bar = await _elixir(bar_name, cookie, "", no_halt=True)
    n_py = _calibrate_python(ms)
    results: list[tuple[str, float]] = []
    try:
        async with Node(f"foo{secrets.token_hex(3)}", cookie) as probe:
            for _ in range(100):
                if await probe.ping(f"{bar_name}@{host}", timeout=1):
                    break
                await asyncio.sleep(0.2)
            for _ in range(100):  # the node answers pings before its script has run
                if await rpc.call(probe, f"{bar_name}@{host}", "Code", "ensure_loaded?", [Atom("Elixir.CpuBench")]):
                    break
                await asyncio.sleep(0.2)
            n_ex = await rpc.call(probe, f"{bar_name}@{host}", "CpuBench", "calibrate", [int(ms)], timeout=60)
        rate = await _load(f"{bar_name}@{host}", "CpuBench", n_ex, cookie, callers, seconds)
        results.append((f"BEAM node (Elixir), {cores} schedulers", rate))
        for label, kwargs in (("Python, a thread per call (one GIL)", {"blocking": True}),
                              ("Python, 1 worker process", {"workers": 1}),
                              (f"Python, {cores} worker processes (one per core)", {"workers": cores})):
            workers = kwargs.get("workers")
            async with Node(f"foo{secrets.token_hex(3)}", cookie, workers=workers or 1,
                            threads=max(16, callers)) as foo:
                foo.exports.add("CpuBench", "spin", spin, workers=workers is not None)
                if workers:
                    await foo.exports.workers.start()
                rate = await _load(foo.name.name, "CpuBench", n_py, cookie, callers, seconds)
            results.append((label, rate))
    finally:
        bar.kill()
        await bar.wait()
    ideal = cores * 1000 / ms
    print(f"\n{ms:.0f} ms CPU-bound export, {callers} concurrent BEAM callers, {seconds:.0f} s each "
          f"({cores} cores: ideal {ideal:.0f} calls/s)")
    for label, rate in results:
        print(f"  {label:<48} {rate:8.1f} calls/s  ({rate / ideal:.2f} of ideal)")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m bench.workers", description=__doc__.splitlines()[0])
    parser.add_argument("--callers", type=int, default=50)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--ms", type=float, default=10.0)
    a = parser.parse_args()
    asyncio.run(main(a.callers, a.seconds, a.ms))
    sys.exit(0)
