"""The seed chapter with Python as foo and elixir_peer (a real BEAM) as bar, both ways."""

from __future__ import annotations

import asyncio
import contextlib

import pytest

from conftest import HOST, free_port_pair, run, run_elixir, unique, wait_for_kv
from pykv import Atom, Exit, NoConnection, Node
from pykv.kv import start_kv
from pykv.kv.table import parse_table

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("elixir_peer_built")]

KERNEL, NODE = Atom("Elixir.Kernel"), Atom("node")
REGISTRY = Atom("Elixir.KV.Registry")


def names(prefix: str) -> tuple[str, str]:
    sname = unique(prefix)
    return sname, f"{sname}@{HOST}"


def kv_bar(beam_nodes, foo: str, **env: str):
    """elixir_peer as bar, with the seed's table: a-m on foo, n-z on itself."""
    sname = unique("bar")
    return beam_nodes(sname=sname, kv_app=True, env={"KV_ROUTING_TABLE": f"a-m={foo},n-z={sname}", **env})


@contextlib.asynccontextmanager
async def foo_node(cookie: str, foo: str, routes: list[str], bar, port: int | None = None):
    """The Python node foo running the KV app with `routes`, once bar's KV app answers."""
    async with Node(foo, cookie) as node:
        await start_kv(node, parse_table(routes, HOST), port=port)
        await wait_for_kv(node, bar.name)
        yield node


def test_seed_router_tests_from_python(cookie: str, beam_nodes) -> None:
    """The seed's KV.RouterTest, run on the Python node: hello -> foo (here), world -> bar."""
    foo, foo_name = names("foo")
    bar = kv_bar(beam_nodes, foo)

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar) as node:
            assert await node.apply("KV.Router", "route", [b"hello", KERNEL, NODE, []]) == Atom(foo_name)
            assert await node.apply("KV.Router", "route", [b"world", KERNEL, NODE, []]) == Atom(bar.name)
            with pytest.raises(RuntimeError, match="could not find entry"):
                await node.apply("KV.Router", "route", [b"\0", KERNEL, NODE, []])
    run(main())


def test_seed_router_tests_from_the_beam(cookie: str, beam_nodes) -> None:
    """The same assertions made by an Elixir script, calling KV.Router.route on both nodes."""
    foo, foo_name = names("foo")
    bar = kv_bar(beam_nodes, foo)

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar):
            result = await run_elixir(f'''
                foo = :"{foo_name}"; bar = :"{bar.name}"
                for via <- [foo, bar] do
                  ^foo = :erpc.call(via, KV.Router, :route, ["hello", Kernel, :node, []])
                  ^bar = :erpc.call(via, KV.Router, :route, ["world", Kernel, :node, []])
                  try do
                    :erpc.call(via, KV.Router, :route, [<<0>>, Kernel, :node, []])
                    System.halt(3)
                  catch
                    :error, {{:exception, %RuntimeError{{message: msg}}, _}} ->
                      true = msg =~ ~r/could not find entry for <<0>> in table/
                      IO.puts("#{{via}}: #{{msg}}")
                  end
                end
                task = Task.Supervisor.async({{KV.RouterTasks, foo}}, Kernel, :node, [])
                ^foo = Task.await(task)
                IO.puts("seed ok")
            ''', sname=unique("baz"), cookie=cookie)
            result.check()
            assert "seed ok" in result.stdout
            assert f"{foo_name}: could not find entry for <<0>> in table [{{97..109, :{foo_name}}}" in result.stdout
    run(main())


