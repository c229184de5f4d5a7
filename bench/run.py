"""`python -m bench`: pykv measured side by side with the BEAM, in one run.

Starts the Python node foo (`python -m pykv`), the BEAM node bar (elixir_peer) and, per
section, a BEAM client node (bench/client.exs); measures the same work against both; prints
the table with the ratios python/beam and the targets of issue 5; writes bench/RESULTS.md,
bench/results.json and bench/latency.png. Every process it started is stopped at the end,
on an error and on Ctrl-C.

    python -m bench                     # everything (about 2 minutes)
    python -m bench --quick             # shorter runs of everything (about 30 s)
    python -m bench --sections 1,2,7    # some sections, by number or name
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import signal
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Callable

from . import codec, pyclient, report
from .cluster import ROOT, BenchError, Cluster


@dataclass(frozen=True)
class Params:
    """How much of each measurement; --quick scales counts and durations down, not shapes."""

    warmup: int = 500              # 1-3, 5: operations before any sample
    samples: int = 2000            # 1, 3, 5: operations timed one at a time
    count: int = 20_000            # 2, 5: operations shared by `concurrency` workers
    concurrency: int = 200         # 2, 5: in flight
    callers: int = 120             # 4: concurrent GenServer.call loops ...
    duration: float = 5.0          # 4: ... for this many seconds
    line_clients: int = 50         # 6: TCP clients ...
    line_duration: float = 5.0     # 6: ... for this many seconds
    tasks: int = 10_000            # 8: tasks in flight at once
    buckets: int = 100_000         # 8: idle buckets created
    creators: int = 100            # 8: concurrent :erpc callers creating them
    codec_repeats: int = 9         # 7: best of this many timeit runs ...
    codec_target_s: float = 0.03   # 7: ... of about this many seconds each
    requests: int = 20_000         # shapes: :gen_server.send_request at once, per block
    messages: int = 200_000        # shapes: plain sends to a registered process
    map_gets: int = 400            # shapes: gets of a 10,000-entry map, one at a time
    big_n: int = 64                # shapes: 1 MiB put + get pairs (16 MiB: an eighth as many)
    fanin_clients: int = 3         # fanin: BEAM client nodes at once
    only: str = ""                 # shapes: these only (comma-separated; --shapes)


FULL = Params()
QUICK = replace(FULL, warmup=100, samples=300, count=2000, duration=1.0, line_duration=1.0,
                tasks=2000, buckets=10_000, codec_repeats=3, codec_target_s=0.01,
                requests=5000, messages=50_000, map_gets=100, big_n=16)

# name: (numbers of the items, what it measures); run in this order. `scale` is last
# because it leaves 100,000 buckets on both nodes.
SECTIONS = {
    "tasks": ("1,2", "Task.Supervisor.async + await, one at a time and 200 in flight"),
    "erpc": ("3", ":erpc.call(node, :erlang, :node, [])"),
    "calls": ("4", "GenServer.call to KV.Registry from 120 callers"),
    "reverse": ("5", "Python client vs BEAM client, against bar"),
    "line": ("6", "line protocol from 50 TCP clients"),
    "shapes": ("S", "the same work in other load shapes (blocks A..A B..B A..A), with each node's CPU"),
    "fanin": ("F", "tasks from 3 BEAM client nodes at once"),
    "codec": ("7", "term codec: pykv vs erlang_py vs erlpack"),
    "scale": ("8", "10,000 tasks in flight; RSS with 100,000 idle buckets"),
}
NEEDS_NODES = set(SECTIONS) - {"codec"}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--quick", action="store_true", help="shorter runs (smaller counts and durations)")
    p.add_argument("--sections", default="all",
                   help="comma-separated names or numbers: " + ", ".join(f"{n} ({v[0]})" for n, v in SECTIONS.items())
                   + " (default: all)")
    p.add_argument("--shapes", default="", metavar="NAMES",
                   help="with the shapes section, only these (comma-separated): task_seq, erpc_seq, "
                        "call_seq, task_conc, task_batch, send_request, send_stream, map_reply, "
                        "big_1mib, big_16mib, echo_50mb")
    p.add_argument("--out", type=Path, default=ROOT / "bench",
                   help="directory for RESULTS.md, results.json and latency.png (default: bench/)")
    p.add_argument("--no-write", action="store_true", help="only print the table; write no files")
    p.add_argument("--keep-logs", action="store_true", help="keep the nodes' logs (always kept on failure)")
    p.add_argument("--profile-foo", type=Path, metavar="FILE.prof",
                   help="run foo under cProfile, save its stats there and print the top functions "
                        "(foo is slower so: implies --no-write)")
    return p.parse_args(argv)


def select(spec: str) -> list[str]:
    """Section names from 'all' or '1,2,codec,...', in run order."""
    if spec == "all":
        return list(SECTIONS)
    wanted = set()
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        names = [n for n, (nums, _) in SECTIONS.items() if item == n or item in nums.split(",")]
        if not names:
            raise SystemExit(f"unknown section {item!r}: choose from {', '.join(SECTIONS)} or 1-8")
        wanted.update(names)
    return [n for n in SECTIONS if n in wanted]


def say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


# -- the sections --------------------------------------------------------------------------------

def _load(p: Params) -> dict[str, Any]:
    return {"warmup": p.warmup, "samples": p.samples, "count": p.count, "concurrency": p.concurrency}


def _both(cluster: Cluster, results: dict[str, Any]) -> dict[str, Any]:
    return {"foo": results[cluster.foo], "bar": results[cluster.bar]}


def run_tasks(c: Cluster, p: Params) -> dict[str, Any]:
    """(1, 2) The BEAM client's Task.Supervisor.async + Task.await to foo and to bar: latency
    one at a time, then tasks/s with `concurrency` in flight (client.exs tasks)."""
    return _both(c, c.client("tasks", [c.foo, c.bar], **_load(p)))


def run_erpc(c: Cluster, p: Params) -> dict[str, Any]:
    """(3) :erpc.call(node, :erlang, :node, []) one at a time (client.exs erpc)."""
    return _both(c, c.client("erpc", [c.foo, c.bar], warmup=p.warmup, samples=p.samples))


def run_calls(c: Cluster, p: Params) -> dict[str, Any]:
    """(4) GenServer.call lookups on KV.Registry from `callers` processes for `duration` s."""
    return _both(c, c.client("calls", [c.foo, c.bar], warmup=p.warmup, callers=p.callers, duration=p.duration))


def run_reverse(c: Cluster, p: Params) -> dict[str, Any]:
    """(5) bar's KV.RouterTasks and KV.Registry called by a pykv Node in this process and by
    the BEAM client, the same pattern as (1, 2). In the order BEAM, Python, Python, BEAM,
    each run with half of the samples and of the count (A B B A, as elsewhere), added up."""
    runs: dict[str, list[dict[str, Any]]] = {"beam_client": [], "python_client": []}
    for i, who in enumerate(("beam_client", "python_client", "python_client", "beam_client")):
        half = _load(p) | {"samples": p.samples // 2, "count": p.count // 2}
        if who == "beam_client":
            runs[who].append(c.client("reverse", [c.bar], **half)[c.bar])
        else:
            node = c.name(f"pyclient{i}")
            runs[who].append(asyncio.run(pyclient.reverse(node, c.cookie, c.bar, pyclient.LoadOptions(**half))))
    return {who: {op: pyclient.merge_load_runs([r[op] for r in parts]) for op in ("tasks", "calls")}
            for who, parts in runs.items()}


def run_line(c: Cluster, p: Params) -> dict[str, Any]:
    """(6) PUT/GET round trips per second from `line_clients` TCP clients (pyclient.line_load)
    to foo's and bar's line servers: foo, bar, bar, foo, each for half the duration (as client.exs's A B B A): a machine
    getting busier or quieter meanwhile favours neither."""
    runs: dict[str, list[dict[str, Any]]] = {"foo": [], "bar": []}
    for i, node in enumerate(("foo", "bar", "bar", "foo")):
        port = c.foo_port if node == "foo" else c.bar_port
        runs[node].append(asyncio.run(pyclient.line_load(port, p.line_clients, p.line_duration / 2, f"{c.tag}r{i}")))
    return {node: pyclient.merge_line_runs(parts) for node, parts in runs.items()}


def run_shapes(c: Cluster, p: Params) -> dict[str, Any]:
    """The shapes of client.exs `shapes` against foo and bar, each node's run in blocks
    A B B A, with the node's CPU (from /proc) during its blocks."""
    assert c.foo_proc is not None
    r = c.client("shapes", [f"{c.foo}={c.foo_proc.pid}", c.bar], timeout=1200, **_load(p), requests=p.requests,
                 messages=p.messages, map_gets=p.map_gets, big_n=p.big_n, tag=c.tag, only=p.only)
    return _both(c, r)


def run_fanin(c: Cluster, p: Params) -> dict[str, Any]:
    """Tasks from `fanin_clients` BEAM client nodes at once (client.exs fanin)."""
    assert c.foo_proc is not None
    r = c.clients("fanin", [f"{c.foo}={c.foo_proc.pid}", c.bar], p.fanin_clients, count=p.count,
                  concurrency=p.concurrency)
    return _both(c, r)


def run_codec(c: Cluster | None, p: Params) -> dict[str, Any]:
    """(7) µs per encode and decode: pykv.term, erlang_py, erlpack (no nodes needed)."""
    return codec.run(p.codec_repeats, p.codec_target_s)


def run_scale(c: Cluster, p: Params) -> dict[str, Any]:
    """(8) `tasks` tasks in flight, every answer checked; RSS before and after `buckets`
    idle buckets (client.exs scale), foo then bar."""
    assert c.foo_proc is not None
    # foo is a plain Python process: its pid is ours to give; the client asks bar for its own
    nodes = [f"{c.foo}={c.foo_proc.pid}", c.bar]
    r = c.client("scale", nodes, tasks=p.tasks, buckets=p.buckets, creators=p.creators, tag=c.tag)
    return {"foo": r[c.foo], "bar": r[c.bar]}


RUNNERS: dict[str, Callable[[Any, Params], dict[str, Any]]] = {
    "tasks": run_tasks, "erpc": run_erpc, "calls": run_calls, "reverse": run_reverse,
    "line": run_line, "shapes": run_shapes, "fanin": run_fanin, "codec": run_codec, "scale": run_scale,
}


# -- main ----------------------------------------------------------------------------------------

def _stop_on_signals() -> None:
    """SIGTERM unwinds as Ctrl-C does, so the finally blocks stop the nodes; and Ctrl-C
    does so even when started from a shell that made us ignore SIGINT (`cmd &`)."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt(f"signal {signum}")
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, signal.default_int_handler)


def measure(sections: list[str], params: Params, keep_logs: bool,
            profile: Path | None = None) -> tuple[dict[str, Any], str | None]:
    """Run the sections; returns the results so far and the error that stopped them, if any."""
    results: dict[str, Any] = {}
    cluster = Cluster() if NEEDS_NODES & set(sections) else None
    failed: str | None = None
    try:
        if cluster is not None:
            say(f"starting foo ({cluster.foo}) and bar ({cluster.bar}); logs in {cluster.logs}")
            cluster.compile_peer()
            cluster.start(profile)
        for i, name in enumerate(sections, 1):
            nums, what = SECTIONS[name]
            say(f"[{i}/{len(sections)}] {name} ({nums}): {what} ...")
            t0 = time.monotonic()
            results[name] = RUNNERS[name](cluster, params)
            say(f"      done in {time.monotonic() - t0:.1f} s")
    except BenchError as e:
        failed = str(e)
    except KeyboardInterrupt:
        failed = "interrupted"
    except Exception:  # a bug in a section: keep what the others measured
        failed = traceback.format_exc()
    finally:
        if cluster is not None:
            say("stopping the nodes")
            cluster.close(keep_logs=keep_logs or failed is not None)
            if failed is not None or keep_logs:
                say(f"node logs kept in {cluster.logs}")
    return results, failed


def show_profile(path: Path, top: int = 25) -> None:
    """The functions foo spent the most time in (own time), from its cProfile stats."""
    import pstats

    if not path.exists():
        say(f"no profile at {path}: foo did not stop cleanly")
        return
    say(f"foo's profile: {path} (e.g. python -m pstats {path}); top {top} by own time:")
    pstats.Stats(str(path), stream=sys.stderr).sort_stats("tottime").print_stats(top)


def summarize(results: dict[str, Any]) -> dict[str, Any]:
    """results.json: the raw results less the latency samples (summarized as percentiles)."""
    def walk(x: Any) -> Any:
        if isinstance(x, dict):
            out = {}
            for k, v in x.items():
                if k.endswith("_us") and isinstance(v, list):
                    out[k] = {f"p{q}": report.percentile(v, q) for q in (50, 90, 99)} | {
                        "mean": report.mean(v), "n": len(v)} if v else {}
                else:
                    out[k] = walk(v)
            return out
        return x
    return walk(results)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    sections = select(args.sections)
    params = replace(QUICK if args.quick else FULL, only=args.shapes)
    _stop_on_signals()
    started = time.monotonic()
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    profile = args.profile_foo.resolve() if args.profile_foo else None
    results, failed = measure(sections, params, args.keep_logs, profile)
    if profile is not None:
        show_profile(profile)
        args.no_write = True

    rows = report.rows(results, asdict(params))
    meta = {
        "date": date, "command": shlex.join(["python", "-m", "bench", *(argv if argv is not None else sys.argv[1:])]),
        "mode": "quick" if args.quick else "full", "sections": [s for s in sections if s in results],
        "duration_s": time.monotonic() - started, "machine": report.machine(ROOT), "params": asdict(params),
    }
    print()
    items = report.targets(results, rows)
    if items:
        print(report.targets_table(items, md=False), end="\n\n")
    if rows:
        print(report.comparison_table(rows, md=False), end="\n\n")
    shape_rows = report.shape_rows(results, asdict(params))
    if shape_rows:
        print(report.shapes_table(shape_rows, md=False), end="\n\n")
    if "codec" in results:
        print(report.codec_table(results["codec"], md=False), end="\n\n")
        print(report.codec_summary(results["codec"]), end="\n\n")
    if results and not args.no_write:
        args.out.mkdir(parents=True, exist_ok=True)
        skipped = report.chart(results, args.out / "latency.png")
        chart_file = "latency.png" if skipped is None else None
        (args.out / "RESULTS.md").write_text(report.markdown(meta, results, rows, chart_file, skipped))
        raw = {"meta": meta, "results": summarize(results)}
        (args.out / "results.json").write_text(json.dumps(raw, indent=1) + "\n")
        say(f"wrote {args.out / 'RESULTS.md'}" + (f" and {chart_file}" if chart_file else f" (no chart: {skipped})"))
    say(f"total {meta['duration_s']:.0f} s")
    if failed is not None:
        say(f"FAILED: {failed}")
        return 130 if failed == "interrupted" else 1
    return 0
