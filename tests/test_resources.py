"""Issue 9, items 5-7: every resource a peer can grow has a bound, and a bound that is hit
fails one request clearly while the node serves everyone else. Untrusted text in log lines is
cut short and rate-limited; state is released when requests finish and peers go away.
"""

from __future__ import annotations

import asyncio
import logging
import struct
import threading

import pytest

from conftest import alongside, free_port, lit, run, run_elixir, script, unique, wait_until_up
from pykv import Atom, Node
from pykv.logs import RateLimit, cut


# -- log lines -----------------------------------------------------------------------------------

def test_cut_shows_how_much_was_left_out():
    assert cut("short") == "short"
    assert cut("x" * 500, 10) == "xxxxxxxxxx... (490 more characters)"
    assert cut(b"\x00" * 100, 12).startswith("b'\\x00\\x00")


def test_rate_limit_holds_back_repeats_and_reports_the_count(caplog):
    limit = RateLimit(burst=2, window=3600)
    logger = logging.getLogger("pykv.test")
    with caplog.at_level(logging.WARNING, "pykv.test"):
        for _ in range(10):
            limit.log(logger, logging.WARNING, ("peer", "fault"), "the same fault")
        limit.log(logger, logging.WARNING, ("other", "fault"), "another peer's fault")
    lines = [r.getMessage() for r in caplog.records]
    assert len(lines) == 3
    assert "held back" in lines[1] and lines[2] == "another peer's fault"