def test_two_hop_chain_follows_each_nodes_table(cookie: str, beam_nodes) -> None:
    """foo sends every bucket to bar; bar sends a-m on to qux (a second Python node):
    "hello" goes foo -> bar -> qux, each hop by its own node's table."""
    foo, foo_name = names("foo")
    qux, qux_name = names("qux")
    bar_sname = unique("bar")
    bar = beam_nodes(sname=bar_sname, kv_app=True, env={"KV_ROUTING_TABLE": f"a-m={qux},n-z={bar_sname}"})

    async def main() -> None:
        async with Node(foo, cookie) as node, Node(qux, cookie) as other:
            await start_kv(node, parse_table([f"a-z={bar.sname}"], HOST), port=None)
            await start_kv(other, None, port=None)  # qux keeps every bucket
            await wait_for_kv(node, bar.name)
            assert await node.apply("KV.Router", "route", [b"hello", KERNEL, NODE, []]) == Atom(qux_name)
            assert await node.apply("KV.Router", "route", [b"world", KERNEL, NODE, []]) == Atom(bar.name)
            # a bucket created through the chain lives on qux
            pid = await node.apply("KV.Router", "route", [b"apple", REGISTRY, Atom("create"), [REGISTRY, b"apple"]])
            assert pid.node is other.name
            assert await other.apply("KV.Registry", "lookup", [REGISTRY, b"apple"]) == (Atom("ok"), pid)
    run(main())


def test_bucket_pids_cross_languages(cookie: str, beam_nodes) -> None:
    foo, foo_name = names("foo")
    bar = kv_bar(beam_nodes, foo)

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar) as node:
            # Python uses a BEAM bucket
            zebra = await node.apply("KV.Router", "route", [b"zebra", REGISTRY, Atom("create"), [REGISTRY, b"zebra"]])
            assert zebra.node is Atom(bar.name)
            assert await node.apply("KV.Bucket", "put", [zebra, b"stripes", 42]) == Atom("ok")
            assert await node.apply("KV.Bucket", "get", [zebra, b"stripes"]) == 42
            # the BEAM uses a Python bucket, and the Python node reads what it wrote
            apple = await node.apply("KV.Router", "route", [b"apple", REGISTRY, Atom("create"), [REGISTRY, b"apple"]])
            assert apple.node is node.name
            result = await run_elixir(f'''
                bar = :"{bar.name}"
                apple = :erpc.call(bar, KV.Router, :route, ["apple", KV.Registry, :create, [KV.Registry, "apple"]])
                true = node(apple) == :"{foo_name}"
                # the bucket contract, spoken directly (this script node has no KV modules)
                :ok = GenServer.call(apple, {{:put, "milk", 3}})
                3 = GenServer.call(apple, {{:get, "milk"}})
                GenServer.cast(apple, {{:subscribe, self()}})
                :ok = GenServer.call(apple, {{:put, "eggs", %{{"dozen" => 1}}}})
                receive do {{:put, "eggs", %{{"dozen" => 1}}}} -> :ok after 2000 -> System.halt(4) end
                {{:ok, ^apple}} = :erpc.call(bar, KV.Router, :route, ["apple", KV.Registry, :lookup, [KV.Registry, "apple"]])
                zebra = :erpc.call(bar, KV.Router, :route, ["zebra", KV.Registry, :lookup, [KV.Registry, "zebra"]])
                {{:ok, z}} = zebra
                42 = GenServer.call(z, {{:get, "stripes"}})
                IO.puts("crossed")
            ''', sname=unique("baz"), cookie=cookie)
            result.check()
            assert "crossed" in result.stdout
            assert await node.apply("KV.Bucket", "get", [apple, b"milk"]) == 3
            assert await node.apply("KV.Bucket", "get", [apple, b"eggs"]) == {b"dozen": 1}
    run(main())


