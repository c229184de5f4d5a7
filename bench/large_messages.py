"""`python -m bench.large_messages`: small calls while a 200 MB message flows, pykv beside the BEAM.

A large message on a connection must not hold up the rest (issue 10 item 4: fragments), nor
the node's other peers (issue 9 item 5: the event loop), and receiving it must not take much
more memory than twice its size. Nodes, with fresh names and cookie:

- `foo`: a pykv node (this module run with --serve, in a process of its own) exporting
  Bench.size/1 (the byte size of its argument) and Bench.big/1 (a binary of that many bytes);
- `y`: a BEAM node, the same calls as :erlang.byte_size/1 and :binary.copy/2;
- `x`: the BEAM client: against foo and then y, it measures `:erpc.call(T, :erlang, :node, [])`
  one at a time, alone (baseline), then while a 200 MB binary goes to T (`size([big])`) and
  while one comes from T (`big(n)`), on the same connection as the 200 MB;
- `z`: another BEAM node making the same small calls to T at the same time over its own
  connection: "the other peers".

For foo and y, the peak RSS during each transfer (VmHWM, reset before it) is read from /proc.

    python -m bench.large_messages                       # 200 MB, pykv and BEAM
    python -m bench.large_messages --size 50000000 --pykv /path/to/other/checkout

Latencies are measured on the BEAM side (x and z), the same code for both targets. The
machine is shared: compare pykv and BEAM from one run.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent

CLIENT = """
defmodule Lat do
  def small(t), do: :erpc.call(t, :erlang, :node, [], 10_000)

  def sample(t) do
    t0 = System.monotonic_time(:microsecond)
    small(t)
    System.monotonic_time(:microsecond) - t0
  end

  def until_done(t, ref, acc) do
    receive do
      {^ref, result} -> {result, acc}
    after 0 -> until_done(t, ref, [sample(t) | acc])
    end
  end

  def summary(samples) do
    s = Enum.sort(samples)
    n = length(s)
    at = fn q -> Enum.at(s, min(n - 1, trunc(n * q))) end
    %{n: n, p50: at.(0.5), p99: at.(0.99), max: List.last(s)}
  end

  def phase(name) do
    IO.puts("BEGIN #{name}")
    "go\\n" = IO.gets("")
  end

  def done(name, data) do
    IO.puts("RESULT " <> Json.encode(Map.put(data, :phase, name)))
    IO.puts("END #{name}")
    "go\\n" = IO.gets("")
  end
end

defmodule Json do
  def encode(m) when is_map(m), do: "{" <> Enum.map_join(m, ",", fn {k, v} -> ~s("#{k}":) <> encode(v) end) <> "}"
  def encode(v) when is_integer(v), do: Integer.to_string(v)
  def encode(v), do: ~s("#{v}")
end

[size_s, py_s, beam_s, z_s] = System.argv()
size = String.to_integer(size_s)
z = {:z, String.to_atom(z_s)}
targets = [pykv: {String.to_atom(py_s), Bench, Bench, :size, :big},
           beam: {String.to_atom(beam_s), :erlang, :binary, :byte_size, :copy}]
big = :binary.copy(<<7>>, size)
for {label, {t, size_mod, big_mod, size_fun, big_fun}} <- targets do
  true = Node.connect(t)
  for _ <- 1..200, do: Lat.small(t)           # warm up
  Lat.phase("#{label} baseline")
  base = for _ <- 1..2000, do: Lat.sample(t)
  Lat.done("#{label} baseline", Lat.summary(base))
  for dir <- [:to, :from] do
    name = "#{label} #{dir}"
    Lat.phase(name)
    send(z, {:start, self(), t})
    parent = self()
    ref = make_ref()
    t0 = System.monotonic_time(:microsecond)
    spawn_link(fn ->
      r = case dir do
        :to -> :erpc.call(t, size_mod, size_fun, [big], :infinity)
        :from -> byte_size(apply(:erpc, :call, [t, big_mod, big_fun, (if big_mod == :binary, do: [<<7>>, size], else: [size]), :infinity]))
      end
      send(parent, {ref, {r, System.monotonic_time(:microsecond) - t0}})
    end)
    {{^size, took}, same} = Lat.until_done(t, ref, [])
    send(z, :stop)
    others = receive do {:z_samples, s} -> s end
    Lat.done(name, %{transfer_ms: div(took, 1000), same: Lat.summary(same), others: Lat.summary(others)}
             |> Enum.flat_map(fn {k, %{} = v} -> Enum.map(v, fn {k2, v2} -> {"#{k}_#{k2}", v2} end); kv -> [kv] end)
             |> Map.new())
  end
