"""Edge cases from review, each once a real defect: values Python cannot send, BEAM io:format
through our group leader, a GenServer calling out from its handler, seq_trace'd messages,
cancelled awaits, keys only Erlang finds ordinary, abandoned requests, slow subscribers, and
sends from worker threads."""

from __future__ import annotations

import asyncio

import pytest

from conftest import HOST, BeamNode, free_port_pair, run, run_elixir, unique, wait_until_up
from pykv import Atom, Node
from pykv.errors import Timeout
from pykv.kv import start_kv
from pykv.kv import server as kv_server
from pykv.otp import gen_server, rpc, task_supervisor
from pykv.otp.gen_server import GenServer
from pykv.process import current_process


def foo_name(sname: str) -> str:
    return f'"{sname}@{HOST}"'


@pytest.mark.distributed
def test_a_result_that_is_no_erlang_term_fails_the_call_not_the_connection(cookie: str) -> None:
    foo = unique("foo")

    async def main() -> None:
        async with Node(foo, cookie) as node:
            task_supervisor.TaskSupervisor.start(node, name="KV.RouterTasks")
            node.export("Odd", "quick", blocking=False)(lambda: {1, 2})
            # a small tuple or list is looked into (its binaries are not encoded to check them)
            node.export("Odd", "inside", blocking=False)(lambda: (Atom("ok"), [b"bin", {1, 2}]))
            node.export("Odd", "fine", blocking=False)(lambda: (Atom("ok"), [b"bin", 7]))

            @node.export("Odd")
            async def slow():
                return {1, 2}

            result = await run_elixir(f'''
                foo = :{foo_name(foo)}
                {{:ok, ["bin", 7]}} = :rpc.call(foo, Odd, :fine, [], 5000)
                for f <- [:quick, :slow, :inside] do
                  {{:badrpc, {{:EXIT, {{%ArgumentError{{message: msg}}, _}}}}}} = :rpc.call(foo, Odd, f, [], 5000)
                  true = msg =~ "not an Erlang term"
                end
                t = Task.Supervisor.async_nolink({{KV.RouterTasks, foo}}, Odd, :quick, [])
                {{:exit, {{%ArgumentError{{}}, _}}}} = Task.yield(t, 5000)
                ^foo = :rpc.call(foo, :erlang, :node, [])   # the same connection still serves
                [^foo] = Node.list(:hidden)
                IO.puts("contained")
            ''', sname=unique("bar"), cookie=cookie)
            result.check()
            assert "contained" in result.stdout
    run(main())


@pytest.mark.distributed
def test_io_format_on_the_beam_prints_through_our_group_leader(cookie: str, capsys) -> None:
    bar = BeamNode(unique("bar"), cookie).start()
    try:
        async def main() -> None:
            async with Node(unique("foo"), cookie) as node:
                await wait_until_up(node, bar.name)
                assert await rpc.call(node, bar.name, "io", "format",
                                      [b"~s and ~p~n", [b"abc", 123456789]]) == Atom("ok")
                assert await rpc.call(node, bar.name, "io", "put_chars", [[b"ab", [99, 100], 10]]) == Atom("ok")
                assert await rpc.call(node, bar.name, "erlang", "node", []) == Atom(bar.name)
        run(main())
    finally:
        bar.stop()
    assert "abc and 123456789\nabcd\n" in capsys.readouterr().out


def test_a_genserver_handler_calls_out_as_itself() -> None:
    class Front(GenServer):
        async def handle_call(self, request, from_):
            me = current_process()
            return (me is self, await gen_server.call(self, Atom("back"), request, timeout=None))

    class Back(GenServer):
        def handle_call(self, request, from_):
            return request * 2

    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port_pair()[0]) as node:
            Front.start(node, name="front")
            Back.start(node, name="back")
            assert await asyncio.wait_for(gen_server.call(node, Atom("front"), 21), 2) == (True, 42)
    run(main())


@pytest.mark.distributed
def test_messages_with_a_seq_trace_token_are_delivered(cookie: str) -> None:
    foo = unique("foo")

    async def main() -> None:
        async with Node(foo, cookie) as node:
            inbox = node.process("inbox")

            async def script() -> None:
                (await run_elixir(f'''
                    foo = :{foo_name(foo)}
                    true = Node.connect(foo)
                    :seq_trace.set_token(:label, 7)
                    send({{:inbox, foo}}, :traced)
                    Process.sleep(300)
                ''', sname=unique("bar"), cookie=cookie)).check()

            runner = asyncio.ensure_future(script())
            assert await inbox.receive(timeout=20) == Atom("traced")
            await runner
    run(main())


