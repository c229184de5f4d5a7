"""Test hosts, made by the tests: network namespaces on a switch of their own, each with its
own addresses, host names and epmd, and the nodes that run on them.

    from hosts import network            # the fixture (and the helpers below)

    def test_across(network, cookie):
        net = network("hosta", "hostb")     # hosta.test, hostb.test; both see both names
        a, b = net["hosta"], net["hostb"]
        b.start_epmd()                       # a real epmd on hostb; hosta gets pykv's own

        async def main():
            foo = await started(pykv_node(a, "foo@hosta.test", cookie, "--no-server"))
            bar = await ElixirShell(b, "bar@hostb.test", cookie, kv_app=True).start()
            try:
                assert await bar.eval('Node.ping(:"foo@hosta.test")') == ":pong"
                b.link_down(); b.link_up()   # the host's cable, pulled and plugged in
            finally:
                await bar.stop(); await foo.stop()
        run(main())

What runs on a host: `pykv_node` (python -m pykv), `ElixirShell` (a BEAM node, elixir_peer's
with `kv_app`, that evaluates the lines a test sends it), `HostProcess` (any
program, its output collected), `run_python` (a script run to its end), `Host.popen`/`run`.

Each host is a network namespace with one interface, eth0, cabled to a bridge in a switch
namespace of the same network: 10.213.0.(11, 12, ...)/24 and fd00:213::(11, 12, ...)/64,
addresses of a private range that only these namespaces use, so the root namespace gets no
interface and no route. `/etc/netns/NS/hosts` gives every host all the names
(`hosta.test hosta`, both families), its resolv.conf no name server (nothing is asked
elsewhere), and each command runs with its own UTS namespace whose host name is the short
one (`hosta`), so `--sname` nodes are `foo@hosta` there.

Names are unique per run (`pykv-<run>-<n>-<host>`), and a run holds a lock file while it
lives: a later run removes what a killed run left (its namespaces, their processes, the
/etc/netns files) and nothing of a run still alive. Everything is removed after each test,
on failure too. Where namespaces cannot be made (not root), tests skip with one reason line;
in CI (`CI` set, as CI services set it) that is a failure.
"""

from __future__ import annotations

import asyncio
import atexit
import base64
import fcntl
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Iterator

import pytest

IP = shutil.which("ip")
SUBNET4, SUBNET6 = "10.213.0", "fd00:213:"
NETNS_ETC = Path("/etc/netns")
LOCKS = Path("/tmp/pykv-hosts")      # one lock file per live run
PREFIX = "pykv-"
_NS = re.compile(rf"^{PREFIX}([0-9a-f]{{6}})-\d+-[a-z0-9]+$")


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run([IP or "ip", *args], capture_output=True, text=True)
    if check and result.returncode != 0:
        raise RuntimeError(f"ip {' '.join(args)}: {result.stderr.strip()}")
    return result


class _Run:
    """This test run: its id, and the lock that tells later runs it is alive."""

    def __init__(self) -> None:
        self.id = secrets.token_hex(3)
        self.networks = 0
        LOCKS.mkdir(parents=True, exist_ok=True)
        # made under another name and locked before it is renamed: a sweeper never sees an
        # unlocked lock of a live run
        tmp = LOCKS / f".{self.id}.{os.getpid()}"
        self._lock = open(tmp, "w")
        fcntl.flock(self._lock, fcntl.LOCK_EX)
        tmp.rename(LOCKS / f"{self.id}.lock")
        sweep(self.id)

    def close(self) -> None:
        (LOCKS / f"{self.id}.lock").unlink(missing_ok=True)
        self._lock.close()


def _alive(run_id: str) -> bool:
    try:
        with open(LOCKS / f"{run_id}.lock") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return True
            return False
    except FileNotFoundError:
        return False


def _namespaces() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").stdout.splitlines() if line.strip()]


