"""Turning raw results into the tables: the terminal's, bench/RESULTS.md, and the chart.

Ratios are always python/beam, whatever the direction of "better"; each target says which
way it goes (throughput: ratio >= x; latency: ratio <= x).
"""

from __future__ import annotations

import math
import os
import platform
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from pykv.term import codec as term_codec

GIB_KIB = 1024 * 1024


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile (p in 0..100) of a non-empty sample."""
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]


def mean(samples: list[float]) -> float:
    return sum(samples) / len(samples)


@dataclass
class Target:
    text: str                    # as the issue states it, e.g. "ratio >= 0.8"
    met: Callable[[Any], bool]   # applied to the ratio, or to the python value
    on: str = "ratio"            # "ratio" or "python"


@dataclass
class Row:
    section: str
    label: str
    unit: str
    python: float | str | None
    beam: float | str | None
    target: Target | None = None
    note: str = ""

    @property
    def ratio(self) -> float | None:
        if isinstance(self.python, (int, float)) and isinstance(self.beam, (int, float)) and self.beam:
            return self.python / self.beam
        return None

    @property
    def met(self) -> bool | None:
        if self.target is None:
            return None
        value = self.ratio if self.target.on == "ratio" else self.python
        return None if value is None else self.target.met(value)


# -- rows, per section ---------------------------------------------------------------------------

def _lat(r: dict[str, Any], key: str, p: float | None) -> float:
    return mean(r[key]) if p is None else percentile(r[key], p)


def _errors(*results: dict[str, Any]) -> str:
    keys = ("seq_errors", "conc_errors", "errors")
    n = sum(r.get(k, 0) for r in results for k in keys)
    return f"{n} wrong answers or errors" if n else ""


def rows(results: dict[str, Any], params: dict[str, Any]) -> list[Row]:
    """The python-vs-beam comparison rows of every section that ran."""
    out: list[Row] = []
    if "tasks" in results:
        foo, bar = results["tasks"]["foo"], results["tasks"]["bar"]
        c = params["concurrency"]
        out += [
            Row("1", "Task.Supervisor.async + await, one at a time: p50", "µs",
                _lat(foo, "seq_us", 50), _lat(bar, "seq_us", 50), Target("ratio <= 1.3", lambda r: r <= 1.3),
                _errors(foo, bar)),
            Row("1", "same: p99", "µs", _lat(foo, "seq_us", 99), _lat(bar, "seq_us", 99)),
            Row("2", f"same, {c} in flight: tasks/s", "/s", foo["conc_per_s"], bar["conc_per_s"],
                Target("ratio >= 0.8", lambda r: r >= 0.8)),
            Row("2", f"same, {c} in flight: p50 per task", "µs", _lat(foo, "conc_us", 50), _lat(bar, "conc_us", 50)),
        ]
    if "erpc" in results:
        foo, bar = results["erpc"]["foo"], results["erpc"]["bar"]
        out.append(Row("3", ":erpc.call(node, :erlang, :node, []): mean", "µs",
                       _lat(foo, "seq_us", None), _lat(bar, "seq_us", None),
                       Target("ratio <= 1.5", lambda r: r <= 1.5), _errors(foo, bar)))
    if "calls" in results:
        foo, bar = results["calls"]["foo"], results["calls"]["bar"]
        out.append(Row("4", f"GenServer.call KV.Registry lookup, {foo['callers']} callers: calls/s", "/s",
                       foo["per_s"], bar["per_s"], note=_errors(foo, bar)))
    if "reverse" in results:
        py, beam = results["reverse"]["python_client"], results["reverse"]["beam_client"]
        c = params["concurrency"]
        for what, key in (("Task.Supervisor.async + await", "tasks"), ("GenServer.call lookup", "calls")):
            p, b = py[key], beam[key]
            out += [
                Row("5", f"client -> bar: {what}, one at a time: p50", "µs",
                    _lat(p, "seq_us", 50), _lat(b, "seq_us", 50), note=_errors(p, b)),
                Row("5", f"client -> bar: {what}, {c} in flight: per s", "/s", p["conc_per_s"], b["conc_per_s"]),
            ]
    if "line" in results:
        foo, bar = results["line"]["foo"], results["line"]["bar"]
        note = f"client CPU {foo['client_cpu']:.0%} / {bar['client_cpu']:.0%} of a core"
        err = _errors(foo, bar)
        out.append(Row("6", f"line protocol PUT/GET, {foo['clients']} TCP clients: round trips/s", "/s",
                       foo["per_s"], bar["per_s"], note=f"{note}; {err}" if err else note))
    if "scale" in results:
        out += _scale_rows(results["scale"]["foo"], results["scale"]["bar"])
    return out


def _scale_rows(foo: dict[str, Any], bar: dict[str, Any]) -> list[Row]:
    def answered(r: dict[str, Any]) -> str:
        correct = sum(r[phase]["correct"] for phase in PHASES)
        return f"{correct}/{sum(r[phase]['count'] for phase in PHASES)}"

    def rss_for(r: dict[str, Any], buckets: int) -> float:
        """RSS in MiB with `buckets` idle buckets (extrapolated linearly past what ran)."""
        grown = r["rss_after_kib"] - r["rss_before_kib"]
        return (r["rss_before_kib"] + grown * buckets / r["buckets"]) / 1024

    n, buckets = foo["tasks"], foo["buckets"]
    extrapolated = buckets < 100_000
    all_correct = Target("nothing lost", lambda v: v.split("/")[0] == v.split("/")[1], on="python")
    return [
        Row("8", f"{n:,} tasks in flight, x3 (put, get, get from {n:,} processes): correct", "",
            answered(foo), answered(bar), all_correct),
        Row("8", f"same: puts/s (all {n:,} started from one process, then awaited)", "/s",
            foo["put"]["per_s"], bar["put"]["per_s"]),
        Row("8", f"same: gets/s, {n:,} processes each async + await at once", "/s",
            foo["burst"]["per_s"], bar["burst"]["per_s"]),
        Row("8", f"RSS with 100,000 idle buckets{' (extrapolated)' if extrapolated else ''}", "MiB",
            rss_for(foo, 100_000), rss_for(bar, 100_000), Target("python < 1 GiB", lambda v: v < 1024, on="python"),
            f"RSS before: {foo['rss_before_kib'] / 1024:.0f} / {bar['rss_before_kib'] / 1024:.0f} MiB"),
        Row("8", "memory per idle bucket", "bytes", (foo["rss_after_kib"] - foo["rss_before_kib"]) * 1024 / buckets,
            (bar["rss_after_kib"] - bar["rss_before_kib"]) * 1024 / buckets),
        Row("8", f"KV.Registry.create via :erpc, {buckets:,} buckets: per s", "/s",
            foo["create_per_s"], bar["create_per_s"],
            note="" if foo["buckets_created"] == bar["buckets_created"] == buckets else
            f"created {foo['buckets_created']} / {bar['buckets_created']}"),
    ]


PHASES = ("put", "get", "burst")


def scale_lost(results: dict[str, Any]) -> int:
    return sum(results["scale"]["foo"][phase]["lost"] for phase in PHASES)


# -- codec -----------------------------------------------------------------------------------------

def codec_totals(codec: dict[str, Any], lib: str, op: str, only: list[str] | None = None) -> float | None:
    """µs for one pass over the mix (or the terms `only`); None if the library lacks one."""
    total = 0.0
    for label, row in codec["terms"].items():
        if only is not None and label not in only:
            continue
        v = row.get(f"{lib}_{op}")
        if not isinstance(v, float):
            return None
        total += v
    return total


def codec_supported(codec: dict[str, Any], lib: str, op: str) -> list[str]:
    return [label for label, row in codec["terms"].items() if isinstance(row.get(f"{lib}_{op}"), float)]


def pykv_codecs(codec: dict[str, Any]) -> list[tuple[str, str]]:
    """(library key, label) of each pykv codec measured: as installed, and pure Python."""
    installed = "C accelerator" if codec.get("pykv_implementation") == "c" else "pure Python"
    return [(lib, label) for lib, label in (("pykv", installed), ("pykv_python", "pure Python"))
            if lib in codec["libraries"]]


def codec_speedups(codec: dict[str, Any], lib: str = "pykv") -> dict[str, dict[str, float | None]]:
    """For encode and decode: how many times faster pykv (`lib`) is than erlang_py on the
    mix, and than erlpack on the terms erlpack handles (below 1: erlpack is faster)."""
    out: dict[str, dict[str, float | None]] = {}
    for op in ("encode", "decode"):
        pykv = codec_totals(codec, lib, op)
        ep = codec_totals(codec, "erlang_py", op)
        subset = codec_supported(codec, "erlpack", op)
        pk = codec_totals(codec, "erlpack", op, subset) if subset else None
        pykv_subset = codec_totals(codec, lib, op, subset) if subset else None
        out[op] = {
            "erlang_py": ep / pykv if ep and pykv else None,
            "erlpack": pk / pykv_subset if pk and pykv_subset else None,
            "erlpack_terms": len(subset),
        }
    return out


def codec_table(codec: dict[str, Any], md: bool) -> str:
    libs = codec["libraries"]
    head = ["term", "bytes"] + [f"{lib} {op}" for op in ("encode", "decode") for lib in libs]
    body = []
    for label, row in codec["terms"].items():
        cells = [label, str(row["bytes"])]
        for op in ("encode", "decode"):
            for lib in libs:
                v = row.get(f"{lib}_{op}")
                cells.append(f"{v:.2f}" if isinstance(v, float) else "n/a")
        body.append(cells)
    total = ["mix (one of each)", ""]
    for op in ("encode", "decode"):
        for lib in libs:
            t = codec_totals(codec, lib, op)
            total.append(f"{t:.1f}" if t is not None else "n/a")
    body.append(total)
    notes = sorted({v for row in codec["terms"].values() for v in row.values() if isinstance(v, str)})
    extra = "".join(f"\n{n}" for n in notes) + "".join(
        f"\n  {lib}: {why}" for lib, why in codec.get("missing", {}).items())
    sep = "  \n" if md else "\n"
    return _table(head, body, md) + "\n\nµs per operation, best of repeats." + extra.replace("\n", sep)


# -- formatting ------------------------------------------------------------------------------------

def fmt(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, str):
        return v
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def _table(head: list[str], body: list[list[str]], md: bool) -> str:
    if md:
        lines = ["| " + " | ".join(head) + " |", "|" + "|".join(" --- " for _ in head) + "|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |" for cells in body]
        return "\n".join(lines)
    widths = [max(len(r[i]) for r in [head, *body]) for i in range(len(head))]

    def line(cells: list[str]) -> str:
        return "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()
    return "\n".join([line(head), line(["-" * w for w in widths]), *map(line, body)])


def yes_no(met: bool | None) -> str:
    return "-" if met is None else ("yes" if met else "NO")


def comparison_table(table_rows: list[Row], md: bool) -> str:
    head = ["#", "measurement", "unit", "python", "beam", "python/beam", "target", "met", "note"]
    body = [[r.section, r.label, r.unit, fmt(r.python), fmt(r.beam),
             f"{r.ratio:.2f}" if r.ratio is not None else "-",
             r.target.text if r.target else "", yes_no(r.met) if r.target else "", r.note]
            for r in table_rows]
    return _table(head, body, md)


def targets(results: dict[str, Any], table_rows: list[Row]) -> list[tuple[str, str, bool | None]]:
    """(target, measured, met) for every target of the issue whose section ran."""
    out = []
    by_section = {(r.section, r.target.text): r for r in table_rows if r.target}
    for (section, text), label in ((("2", "ratio >= 0.8"), "throughput (2): python/beam >= 0.8"),
                                   (("1", "ratio <= 1.3"), "p50 latency (1): python/beam <= 1.3"),
                                   (("3", "ratio <= 1.5"), "erpc (3): python/beam <= 1.5")):
        row = by_section.get((section, text))
        if row is not None:
            out.append((label, f"{row.ratio:.2f}" if row.ratio is not None else "-", row.met))
    if "codec" in results:
        for lib, label in pykv_codecs(results["codec"]):
            sp = codec_speedups(results["codec"], lib)
            for op in ("encode", "decode"):
                s = sp[op]["erlang_py"]
                out.append((f"codec {op} ({label}): >= 2x faster than erlang_py on the mix",
                            f"{s:.2f}x" if s else "n/a", s >= 2 if s else None))
    if "scale" in results:
        lost = scale_lost(results)
        foo = results["scale"]["foo"]
        n = sum(foo[phase]["count"] for phase in PHASES)
        out.append((f"(8) {foo['tasks']:,} tasks in flight (x3), nothing lost", f"{n - lost}/{n} correct", lost == 0))
        row = by_section.get(("8", "python < 1 GiB"))
        if row is not None:
            out.append(("(8) 100,000 idle buckets: RSS < 1 GiB", f"{fmt(row.python)} MiB", row.met))
    return out


def targets_table(items: list[tuple[str, str, bool | None]], md: bool) -> str:
    return _table(["target", "measured", "met"], [[t, v, yes_no(m)] for t, v, m in items], md)


def codec_summary(codec: dict[str, Any]) -> str:
    lines = []
    for lib, label in pykv_codecs(codec):
        sp = codec_speedups(codec, lib)
        for op in ("encode", "decode"):
            s = sp[op]
            ep = f"{s['erlang_py']:.2f}x erlang_py's speed" if s["erlang_py"] else "erlang_py n/a"
            pk = (f"{s['erlpack']:.2f}x erlpack's on the {s['erlpack_terms']} terms erlpack handles"
                  if s["erlpack"] else "erlpack n/a")
            lines.append(f"pykv {op} ({label}): {ep}; {pk}")
    return "\n".join(lines)


# -- the machine -----------------------------------------------------------------------------------

def _run(cmd: list[str], **kwargs: Any) -> str:
    try:
        return subprocess.run(cmd, capture_output=True, text=True, timeout=60, **kwargs).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return "?"


def machine(root: Path) -> dict[str, str]:
    """What the numbers were measured on."""
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
        mem_kib = int(Path("/proc/meminfo").read_text().split()[1])
        ram = f"{mem_kib / GIB_KIB:.1f} GiB"
    except OSError:
        ram = "?"
    otp = _run(["erl", "-noshell", "-eval", 'io:put_chars([erlang:system_info(otp_release), " (erts ", '
                'erlang:system_info(version), ")"]), halt().'])
    elixir = _run(["elixir", "--version"]).splitlines()[-1:] or ["?"]
    commit = _run(["git", "rev-parse", "--short", "HEAD"], cwd=root)
    # --no-optional-locks: looking must not refresh (write) the index
    try:
        dirty = subprocess.run(["git", "--no-optional-locks", "diff", "--quiet", "HEAD", "--", "pykv", "elixir_peer"],
                               cwd=root, capture_output=True).returncode
    except OSError:
        dirty = 0
    try:
        import uvloop  # noqa: F401
        loop = "asyncio (uvloop installed)"
    except ImportError:
        loop = "asyncio (uvloop not installed)"
    return {
        "cpu": cpu, "cores": str(os.cpu_count()), "ram": ram, "kernel": f"{platform.system()} {platform.release()}",
        "python": platform.python_version() + f" ({sys.implementation.name})", "otp": otp, "elixir": elixir[0],
        "pykv": f"{commit}{' + uncommitted changes in pykv/ or elixir_peer/' if dirty else ''}",
        "event loop of the bench process": loop,
        # foo is `python -m pykv`: these variables choose its loop, busy waiting and codec
        "foo's settings": ", ".join(f"{k}={os.environ[k]}" for k in ("PYKV_LOOP", "PYKV_BUSY_WAIT", "PYKV_CODEC")
                                    if k in os.environ) or "defaults (uvloop if installed, busy wait 1000 µs)",
        # foo is this interpreter with this environment: it picks the codec this process did
        "foo's codec": "C accelerator" if term_codec.IMPLEMENTATION == "c" else "pure Python",
    }


# -- the chart -------------------------------------------------------------------------------------

def chart(results: dict[str, Any], path: Path) -> str | None:
    """A PNG of the latency distributions of (1) and (2), foo against bar; None and why not
    when matplotlib is missing or the tasks section did not run."""
    if "tasks" not in results:
        return "the tasks section did not run"
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.ticker import FuncFormatter, NullFormatter
    except ImportError:
        return "matplotlib is not installed (pip install -e .[bench])"
    foo, bar = results["tasks"]["foo"], results["tasks"]["bar"]
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    for ax, key, title in ((axes[0], "seq_us", "(1) one at a time"),
                           (axes[1], "conc_us", f"(2) {foo['concurrency']} in flight")):
        for r, label in ((foo, "python (foo)"), (bar, "beam (bar)")):
            xs = sorted(r[key])
            ys = [(i + 1) / len(xs) for i in range(len(xs))]
            ax.plot(xs, ys, label=f"{label}: p50 {percentile(xs, 50):.0f} µs")
        ax.set_xscale("log")
        ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: f"{x:g}"))
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel("latency of Task.Supervisor.async + Task.await (µs, log)")
        ax.set_ylabel("fraction of tasks")
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return None


# -- the whole report ------------------------------------------------------------------------------

HOW = """\
- **python / beam**: rows 1-4, 6 and 8 run the same work against the Python node foo
  (`python -m pykv`) and the BEAM node bar (`elixir_peer`); in the rows of 5 the server is bar for
  both and the *client* differs: a pykv Node in the bench process vs the BEAM client node.
  Ratios are python/beam from this one run.
