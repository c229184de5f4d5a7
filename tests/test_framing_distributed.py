"""The framing layer against real BEAM nodes: fragments both ways, the distribution header
with atom cache refs, and what closes a connection (pykv/dist/framing.py, fragments.py,
atom_cache.py, connection.py). The sans-I/O side is tests/test_framing.py."""

from __future__ import annotations

import asyncio
import logging
import struct
import zlib

import pytest

from conftest import HOST, alongside, eventually, lit, run, run_elixir, script, unique
from pykv import Atom, Node
from pykv.dist import flags as F
from pykv.dist.fragments import FRAGMENT_SIZE
from pykv.term import Pid, encode
from test_node_dist import closed_by_peer, raw_connect

pytestmark = pytest.mark.distributed

# 10,240,000 bytes that are not all alike: a message the BEAM cuts into 157 fragments
PATTERN = bytes(range(256)) * 40_000
BEAM_PATTERN = ":binary.copy(:binary.list_to_bin(Enum.to_list(0..255)), 40_000)"


def test_a_10_mb_message_each_way_goes_in_fragments_and_others_pass_it(cookie: str) -> None:
    async def main() -> None:
        async with Node(unique("foo"), cookie) as node:
            sink = node.process("sink")
            me, other, third = node.process(), node.process(), node.process()

            async def python_side() -> None:
                got = [await sink.receive(timeout=60) for _ in range(53)]
                shell = got[0]
                assert isinstance(shell, Pid)
                rest = got[1:]
                assert (Atom("big"), PATTERN) in rest
                assert rest.index((Atom("big"), PATTERN)) < rest.index(Atom("after_big"))
                smalls = [m[1] for m in rest if isinstance(m, tuple) and m[0] == Atom("small")]
                assert smalls == list(range(1, 51))                 # one sender's order holds
                conn = node.peers[shell.node].conn
                assert conn is not None and conn.flags & F.FRAGMENTS
                assert conn.framing.reassembly is not None and conn.framing.reassembly.completed >= 1

                # pykv -> BEAM: large messages from `me` and `third` (their fragments take
                # turns), then `other` speaks: `other`'s message is written while their
                # fragments are still going out, so it arrives first; what `me` sends next
                # waits for its own large message
                me.send(shell, (Atom("big"), PATTERN))
                third.send(shell, (Atom("big2"), PATTERN))
                await asyncio.sleep(0)                               # the first fragments leave
                other.send(shell, Atom("overtakes"))
                me.send(shell, Atom("after_big"))
                assert conn.framing.sequences_out == 2

            r = await alongside(run_elixir(script("""
                py = {:sink, PY}
                :pong = Node.ping(PY)
                send(py, self())
                big = PATTERN
                parent = self()
                spawn(fn -> for i <- 1..50, do: send(py, {:small, i}); send(parent, :smalls_sent) end)
                send(py, {:big, big})
                send(py, :after_big)
                receive do :smalls_sent -> :ok end
                got = for _ <- 1..4, do: (receive do m -> m after 60_000 -> :timeout end)
                at = fn m -> Enum.find_index(got, &(&1 == m)) end
                if Enum.sort(got) == Enum.sort([:overtakes, {:big, big}, {:big2, big}, :after_big]) and
                     at.(:overtakes) < at.({:big, big}) and at.(:overtakes) < at.({:big2, big}) and
                     at.({:big, big}) < at.(:after_big) do
                  IO.puts("ALL OK")
                else
                  IO.puts("WRONG: #{inspect(Enum.map(got, fn {t, b} when is_binary(b) -> {t, byte_size(b)}; m -> m end))}")
                end
            """, PY=lit(node.name), PATTERN=BEAM_PATTERN), sname=unique("bar"), cookie=cookie, timeout=120),
                python_side(), grace=60)
            r.check()
            assert "ALL OK" in r.stdout, r.stdout
    run(main(), timeout=180)