def sweep(own_run: str) -> None:
    """Remove what killed runs left: namespaces of runs whose lock nobody holds, the
    processes still in them (started by those runs' tests), their /etc/netns files."""
    dead: set[str] = set()
    leftovers = _namespaces() + ([p.name for p in NETNS_ETC.iterdir()] if NETNS_ETC.is_dir() else [])
    for name in leftovers:
        m = _NS.match(name)
        if m and m.group(1) != own_run and (m.group(1) in dead or not _alive(m.group(1))):
            dead.add(m.group(1))
            _remove_namespace(name)
    for run_id in dead:
        (LOCKS / f"{run_id}.lock").unlink(missing_ok=True)


def _remove_namespace(ns: str) -> None:
    pids = _ip("netns", "pids", ns, check=False).stdout.split()
    for pid in pids:
        try:
            os.kill(int(pid), signal.SIGKILL)
        except (ProcessLookupError, ValueError):
            pass
    _ip("netns", "del", ns, check=False)
    shutil.rmtree(NETNS_ETC / ns, ignore_errors=True)


def cannot_make_namespaces() -> str | None:
    """Why namespaces cannot be made here, or None."""
    if IP is None:
        return "network namespaces need iproute2 (`ip` not on PATH)"
    if os.geteuid() != 0:
        return "network namespaces need root (`ip netns add`)"
    return None


@dataclass
class Host:
    """One test host: a network namespace with its names, addresses and cable."""

    short: str                 # hosta: its UTS host name, and its name for --sname nodes
    name: str                  # hosta.test: its long host name
    netns: str
    ipv4: str
    ipv6: str
    network: "Network" = field(repr=False)

    def address(self, ipv6: bool = False) -> str:
        return self.ipv6 if ipv6 else self.ipv4

    def command(self, *argv: str) -> list[str]:
        """argv run on this host: in its network namespace (with its hosts file), with its
        own host name."""
        return [IP or "ip", "netns", "exec", self.netns, "unshare", "--uts", "sh", "-c",
                'hostname "$0" && exec "$@"', self.short, *argv]

    def popen(self, *argv: str, **kwargs: Any) -> subprocess.Popen[bytes]:
        """Start argv on this host; stopped with the network at the latest."""
        proc = subprocess.Popen(self.command(*argv), **kwargs)
        self.network.pids.append(proc.pid)
        return proc

    def run(self, *argv: str, timeout: float = 30) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.command(*argv), capture_output=True, text=True, timeout=timeout)

    def start_epmd(self, address: str | None = None) -> subprocess.Popen[bytes]:
        """A real epmd on this host (the `epmd` program, in the foreground, stopped with
        the network; on `address` and loopback only, if given: ERL_EPMD_ADDRESS), once it
        answers."""
        env = {**os.environ, "ERL_EPMD_ADDRESS": address} if address else None
        proc = self.popen(shutil.which("epmd") or "epmd", stdout=subprocess.DEVNULL,
                          stderr=subprocess.DEVNULL, env=env)
        deadline = time.monotonic() + 10
        while self.run("epmd", "-names").returncode != 0:
            if proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"epmd did not start on {self.name}")
            time.sleep(0.05)
        return proc

    def link_down(self) -> None:
        """Pull this host's cable (its port on the switch): it keeps its addresses, and its
        packets go nowhere, as on a partition."""
        _ip("-n", self.network.switch, "link", "set", self.short, "down")

    def link_up(self) -> None:
        _ip("-n", self.network.switch, "link", "set", self.short, "up")