end
send(z, :quit)
"""

OTHER_PEER = """
defmodule Z do
  def idle do
    receive do
      {:start, from, t} -> loop(from, t, [])
      :quit -> :ok
    end
  end

  def loop(from, t, acc) do
    receive do
      :stop -> send(from, {:z_samples, acc}); idle()
    after 0 ->
      t0 = System.monotonic_time(:microsecond)
      :erpc.call(t, :erlang, :node, [], 10_000)
      loop(from, t, [System.monotonic_time(:microsecond) - t0 | acc])
    end
  end
end
Process.register(self(), :z)
IO.puts("ready")
Z.idle()
"""


# -- the pykv node (--serve) ---------------------------------------------------------------------

def serve(sname: str, cookie: str) -> None:
    from pykv import Node
    from pykv.loop import loop_factory

    if os.environ.get("BENCH_STALLS"):  # say how long the loop's longest callbacks took
        loop_stalls()

    async def main() -> None:
        node = Node(sname, cookie, busy_wait=0.001)  # as `python -m pykv` runs by default

        @node.export("Bench", "size")
        async def size(data: bytes) -> int:
            return len(data)

        @node.export("Bench", "big")
        async def big(n: int) -> bytes:
            return b"\7" * n

        async with node:
            print("ready", flush=True)
            await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)

    with asyncio.Runner(loop_factory=loop_factory("auto")) as runner:
        runner.run(main())


def loop_stalls() -> None:
    """Log each handling of received data that held the loop for more than 20 ms."""
    import pykv.dist.connection as connection

    received = connection.Connection.data_received

    def timed(self: Any, data: bytes) -> None:
        t0 = time.perf_counter()
        received(self, data)
        took = time.perf_counter() - t0
        if took > 0.02:
            print(f"stall {took * 1000:.0f} ms handling {len(data)} bytes", file=sys.stderr, flush=True)

    connection.Connection.data_received = timed  # type: ignore[method-assign]


# -- the run ------------------------------------------------------------------------------------

def vm(pid: int, field: str) -> int:
    """A VmXXX line of /proc/PID/status, in bytes."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return 0


def beam_pid(pid: int) -> int:
    """The beam.smp below an `elixir` launcher."""
    from .cluster import _descendants
    for child in [pid] + _descendants(pid):
        try:
            if "beam" in Path(f"/proc/{child}/comm").read_text():
                return child
        except OSError:
            pass
    return pid