- **Noise**: the two sides share the machine's moments. Latency samples of 1 and 3 are taken
  in blocks, foo's first half, bar's, foo's second half (never A B A B, which would hand
  every other request to whichever node was still busy-waiting); load runs go foo, bar, bar, foo (in 5: BEAM client,
  Python client, Python client, BEAM client), each side's work split into two halves whose
  counts and times are added up. 8 runs foo, then bar.
- **1, 2** (`client.exs tasks`): `Task.Supervisor.async({KV.RouterTasks, node}, Kernel, :node, [])
  |> Task.await()` from the BEAM client, each answer checked to be the node's name. After a
  warm-up, `samples` one at a time (latency of each), then `count` tasks shared by
  `concurrency` processes, each starting its next task when the previous one answers
  (tasks/s = count / wall time).
- **3** (`client.exs erpc`): `:erpc.call(node, :erlang, :node, [])` one at a time; mean.
- **4** (`client.exs calls`): `GenServer.call({KV.Registry, node}, {:lookup, "x"})` in a loop
  from `callers` processes started together, for `duration` s; total calls / wall time.
- **5**: the pattern of 1-2 against bar's `KV.RouterTasks` and with `GenServer.call` lookups on
  bar's `KV.Registry`, by the BEAM client (`client.exs reverse`) and by a pykv Node in the
  bench process (`pykv.otp.task_supervisor.async_` + `task.await_()`, `pykv.otp.gen_server.call`).