class Network:
    """Hosts on one switch (made together: each hosts file lists them all)."""

    def __init__(self, run: _Run, shorts: tuple[str, ...]) -> None:
        run.networks += 1
        self.prefix = f"{PREFIX}{run.id}-{run.networks}-"
        self.switch = self.prefix + "sw"
        self.hosts: dict[str, Host] = {}
        self.pids: list[int] = []
        try:
            self._make(shorts)
        except BaseException:
            self.close()
            raise

    def __getitem__(self, short: str) -> Host:
        return self.hosts[short]

    def _make(self, shorts: tuple[str, ...]) -> None:
        _ip("netns", "add", self.switch)
        _ip("-n", self.switch, "link", "add", "br0", "type", "bridge")
        _ip("-n", self.switch, "link", "set", "br0", "up")
        lines = ["127.0.0.1 localhost", "::1 localhost ip6-localhost ip6-loopback"]
        for i, short in enumerate(shorts):
            host = Host(short, f"{short}.test", self.prefix + short, f"{SUBNET4}.{11 + i}",
                        f"{SUBNET6}:{11 + i}", self)
            self.hosts[short] = host
            lines += [f"{host.ipv4} {host.name} {short}", f"{host.ipv6} {host.name} {short}"]
        for host in self.hosts.values():
            _ip("netns", "add", host.netns)
            # the cable: eth0 on the host, a port named after it on the switch
            _ip("link", "add", "eth0", "netns", host.netns, "type", "veth",
                "peer", "name", host.short, "netns", self.switch)
            _ip("-n", self.switch, "link", "set", host.short, "master", "br0", "up")
            _ip("-n", host.netns, "link", "set", "lo", "up")
            _ip("-n", host.netns, "addr", "add", f"{host.ipv4}/24", "dev", "eth0")
            # nodad: the address is usable at once, and again at once after a link_up
            _ip("-n", host.netns, "addr", "add", f"{host.ipv6}/64", "dev", "eth0", "nodad")
            _ip("-n", host.netns, "link", "set", "eth0", "up")
            (NETNS_ETC / host.netns).mkdir(parents=True, exist_ok=True)
            (NETNS_ETC / host.netns / "hosts").write_text("\n".join(lines) + "\n")
            # no name server: a name not in the hosts file is unknown at once, asked nowhere
            (NETNS_ETC / host.netns / "resolv.conf").write_text("# pykv test host: no DNS\n")

    def close(self) -> None:
        """Stop what was started here, then remove the hosts, the switch and their files."""
        for pid in self.pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for host in self.hosts.values():
            _remove_namespace(host.netns)
        _remove_namespace(self.switch)


_run: _Run | None = None


def _this_run() -> _Run:
    global _run
    if _run is None:
        _run = _Run()
        atexit.register(_run.close)
    return _run


@pytest.fixture
def network() -> Iterator[Callable[..., Network]]:
    """`network("hosta", "hostb", ...)`: hosts on one switch, removed after the test."""
    reason = cannot_make_namespaces()
    if reason is not None:
        if os.environ.get("CI"):
            pytest.fail(f"{reason} (CI must run the tests across hosts)")
        pytest.skip(f"{reason}: tests across hosts skipped")
    made: list[Network] = []

    def make(*shorts: str) -> Network:
        try:
            net = Network(_this_run(), shorts)
        except RuntimeError as e:  # ip refused: no namespaces in this container
            if os.environ.get("CI"):
                raise
            pytest.skip(f"cannot make network namespaces here: {e}")
        made.append(net)
        return net

    yield make
    for net in made:
        net.close()


# -- what runs on the hosts ----------------------------------------------------------------