def test_the_distribution_header_with_atom_cache_refs_from_the_beam(cookie: str) -> None:
    """A BEAM peer that has DIST_HDR_ATOM_CACHE lists each message's atoms in its header:
    3000 distinct atoms (more than the 2048 cache slots, and 300 in a message where a header
    lists at most 255), long atoms, true/false/nil, in a fragmented message too; every one
    decodes to what was sent (the BEAM compares the echo)."""
    async def main() -> None:
        node = Node(unique("foo"), cookie)
        node.flags |= F.DIST_HDR_ATOM_CACHE  # offered here; pykv does not by default
        async with node:
            sink = node.process("sink")

            async def python_side() -> None:
                shell = await sink.receive(timeout=30)
                conn = node.peers[shell.node].conn
                assert conn is not None and conn.flags & F.DIST_HDR_ATOM_CACHE
                for i in range(12):
                    message = await sink.receive(timeout=30)
                    if i < 10:
                        assert message == (Atom("atoms"), [Atom(f"atom_{k}") for k in range(300 * i, 300 * i + 300)])
                    node.process().send(shell, message)          # echoed: the BEAM compares

            r = await alongside(run_elixir(script("""
                py = {:sink, PY}
                :pong = Node.ping(PY)
                send(py, self())
                atoms = for i <- 0..2999, do: String.to_atom("atom_#{i}")
                sent = for chunk <- Enum.chunk_every(atoms, 300), do: {:atoms, chunk}
                sent = sent ++ [{:long, String.to_atom(String.duplicate("ä", 200)), true, false, nil, :atom_7},
                                {:big, :binary.copy("a", 300_000), Enum.take(atoms, 20), node(), self()}]
                for m <- sent, do: send(py, m)
                echoed = for _ <- sent, do: (receive do m -> m after 30_000 -> :timeout end)
                true = echoed == sent
                py_node = PY
                ^py_node = :rpc.call(py_node, :erlang, :node, [])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=90), python_side(), grace=30)
            r.check()
            assert "ALL OK" in r.stdout, r.stdout
    run(main(), timeout=150)


def fragment(kind: int, seq: int, frag_id: int, data: bytes) -> bytes:
    body = bytes([131, kind]) + struct.pack(">QQ", seq, frag_id) + data
    return struct.pack(">I", len(body)) + body


def test_a_malformed_fragment_closes_only_that_connection(cookie: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="pykv")

    async def main() -> None:
        async with Node(unique("foo"), cookie) as node:
            control = node.process("control")
            inbox = node.process("inbox")

            async def raw(name: str):  # a peer that negotiates FRAGMENTS, as every BEAM does
                return await raw_connect(node, f"{name}@{HOST}", cookie, flags=F.OURS)

            def reg_send(name: str) -> bytes:
                return encode((6, Pid(Atom(f"{name}@{HOST}"), 1, 0, 7), Atom(""), Atom("inbox")))[1:]

            async def python_side() -> None:
                sender = await control.receive(timeout=20)
                payload = encode(b"q" * (2 * FRAGMENT_SIZE))[1:]
                bad = {
                    "rawfrag1": fragment(70, 9, 1, b"stray"),                    # no first fragment
                    "rawfrag2": fragment(69, 9, 3, b"\x00" + reg_send("rawfrag2") + payload[:100])
                                + fragment(70, 9, 1, payload[100:]),            # fragment 2 skipped
                    "rawfrag3": struct.pack(">I", 3) + b"\x83D\x01",          # a header cut short
                    "rawfrag4": (lambda body: struct.pack(">I", len(body)) + body)(
                        b"\x83D\x00" + reg_send("rawfrag4") + b"\x50" + struct.pack(">I", 10)
                        + zlib.compress(encode(b"abc")[1:])),                  # compressed
                    "rawfrag5": (lambda body: struct.pack(">I", len(body)) + body)(
                        b"p" + encode((6, Pid(Atom("x@h"), 1, 0, 7), Atom(""), Atom("inbox"))) + encode(1)),
                }
                for name, frames in bad.items():
                    reader, writer = await raw(name)
                    writer.write(frames)
                    assert await closed_by_peer(reader), name
                    writer.close()
                # and a good fragmented message from such a peer is delivered
                reader, writer = await raw("rawgood")
                writer.write(fragment(69, 4, 3, b"\x00" + reg_send("rawgood") + payload[:FRAGMENT_SIZE])
                             + fragment(70, 4, 2, payload[FRAGMENT_SIZE:2 * FRAGMENT_SIZE])
                             + fragment(70, 4, 1, payload[2 * FRAGMENT_SIZE:]))
                assert await inbox.receive(timeout=5) == b"q" * (2 * FRAGMENT_SIZE)
                writer.close()
                control.send(sender, Atom("fragments_done"))

            r = await alongside(run_elixir(script("""
                py = PY
                :pong = Node.ping(py)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:control, py}, self())
                receive do :fragments_done -> :ok after 30000 -> raise "python side did not finish" end
                receive do {:nodedown, ^py, _} = m -> raise "dropped: #{inspect(m)}" after 0 -> :ok end
                ^py = :rpc.call(py, :erlang, :node, [])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
        messages = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
        for name, why in (("rawfrag1", "no first fragment"), ("rawfrag2", "fragment 1 where 2 was due"),
                          ("rawfrag3", "header"), ("rawfrag4", "compressed"),
                          ("rawfrag5", "not a distribution header")):
            assert any(name in m and why in m for m in messages), (name, messages)
        assert not any("rawgood" in m for m in messages), messages
    run(main())


def test_the_beam_refuses_compressed_terms_on_the_distribution_channel(cookie: str) -> None:
    """Why pykv refuses them: a BEAM disconnects a peer that sends one (OTP 25, 27, 29:
    "got a corrupted external term"), however small."""
    async def main() -> None:
        async with Node(unique("foo"), cookie) as node:
            me = node.process("me")

            async def python_side() -> None:
                shell = await me.receive(timeout=30)
                conn = node.peers[shell.node].conn
                assert conn is not None and conn.flags & F.FRAGMENTS
                inner = encode(Atom("hello"))[1:]
                body = (b"\x83D\x00" + encode((6, me.pid, Atom(""), Atom("shell")))[1:]
                        + b"\x50" + struct.pack(">I", len(inner)) + zlib.compress(inner))
                conn.write(struct.pack(">I", len(body)) + body)
                await eventually(lambda: shell.node not in node.peers, timeout=10, what="the BEAM disconnects")

            r = await alongside(run_elixir(script("""
                py = PY
                Process.register(self(), :shell)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:me, py}, self())
                receive do {:nodedown, ^py, _} -> IO.puts("DISCONNECTED") after 10_000 -> IO.puts("STILL UP") end
                receive do :hello -> IO.puts("DELIVERED") after 0 -> :ok end
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "DISCONNECTED" in r.stdout and "DELIVERED" not in r.stdout, r.stdout
    run(main())
