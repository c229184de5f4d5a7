"""`python -m pykv`, the main command, end to end: flags, the ready line, a BEAM caller."""

from __future__ import annotations

import asyncio
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import HOST, free_port_pair, run, run_elixir, unique
from pykv.cli import parse_args


def test_flags_follow_erl() -> None:
    args = parse_args(["--sname", "foo", "--cookie", "c", "--route", "a-m=foo", "--route", "n-z=bar",
                       "--no-server"])
    assert (args.sname, args.cookie, args.route, args.no_server) == ("foo", "c", ["a-m=foo", "n-z=bar"], True)
    with pytest.raises(SystemExit):
        parse_args(["--sname", "a", "--name", "b@h"])  # one or the other, as erl


def test_a_bad_routing_table_is_refused_with_a_clear_line() -> None:
    result = subprocess.run([sys.executable, "-m", "pykv", "--sname", unique("foo"), "--cookie", "c",
                             "--route", "m-a=foo", "--no-server"], capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert "range 'm-a' is empty" in result.stderr


@pytest.mark.distributed
@pytest.mark.parametrize("loop,busy_wait", [("asyncio", "0"), ("uvloop", "0"), ("uvloop", "500"), ("asyncio", "500")])
def test_python_m_pykv_serves_the_seed(cookie: str, loop: str, busy_wait: str) -> None:
    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed (pip install 'pykv[fast]')")
    foo = unique("foo")
    port, _ = free_port_pair()

    async def main() -> None:
        node = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pykv", "--sname", foo, "--cookie", cookie, "--loop", loop,
            "--busy-wait", busy_wait,
            "--route", f"a-z={foo}", "--port", str(port), stderr=asyncio.subprocess.PIPE)
        try:
            assert node.stderr is not None
            while b"KV app ready" not in (line := await asyncio.wait_for(node.stderr.readline(), 30)):
                assert line, "the node exited before it was ready"
            assert f"({loop} loop, ".encode() in line
            result = await run_elixir(f'''
                foo = :"{foo}@{HOST}"
                :pong = Node.ping(foo)
                ^foo = Task.Supervisor.async({{KV.RouterTasks, foo}}, Kernel, :node, []) |> Task.await()
                ^foo = :rpc.call(foo, KV.Router, :route, ["hello", Kernel, :node, []])
                {{:ok, s}} = :gen_tcp.connect(~c"127.0.0.1", {port}, [:binary, packet: :line, active: false])
                :ok = :gen_tcp.send(s, "CREATE hello\\r\\nPUT hello k v\\r\\nGET hello k\\r\\n")
                for want <- ["OK\\r\\n", "OK\\r\\n", "v\\r\\n", "OK\\r\\n"] do
                  {{:ok, ^want}} = :gen_tcp.recv(s, 0, 5000)
                end
                IO.puts("served")
            ''', sname=unique("bar"), cookie=cookie)
            result.check()
            assert "served" in result.stdout
        finally:
            node.terminate()
            await node.wait()
        assert node.returncode == 0  # SIGTERM is a clean stop

    run(main())


@pytest.mark.parametrize("loop", ["asyncio", "uvloop"])
def test_busy_wait_polls_after_a_poke_then_lets_the_loop_sleep(loop: str) -> None:
    from pykv.loop import BusyWait, loop_factory

    if loop == "uvloop" and importlib.util.find_spec("uvloop") is None:
        pytest.skip("uvloop not installed (pip install 'pykv[fast]')")
    spin = BusyWait(0.3)

    async def main() -> list[bool]:
        seen = [spin._active]
        spin.poke()
        await asyncio.sleep(0.01)  # the loop runs timers while it polls
        seen.append(spin._active)
        await asyncio.sleep(0.5)   # past the deadline: polling stops, the loop may sleep
        seen.append(spin._active)
        return seen

    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        assert runner.run(main()) == [False, True, False]


def test_exit_on_stdin_close_stops_the_node_when_its_parent_goes(cookie: str) -> None:
    async def main() -> None:
        node = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pykv", "--sname", unique("foo"), "--cookie", cookie, "--no-server",
            "--exit-on-stdin-close", stdin=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        try:
            assert node.stdin is not None and node.stderr is not None
            while b"KV app ready" not in (line := await asyncio.wait_for(node.stderr.readline(), 30)):
                assert line, "the node exited before it was ready"
            node.stdin.write(b"anything\n")  # input is ignored, only its end counts
            await node.stdin.drain()
            await asyncio.sleep(0.2)
            assert node.returncode is None
            node.stdin.close()
            assert await asyncio.wait_for(node.wait(), 20) == 0
            assert b"standard input closed" in await node.stderr.read()
        finally:
            if node.returncode is None:
                node.kill()
                await node.wait()

    run(main())


def _listening_addresses(port: int) -> set[str]:
    """The IPv4 addresses a socket listens on at `port`, from /proc/net/tcp."""
    found = set()
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        local, state = line.split()[1], line.split()[3]
        address, _, hex_port = local.partition(":")
        if state == "0A" and int(hex_port, 16) == port:  # 0A: LISTEN
            found.add(".".join(str(b) for b in reversed(bytes.fromhex(address))))
    return found


@pytest.mark.distributed
@pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads /proc/net/tcp (Linux)")
def test_bind_keeps_both_ports_to_one_address(cookie: str) -> None:
    foo = unique("foo")
    port, _ = free_port_pair()

    async def main() -> None:
        node = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pykv", "--sname", foo, "--cookie", cookie, "--bind", "127.0.0.1",
            "--port", str(port), stderr=asyncio.subprocess.PIPE)
        try:
            assert node.stderr is not None
            dist_port = None
            while b"KV app ready" not in (line := await asyncio.wait_for(node.stderr.readline(), 30)):
                assert line, "the node exited before it was ready"
                if m := re.search(rb"dist port (\d+)", line):
                    dist_port = int(m.group(1))
            assert dist_port is not None
            assert _listening_addresses(dist_port) == {"127.0.0.1"}
            assert _listening_addresses(port) == {"127.0.0.1"}
            result = await run_elixir(f':pong = Node.ping(:"{foo}@{HOST}")', sname=unique("bar"), cookie=cookie)
            result.check()
        finally:
            node.terminate()
            await node.wait()

    run(main())