class HostProcess:
    """A long-running program on a test host, its output (stdout and stderr) collected as it
    comes, for `expect` and for the failure report."""

    def __init__(self, host: Host, argv: list[str], env: dict[str, str] | None = None,
                 cwd: Path | None = None, label: str = "") -> None:
        self.host = host
        self.argv = argv
        self.env = {**os.environ, **(env or {})}
        self.cwd = cwd
        self.label = label or argv[0]
        self.lines: list[str] = []
        self.proc: asyncio.subprocess.Process | None = None
        self._reader: asyncio.Task[None] | None = None
        self._new_line = asyncio.Event()

    async def start(self) -> "HostProcess":
        self.proc = await asyncio.create_subprocess_exec(
            *self.host.command(*self.argv), stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            env=self.env, cwd=self.cwd)
        self.host.network.pids.append(self.proc.pid)
        self._reader = asyncio.ensure_future(self._read())
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stdout is not None
        while True:
            line = await self.proc.stdout.readline()
            if not line:
                break
            self.lines.append(line.decode(errors="replace").rstrip("\n"))
            self._new_line.set()
        self._new_line.set()

    @property
    def output(self) -> str:
        return "\n".join(self.lines)

    async def expect(self, pattern: str, timeout: float = 60, start: int = 0) -> re.Match[str]:
        """The first output line from line `start` on that matches `pattern` (waiting for it)."""
        regex = re.compile(pattern)
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        seen = start
        while True:
            for i in range(seen, len(self.lines)):
                m = regex.search(self.lines[i])
                if m:
                    return m
            seen = len(self.lines)
            if self.proc is not None and self.proc.returncode is not None and self._reader.done():
                raise AssertionError(f"{self.label} on {self.host.name} exited "
                                     f"({self.proc.returncode}) before printing {pattern!r}:\n{self.output}")
            left = deadline - loop.time()
            if left <= 0:
                raise AssertionError(f"{self.label} on {self.host.name} printed no {pattern!r} "
                                     f"within {timeout} s:\n{self.output}")
            self._new_line.clear()
            try:
                await asyncio.wait_for(self._new_line.wait(), min(left, 1.0))
            except asyncio.TimeoutError:
                pass

    async def stop(self, grace: float = 0.0) -> str:
        """(After `grace` seconds to end by itself) SIGTERM, then SIGKILL; returns the whole
        output (and says so if it had died)."""
        proc = self.proc
        if proc is None:
            return self.output
        died = proc.returncode
        if died is None and grace:
            try:
                await asyncio.wait_for(proc.wait(), grace)
            except asyncio.TimeoutError:
                pass
        if died is None and proc.returncode is None:
            proc.terminate()
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except asyncio.TimeoutError:
                proc.kill()
                await proc.wait()
        if self._reader is not None:
            await asyncio.wait_for(self._reader, 10)
        self.proc = None
        if died is not None:
            print(f"{self.label} on {self.host.name} had exited by itself with status {died}:\n{self.output}")
        return self.output


ROOT = Path(__file__).resolve().parent.parent
PY = sys.executable


def pykv_node(host: Host, name: str, cookie: str, *args: str, env: dict[str, str] | None = None) -> HostProcess:
    """`python -m pykv --name NAME ...` (or `--sname`, when NAME has no dot) on `host`."""
    kind = "--name" if "." in name.partition("@")[2] or ":" in name else "--sname"
    return HostProcess(host, [PY, "-m", "pykv", kind, name, "--cookie", cookie, *args],
                       env={"PYTHONPATH": str(ROOT), **(env or {})}, label=f"pykv {name}")


async def started(node: HostProcess, timeout: float = 60) -> HostProcess:
    """Start a pykv node and wait until its KV app is ready (or only its node, --no-server)."""
    await node.start()
    await node.expect(r"KV app ready|node \S+ ready", timeout)
    return node


@dataclass
class Result:
    returncode: int
    stdout: str
    stderr: str


async def run_python(host: Host, script: str, timeout: float = 60) -> Result:
    """A Python script (dedented; pykv importable) run to its end on `host`."""
    proc = await asyncio.create_subprocess_exec(
        *host.command(PY, "-c", textwrap.dedent(script)), stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE, env={**os.environ, "PYTHONPATH": str(ROOT)})
    host.network.pids.append(proc.pid)
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"python on {host.name} timed out after {timeout} s:\n{out.decode()}\n{err.decode()}")
    return Result(proc.returncode or 0, out.decode(errors="replace"), err.decode(errors="replace"))


