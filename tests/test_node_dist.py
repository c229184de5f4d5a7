"""Issue 2, the node core: ping, hidden connections, messages, links, monitors, exit
reasons, cookies, bad input, simultaneous connects, ticks and the embedded epmd.

The `distributed` tests run against real BEAM nodes. Most are driven from the BEAM side: an
Elixir script asserts with pattern matches (a failed match exits non-zero) and prints what it
saw, while the Python node plays its part in the same event loop (`alongside`); some have
Python as the client of a BEAM node. The others exercise local processes, framing and ticks
with no BEAM (raw sockets speaking the protocol where a peer is needed).
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time

import pytest

from conftest import HOST, alongside, eventually, free_port, lit, run, run_elixir, script, unique, wait_until_up
from pykv import Atom, Node, Pid
from pykv.dist import flags as F
from pykv.dist.handshake import Handshake, Role
from pykv.errors import Exit
from pykv.otp import rpc
from pykv.term import encode

DOWN, EXIT, PROCESS = Atom("DOWN"), Atom("EXIT"), Atom("process")


# -- local processes (no BEAM): mailboxes and exit signals ------------------------------------

def test_mailbox_selective_receive_names_and_aliases():
    async def main():
        async with Node(unique("loc"), "c", epmd_port=free_port()) as node:
            me = node.process("me")
            other = node.process()
            for m in ("a", "b", "c"):
                other.send(me.pid, m)
            assert await me.receive(lambda m: m == "b", timeout=1) == "b"
            assert [await me.receive(timeout=1), await me.receive(timeout=1)] == ["a", "c"]
            with pytest.raises(TimeoutError):
                await me.receive(timeout=0.05)
            other.send("me", "by name")
            other.send(("me", node.name.name), "by name and node")
            assert [await me.receive(timeout=1) for _ in range(2)] == ["by name", "by name and node"]
            alias = me.alias()
            other.send(alias, "via alias")
            assert await me.receive(timeout=1) == "via alias"
            me.unalias(alias)
            other.send(alias, "dropped")
            other.send("nobody", "dropped too")       # to nobody: silently dropped, as on the BEAM
            await asyncio.sleep(0.01)
            assert not me.mailbox
    run(main())


def test_exit_signal_arriving_with_a_message_ends_a_receiving_process():
    # One TCP read may carry a message and then an exit signal for the same process: the
    # exit must win even though the receive (with a timeout) was just woken by the message.
    async def main():
        async with Node(unique("loc"), "c", epmd_port=free_port()) as node:
            got = []

            async def body(proc):
                while True:
                    got.append(await proc.receive(timeout=30))

            target = node.spawn(body)
            watcher = node.process()
            ref = watcher.monitor(target.pid)
            await asyncio.sleep(0.05)                 # target now waits in receive
            watcher.send(target.pid, "hello")
            target.exit_signal(watcher.pid, Atom("stop"), from_link=False)
            assert await watcher.receive(timeout=2) == (DOWN, ref, PROCESS, target.pid, Atom("stop"))
            assert not target.alive and target.exit_reason == Atom("stop")
    run(main())


def test_exit_before_a_spawned_process_first_runs():
    async def main():
        async with Node(unique("loc"), "c", epmd_port=free_port()) as node:
            ran = []

            async def body(proc):
                ran.append(True)

            watcher = node.process()
            watcher.trap_exit = True
            target = node.spawn(body, link=watcher)
            ref = watcher.monitor(target.pid)
            target.exit(Atom("early"))                # before its coroutine ever ran
            assert await watcher.receive(timeout=2) == (EXIT, target.pid, Atom("early"))
            assert await watcher.receive(timeout=2) == (DOWN, ref, PROCESS, target.pid, Atom("early"))
            assert target.pid not in node.processes and not ran
    run(main())


def test_frames_are_reassembled_however_the_bytes_arrive():
    from types import SimpleNamespace

    from pykv.dist.connection import Connection, encode_frame

    async def main():
        seen = []
        from pykv.dist.transport import INET_TCP
        fake_node = SimpleNamespace(name=Atom("me@host"), cookie="c", creation=1, flags=F.OURS, busy_wait=None,
                                    proto_dist=INET_TCP, dispatch=lambda conn, control, payload: seen.append((control, payload)))
        conn = Connection(fake_node, Role.ACCEPTOR)
        conn.up = True                            # as after the handshake
        small = [encode_frame((2, Atom(""), Pid(Atom("me@host"), i, 0, 1)), ("msg", i)) for i in range(3)]
        big_payload = bytes(range(256)) * 20_000  # a 5 MB binary
        big = encode_frame((2, Atom(""), Pid(Atom("me@host"), 9, 0, 1)), big_payload)
        stream = b"".join(small) + b"\0\0\0\0" + big + b"\0\0\0\0" + small[0]
        # one byte at a time for the small frames, 64 KB pieces for the big one
        cut = len(b"".join(small)) + 4
        for i in range(cut):
            conn.data_received(stream[i:i + 1])
        for i in range(cut, len(stream), 65536):
            conn.data_received(stream[i:i + 65536])
        assert [p for _, p in seen] == [(b"msg", 0), (b"msg", 1), (b"msg", 2), big_payload, (b"msg", 0)]
        assert seen[3][0] == (2, Atom(""), Pid(Atom("me@host"), 9, 0, 1))
    run(main())


# -- ping, hidden, messages ------------------------------------------------------------------

@pytest.mark.distributed
def test_ping_both_ways_and_hidden_connection(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            me = node.process("pinger")

            async def python_side():
                hello, sender, beam = await me.receive(timeout=20)
                assert hello == Atom("hello")
                me.send(sender, Atom("ok"))
                # the BEAM disconnects us; then we dial it ourselves and ping
                await eventually(lambda: beam not in node.nodes(), what="disconnect seen")
                me.send((Atom("shell"), beam), Atom("reconnected_by_send"))   # dials again
                pong = await node.ping(beam)
                me.send((Atom("shell"), beam), (Atom("pinged"), Atom("pong" if pong else "pang")))
                assert pong is True

            r = await alongside(run_elixir(script("""
                py = PY
                Process.register(self(), :shell)
                :pong = Node.ping(py)
                true = py in Node.list(:hidden)
                false = py in Node.list()
                true = py in Node.list(:connected)
                IO.puts("hidden: #{inspect(Node.list(:hidden))}")
                send({:pinger, py}, {:hello, self(), node()})
                receive do :ok -> :ok after 5000 -> raise "no hello answer" end
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                true = Node.disconnect(py)
                receive do {:nodedown, ^py, _} -> :ok after 5000 -> raise "no nodedown" end
                receive do {:nodeup, ^py, _} -> :ok after 10000 -> raise "python did not reconnect" end
                receive do :reconnected_by_send -> :ok after 5000 -> raise "no message after reconnect" end
                {:pinged, :pong} = receive do {:pinged, _} = m -> m after 10000 -> raise "no ping result" end
                true = py in Node.list(:hidden)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
            assert await node.ping(f"nobody@{HOST}", timeout=3) is False   # pang, not a hang
    run(main())


