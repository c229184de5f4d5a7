"""Test support: real BEAM nodes, started and stopped by the tests themselves.

Tests marked `distributed` need Erlang/Elixir (`elixir` on PATH; put OTP 27's bin first on
PATH to test that generation). Without it they are skipped with one clear reason, the
automatic form of the seed's `Node.alive?` rule: `-m distributed` / `-m "not distributed"`
select them as `mix test --only distributed` / `--exclude distributed` would.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import textwrap
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Awaitable, Callable

import pytest

ROOT = Path(__file__).resolve().parent.parent
ELIXIR = shutil.which("elixir")
HOST = __import__("socket").gethostname().split(".")[0]
NO_BEAM_REASON = ("Erlang/Elixir not installed (`elixir` not on PATH): distributed tests need real BEAM "
                  "nodes; `bash scripts/test.sh` installs them and runs everything")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if ELIXIR:
        return
    skip = pytest.mark.skip(reason=NO_BEAM_REASON)
    for item in items:
        if "distributed" in item.keywords:
            item.add_marker(skip)


def pytest_report_header(config: pytest.Config) -> str:
    if not ELIXIR:
        return NO_BEAM_REASON
    version = subprocess.run(["erl", "-noshell", "-eval",
                              'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
                             capture_output=True, text=True).stdout
    return f"BEAM: OTP {version}, elixir at {ELIXIR}"


def use_codec(name: str) -> str:
    """Switch pykv's codec to "python" or "c", and return the one used before. Where the C
    accelerator is not built a test that needs it is skipped, except in CI, where it must be."""
    from pykv.term import codec

    before = codec.IMPLEMENTATION
    try:
        codec.use_implementation(name)
    except ImportError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(str(e))
    return before


@pytest.fixture(params=["python", "c"])
def codec_implementation(request: pytest.FixtureRequest) -> Any:
    """Run a test with each codec: the pure-Python one and the C accelerator."""
    from pykv.term import codec

    before = use_codec(request.param)
    yield request.param
    codec.use_implementation(before)


@pytest.fixture(scope="session")
def cookie() -> str:
    """A fresh cookie per run: nothing outside the test run can join its nodes."""
    return "pykv-test-" + secrets.token_hex(8)


@pytest.fixture(scope="session", autouse=True)
def epmd_daemon() -> None:
    """A real epmd for the run, so BEAM nodes do not depend on a Python node's embedded one."""
    if shutil.which("epmd"):
        subprocess.run(["epmd", "-daemon"], check=False)


def unique(prefix: str) -> str:
    return f"{prefix}{secrets.token_hex(3)}"


def run(coro: Awaitable[Any], timeout: float = 90) -> Any:
    """Run a test's coroutine on a fresh event loop (we do not depend on pytest-asyncio)."""
    return asyncio.run(asyncio.wait_for(coro, timeout))


_SCRIPTS = Path(tempfile.mkdtemp(prefix="pykv-test-scripts-"))


def eval_file(script: str) -> list[str]:
    """elixir's arguments that evaluate a script (dedented) kept in a file of its own. Not
    `-e TEXT`: with it, OTP 29 + Elixir 1.20 segfaults on tests/test_otp.py's rpc script. That
    is a BEAM bug that the script's content triggers (a remote EXIT or DOWN with a non-atom
    reason matched by a struct pattern inside a `receive`), not `-e` itself: that script has
    not crashed from a file here, but five lines with the same pattern do, either way
    (scripts/repro-elixir-link-exit-crash.sh). Not `elixir FILE`
    either: Elixir 1.14 compiles such files, and OTP 25's compiler fails on some of them
    (beam_ssa_recv). Code.eval_file works on every generation."""
    fd, path = tempfile.mkstemp(suffix=".exs", dir=_SCRIPTS)
    with os.fdopen(fd, "w") as f:
        f.write(textwrap.dedent(script))
    return ["-e", f'Code.eval_file("{path}")']


@dataclass
class ElixirResult:
    returncode: int
    stdout: str
    stderr: str

    def check(self) -> "ElixirResult":
        assert self.returncode == 0, f"elixir failed ({self.returncode}):\n{self.stdout}\n{self.stderr}"
        return self


async def run_elixir(script: str, *, sname: str, cookie: str, timeout: float = 60,
                     args: tuple[str, ...] = (), cwd: Path | None = None,
                     env: dict[str, str] | None = None) -> ElixirResult:
    """Run an Elixir script on a fresh node `sname` (dedented; `FOO` etc. are up to the
    caller). Runs concurrently with the test's own Python node."""
    proc = await asyncio.create_subprocess_exec(
        ELIXIR or "elixir", "--sname", sname, "--cookie", cookie, *args, *eval_file(script),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE, cwd=cwd,
        env={**os.environ, **(env or {})})
    try:
        out, err = await asyncio.wait_for(proc.communicate(), timeout)
    except asyncio.TimeoutError:
        proc.kill()
        out, err = await proc.communicate()
        raise AssertionError(f"elixir script timed out after {timeout} s:\n{out.decode()}\n{err.decode()}")
    return ElixirResult(proc.returncode or 0, out.decode(), err.decode())