# An Elixir shell for the tests: each line on stdin is `ID<tab>CODE` (CODE in base64); CODE is
# evaluated with the bindings of the lines before, and the answer is one line,
# `ID<tab>ok<tab>inspect(value)` or `ID<tab>raise<tab>kind: inspect(reason)` (an exception, exit
# or throw, caught), with backslashes and newlines escaped.
_SHELL = r'''
defmodule PykvTestShell do
  def loop(binding) do
    case IO.gets("") do
      :eof -> :ok
      {:error, _} -> :ok
      line ->
        [id, code] = String.split(String.trim_trailing(line, "\n"), "\t", parts: 2)
        code = Base.decode64!(code)
        {answer, binding} =
          try do
            {value, binding} = Code.eval_string(code, binding)
            {"ok\t" <> inspect(value, limit: :infinity, printable_limit: :infinity), binding}
          catch
            kind, reason -> {"raise\t#{kind}: " <> inspect(reason, limit: :infinity), binding}
          end
        IO.puts(id <> "\t" <> (answer |> String.replace("\\", "\\\\") |> String.replace("\n", "\\n")))
        loop(binding)
    end
  end
end
IO.puts("shell #{node()} ready")
PykvTestShell.loop([])
'''


class ElixirShell(HostProcess):
    """A BEAM node on a test host that evaluates what the test sends it, line by line, as
    if typed in its iex: `await shell.eval('Node.ping(:"foo@hosta.test")')` is ":pong".
    With `kv_app` it is elixir_peer's node (`mix run`), the KV app started."""

    def __init__(self, host: Host, name: str, cookie: str, *, erl: str = "", kv_app: bool = False,
                 env: dict[str, str] | None = None) -> None:
        fd, path = tempfile.mkstemp(prefix="pykv-shell-", suffix=".exs")
        with os.fdopen(fd, "w") as f:
            f.write(_SHELL)
        self.path = Path(path)
        kind = "--name" if "." in name.partition("@")[2] or ":" in name else "--sname"
        argv = [shutil.which("elixir") or "elixir", kind, name, "--cookie", cookie]
        if erl:
            argv += ["--erl", erl]
        argv += ["-S", "mix", "run", "-e"] if kv_app else ["-e"]
        super().__init__(host, argv + [f'Code.eval_file("{path}")'], env={"MIX_ENV": "dev", **(env or {})},
                         cwd=ROOT / "elixir_peer" if kv_app else None, label=f"shell {name}")
        self.name = name
        self._ids = 0

    async def start(self) -> "ElixirShell":
        await super().start()
        await self.expect(r"^shell \S+ ready")
        return self

    async def result(self, code: str, timeout: float = 60) -> tuple[bool, str]:
        """(True, inspect(value)) or (False, "kind: inspect(reason)") for CODE."""
        assert self.proc is not None and self.proc.stdin is not None
        self._ids += 1
        ident = str(self._ids)
        start = len(self.lines)
        self.proc.stdin.write(f"{ident}\t{base64.b64encode(code.encode()).decode()}\n".encode())
        await self.proc.stdin.drain()
        m = await self.expect(rf"^{ident}\t(ok|raise)\t(.*)$", timeout, start)
        text = re.sub(r"\\(.)", lambda e: "\n" if e.group(1) == "n" else e.group(1), m.group(2))
        return m.group(1) == "ok", text

    async def eval(self, code: str, timeout: float = 60) -> str:
        """inspect(value) of CODE; an exception, exit or throw fails the test."""
        ok, text = await self.result(code, timeout)
        assert ok, f"{self.name} on {self.host.name}: {code!r} raised {text}\n{self.output}"
        return text

    async def stop(self, grace: float = 5.0) -> str:
        if self.proc is not None and self.proc.stdin is not None:
            self.proc.stdin.close()  # the end of its input: it halts
        out = await super().stop(grace)
        self.path.unlink(missing_ok=True)
        return out