@pytest.mark.distributed
def test_send_to_registered_python_process_and_reply(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            inbox = node.process("inbox")

            async def python_side():
                for _ in range(3):
                    message = await inbox.receive(timeout=20)
                    tag, sender, term = message
                    assert tag == Atom("echo")
                    assert isinstance(sender, Pid) and sender.node != node.name
                    inbox.send(sender, (Atom("by_pid"), term))                       # to a pid
                    inbox.send((Atom("shell"), sender.node), (Atom("by_name"), term))  # {name, node}

            r = await alongside(run_elixir(script("""
                py = PY
                Process.register(self(), :shell)
                term = %{"key" => [1, -2, 3.5, {:a, <<1, 2, 255>>}, 'chars', []], :pid => self(),
                         ref: make_ref(), big: 123456789012345678901234567890, str: "héllo",
                         tuple: {}, bits: <<1::3>>, improper: [1 | 2], atom: :"with space"}
                send({:inbox, py}, {:echo, self(), term})
                ^term = receive do {:by_pid, t} -> t after 5000 -> raise "no reply by pid" end
                ^term = receive do {:by_name, t} -> t after 5000 -> raise "no reply by name" end
                # the registered name is reachable through the pid Python answered from, too
                send({:inbox, py}, {:echo, self(), :second})
                :second = receive do {:by_pid, t} -> t after 5000 -> raise "no second reply" end
                :second = receive do {:by_name, t} -> t after 5000 -> raise "no second by name" end
                # a large message (many TCP reads per frame) both ways
                big = :crypto.strong_rand_bytes(20_000_000)
                send({:inbox, py}, {:echo, self(), big})
                ^big = receive do {:by_pid, t} -> t after 20000 -> raise "no big reply" end
                ^big = receive do {:by_name, t} -> t after 20000 -> raise "no big reply by name" end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


# -- links and monitors from the BEAM ---------------------------------------------------------

async def victim(proc):
    """A Python process that does what the BEAM tells it: exit with a reason, crash, return."""
    message = await proc.receive()
    if type(message) is tuple and message[0] == Atom("exit_with"):
        raise Exit(message[1])
    if message == Atom("crash"):
        raise ValueError("bad value")
    if message == Atom("return"):
        return


def start_factory(node: Node) -> None:
    async def factory(proc):
        while True:
            message = await proc.receive()
            if message[0] == Atom("new"):
                pids = [node.spawn(victim).pid for _ in range(message[2])]
                proc.send(message[1], (Atom("victims"), pids))
            elif message[0] == Atom("new_named"):
                pid = node.spawn(victim, name=message[2]).pid
                proc.send(message[1], (Atom("named"), pid))
            elif message[0] == Atom("trapper"):
                # a trapping Python process reports the EXIT messages it gets
                async def trapper(p, owner):
                    p.trap_exit = True
                    p.send(owner, (Atom("trapper"), p.pid))
                    while True:
                        m = await p.receive()
                        p.send(owner, (Atom("trapped"), m))
                node.spawn(trapper, message[1])
    node.spawn(factory, name="factory")


@pytest.mark.distributed
def test_links_and_monitors_from_elixir_see_exit_reasons(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            start_factory(node)
            r = await run_elixir(script("""
                py = PY
                Process.flag(:trap_exit, true)
                send({:factory, py}, {:new, self(), 6})
                [a, b, c, d, e, f] = receive do {:victims, l} -> l after 5000 -> raise "no victims" end
                ^py = node(a)

                # exits with a reason of its own
                Process.link(a)
                ma = Process.monitor(a)
                send(a, {:exit_with, {:shutdown, :bye}})
                receive do {:EXIT, ^a, {:shutdown, :bye}} -> :ok after 5000 -> raise "no EXIT a" end
                receive do {:DOWN, ^ma, :process, ^a, {:shutdown, :bye}} -> :ok after 5000 -> raise "no DOWN a" end
                IO.puts("reason: ok")

                # killed from here
                Process.link(b)
                mb = Process.monitor(b)
                Process.exit(b, :kill)
                receive do {:EXIT, ^b, :killed} -> :ok after 5000 -> raise "no EXIT b" end
                receive do {:DOWN, ^mb, :process, ^b, :killed} -> :ok after 5000 -> raise "no DOWN b" end
                IO.puts("killed: ok")

                # crashes with a Python exception: an Elixir exception struct and a stacktrace
                Process.link(c)
                mc = Process.monitor(c)
                send(c, :crash)
                {%ArgumentError{message: "bad value"}, [_ | _] = stack} =
                  receive do {:EXIT, ^c, r} -> r after 5000 -> raise "no EXIT c" end
                down_c = receive do {:DOWN, ^mc, :process, ^c, r} -> r after 5000 -> raise "no DOWN c" end
                {%ArgumentError{}, ^stack} = down_c  # matched outside receive: see scripts/repro-elixir-link-exit-crash.sh
                IO.puts("crash: ok")

                # returns: normal
                Process.link(d)
                md = Process.monitor(d)
                send(d, :return)
                receive do {:EXIT, ^d, :normal} -> :ok after 5000 -> raise "no EXIT d" end
                receive do {:DOWN, ^md, :process, ^d, :normal} -> :ok after 5000 -> raise "no DOWN d" end
                IO.puts("normal: ok")

                # exit signals: :normal is ignored by a process not trapping, another reason kills it
                me = Process.monitor(e)
                Process.exit(e, :normal)
                Process.exit(e, :custom)
                receive do {:DOWN, ^me, :process, ^e, :custom} -> :ok after 5000 -> raise "no DOWN e" end
                IO.puts("exit signal: ok")

                # a link exit from here propagates to a linked Python process
                mf = Process.monitor(f)
                helper = spawn(fn -> Process.link(f); receive do :go -> exit(:linked_death) end end)
                Process.sleep(100)
                send(helper, :go)
                receive do {:DOWN, ^mf, :process, ^f, :linked_death} -> :ok after 5000 -> raise "no DOWN f" end
                IO.puts("propagated: ok")

                # a dead Python pid: link gives an EXIT noproc, monitor a DOWN noproc
                Process.link(a)
                receive do {:EXIT, ^a, :noproc} -> :ok after 5000 -> raise "no noproc EXIT" end
                ma2 = Process.monitor(a)
                receive do {:DOWN, ^ma2, :process, ^a, :noproc} -> :ok after 5000 -> raise "no noproc DOWN" end
                IO.puts("dead pid: ok")

                # an unknown name: DOWN noproc at once, so a call fails at once
                mn = Process.monitor({:nobody, py})
                receive do {:DOWN, ^mn, :process, {:nobody, ^py}, :noproc} -> :ok after 2000 -> raise "no immediate DOWN" end
                {:noproc, {GenServer, :call, _}} =
                  try do GenServer.call({:nobody, py}, :hi, 30_000) catch :exit, r -> r end
                IO.puts("unknown name: ok")

                # monitor by name a registered process that then exits
                send({:factory, py}, {:new_named, self(), :named_victim})
                named = receive do {:named, p} -> p after 5000 -> raise "no named victim" end
                mr = Process.monitor({:named_victim, py})
                send({:named_victim, py}, {:exit_with, :bye})
                receive do {:DOWN, ^mr, :process, {:named_victim, ^py}, :bye} -> :ok after 5000 -> raise "no named DOWN" end
                mr2 = Process.monitor(named)
                receive do {:DOWN, ^mr2, :process, ^named, :noproc} -> :ok after 5000 -> raise "named: no noproc" end
                IO.puts("by name: ok")

                # a trapping Python process gets our exits as messages
                send({:factory, py}, {:trapper, self()})
                t = receive do {:trapper, p} -> p after 5000 -> raise "no trapper" end
                Process.link(t)
                Process.exit(t, :please_stop)
                {:trapped, {:EXIT, me_seen, :please_stop}} = receive do {:trapped, _} = m -> m after 5000 -> raise "no trap" end
                ^me_seen = self()
                Process.exit(t, :kill)
                receive do {:EXIT, ^t, :killed} -> :ok after 5000 -> raise "kill not honoured" end
                IO.puts("trap_exit: ok")
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert set(node.registered) >= {Atom("factory")}
            assert Atom("named_victim") not in node.registered    # unregistered on exit
    run(main())


@pytest.mark.distributed
def test_unlink_then_exit_is_not_propagated(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            control = node.process("control")
            start_factory(node)

            async def python_side():
                # the BEAM gives us two of its processes; we link to both, unlink one
                tag, sender, keep, drop = await control.receive(timeout=20)
                linked, unlinked = node.process(), node.process()
                linked.trap_exit = True
                linked.link(keep)
                unlinked.link(drop)
                unlinked.unlink(drop)
                watcher = node.process()
                ref = watcher.monitor(drop)
                control.send(sender, Atom("linked"))
                assert await linked.receive(timeout=10) == (EXIT, keep, Atom("boom"))
                assert await watcher.receive(timeout=10) == (DOWN, ref, PROCESS, drop, Atom("boom"))
                await asyncio.sleep(0.2)
                assert unlinked.alive, f"unlinked process died: {unlinked.exit_reason}"
                assert not unlinked.mailbox
                control.send(sender, Atom("checked"))

            r = await alongside(run_elixir(script("""
                py = PY
                Process.flag(:trap_exit, true)
                # Elixir side: link, unlink, the Python process exits: no EXIT here
                send({:factory, py}, {:new, self(), 1})
                [v] = receive do {:victims, l} -> l after 5000 -> raise "no victims" end
                Process.link(v)
                true = Process.unlink(v)
                mv = Process.monitor(v)
                send(v, {:exit_with, :boom})
                receive do {:DOWN, ^mv, :process, ^v, :boom} -> :ok after 5000 -> raise "no DOWN" end
                receive do {:EXIT, ^v, _} = m -> raise "EXIT after unlink: #{inspect(m)}" after 200 -> :ok end
                IO.puts("elixir unlink: ok")

                # Python side: it links to two of ours and unlinks one; both exit :boom
                w = fn -> receive do :die -> exit(:boom) end end
                keep = spawn(w)
                drop = spawn(w)
                send({:control, py}, {:procs, self(), keep, drop})
                receive do :linked -> :ok after 5000 -> raise "python did not link" end
                send(keep, :die)
                send(drop, :die)
                receive do :checked -> :ok after 10000 -> raise "python did not check" end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


@pytest.mark.distributed
def test_node_stop_gives_noconnection_to_beam_links_and_monitors(cookie):
    async def main():
        node = Node(unique("foo"), cookie)
        await node.start()
        target = node.process("target")

        async def python_side():
            sender = await target.receive(timeout=20)
            target.send(sender, (Atom("pid"), target.pid))
            assert await target.receive(timeout=10) == Atom("stop_now")
            await node.stop()

        try:
            r = await alongside(run_elixir(script("""
                py = PY
                Process.flag(:trap_exit, true)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:target, py}, self())
                pid = receive do {:pid, p} -> p after 5000 -> raise "no pid" end
                Process.link(pid)
                ref = Process.monitor(pid)
                mref = Process.monitor({:target, py})
                send(pid, :stop_now)
                receive do {:EXIT, ^pid, r} -> IO.puts("EXIT #{inspect(r)}"); :noconnection = r after 5000 -> raise "no EXIT" end
                receive do {:DOWN, ^ref, :process, ^pid, r} -> :noconnection = r after 5000 -> raise "no DOWN" end
                receive do {:DOWN, ^mref, :process, {:target, ^py}, r} -> :noconnection = r after 5000 -> raise "no named DOWN" end
                receive do {:nodedown, ^py, _} -> :ok after 5000 -> raise "no nodedown" end
                false = py in Node.list(:hidden)
                :pang = Node.ping(py)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
        finally:
            await node.stop()
        r.check()
        assert "EXIT :noconnection" in r.stdout and "ALL OK" in r.stdout
    run(main())


# -- Python linking and monitoring BEAM processes ------------------------------------------------

# The BEAM processes the test kills run Reporter.idle: code already loaded when the test starts
# (it waits for Reporter). A victim that must first load its module (`timer:sleep`) is, on OTP 26+,
# inside the dirty-IO NIF that reads the .beam file in the caller; an exit signal with a non-atom
# reason arriving there while another node links or monitors the process crashes the BEAM
# (SIGSEGV in its off-heap cleanup; a BEAM bug, OTP 25-29: scripts/repro-dirty-exit-crash.sh).
REPORTER = """
defmodule Reporter do
  def idle, do: (receive do after :infinity -> :ok end)

  def trap_and_report(to) do
    Process.flag(:trap_exit, true)
    send(to, {:reporter, self()})
    loop(to)
  end

  defp loop(to) do
    receive do
      m -> send(to, {:reported, m})
    end
    loop(to)
  end
end
"""


@pytest.mark.distributed
def test_python_monitors_and_links_beam_processes(cookie, beam_nodes):
    bar = beam_nodes("bar", script=REPORTER)

    async def main():
        async with Node(unique("foo"), cookie) as node:
            await wait_until_up(node, bar.name)
            beam = Atom(bar.name)
            for _ in range(100):  # the node answers pings before its -e script has run
                if await rpc.call(node, beam, "Code", "ensure_loaded?", [Atom("Elixir.Reporter")]):
                    break
                await asyncio.sleep(0.1)

            async def sleeper():
                return await rpc.call(node, beam, "erlang", "spawn", [Atom("Elixir.Reporter"), Atom("idle"), []])

            async def kill(pid, reason):
                assert await rpc.call(node, beam, "erlang", "exit", [pid, reason]) is True

            watcher = node.process()
            trapper = node.process()
            trapper.trap_exit = True

            # by pid: DOWN and EXIT carry the BEAM's reason
            p1 = await sleeper()
            assert isinstance(p1, Pid) and p1.node == beam
            ref = watcher.monitor(p1)
            trapper.link(p1)
            await kill(p1, Atom("boom"))
            assert await watcher.receive(timeout=5) == (DOWN, ref, PROCESS, p1, Atom("boom"))
            assert await trapper.receive(timeout=5) == (EXIT, p1, Atom("boom"))

            # a linked Python process that does not trap exits dies with the reason
            p2 = await sleeper()
            casualty = node.process()
            casualty.link(p2)
            ref2 = watcher.monitor(p2)
            await kill(p2, (Atom("shutdown"), b"why"))
            assert await watcher.receive(timeout=5) == (DOWN, ref2, PROCESS, p2, (Atom("shutdown"), b"why"))
            await eventually(lambda: not casualty.alive, what="linked python process exit")
            assert casualty.exit_reason == (Atom("shutdown"), b"why")

            # by registered name: the DOWN names {name, node}
            p3 = await sleeper()
            assert await rpc.call(node, beam, "erlang", "register", [Atom("victim"), p3]) is True
            ref3 = watcher.monitor(("victim", bar.name))
            await kill(p3, Atom("bye"))
            assert await watcher.receive(timeout=5) == (DOWN, ref3, PROCESS, (Atom("victim"), beam), Atom("bye"))

            # unknown name and dead pid: noproc at once
            ref4 = watcher.monitor(("nobody", bar.name))
            assert await watcher.receive(timeout=2) == (DOWN, ref4, PROCESS, (Atom("nobody"), beam), Atom("noproc"))
            ref5 = watcher.monitor(p1)
            assert await watcher.receive(timeout=2) == (DOWN, ref5, PROCESS, p1, Atom("noproc"))
            trapper.link(p1)
            assert await trapper.receive(timeout=2) == (EXIT, p1, Atom("noproc"))

            # demonitor: no DOWN for that ref; unlink: no exit
            p4 = await sleeper()
            gone = watcher.monitor(p4)
            kept = watcher.monitor(p4)
            watcher.demonitor(gone)
            survivor = node.process()
            survivor.link(p4)
            survivor.unlink(p4)
            await kill(p4, Atom("boom"))
            assert await watcher.receive(timeout=5) == (DOWN, kept, PROCESS, p4, Atom("boom"))
            await asyncio.sleep(0.1)
            assert not watcher.mailbox and survivor.alive and not survivor.mailbox

            # links made from Python carry Python's exits to a trapping BEAM process
            me = node.process()
            await rpc.call(node, beam, "erlang", "spawn", [Atom("Elixir.Reporter"), Atom("trap_and_report"), [me.pid]])
            _, reporter = await me.receive(timeout=5)
            reported = lambda m: m[0] == Atom("reported")  # noqa: E731
            dying = node.process()
            dying.link(reporter)
            dying.exit((Atom("shutdown"), Atom("from_python")))
            assert await me.receive(reported, timeout=5) == (
                Atom("reported"), (EXIT, dying.pid, (Atom("shutdown"), Atom("from_python"))))

            async def crash(proc):
                proc.link(reporter)
                raise KeyError("gone")
            crashed = node.spawn(crash)
            _, (tag, pid, (struct, stack)) = await me.receive(reported, timeout=5)
            assert (tag, pid) == (EXIT, crashed.pid)
            assert struct[Atom("__struct__")] == Atom("Elixir.KeyError") and struct[Atom("key")] == b"gone"
            assert stack and stack[0][1] == Atom("crash")
            # ... but not once unlinked
            quiet = node.process()
            quiet.link(reporter)
            quiet.unlink(reporter)
            quiet.send(reporter, Atom("marker"))
            quiet.exit(Atom("boom"))
            me.send(reporter, Atom("end"))
            assert await me.receive(reported, timeout=5) == (Atom("reported"), Atom("marker"))
            assert await me.receive(reported, timeout=5) == (Atom("reported"), Atom("end"))

            # the node goes away: noconnection
            p5 = await sleeper()
            ref6 = watcher.monitor(p5)
            trapper.link(p5)
            await asyncio.sleep(0.1)
            bar.kill()
            assert await watcher.receive(timeout=10) == (DOWN, ref6, PROCESS, p5, Atom("noconnection"))
            assert await trapper.receive(timeout=10) == (EXIT, p5, Atom("noconnection"))
            assert beam not in node.nodes()
    run(main())


# -- cookies -----------------------------------------------------------------------------------

@pytest.mark.distributed
def test_wrong_cookie_refused_both_ways(cookie, caplog):
    caplog.set_level(logging.INFO, logger="pykv")

    async def main():
        async with Node(unique("foo"), cookie) as node:
            control = node.process("control")

            async def python_side():
                sender = await control.receive(timeout=20)
                beam = sender.node
                # a Python node with the wrong cookie dials the BEAM: refused
                async with Node(unique("intruder"), "not-the-cookie") as intruder:
                    assert await intruder.ping(beam, timeout=5) is False
                # the right one still works, both ways
                assert await node.ping(beam) is True
                control.send(sender, Atom("done"))

            r = await alongside(run_elixir(script("""
                py = PY
                # the BEAM dials with the wrong cookie: refused
                Node.set_cookie(py, :"not-the-cookie")
                :pang = Node.ping(py)
                false = py in Node.list(:hidden)
                # the right cookie: accepted
                Node.set_cookie(py, Node.get_cookie())
                :pong = Node.ping(py)
                send({:control, py}, self())
                receive do :done -> :ok after 15000 -> raise "python side did not finish" end
                :pong = Node.ping(py)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
            beam_log = r.stdout + r.stderr
            assert "intruder" in beam_log and "rejected" in beam_log, beam_log   # the BEAM said why
        messages = [rec.getMessage() for rec in caplog.records]
        assert any("wrong cookie" in m for m in messages), messages                 # they dialled us
        assert any("refused our cookie" in m for m in messages), messages            # we dialled
    run(main())


# -- bad input ---------------------------------------------------------------------------------

async def raw_connect(node: Node, name: str, cookie: str, flags: int = F.OURS & ~F.FRAGMENTS
                      ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A bare TCP client that completes a real handshake with `node` (no Node of its own);
    by default without FRAGMENTS, so its frames are pass-through frames (112)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", node.dist_port)
    hs = Handshake(Role.INITIATOR, name=name, cookie=cookie, creation=7, flags=flags,
                   peer_name=node.name.name)
    hs.start()
    writer.write(hs.data_to_send())
    while not hs.done:
        data = await asyncio.wait_for(reader.read(4096), 5)
        assert data, "closed during the handshake"
        hs.receive_data(data)
        writer.write(hs.data_to_send())
    assert hs.leftover() == b""
    return reader, writer


async def closed_by_peer(reader: asyncio.StreamReader, timeout: float = 5) -> bool:
    try:
        while True:
            data = await asyncio.wait_for(reader.read(4096), timeout)
            if not data:
                return True
            if data.strip(b"\0"):   # anything but ticks
                return False
    except (ConnectionError, OSError):
        return True


def dist_frame(*terms: bytes) -> bytes:
    body = b"p" + b"".join(terms)
    return struct.pack(">I", len(body)) + body


@pytest.mark.distributed
def test_garbage_closes_only_that_connection(cookie, caplog):
    caplog.set_level(logging.INFO, logger="pykv")

    async def main():
        async with Node(unique("foo"), cookie) as node:
            control = node.process("control")
            inbox = node.process("inbox")

            async def python_side():
                sender = await control.receive(timeout=20)
                # 1. not a handshake at all
                reader, writer = await asyncio.open_connection("127.0.0.1", node.dist_port)
                writer.write(b"\x00\x10GET / HTTP/1.1\r\n\r\n" + os.urandom(64))
                assert await closed_by_peer(reader)
                writer.close()
                # 2. after a good handshake: a frame that is not a term
                reader, writer = await raw_connect(node, f"raw1@{HOST}", cookie)
                writer.write(dist_frame(b"\x83\xff\x00\x01"))
                assert await closed_by_peer(reader)
                writer.close()
                # 3. an absurd frame length
                reader, writer = await raw_connect(node, f"raw2@{HOST}", cookie)
                writer.write(b"\xff\xff\xff\xf0" + b"p\x83")
                assert await closed_by_peer(reader)
                writer.close()
                # 4. a control message that is not a tuple
                reader, writer = await raw_connect(node, f"raw3@{HOST}", cookie)
                writer.write(dist_frame(encode(Atom("hello"))))
                assert await closed_by_peer(reader)
                writer.close()
                # 5. a payload with stray bytes after it
                reader, writer = await raw_connect(node, f"raw4@{HOST}", cookie)
                from_pid = Pid(Atom(f"raw4@{HOST}"), 1, 0, 7)
                writer.write(dist_frame(encode((6, from_pid, Atom(""), Atom("inbox"))), encode(1), b"\x00\x00"))
                assert await closed_by_peer(reader)
                writer.close()
                # 6. an unknown operation is only ignored; the same connection then delivers
                reader, writer = await raw_connect(node, f"raw5@{HOST}", cookie)
                from_pid = Pid(Atom(f"raw5@{HOST}"), 1, 0, 7)
                writer.write(dist_frame(encode((99, Atom("future")))))
                writer.write(b"\0\0\0\0")  # a tick
                writer.write(dist_frame(encode((6, from_pid, Atom(""), Atom("inbox"))), encode((Atom("raw"), 5))))
                assert await inbox.receive(timeout=5) == (Atom("raw"), 5)
                writer.close()
                control.send(sender, Atom("garbage_done"))

            r = await alongside(run_elixir(script("""
                py = PY
                :pong = Node.ping(py)
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:control, py}, self())
                receive do :garbage_done -> :ok after 30000 -> raise "python side did not finish" end
                receive do {:nodedown, ^py, _} = m -> raise "dropped: #{inspect(m)}" after 0 -> :ok end
                true = py in Node.list(:hidden)
                ^py = :rpc.call(py, :erlang, :node, [])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
        messages = [rec.getMessage() for rec in caplog.records if rec.levelno >= logging.WARNING]
        for raw in ("raw1", "raw2", "raw3", "raw4"):
            assert any(raw in m and ("malformed" in m or "frame" in m) for m in messages), (raw, messages)
        assert any("handshake" in m for m in messages), messages
        assert not any("raw5" in m and "malformed" in m for m in messages), messages
    run(main())


# -- simultaneous connects ----------------------------------------------------------------------

@pytest.mark.distributed
@pytest.mark.parametrize("py_prefix, beam_prefix", [("aaa", "zzz"), ("zzz", "aaa")],
                         ids=["python_name_smaller", "python_name_greater"])
def test_simultaneous_connects_with_a_beam_node(cookie, py_prefix, beam_prefix, tmp_path):
    """Both sides dial each other at the same instant, round after round (the same wall
    clock drives both). Whichever attempt wins, both see one connection, connect succeeds
    and nothing sent meanwhile is lost, as between two BEAM nodes."""
    rounds, period_ms = 12, 300

    async def main():
        async with Node(unique(py_prefix), cookie) as node:
            me = node.process("dialler")
            beam_name = unique(beam_prefix)
            beam = Atom(f"{beam_name}@{HOST}")
            outcomes = []
            # The first round starts when both sides run: a BEAM node that boots late would
            # otherwise meet a message Python sent before it existed (dropped, as a BEAM
            # node drops it) and report that as lost. The BEAM script says it runs by
            # creating `ready`; Python then writes the start time into `start`.
            ready, start = str(tmp_path / "ready"), str(tmp_path / "start")

            async def python_side():
                await eventually(lambda: os.path.exists(ready), timeout=60, what="the BEAM script to run")
                start_ms = int((time.time() + 0.5) * 1000)
                with open(start + ".tmp", "w") as f:
                    f.write(str(start_ms))
                os.rename(start + ".tmp", start)
                for k in range(rounds):
                    await asyncio.sleep(max(0.0, (start_ms + k * period_ms) / 1000 - time.time()))
                    me.send((Atom("shell"), beam), (Atom("from_python"), k))   # sent while dialling
                    try:
                        await node.connect(beam)
                        outcomes.append(True)
                    except Exception as e:  # noqa: BLE001 - recorded, asserted below
                        outcomes.append(repr(e))
                    outcomes.append(await node.ping(beam, timeout=3))
                    await eventually(lambda: beam not in node.nodes(), what=f"round {k} disconnect")
                    got = await me.receive(timeout=3)
                    assert got == (Atom("from_beam"), k), got

            r = await alongside(run_elixir(script("""
                py = PY
                Process.register(self(), :shell)
                File.write!(READY, "")
                start = Stream.repeatedly(fn -> Process.sleep(10); File.read(START_FILE) end)
                        |> Enum.find_value(fn {:ok, text} -> String.to_integer(text); _ -> nil end)
                for k <- 0..(ROUNDS - 1) do
                  wait = start + k * PERIOD - System.os_time(:millisecond)
                  if wait > 0, do: Process.sleep(wait)
                  send({:dialler, py}, {:from_beam, k})       # sent while dialling
                  true = Node.connect(py)
                  :pong = Node.ping(py)
                  receive do {:from_python, ^k} -> :ok after 3000 -> raise "round #{k}: lost a message" end
                  Process.sleep(100)
                  true = Node.disconnect(py)
                end
                IO.puts("ALL OK")
            """, PY=lit(node.name), ROUNDS=str(rounds), READY=f'"{ready}"', START_FILE=f'"{start}"',
                PERIOD=str(period_ms)),
                sname=beam_name, cookie=cookie), python_side())
            r.check()
            assert "ALL OK" in r.stdout
            assert outcomes == [True] * (2 * rounds), outcomes
    run(main())


# -- ticks -----------------------------------------------------------------------------------

def test_ticks_keep_an_idle_connection_and_a_silent_peer_is_dropped(caplog):
    caplog.set_level(logging.INFO, logger="pykv")

    async def main():
        async with Node(unique("tick"), "c", epmd_port=free_port(), ticktime=0.8) as node:
            peer = Atom(f"silent@{HOST}")
            reader, writer = await raw_connect(node, peer.name, "c")
            # the node ticks a connection it has nothing to send on
            assert await asyncio.wait_for(reader.readexactly(4), 2) == b"\0\0\0\0"
            # a peer that ticks back stays connected for well over the tick time
            for _ in range(12):
                writer.write(b"\0\0\0\0")
                await asyncio.sleep(0.15)
            assert peer in node.nodes()
            # then it falls silent: dropped within about a tick time
            assert await closed_by_peer(reader, timeout=5)
            assert peer not in node.nodes()
            writer.close()
        assert any("net_tick_timeout" in rec.getMessage() for rec in caplog.records)
    run(main())


@pytest.mark.distributed
def test_short_net_ticktime_on_both_sides_keeps_the_connection(cookie):
    async def main():
        async with Node(unique("foo"), cookie, ticktime=2) as node:
            control = node.process("control")
            conns = []

            async def python_side():
                sender = await control.receive(timeout=20)
                conns.append(node.peers[sender.node].conn)
                assert await control.receive(timeout=20) == Atom("idle_done")
                assert node.peers[sender.node].conn is conns[0]       # never reconnected

            r = await alongside(run_elixir(script("""
                py = PY
                :pong = Node.ping(py)
                2 = :net_kernel.get_net_ticktime()
                :ok = :net_kernel.monitor_nodes(true, node_type: :all)
                send({:control, py}, self())
                Process.sleep(4500)                 # over twice the tick time with no traffic
                receive do {:nodedown, ^py, _} = m -> raise "dropped: #{inspect(m)}" after 0 -> :ok end
                true = py in Node.list(:hidden)
                send({:control, py}, :idle_done)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie,
                args=("--erl", "-kernel net_ticktime 2")), python_side())
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


# -- embedded epmd ---------------------------------------------------------------------------

@pytest.mark.distributed
def test_embedded_epmd_serves_a_beam_node_started_later(cookie):
    from pykv.dist import epmd

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]

    async def main():
        async with Node(unique("foo"), cookie, epmd_port=port) as node:
            assert node._embedded_epmd is not None, "expected no epmd on that port"
            control = node.process("control")
            alive = node.name.name.split("@")[0]

            async def python_side():
                sender = await control.receive(timeout=20)
                beam_alive = sender.node.name.split("@")[0]
                info = await epmd.port_please(beam_alive, "127.0.0.1", port)
                assert info is not None and info.node_type == epmd.NODE_TYPE_NORMAL
                # a second Python node (same epmd) dials the BEAM node through its entry
                async with Node(unique("second"), cookie, epmd_port=port) as second:
                    assert second._embedded_epmd is None
                    assert await second.ping(sender.node) is True
                control.send(sender, Atom("done"))

            r = await alongside(run_elixir(script("""
                py = PY
                :pong = Node.ping(py)
                {:ok, names} = :erl_epmd.names()
                IO.inspect(names, label: "epmd names")
                true = Enum.any?(names, fn {n, _} -> to_string(n) == ALIVE end)
                true = Enum.any?(names, fn {n, _} -> to_string(n) == OWN end)
                send({:control, py}, self())
                receive do :done -> :ok after 15000 -> raise "python side did not finish" end
                IO.puts("ALL OK")
            """, PY=lit(node.name), ALIVE=f'"{alive}"', OWN='hd(String.split(to_string(node()), "@"))'),
                sname=unique("bar"), cookie=cookie, env={"ERL_EPMD_PORT": str(port)}), python_side())
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


# -- exit signals sent from Python (exit/2) ------------------------------------------------------

def test_send_exit_to_local_processes() -> None:
    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            me, trapper, plain, stubborn = node.process(), node.process(), node.process(), node.process()
            trapper.trap_exit = True
            me.send_exit(trapper.pid, Atom("bye"))
            assert await trapper.receive(timeout=1) == (EXIT, me.pid, Atom("bye"))
            me.send_exit(plain.pid, Atom("normal"))      # ignored when not trapping
            assert plain.alive
            me.send_exit(plain.pid, Atom("bye"))
            assert not plain.alive and plain.exit_reason == Atom("bye")
            stubborn.trap_exit = True
            me.send_exit(stubborn.pid, Atom("kill"))     # cannot be trapped
            assert not stubborn.alive and stubborn.exit_reason == Atom("killed")
    run(main())


@pytest.mark.distributed
def test_send_exit_to_beam_processes(cookie: str) -> None:
    """Process.exit/2 from Python: a trapping BEAM process gets {:EXIT, from, reason};
    a plain one dies with the reason, seen by its monitor."""
    foo = unique("foo")

    async def python_side(node: Node) -> None:
        me = node.process("killer")
        targets = await me.receive(timeout=20)          # {trapper, plain} from the script
        me.send_exit(targets[0], Atom("bye"))
        me.send_exit(targets[1], Atom("bye"))

    async def main() -> None:
        async with Node(foo, cookie) as node:
            result = await alongside(run_elixir(script('''
                foo = FOO
                trapper = spawn(fn -> Process.flag(:trap_exit, true)
                                      receive do m -> IO.inspect(m, label: "trapper") end end)
                plain = spawn(fn -> Process.sleep(:infinity) end)
                ref = Process.monitor(plain)
                true = Node.connect(foo)
                send({:killer, foo}, {trapper, plain})
                receive do {:DOWN, ^ref, :process, ^plain, :bye} -> IO.puts("plain died: bye")
                after 5000 -> System.halt(2) end
                Process.sleep(200)
            ''', FOO=lit(f"{foo}@{HOST}")), sname=unique("bar"), cookie=cookie), python_side(node))
            result.check()
            assert "plain died: bye" in result.stdout
            assert "trapper: {:EXIT, #PID<" in result.stdout and ">, :bye}" in result.stdout
    run(main())