class BeamNode:
    """A long-running BEAM node (`elixir --sname NAME --no-halt`), optionally running the
    elixir_peer KV app. Stopped by `stop()` (SIGTERM, then kill)."""

    def __init__(self, sname: str, cookie: str, *, kv_app: bool = False,
                 env: dict[str, str] | None = None, script: str = "") -> None:
        self.sname = sname
        self.name = f"{sname}@{HOST}"
        self.cookie = cookie
        self.kv_app = kv_app
        self.env = env or {}
        self.script = script
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> "BeamNode":
        cmd = [ELIXIR or "elixir", "--sname", self.sname, "--cookie", self.cookie, "--no-halt"]
        if self.script:
            cmd += eval_file(self.script)
        cwd = None
        if self.kv_app:
            cmd += ["-S", "mix", "run", "--no-halt"]
            cwd = ROOT / "elixir_peer"
        self.proc = subprocess.Popen(cmd, cwd=cwd, env={**os.environ, "MIX_ENV": "dev", **self.env},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        return self

    def stop(self) -> str:
        if self.proc is None:
            return ""
        died = self.proc.poll()  # before we stopped it: say so, with its output, in the report
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        self.proc = None
        text = out.decode(errors="replace")
        if died is not None:
            print(f"BEAM node {self.name} had exited by itself with status {died}:\n{text}")
        return text

    def kill(self) -> None:
        if self.proc is not None:
            self.proc.kill()
            self.proc.communicate()
            self.proc = None


async def wait_until_up(node: Any, name: str, timeout: float = 30.0) -> None:
    """Ping `name` from the Python `node` until it answers (BEAM boot takes a second or more)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        if await node.ping(name, timeout=2):
            return
        await asyncio.sleep(0.2)
    raise AssertionError(f"{name} did not come up within {timeout} s")


@pytest.fixture
def beam_nodes(cookie: str) -> Any:
    """Factory for long-running BEAM nodes; every node started is stopped after the test."""
    started: list[BeamNode] = []

    def start(prefix: str = "bar", *, sname: str | None = None, **kwargs: Any) -> BeamNode:
        node = BeamNode(sname or unique(prefix), cookie, **kwargs).start()
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


PY = sys.executable


@pytest.fixture(scope="session")
def elixir_peer_built() -> None:
    """Compile elixir_peer once, before any test boots it as a node (a boot must not compile)."""
    env = {**os.environ, "MIX_ENV": "dev"}
    result = subprocess.run([ELIXIR or "elixir", "-S", "mix", "compile"], cwd=ROOT / "elixir_peer",
                            env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"elixir_peer does not compile:\n{result.stdout}\n{result.stderr}"


async def wait_for_kv(node: Any, name: str, timeout: float = 60.0) -> None:
    """Wait until the BEAM node `name` runs the KV app (its KV.Registry answers)."""
    from pykv import Atom, NoConnection, NoProc
    from pykv.otp.gen_server import call

    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while loop.time() < deadline:
        try:
            await call(node, (Atom("Elixir.KV.Registry"), name), (Atom("lookup"), b"__probe__"), timeout=2)
            return
        except (NoProc, NoConnection, TimeoutError):
            await asyncio.sleep(0.25)
    raise AssertionError(f"the KV app did not come up on {name} within {timeout} s")


def free_port() -> int:
    import socket
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def free_port_pair() -> tuple[int, int]:
    import socket
    socks = [socket.socket() for _ in range(2)]
    for s in socks:
        s.bind(("127.0.0.1", 0))
    ports = tuple(s.getsockname()[1] for s in socks)
    for s in socks:
        s.close()
    return ports  # type: ignore[return-value]


def lit(name: Any) -> str:
    """An Elixir atom literal for a node or process name."""
    return f':"{name}"'


def script(text: str, **values: str) -> str:
    """An Elixir script with placeholders (FOO=...) filled in."""
    for key, value in values.items():
        text = text.replace(key, value)
    return text


async def eventually(predicate: Callable[[], Any], timeout: float = 5.0, what: str = "condition") -> None:
    """Wait until `predicate()` (plain or async) is true."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while True:
        result = predicate()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if loop.time() > deadline:
            raise AssertionError(f"{what} not reached within {timeout} s")
        await asyncio.sleep(0.02)



async def alongside(script: Awaitable[ElixirResult], *python_sides: Awaitable[Any],
                    grace: float = 10.0) -> ElixirResult:
    """Run an Elixir script (`run_elixir(...)`) while Python coroutines play their part in
    the same event loop; returns the script's result once the Python sides have finished
    too, and re-raises the first Python-side failure (with the script's output)."""
    tasks = [asyncio.ensure_future(side) for side in python_sides]
    try:
        result = await script
    except BaseException:
        for task in tasks:
            task.cancel()
        raise
    done, pending = await asyncio.wait(tasks, timeout=grace) if tasks else (set(), set())
    for task in pending:
        task.cancel()
    output = f"\n--- elixir stdout ---\n{result.stdout}\n--- elixir stderr ---\n{result.stderr}"
    for task in tasks:
        if task in done and task.exception() is not None:
            raise AssertionError(f"the Python side failed: {task.exception()!r}{output}") from task.exception()
    assert not pending, f"the Python side did not finish within {grace} s after the script{output}"
    return result