- **6**: `line_clients` asyncio TCP clients in the bench process (the same code for both
  servers), each on its own bucket, alternating `PUT b k v` and `GET b k` for `line_duration` s;
  one command and its whole reply is one round trip. The client runs on the same 2 cores:
  its CPU share is in the note (near 100% means the client, not the server, is the limit).
- **7**: pykv.term against erlang_py and erlpack on the same logical terms (each library's
  own representation; decoding the same bytes), each result checked through pykv before
  timing; timeit loops, best of `codec_repeats`.
- **8** (`client.exs scale`): from one BEAM process, `tasks` `Task.Supervisor.async_nolink`
  calls to `KV.Bucket.put(bucket, "k<i>", i)`, all started, then all awaited
  (`Task.yield_many`, 120 s); then the same with `KV.Bucket.get(bucket, "k<i>")`, every answer
  checked to be `i`; then those gets again from `tasks` processes at once, each doing
  `Task.Supervisor.async` + `Task.await` (so that all of them are open at the same moment,
  the supervisor's start calls included). Starting from one process is a call per task to
  the supervisor, so there the node's speed decides how many are open at once. Then VmRSS
  (/proc/PID/status) before and 0.5 s after `buckets` `KV.Registry.create(KV.Registry, name)`
  calls through `:erpc` from `creators` processes.
"""


def markdown(meta: dict[str, Any], results: dict[str, Any], table_rows: list[Row],
             chart_file: str | None, chart_skipped: str | None) -> str:
    m = meta
    parts = [
        "# pykv benchmark results",
        "",
        f"Run {m['date']} with `{m['command']}` ({m['mode']}, sections: {', '.join(m['sections'])}); "
        f"took {m['duration_s']:.0f} s. The machine is noisy: compare ratios from one run, "
        "not absolute times across runs. Raw summaries: `results.json` beside this file.",
        "",
        "## Machine",
        "",
        _table(["what", "value"], [[k, v] for k, v in m["machine"].items()], md=True),
        "",
    ]
    items = targets(results, table_rows)
    if items:
        parts += ["## Targets (issue 5)", "", targets_table(items, md=True), ""]
    if table_rows:
        parts += ["## Python vs BEAM", "", comparison_table(table_rows, md=True), ""]
    shaped = shape_rows(results, m["params"])
    if shaped:
        parts += ["## Load shapes: Python vs BEAM, with each node's CPU", "",
                  shapes_table(shaped, md=True), ""]
    if "codec" in results:
        parts += ["## Term codec (7), µs per operation", "", codec_table(results["codec"], md=True), "",
                  codec_summary(results["codec"]).replace("\n", "  \n"), ""]
    if chart_file:
        parts += ["## Latency distributions (1, 2)", "", f"![latency of tasks, foo vs bar]({chart_file})", ""]
    elif chart_skipped:
        parts += [f"(No chart: {chart_skipped}.)", ""]
    parts += ["## How each number is measured", "", HOW + SHAPES_HOW,
              "## Parameters", "", _table(["parameter", "value"],
                                          [[k, str(v)] for k, v in m["params"].items()], md=True), ""]
    return "\n".join(parts)


# -- load shapes -----------------------------------------------------------------------------------

THROUGHPUT = Target("ratio >= 0.9", lambda r: r >= 0.9)
LATENCY = Target("ratio <= 1.2", lambda r: r <= 1.2)
MB = 1e6


@dataclass
class ShapeRow(Row):
    cpu_foo: float | None = None   # CPU per request (or per MB moved) of the node, µs
    cpu_bar: float | None = None
    cpu_unit: str = "µs/req"


def _cpu(r: dict[str, Any], per: float) -> float | None:
    return r["cpu_us"] / per if per else None


def shape_rows(results: dict[str, Any], params: dict[str, Any] | None = None) -> list[ShapeRow]:
    """One row per figure of the shapes and fanin sections, CPU per request beside it."""
    c = (params or {}).get("concurrency", 200)
    out: list[ShapeRow] = []
    shapes: dict[str, dict[str, Any]] = {}
    if "shapes" in results:
        foo, bar = results["shapes"]["foo"], results["shapes"]["bar"]
        shapes = {name: {"foo": foo[name], "bar": bar[name]} for name in foo}
    if "fanin" in results:
        shapes["fanin"] = {"foo": results["fanin"]["foo"]["fanin"], "bar": results["fanin"]["bar"]["fanin"]}

    def row(label: str, unit: str, f: Any, b: Any, target: Target | None, fr: dict[str, Any], br: dict[str, Any],
            per_f: float | None = None, per_b: float | None = None, cpu_unit: str = "µs/req", note: str = "") -> None:
        err = _errors(fr, br)
        out.append(ShapeRow("S", label, unit, f, b, target, "; ".join(x for x in (note, err) if x),
                            _cpu(fr, per_f if per_f is not None else fr["ops"]),
                            _cpu(br, per_b if per_b is not None else br["ops"]), cpu_unit))

    def lat(name: str, label: str, stat: str) -> None:
        f, b = shapes[name]["foo"], shapes[name]["bar"]
        p = {"p50": 50, "p99": 99, "mean": None}[stat]
        row(f"{label}: {stat}", "µs", _lat(f, "lat_us", p), _lat(b, "lat_us", p),
            LATENCY if stat != "p99" else None, f, b)

    def rate(name: str, label: str) -> None:
        f, b = shapes[name]["foo"], shapes[name]["bar"]
        row(label, "/s", f["ops"] / (f["elapsed_ns"] / 1e9), b["ops"] / (b["elapsed_ns"] / 1e9), THROUGHPUT, f, b)

    def mbs(name: str, label: str, key: str, factor: int, moved: int) -> None:
        f, b = shapes[name]["foo"], shapes[name]["bar"]
        note = (f"peak RSS growth per MB moved {f['rss_growth_kib'] * 1024 / (f['bytes'] * moved):.2f} / "
                f"{b['rss_growth_kib'] * 1024 / (b['bytes'] * moved):.2f}") if "rss_growth_kib" in f else ""
        row(label, "MB/s", f["bytes"] * factor / MB / (f[key] / 1e9), b["bytes"] * factor / MB / (b[key] / 1e9),
            THROUGHPUT, f, b, f["bytes"] * moved / MB, b["bytes"] * moved / MB, "µs/MB", note)

    if "task_seq" in shapes:
        lat("task_seq", "Task.Supervisor.async + await, one at a time, blocks per node", "p50")
        lat("task_seq", "same", "p99")
    if "erpc_seq" in shapes:
        lat("erpc_seq", ":erpc.call(node, :erlang, :node, []), one at a time, blocks", "mean")
    if "call_seq" in shapes:
        lat("call_seq", "GenServer.call KV.Registry lookup, one at a time, blocks", "p50")
    if "task_conc" in shapes:
        rate("task_conc", f"tasks, {c} processes each async + await in a loop: tasks/s")
    if "task_batch" in shapes:
        rate("task_batch", f"one process: {c} Task.Supervisor.async, then Task.await_many, repeated: tasks/s")
    if "fanin" in shapes:
        n = shapes["fanin"]["foo"]["clients"]
        rate("fanin", f"fan-in: tasks from {n} BEAM client nodes at once: tasks/s")
    if "send_request" in shapes:
        rate("send_request", ":gen_server.send_request x20,000 to KV.Registry at once, then every reply: /s")
    if "send_stream" in shapes:
        rate("send_stream", "plain send stream to registered KV.Registry, then one call: messages/s")
    if "map_reply" in shapes:
        lat("map_reply", "GenServer.call get of a 10,000-entry map, one at a time", "mean")
    for name, size in (("big_1mib", "1 MiB"), ("big_16mib", "16 MiB")):
        if name in shapes:
            mbs(name, f"{size} binary value through GenServer.call: put (to the node)", "to_ns", 1, 2)
            mbs(name, f"{size} binary value: get (from the node)", "from_ns", 1, 2)
    if "echo_50mb" in shapes:
        mbs("echo_50mb", "50 MB binary through Bench.Echo.echo/1 (:erpc): both ways", "echo_ns", 2, 4)
        mbs("echo_50mb", "50 MB binary to Bench.Echo.size/1 (to the node)", "to_ns", 1, 4)
        mbs("echo_50mb", "50 MB binary from Bench.Echo.big/1 (from the node)", "from_ns", 1, 4)
    return out


def shapes_table(table_rows: list[ShapeRow], md: bool) -> str:
    head = ["measurement", "unit", "python", "beam", "python/beam", "target", "met",
            "foo CPU", "bar CPU", "CPU unit", "note"]
    body = [[r.label, r.unit, fmt(r.python), fmt(r.beam), f"{r.ratio:.2f}" if r.ratio is not None else "-",
             r.target.text if r.target else "", yes_no(r.met) if r.target else "",
             fmt(r.cpu_foo), fmt(r.cpu_bar), r.cpu_unit, r.note] for r in table_rows]
    return _table(head, body, md)


SHAPES_HOW = """\
- **Load shapes** (`client.exs shapes`, `fanin`): each node's work runs in blocks, foo's half,
  bar's whole (two halves back to back), foo's other half (A..A B..B A..A), never alternated
  request by request. CPU is the node's own (utime + stime of its OS process from
  /proc/PID/stat, clock ticks of 10 ms) during its blocks, per request (per MB moved for the
  large binaries); both nodes busy-wait after traffic (foo 1 ms by default, the BEAM's
  schedulers as they do), and that is counted for both. Peak RSS growth: VmHWM after the block
  less VmRSS before it (VmHWM reset through /proc/PID/clear_refs), per MB moved in the block.
  Fan-in: 3 BEAM client nodes started together, each with a third of the 200 in flight.
"""