def test_a_cancelled_task_await_takes_its_owner_down() -> None:
    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port_pair()[0]) as node:
            task_supervisor.TaskSupervisor.start(node, name="Tasks")

            @node.export("Slow")
            async def nap():
                await asyncio.sleep(30)

            before = set(node.processes)
            task = await task_supervisor.async_(node, "Tasks", "Slow", "nap", [])
            waiter = asyncio.ensure_future(task.await_(timeout=None))
            await asyncio.sleep(0.05)
            waiter.cancel()
            with pytest.raises(asyncio.CancelledError):
                await waiter
            await asyncio.sleep(0.05)
            assert not task.owner.alive
            assert set(node.processes) == before  # the linked task went with its owner
    run(main())


@pytest.mark.distributed
def test_charlists_and_maps_are_ordinary_keys_and_names(cookie: str) -> None:
    foo = unique("foo")

    async def main() -> None:
        async with Node(foo, cookie) as node:
            await start_kv(node, None, port=None)
            result = await run_elixir(f'''
                foo = :{foo_name(foo)}
                b = GenServer.call({{KV.Registry, foo}}, {{:create, ~c"shopping"}})
                ^b = GenServer.call({{KV.Registry, foo}}, {{:create, ~c"shopping"}})
                {{:ok, ^b}} = GenServer.call({{KV.Registry, foo}}, {{:lookup, ~c"shopping"}})
                :ok = GenServer.call(b, {{:put, ~c"milk", 3}})
                :ok = GenServer.call(b, {{:put, %{{[1] => 2}}, :x}})
                3 = GenServer.call(b, {{:get, ~c"milk"}})
                :x = GenServer.call(b, {{:get, %{{[1] => 2}}}})
                3 = GenServer.call(b, {{:delete, ~c"milk"}})
                IO.puts("keys ok")
            ''', sname=unique("bar"), cookie=cookie)
            result.check()
            assert "keys ok" in result.stdout
    run(main())


@pytest.mark.distributed
def test_an_rpc_call_that_times_out_leaves_nothing_behind(cookie: str) -> None:
    bar = BeamNode(unique("bar"), cookie).start()
    try:
        async def main() -> None:
            async with Node(unique("foo"), cookie) as node:
                await wait_until_up(node, bar.name)
                me = node.process()
                for _ in range(3):
                    with pytest.raises(Timeout):
                        await rpc.call(me, bar.name, "timer", "sleep", [200], timeout=0)
                await asyncio.sleep(0.5)  # the replies and DOWNs arrive, and are dropped
                assert me.monitors == {} and not me.mailbox
                assert not node.peers[Atom(bar.name)].monitors_out
                assert not node.peers[Atom(bar.name)].spawn_ignored
        run(main())
    finally:
        bar.stop()


def test_a_subscriber_that_stops_reading_is_disconnected(monkeypatch) -> None:
    monkeypatch.setattr(kv_server, "MAX_BACKLOG", 64 * 1024)

    async def main() -> None:
        port, epmd_port = free_port_pair()
        async with Node(unique("foo"), "c", epmd_port=epmd_port) as node:
            await start_kv(node, None, port=port)
            reader, writer = await asyncio.open_connection("127.0.0.1", port, limit=1024)
            writer.write(b"CREATE b\r\nSUBSCRIBE b\r\n")
            assert [await reader.readline(), await reader.readline()] == [b"OK\r\n", b"OK\r\n"]
            # never read again; another client writes a lot
            r2, w2 = await asyncio.open_connection("127.0.0.1", port)
            value = b"v" * 30000  # 1,000 of these outgrow the kernel's socket buffers
            for i in range(1000):
                w2.write(b"PUT b k%d %s\r\n" % (i, value))
                assert await r2.readline() == b"OK\r\n"
            w2.write(b"GET b k1\r\n")
            assert await r2.readline() == value + b"\r\n"  # the server is fine
            # the silent subscriber was cut off, short of the 1,000 events
            received = b""
            with pytest.raises((ConnectionResetError, asyncio.IncompleteReadError)):
                while True:
                    received += await asyncio.wait_for(reader.readexactly(65536), 10)
            assert received.count(b" SET TO ") < 1000
            writer.close()
            w2.close()
    run(main())


@pytest.mark.distributed
def test_a_blocking_export_can_send_to_a_remote_process(cookie: str) -> None:
    foo = unique("foo")

    async def main() -> None:
        async with Node(foo, cookie) as node:
            @node.export("Threaded")
            def notify(pid):  # runs in a worker thread
                current_process().send(pid, Atom("from_a_thread"))
                return Atom("sent")

            result = await run_elixir(f'''
                :sent = :rpc.call(:{foo_name(foo)}, Threaded, :notify, [self()])
                receive do :from_a_thread -> IO.puts("got it") after 3000 -> System.halt(2) end
            ''', sname=unique("bar"), cookie=cookie)
            result.check()
            assert "got it" in result.stdout
    run(main())