def test_line_server_routes_to_bar_and_subscribe_crosses_nodes(cookie: str, beam_nodes) -> None:
    foo, foo_name = names("foo")
    py_port, beam_port = free_port_pair()
    bar = kv_bar(beam_nodes, foo, KV_PORT=str(beam_port))

    async def line(port: int, text: bytes) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(text)
        return reader, writer

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar, port=py_port) as node:
            r, w = await line(py_port, b"CREATE world\r\nPUT world k v\r\nGET world k\r\n")
            assert [await r.readline() for _ in range(4)] == [b"OK\r\n", b"OK\r\n", b"v\r\n", b"OK\r\n"]
            zebra = await node.apply("KV.Router", "route", [b"world", REGISTRY, Atom("lookup"), [REGISTRY, b"world"]])
            assert zebra[1].node is Atom(bar.name)  # the bucket really lives on bar
            # subscribe on the Python server to a bucket on bar; write through bar's own server
            w.write(b"SUBSCRIBE world\r\n")
            assert await r.readline() == b"OK\r\n"
            r2, w2 = await line(beam_port, b"PUT world milk 3\r\nDELETE world milk\r\n")
            assert [await r2.readline() for _ in range(2)] == [b"OK\r\n", b"OK\r\n"]
            assert await asyncio.wait_for(r.readline(), 5) == b"milk SET TO 3\r\n"
            assert await asyncio.wait_for(r.readline(), 5) == b"milk DELETED\r\n"
            # and the other way: bar's server subscribes to a Python bucket
            r3, w3 = await line(beam_port, b"CREATE apple\r\nSUBSCRIBE apple\r\n")
            assert [await r3.readline() for _ in range(2)] == [b"OK\r\n", b"OK\r\n"]
            w.write(b"PUT apple pie 1\r\n")
            assert await r.readline() == b"OK\r\n"
            assert await asyncio.wait_for(r3.readline(), 5) == b"pie SET TO 1\r\n"
            for writer in (w, w2, w3):
                writer.close()
    run(main())


def test_bar_killed_mid_request_fails_the_caller_and_foo_keeps_serving(cookie: str, beam_nodes) -> None:
    foo, foo_name = names("foo")
    py_port, _ = free_port_pair()
    bar = kv_bar(beam_nodes, foo)

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar, port=py_port) as node:
            # a request that takes a while on bar, and a line client waiting on bar too
            slow = asyncio.ensure_future(node.apply("KV.Router", "route", [b"zzz", Atom("timer"), Atom("sleep"), [3000]]))
            reader, writer = await asyncio.open_connection("127.0.0.1", py_port)
            writer.write(b"CREATE apple\r\n")
            assert await reader.readline() == b"OK\r\n"
            await asyncio.sleep(0.5)
            bar.kill()
            with pytest.raises(NoConnection) as info:
                await asyncio.wait_for(slow, 5)
            assert info.value.reason == (Atom("nodedown"), Atom(bar.name))
            # a line client whose bucket lives on the dead bar: ERROR, then the server closes
            writer.write(b"CREATE zoo\r\n")
            assert await asyncio.wait_for(reader.readline(), 10) == b"ERROR\r\n"
            assert await asyncio.wait_for(reader.read(), 5) == b""
            # foo keeps serving: its own buckets, and routing to itself
            r, w = await asyncio.open_connection("127.0.0.1", py_port)
            w.write(b"PUT apple k v\r\nGET apple k\r\n")
            assert [await r.readline() for _ in range(3)] == [b"OK\r\n", b"v\r\n", b"OK\r\n"]
            assert await node.apply("KV.Router", "route", [b"hello", KERNEL, NODE, []]) == Atom(foo_name)
            w.close()
            writer.close()
    run(main())


def test_route_exit_reasons_cross_back(cookie: str, beam_nodes) -> None:
    """A crash on bar while serving a routed request reaches the Python caller as an Exit
    carrying the BEAM's reason (here :erlang.error(:badarith) in a :math call)."""
    foo, _ = names("foo")
    bar = kv_bar(beam_nodes, foo)

    async def main() -> None:
        async with foo_node(cookie, foo, [f"a-m={foo}", f"n-z={bar.sname}"], bar) as node:
            with pytest.raises(Exit) as info:
                await node.apply("KV.Router", "route", [b"zed", Atom("erlang"), Atom("binary_to_integer"), [b"x"]])
            reason = info.value.reason
            assert reason[0] is Atom("badarg"), reason
    run(main())
