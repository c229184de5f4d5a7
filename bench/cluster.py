"""The nodes a benchmark run starts, and their cleanup.

Every run gets fresh node names (a random hex suffix) and a fresh cookie, so it never meets
the test suite or another run on the same machine. Every process is started in a session of
its own and remembered; `Cluster.close()` (also run on an exception or Ctrl-C) ends each one
by its pid: SIGTERM to its process group and descendants, then SIGKILL after a grace period.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PEER = ROOT / "elixir_peer"
CLIENT_SCRIPT = ROOT / "bench" / "client.exs"
ECHO = ROOT / "bench" / "echo.py"  # Bench.Echo, for the large-message shapes
# A build directory of our own (ignored by elixir_peer/.gitignore's /_build_*/): compiling
# here never races a test run compiling elixir_peer into _build at the same time.
# its own build of elixir_peer; BENCH_MIX_BUILD_ROOT gives another BEAM generation its own
MIX_BUILD_ROOT = os.environ.get("BENCH_MIX_BUILD_ROOT", "_build_bench")
# BEAM nodes listen for distribution on loopback only.
BEAM_LOOPBACK = ["--erl", "-kernel inet_dist_use_interface {127,0,0,1}"]
RESULT_PREFIX = "BENCH "


class BenchError(RuntimeError):
    """A node did not start, or a client run failed; the message carries its log."""


def short_host() -> str:
    """The host part of a short node name, as erl and pykv compute it."""
    return socket.gethostname().split(".")[0]


def free_port() -> int:
    """A TCP port that was free a moment ago, on loopback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _descendants(pid: int) -> list[int]:
    """Pids below `pid` (children first found, then theirs), read from /proc."""
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rpartition(")")[2].split()[1])
            children.setdefault(ppid, []).append(int(entry))
    found, todo = [], [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            found.append(child)
            todo.append(child)
    return found


def _signal(pids: list[int], pgid: int | None, sig: int) -> None:
    if pgid is not None:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            pass
    for pid in pids:
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


@dataclass
class Cluster:
    """foo (pykv), bar (elixir_peer) and the BEAM client runs of one benchmark run."""

    tag: str = field(default_factory=lambda: secrets.token_hex(3))
    cookie: str = field(default_factory=lambda: "bench" + secrets.token_hex(12))
    host: str = field(default_factory=short_host)
    logs: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="pykv-bench-")))
    foo_port: int = 0
    bar_port: int = 0
    foo_proc: subprocess.Popen[bytes] | None = None
    bar_proc: subprocess.Popen[bytes] | None = None
    _procs: list[subprocess.Popen[bytes]] = field(default_factory=list)
    _graces: dict[int, float] = field(default_factory=dict)  # index in _procs -> seconds to stop
    _clients: int = 0

    @property
    def foo(self) -> str:
        return f"foo_{self.tag}@{self.host}"

    @property
    def bar(self) -> str:
        return f"bar_{self.tag}@{self.host}"

    def name(self, role: str) -> str:
        """A node name of this run for another role (the Python client node)."""
        return f"{role}_{self.tag}"

    # -- starting ------------------------------------------------------------------------------

    def _spawn(self, cmd: list[str], log: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        out = open(self.logs / log, "ab")
        try:
            proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                    start_new_session=True, **kwargs)
        finally:
            out.close()
        self._procs.append(proc)
        return proc

    def compile_peer(self) -> None:
        """`mix compile` elixir_peer into our build root (a no-op when up to date)."""
        if shutil.which("elixir") is None:
            raise BenchError("`elixir` is not on PATH: every section but codec needs Erlang/Elixir "
                             "(python -m bench --sections codec runs without)")
        result = subprocess.run(["elixir", "-S", "mix", "compile"], cwd=PEER, env=self._mix_env(),
                                capture_output=True, text=True, timeout=300)
        if result.returncode != 0:
            raise BenchError(f"elixir_peer does not compile:\n{result.stdout}\n{result.stderr}")

    def _mix_env(self) -> dict[str, str]:
        return {**os.environ, "MIX_ENV": "dev", "MIX_BUILD_ROOT": MIX_BUILD_ROOT}

    def start(self, profile: Path | None = None) -> None:
        """Start foo and bar, each with its line server, and wait until both serve it.
        With `profile`, foo runs under cProfile and writes its stats there when stopped."""
        # A real epmd first, as erl does (`epmd -daemon` is a no-op when one runs): otherwise
        # foo would serve an embedded one, and any pykv node of a concurrent test run that
        # embeds it could take our nodes' registrations down with it when it stops. epmd is
        # the machine's, shared by every node: it is left running, as erl leaves it.
        subprocess.run(["epmd", "-daemon"], check=False, timeout=30)
        self.foo_port, self.bar_port = free_port(), free_port()
        profiler = ["-m", "cProfile", "-o", str(profile)] if profile else []
        if profile:  # under cProfile foo stops slower, and writes its stats only once stopped
            self._graces[len(self._procs)] = 120.0
        self.foo_proc = self._spawn(
            [sys.executable, *profiler, "-m", "pykv", "--sname", f"foo_{self.tag}", "--cookie", self.cookie,
             "--port", str(self.foo_port), "--log-level", "WARNING", "--load", str(ECHO)],
            "foo.log", cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)})
        # bar owns every bucket its line server sees (names start with a letter), as foo
        # does by default: each line server then serves its own buckets, no forwarding.
        self.bar_proc = self._spawn(
            ["elixir", "--sname", f"bar_{self.tag}", "--cookie", self.cookie, *BEAM_LOOPBACK,
             "-S", "mix", "run", "--no-halt"],
            "bar.log", cwd=PEER,
            env={**self._mix_env(), "KV_PORT": str(self.bar_port), "KV_ROUTING_TABLE": f"a-z={self.bar}"})
        # the line server starts last on both sides: once it accepts, the node is up
        self._wait_for_port(self.foo_port, self.foo_proc, "foo.log")
        self._wait_for_port(self.bar_port, self.bar_proc, "bar.log")

    def _wait_for_port(self, port: int, proc: subprocess.Popen[bytes], log: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise BenchError(f"{log[:-4]} exited ({proc.returncode}) before serving:\n{self.tail(log)}")
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.1)
        raise BenchError(f"{log[:-4]} did not serve port {port} within {timeout} s:\n{self.tail(log)}")

    def tail(self, log: str, lines: int = 30) -> str:
        try:
            return "\n".join((self.logs / log).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    # -- the BEAM client -----------------------------------------------------------------------

    def client(self, section: str, nodes: list[str], timeout: float = 600, **options: Any) -> dict[str, Any]:
        """Run bench/client.exs SECTION against `nodes` (`name` or `name=ospid`); returns
        {node: result} from its `BENCH {json}` lines."""
        return self.clients(section, nodes, 1, timeout, **options)

    def clients(self, section: str, nodes: list[str], n_clients: int, timeout: float = 600,
                **options: Any) -> dict[str, Any]:
        """`n_clients` client nodes at once (the first leads: only it reports; the others get
        --peers and --index to find it); returns the first one's results."""
        names = [f"client{self._clients + i + 1}_{self.tag}" for i in range(n_clients)]
        started = []
        for i, name in enumerate(names):
            self._clients += 1
            log = f"client-{self._clients}-{section}.log"
            extra = {"peers": ",".join(f"{n}@{self.host}" for n in names[1:]), "index": i + 1} if n_clients > 1 else {}
            args = [f"--{k.replace('_', '-')}={v}" for k, v in (options | extra).items()]
            cmd = ["elixir", "--sname", name, "--cookie", self.cookie,
                   *BEAM_LOOPBACK, str(CLIENT_SCRIPT), section, *(f"--node={n}" for n in nodes), *args]
            with open(self.logs / f"{log}.out", "wb") as out, open(self.logs / log, "wb") as err:
                proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=err,
                                        start_new_session=True, cwd=ROOT)
            self._procs.append(proc)
            started.append((proc, log))
        deadline = time.monotonic() + timeout
        for proc, log in started:
            try:
                proc.wait(max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                for other, _ in started:
                    self._stop(other)
                raise BenchError(f"client {section} timed out after {timeout} s:\n{self.tail(log)}") from None
        proc, log = started[0]
        out_path = self.logs / f"{log}.out"
        for other, other_log in started[1:]:
            if other.returncode != 0:
                raise BenchError(f"client {section} ({other_log}) failed ({other.returncode}):\n{self.tail(other_log)}")
        results = {}
        for line in out_path.read_text(errors="replace").splitlines():
            if line.startswith(RESULT_PREFIX):
                item = json.loads(line[len(RESULT_PREFIX):])
                results[item["node"]] = item["result"]
        if proc.returncode != 0 or len(results) != len(nodes):
            raise BenchError(f"client {section} failed ({proc.returncode}):\n"
                             f"{self.tail(log.replace('.log', '.log.out'))}\n{self.tail(log)}")
        return results

    # -- stopping ------------------------------------------------------------------------------

    def _stop(self, proc: subprocess.Popen[bytes], grace: float = 5.0) -> None:
        if proc.poll() is not None and not _descendants(proc.pid):
            return
        pids = [proc.pid, *_descendants(proc.pid)]
        _signal(pids, proc.pid, signal.SIGTERM)
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and any(Path(f"/proc/{p}").exists() and not _zombie(p) for p in pids):
            proc.poll()
            time.sleep(0.1)
        _signal([p for p in pids if Path(f"/proc/{p}").exists()], proc.pid, signal.SIGKILL)
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            pass

    def close(self, keep_logs: bool = False) -> None:
        """Stop every process this run started (safe to call twice)."""
        while self._procs:
            self._stop(self._procs.pop(), self._graces.get(len(self._procs), 5.0))
        if not keep_logs:
            shutil.rmtree(self.logs, ignore_errors=True)


def _zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0] == "Z"
    except OSError:
        return True