def test_a_long_node_name_in_a_handshake_makes_short_log_lines(caplog):
    """300 handshakes that each name a 60 KB node: a few short lines, not 36 MB of log."""
    epmd_port = free_port()

    async def main():
        async with Node(unique("foo"), "c", epmd_port=epmd_port) as node:
            name = b"x" * 60000 + b"@h"
            body = b"N" + struct.pack(">QIH", 0xD035F5FBC, 1, len(name)) + name
            for _ in range(300):
                reader, writer = await asyncio.open_connection("127.0.0.1", node.dist_port)
                writer.write(struct.pack(">H", len(body)) + body)
                assert await reader.read() == b""  # refused: the connection closes
                writer.close()
            # the node still takes a good connection
            async with Node(unique("good"), "c", epmd_port=epmd_port) as good:
                assert await good.ping(node.name)
    with caplog.at_level(logging.INFO, "pykv"):
        run(main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "invalid node name" in text
    assert len(text) < 5000, f"{len(text)} bytes of log for 300 bad handshakes"
    assert max(len(r.getMessage()) for r in caplog.records) < 600


# -- the blocking pool ------------------------------------------------------------------------------

@pytest.mark.distributed
def test_blocking_exports_have_a_pool_of_their_own_with_a_bound(cookie, beam_nodes, caplog):
    """Calls that never return fill the pool: past its queue a call fails at once with
    system_limit (as BEAM callers know it), and the node keeps connecting to new nodes (name
    lookups do not wait in that pool) and serving everything else."""
    release = threading.Event()
    other = beam_nodes("other")

    async def main():
        async with Node(unique("foo"), cookie, threads=2, thread_queue=1) as node:
            @node.export("Block")
            def wait():
                return Atom("released") if release.wait(60) else Atom("stalled")

            @node.export("Block")
            def quick(x):
                return x

            @node.export("Block", blocking=False)
            def fast(x):
                return x

            async def python_side():
                await asyncio.sleep(0.5)
                # every thread stuck and the queue full: a new outgoing connection still works
                await wait_until_up(node, other.name, timeout=30)

            r = await alongside(run_elixir(script("""
                py = PY
                stuck = for _ <- 1..3, do: Task.async(fn -> :erpc.call(py, Block, :wait, [], 60_000) end)
                Process.sleep(300)
                {:error, {:exception, :system_limit, []}} = try do :erpc.call(py, Block, :quick, [1]) catch k, r -> {k, r} end
                {:badrpc, {:EXIT, {:system_limit, []}}} = :rpc.call(py, Block, :quick, [1])
                # quick exports, async ones and everything else are served meanwhile
                7 = :erpc.call(py, Block, :fast, [7])
                true = Node.ping(py) == :pong
                Process.sleep(1500)
                send({:test_sync, py}, :release)
                [:released, :released, :released] = Task.await_many(stuck, 60_000)
                5 = :erpc.call(py, Block, :quick, [5])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side(), releaser(node, release))
            r.check()
            assert "ALL OK" in r.stdout

    with caplog.at_level(logging.WARNING, "pykv.threads"):
        run(main())
    assert any("blocking pool full" in r.getMessage() for r in caplog.records)


async def releaser(node: Node, release: threading.Event) -> None:
    me = node.process("test_sync")
    assert await me.receive(timeout=60) == Atom("release")
    release.set()


# -- the line server ---------------------------------------------------------------------------------

def _start_line_server(node: Node):
    from pykv.kv import start_kv
    return start_kv(node, port=0)


def test_line_server_bounds_what_all_slow_subscribers_hold_together(monkeypatch, caplog):
    """Subscribers that stop reading, each under its own bound, are dropped slowest first
    once together they hold more than the total bound; the writer is served throughout."""
    import socket
    from pykv.kv import server as line_server
    monkeypatch.setattr(line_server, "MAX_BACKLOG", 6 * 1024 * 1024)
    monkeypatch.setattr(line_server, "MAX_TOTAL_BACKLOG", 8 * 1024 * 1024)

    async def main():
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            _, server = await _start_line_server(node)
            port = server.sockets[0].getsockname()[1]
            readers = []
            for _ in range(4):  # subscribe, then never read again
                s = socket.socket()
                s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                s.connect(("127.0.0.1", port))
                s.sendall(b"CREATE news\r\nSUBSCRIBE news\r\n")
                readers.append(s)
            await asyncio.sleep(0.3)
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            value = b"v" * 60_000
            for i in range(300):  # 18 MB of events per subscriber
                writer.write(b"PUT news k%d %s\r\n" % (i, value))
                assert await reader.readline() == b"OK\r\n"
            writer.write(b"GET news k299\r\n")
            assert await reader.readline() == value + b"\r\n"
            await asyncio.sleep(0.2)
            writer.close()
            for s in readers:
                s.close()
    with caplog.at_level(logging.INFO, "pykv.kv.server"):
        run(main())
    drops = [r.getMessage() for r in caplog.records if "slowest of the subscribers" in r.getMessage()]
    assert drops, "no subscriber was dropped for the total bound"
    assert not any(r.exc_info for r in caplog.records)


def test_line_server_client_reset_is_one_short_info_line(caplog):
    import socket
    async def main():
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            _, server = await _start_line_server(node)
            port = server.sockets[0].getsockname()[1]
            for payload in (b"CREATE a\r\nSUBSCRIBE a\r\n", b"CREATE b\r\n" * 2000):
                s = socket.create_connection(("127.0.0.1", port))
                s.sendall(payload)
                await asyncio.sleep(0.2)
                s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                s.close()  # an RST, not a FIN
            await asyncio.sleep(0.3)
    with caplog.at_level(logging.INFO, "pykv"):
        run(main())
    records = [r for r in caplog.records if r.name.startswith("pykv.kv") or r.name == "pykv.process"]
    assert not any(r.exc_info for r in caplog.records), "a traceback was logged"
    assert not any(r.levelno >= logging.WARNING for r in records), [r.getMessage() for r in records]
    gone = [r.getMessage() for r in records if "went away" in r.getMessage()]
    assert 1 <= len(gone) <= 2 and all(len(m) < 120 for m in gone)


# -- state is released ---------------------------------------------------------------------------------

def _tables(node: Node) -> dict[str, int]:
    """The size of every per-process, per-request and per-peer table of the node."""
    sizes = {"processes": len(node.processes), "registered": len(node.registered),
             "aliases": len(node.aliases), "peers": len(node.peers)}
    for proc in node.processes.values():
        for table in ("links", "monitors", "monitored_by", "aliases", "mailbox"):
            sizes[f"process {table}"] = sizes.get(f"process {table}", 0) + len(getattr(proc, table))
    for peer in node.peers.values():
        for table in ("links", "unlinking", "monitors_out", "monitors_in", "spawn_ignored", "pending"):
            sizes[f"peer {table}"] = sizes.get(f"peer {table}", 0) + len(getattr(peer, table))
    return sizes


@pytest.mark.distributed
def test_finished_spawn_requests_leave_nothing_behind(cookie):
    """100,000 erpc calls, casts and spawns from a BEAM node: once they are done, and once
    the peer has gone, every table is as it was."""
    async def main():
        async with Node(unique("foo"), cookie) as node:
            @node.export("Calc", blocking=False)
            def double(x):
                return 2 * x

            @node.export("Calc")
            async def later(x):
                await asyncio.sleep(0)
                return x

            before = _tables(node)
            r = await run_elixir(script("""
                py = PY
                1 = :erpc.call(py, Calc, :later, [1])
                for i <- 1..100_000, do: (^i = div(:erpc.call(py, Calc, :double, [i]), 2))
                for i <- 1..2_000, do: :ok = :erpc.cast(py, Calc, :later, [i])
                for i <- 1..2_000, do: (^i = :erpc.call(py, Calc, :later, [i]))
                {:error, {:erpc, :timeout}} = try do :erpc.call(py, Calc, :nope, [], 0) catch k, r -> {k, r} end
                1 = :erpc.call(py, Calc, :later, [1])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=300)
            r.check()
            assert "ALL OK" in r.stdout
            await asyncio.sleep(0.5)
            assert _tables(node) == before
    run(main(), timeout=360)


@pytest.mark.distributed
def test_monitors_of_a_peer_that_went_away_are_all_released(cookie):
    """A BEAM node monitors a Python process 1,000,000 times, and links to it, then goes
    away: nothing of it is left in the node's tables."""
    async def main():
        async with Node(unique("foo"), cookie) as node:
            target = node.process("watched")
            node.exports.add("Watched", "pid", lambda: target.pid, blocking=False)
            before = _tables(node)
            r = await run_elixir(script("""
                py = PY
                for _ <- 1..1_000_000, do: Process.monitor({:watched, py})
                Process.link(:erpc.call(py, Watched, :pid, []))  # after the monitors: all arrived
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=300)
            assert "ALL OK" in r.stdout, r.stderr
            await asyncio.sleep(0.5)
            assert len(target.monitored_by) == 0
            assert _tables(node) == before
    run(main(), timeout=360)