def run(size: int, pykv_path: str | None) -> list[dict[str, Any]]:
    from .cluster import short_host

    cookie = "bench-" + secrets.token_hex(6)
    suffix = secrets.token_hex(3)
    host = short_host()
    names = {k: f"lm{k}{suffix}" for k in ("foo", "y", "z", "x")}
    procs: list[subprocess.Popen[bytes]] = []
    scripts = Path(tempfile.mkdtemp(prefix="pykv-bench-large-"))
    env = {**os.environ, "PYTHONPATH": str(Path(pykv_path).resolve()) if pykv_path else str(ROOT)}
    elixir = shutil.which("elixir") or "elixir"

    def start(cmd: list[str], **kw: Any) -> subprocess.Popen[bytes]:
        p = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE, start_new_session=True, **kw)
        procs.append(p)
        return p

    def script_file(name: str, text: str) -> str:
        path = scripts / name
        path.write_text(textwrap.dedent(text))
        return f'Code.eval_file("{path}")'

    try:
        # pykv from --pykv (or this tree), this module from this tree
        foo = start([sys.executable, "-c", "import importlib.util as u, sys; "
                     f"spec = u.spec_from_file_location('large_messages', {__file__!r}); "
                     "m = u.module_from_spec(spec); spec.loader.exec_module(m); "
                     f"m.serve({names['foo']!r}, {cookie!r})"],
                    env=env, cwd=scripts)
        y = start([elixir, "--sname", names["y"], "--cookie", cookie, "--no-halt", "-e", 'IO.puts("ready")'])
        z = start([elixir, "--sname", names["z"], "--cookie", cookie, "--hidden", "-e",
                   script_file("z.exs", OTHER_PEER)])
        for p in (foo, y, z):
            assert p.stdout is not None
            line = p.stdout.readline()
            assert line.strip() == b"ready", line
        watched = {"pykv": foo.pid, "beam": beam_pid(y.pid)}
        x = start([elixir, "--sname", names["x"], "--cookie", cookie, "--hidden", "-e",
                   script_file("x.exs", CLIENT), "--", str(size), f"{names['foo']}@{host}",
                   f"{names['y']}@{host}", f"{names['z']}@{host}"])
        assert x.stdout is not None and x.stdin is not None
        results: list[dict[str, Any]] = []
        rss_before = 0
        for raw in x.stdout:
            line = raw.decode().rstrip("\n")
            if line.startswith("BEGIN "):
                target = watched[line.split()[1]]
                Path(f"/proc/{target}/clear_refs").write_text("5")  # resets VmHWM to VmRSS
                rss_before = vm(target, "VmRSS")
                x.stdin.write(b"go\n")
                x.stdin.flush()
            elif line.startswith("RESULT "):
                result = json.loads(line[len("RESULT "):])
                target = watched[result["phase"].split()[0]]
                result["rss_before_mb"] = round(rss_before / 2**20)
                result["rss_peak_mb"] = round(vm(target, "VmHWM") / 2**20)
                results.append(result)
                print(format_result(result, size), flush=True)
            elif line.startswith("END "):
                x.stdin.write(b"go\n")
                x.stdin.flush()
            elif line.strip():
                print("x:", line, file=sys.stderr)
        if x.wait() != 0:
            raise RuntimeError(f"the client node x failed ({x.returncode})")
        return results
    finally:
        for p in procs:
            if p.poll() is None:
                try:
                    os.killpg(p.pid, signal.SIGTERM)
                except ProcessLookupError:
                    pass
        deadline = time.monotonic() + 5
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                os.killpg(p.pid, signal.SIGKILL)
                p.wait()
        shutil.rmtree(scripts, ignore_errors=True)


def format_result(r: dict[str, Any], size: int) -> str:
    phase = r["phase"]
    rss = f"RSS {r['rss_before_mb']} -> peak {r['rss_peak_mb']} MiB"
    if phase.endswith("baseline"):
        return f"{phase:15} small call p50 {r['p50']:>7} µs  p99 {r['p99']:>7} µs  (n={r['n']})   {rss}"
    return (f"{phase:15} {size / 1e6:.0f} MB in {r['transfer_ms']} ms; same connection: p50 "
            f"{r['same_p50']:>7} µs p99 {r['same_p99']:>7} µs max {r['same_max']:>7} (n={r['same_n']}); "
            f"other peer: p50 {r['others_p50']:>7} µs p99 {r['others_p99']:>7} µs max {r['others_max']:>7} "
            f"(n={r['others_n']});  {rss}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.large_messages", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--size", type=int, default=200_000_000, help="bytes of the large message (200 MB)")
    p.add_argument("--pykv", help="the source tree foo imports pykv from (default: this one)")
    p.add_argument("--out", help="write the results as JSON to this file")
    p.add_argument("--serve", nargs=2, metavar=("SNAME", "COOKIE"), help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        serve(*args.serve)
        return
    results = run(args.size, args.pykv)
    if args.out:
        Path(args.out).write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
