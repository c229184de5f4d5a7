"""The KV app on the Python node alone: table parsing, the line protocol, buckets, registry.
No BEAM needed: the node brings its embedded epmd (on a private port here)."""

from __future__ import annotations

import asyncio

import pytest

from conftest import free_port, run, unique
from pykv import Atom, Node
from pykv.kv import start_kv
from pykv.kv.server import UnknownCommand, event_line, fmt, parse
from pykv.kv.table import Route, TableError, load_toml, parse_route, parse_table
from pykv.otp.gen_server import call


# -- routing table --------------------------------------------------------------------------

def test_routes_parse_like_the_seed_table() -> None:
    table = parse_table(["a-m=foo", "n-z=bar@otherhost", "x=foo"], "vm")
    assert table == [Route(ord("a"), ord("m"), Atom("foo@vm")),
                     Route(ord("n"), ord("z"), Atom("bar@otherhost")),
                     Route(ord("x"), ord("x"), Atom("foo@vm"))]
    assert repr(table[0]) == "{97..109, :foo@vm}"


@pytest.mark.parametrize("bad", ["a-m", "=foo", "abc=foo", "m-a=foo", "a-\u0100=foo", "a-=foo"])
def test_bad_routes_are_refused_with_a_reason(bad: str) -> None:
    with pytest.raises(TableError):
        parse_route(bad, "vm")


def test_toml_table_keeps_its_order(tmp_path) -> None:
    path = tmp_path / "routes.toml"
    path.write_text('[routes]\n"n-z" = "bar"\n"a-m" = "foo@elsewhere"\n')
    assert load_toml(path, "vm") == [Route(110, 122, Atom("bar@vm")), Route(97, 109, Atom("foo@elsewhere"))]
    path.write_text("routes = 3\n")
    with pytest.raises(TableError):
        load_toml(path, "vm")


# -- line protocol parsing -------------------------------------------------------------------

def test_commands_parse_as_the_guide() -> None:
    assert parse(b"CREATE shopping\r\n") == ("CREATE", b"shopping")
    assert parse(b"PUT  shopping milk 1 \r\n") == ("PUT", b"shopping", b"milk", b"1")
    assert parse(b"GET shopping milk\r\n") == ("GET", b"shopping", b"milk")
    assert parse(b"DELETE shopping eggs\r\n") == ("DELETE", b"shopping", b"eggs")
    assert parse(b"SUBSCRIBE shopping\r\n") == ("SUBSCRIBE", b"shopping")
    for bad in (b"UNKNOWN shopping eggs\r\n", b"GET shopping\r\n", b"\r\n", b"get a b\r\n"):
        with pytest.raises(UnknownCommand):
            parse(bad)


def test_values_and_events_format_as_elixir_peer() -> None:
    assert fmt(None) == b"" and fmt(b"3") == b"3" and fmt(3) == b"3" and fmt(Atom("ok")) == b":ok"
    assert event_line((Atom("put"), b"milk", b"3")) == b"milk SET TO 3\r\n"
    assert event_line((Atom("delete"), b"milk")) == b"milk DELETED\r\n"
    assert event_line((Atom("other"),)) is None


# -- the app on one node ---------------------------------------------------------------------

