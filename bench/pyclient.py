"""The measurements made from this Python process: pykv as a client of bar (5) and the
line-protocol load (6).

Both mirror what bench/client.exs does on the BEAM, so their numbers sit side by side:
latencies are measured with the monotonic clock around the whole operation as the caller
sees it, in microseconds; "N in flight" means N coroutines sharing a fixed count of
operations, each starting its next one as soon as the previous one answers.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from pykv import Atom, Node
from pykv.otp import gen_server, task_supervisor

Op = Callable[[], Awaitable[bool]]


@dataclass
class LoadOptions:
    warmup: int = 500
    samples: int = 2000
    count: int = 20_000
    concurrency: int = 200


def _us(ns: int) -> float:
    return round(ns / 1000, 1)


async def _safely(op: Op) -> bool:
    try:
        return await op()
    except Exception:  # a timeout or a remote exit counts as a wrong answer
        return False


async def _timed_loop(op: Op, n: int) -> tuple[list[float], int]:
    """Run `op` n times in a row: (latencies in µs, count of wrong answers or errors)."""
    latencies, errors = [], 0
    clock = time.perf_counter_ns
    for _ in range(n):
        t0 = clock()
        ok = await _safely(op)
        latencies.append(_us(clock() - t0))
        errors += not ok
    return latencies, errors


async def latency_and_throughput(op: Op, o: LoadOptions) -> dict[str, Any]:
    """Warm up, then `samples` operations one at a time (latencies), then `count`
    operations shared by `concurrency` coroutines (throughput, and their latencies)."""
    for _ in range(o.warmup):
        await _safely(op)
    seq, seq_errors = await _timed_loop(op, o.samples)
    shares = [o.count // o.concurrency + (w < o.count % o.concurrency) for w in range(o.concurrency)]
    t0 = time.perf_counter_ns()
    results = await asyncio.gather(*(_timed_loop(op, n) for n in shares))
    elapsed = (time.perf_counter_ns() - t0) / 1e9
    return {
        "seq_us": seq, "seq_errors": seq_errors,
        "conc_us": [x for lat, _ in results for x in lat],
        "conc_errors": sum(e for _, e in results),
        "conc_count": o.count, "concurrency": o.concurrency,
        "conc_elapsed_s": elapsed, "conc_per_s": o.count / elapsed,
    }


async def reverse(name: str, cookie: str, target: str, o: LoadOptions) -> dict[str, Any]:
    """(5) A pykv Node in this process as the client of `target`'s KV.RouterTasks
    (`task_supervisor.async_` + `task.await_()`, answer checked to be the node name) and
    KV.Registry (`gen_server.call` of `{:lookup, "x"}`, answer checked to be `:error`)."""
    node_atom = Atom(target)
    lookup, error = (Atom("lookup"), b"x"), Atom("error")
    registry = ("KV.Registry", node_atom)  # the alias, as the README has it
    # busy waiting as `python -m pykv` does by default (and as the BEAM client node does)
    async with Node(name, cookie=cookie, listen_host="127.0.0.1", busy_wait=0.001) as node:
        await node.connect(node_atom)

        async def task() -> bool:
            t = await task_supervisor.async_(node, ("KV.RouterTasks", node_atom), "Kernel", "node", [])
            return await t.await_(10) is node_atom

        async def call() -> bool:
            return await gen_server.call(node, registry, lookup, 10) is error

        return {"tasks": await latency_and_throughput(task, o),
                "calls": await latency_and_throughput(call, o)}


async def line_load(port: int, clients: int, duration: float, tag: str) -> dict[str, Any]:
    """(6) `clients` TCP connections to a KVServer line server on 127.0.0.1:`port`, each on
    its own bucket, alternating `PUT bucket k v` and `GET bucket k` (the value just put) for
    `duration` seconds once all are connected. One command and its full reply is one round
    trip; a wrong reply is counted as an error."""

    async def connect(i: int) -> tuple[asyncio.StreamReader, asyncio.StreamWriter, bytes]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        bucket = f"line{tag}n{i}".encode()
        writer.write(b"CREATE %s\r\n" % bucket)
        if await reader.readline() != b"OK\r\n":
            raise RuntimeError(f"CREATE {bucket.decode()} failed on port {port}")
        return reader, writer, bucket

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter, bucket: bytes,
                  deadline: float) -> tuple[int, int]:
        trips = errors = j = 0
        while time.monotonic() < deadline:
            key, value = b"k%d" % (j % 100), b"v%d" % j
            writer.write(b"PUT %s %s %s\r\n" % (bucket, key, value))
            errors += await reader.readline() != b"OK\r\n"
            writer.write(b"GET %s %s\r\n" % (bucket, key))
            errors += await reader.readline() != value + b"\r\n"
            errors += await reader.readline() != b"OK\r\n"
            trips += 2
            j += 1
        return trips, errors

    # one after another: elixir_peer listens with gen_tcp's default backlog (5), and 50 SYNs
    # at once would be dropped and retried a second or more later
    conns = [await connect(i) for i in range(clients)]
    try:
        # the CPU time of this process tells whether the client, not the server, is the limit
        cpu0, t0 = time.process_time(), time.perf_counter()
        deadline = time.monotonic() + duration
        results = await asyncio.gather(*(run(*c, deadline) for c in conns))
        elapsed = time.perf_counter() - t0
        cpu = time.process_time() - cpu0
    finally:
        for _, writer, _ in conns:
            writer.close()
    trips = sum(t for t, _ in results)
    return {"clients": clients, "round_trips": trips, "errors": sum(e for _, e in results),
            "elapsed_s": elapsed, "per_s": trips / elapsed, "client_cpu": cpu / elapsed}


def merge_load_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several latency_and_throughput results (from here or client.exs)."""
    elapsed = sum(r["conc_elapsed_s"] for r in runs)
    count = sum(r["conc_count"] for r in runs)
    return {
        "seq_us": [x for r in runs for x in r["seq_us"]], "seq_errors": sum(r["seq_errors"] for r in runs),
        "conc_us": [x for r in runs for x in r["conc_us"]], "conc_errors": sum(r["conc_errors"] for r in runs),
        "conc_count": count, "concurrency": runs[0]["concurrency"],
        "conc_elapsed_s": elapsed, "conc_per_s": count / elapsed,
    }


def merge_line_runs(runs: list[dict[str, Any]]) -> dict[str, Any]:
    """The sum of several line_load runs against one server."""
    elapsed = sum(r["elapsed_s"] for r in runs)
    trips = sum(r["round_trips"] for r in runs)
    return {"clients": runs[0]["clients"], "round_trips": trips, "errors": sum(r["errors"] for r in runs),
            "elapsed_s": elapsed, "per_s": trips / elapsed,
            "client_cpu": sum(r["client_cpu"] * r["elapsed_s"] for r in runs) / elapsed}