async def conversation(port: int, lines: list[bytes]) -> list[bytes]:
    """Send each line, read its whole reply (a found GET is two lines)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    replies = []
    for line in lines:
        writer.write(line + b"\r\n")
        reply = await reader.readline()
        if line.startswith(b"GET ") and reply not in (b"NOT FOUND\r\n", b"UNKNOWN COMMAND\r\n", b"ERROR\r\n"):
            reply += await reader.readline()
        replies.append(reply)
    writer.close()
    return replies


def test_line_server_speaks_the_guide_protocol_locally() -> None:
    async def main() -> None:
        port = free_port()
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            await start_kv(node, [Route(ord("a"), ord("z"), node.name)], port=port)
            replies = await conversation(port, [
                b"CREATE shopping", b"PUT shopping milk 1", b"GET shopping milk", b"GET shopping eggs",
                b"DELETE shopping milk", b"GET shopping milk", b"GET nothing here", b"HELLO",
            ])
            assert replies == [b"OK\r\n", b"OK\r\n", b"1\r\nOK\r\n", b"\r\nOK\r\n", b"OK\r\n",
                               b"\r\nOK\r\n", b"NOT FOUND\r\n", b"UNKNOWN COMMAND\r\n"]
            # a bucket with no route: ERROR, then that connection closes; others carry on
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"CREATE 0day\r\n")
            assert await reader.readline() == b"ERROR\r\n"
            assert await reader.read() == b""
            assert await conversation(port, [b"GET shopping milk"]) == [b"\r\nOK\r\n"]
    run(main())


def test_many_concurrent_clients_and_a_bad_one() -> None:
    async def main() -> None:
        port = free_port()
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            await start_kv(node, None, port=port)

            async def client(i: int) -> list[bytes]:
                b = f"b{i % 7}".encode()
                return await conversation(port, [b"CREATE " + b, b"PUT " + b + b" k%d v%d" % (i, i),
                                                 b"GET " + b + b" k%d" % i])

            async def garbage() -> bytes:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                writer.write(b"\xff\xfe" * 40000 + b"\r\n")  # longer than a line may be
                return await reader.read()

            results = await asyncio.gather(garbage(), *(client(i) for i in range(100)))
            assert results[0] == b"ERROR\r\n"
            for i, replies in enumerate(results[1:]):
                assert replies == [b"OK\r\n", b"OK\r\n", b"v%d\r\nOK\r\n" % i]
    run(main())


def test_registry_creates_once_and_forgets_dead_buckets() -> None:
    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            await start_kv(node, None, port=None)
            pid = await node.apply("KV.Registry", "create", [Atom("Elixir.KV.Registry"), b"shop"])
            assert await node.apply("KV.Registry", "create", [Atom("Elixir.KV.Registry"), b"shop"]) == pid
            assert await node.apply("KV.Registry", "lookup", [Atom("Elixir.KV.Registry"), b"shop"]) == (Atom("ok"), pid)
            assert await node.apply("KV.Bucket", "put", [pid, b"k", 1]) == Atom("ok")
            assert await node.apply("KV.Bucket", "get", [pid, b"k"]) == 1
            assert await node.apply("KV.Bucket", "delete", [pid, b"k"]) == 1
            assert await node.apply("KV.Bucket", "delete", [pid, b"k"]) is None
            node.processes[pid].exit(Atom("kill"))
            await asyncio.sleep(0.01)
            assert await node.apply("KV.Registry", "lookup", [Atom("Elixir.KV.Registry"), b"shop"]) == Atom("error")
            # the guide's calls work as messages too (what a BEAM node sends)
            me = node.process()
            assert await call(me, Atom("Elixir.KV.Registry"), (Atom("lookup"), b"shop")) == Atom("error")
    run(main())


def test_subscribers_see_puts_and_deletes_and_are_dropped_when_they_die() -> None:
    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            await start_kv(node, None, port=None)
            pid = await node.apply("KV.Registry", "create", [Atom("Elixir.KV.Registry"), b"s"])
            watcher = node.process()
            await node.apply("KV.Bucket", "subscribe", [pid, watcher.pid])
            await node.apply("KV.Bucket", "put", [pid, b"k", b"v"])
            await node.apply("KV.Bucket", "delete", [pid, b"k"])
            assert await watcher.receive(timeout=1) == (Atom("put"), b"k", b"v")
            assert await watcher.receive(timeout=1) == (Atom("delete"), b"k")
            watcher.exit(Atom("normal"))
            await asyncio.sleep(0.01)
            assert not node.processes[pid].subscribers
    run(main())


def test_no_route_raises_the_seeds_runtime_error() -> None:
    async def main() -> None:
        async with Node(unique("foo"), "c", epmd_port=free_port()) as node:
            await start_kv(node, parse_table(["a-m=foo"], "vm"), port=None)
            with pytest.raises(RuntimeError, match=r"could not find entry for <<0>> in table \[\{97..109, :foo@vm\}\]"):
                await node.apply("KV.Router", "route", [b"\0", Atom("Elixir.Kernel"), Atom("node"), []])
            with pytest.raises(ValueError, match="zero-sized binary"):
                await node.apply("KV.Router", "route", [b"", Atom("Elixir.Kernel"), Atom("node"), []])
    run(main())
