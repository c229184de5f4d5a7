"""Issue 12, partitions: a host's cable pulled mid-traffic, then plugged back in.

Three test hosts (tests/hosts.py), every node with net_ticktime 2: pykv foo on hosta (the
seed's table, a-m on foo, n-z on bar), elixir_peer bar on hostb, and a BEAM client on hostc
that calls both all along, each call with an infinite timeout, so that only a nodedown can end
one that cannot be answered. A line-protocol client on hosta does the same through foo's line
server. Then one host's link goes down: callers across the partition get `:noconnection` /
nodedown (and the line client ERROR), callers on either side keep being served, buckets are
made on both sides; the link comes back and the next requests reconnect, and every bucket is
there. Nothing here asserts a time: the times are measured and printed (`-s` shows them).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass
from datetime import datetime

import pytest

from conftest import eventually, lit, run
from hosts import PY, ElixirShell, Host, HostProcess, network, pykv_node, run_python, started  # noqa: F401

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("elixir_peer_built")]

TICKTIME = 2
ERL = f"-kernel net_ticktime {TICKTIME}"
FOO, BAR, CLIENT = "foo@hosta.test", "bar@hostb.test", "client@hostc.test"
F, B = lit(FOO), lit(BAR)

# The client's traffic: one process per kind of call, a call every 100 ms, each result kept
# with the wall-clock time (ms) it came (the hosts share this machine's clock).
TRAFFIC = f'''
    {{:ok, log}} = Agent.start(fn -> [] end)
    calls = [
      foo: fn -> :erpc.call({F}, KV.Registry, :lookup, [KV.Registry, "apple"], :infinity) end,
      via_foo: fn -> :erpc.call({F}, KV.Router, :route, ["zebra", KV.Registry, :lookup, [KV.Registry, "zebra"]], :infinity) end,
      bar: fn -> :erpc.call({B}, KV.Registry, :lookup, [KV.Registry, "zebra"], :infinity) end
    ]
    traffic = for {{tag, call}} <- calls do
      spawn(fn ->
        loop = fn loop ->
          result = try do {{:ok, call.()}} catch kind, reason -> {{kind, reason}} end
          Agent.update(log, &[{{System.os_time(:millisecond), tag, result}} | &1])
          Process.sleep(100)
          loop.(loop)
        end
        loop.(loop)
      end)
    end
    length(traffic)'''

TRAFFIC_LOG = '''
    for {t, tag, result} <- Enum.reverse(Agent.get(log, & &1)), do:
      "#{t} #{tag} #{elem(result, 0) == :ok} #{inspect(result)}"'''

NODE_EVENTS = '''
    {:ok, events} = Agent.start(fn -> [] end)
    spawn(fn ->
      :ok = :net_kernel.monitor_nodes(true, node_type: :all)
      loop = fn loop ->
        receive do
          {what, node, _} -> Agent.update(events, &[{System.os_time(:millisecond), what, node} | &1])
        end
        loop.(loop)
      end
      loop.(loop)
    end)
    :ok'''

NODE_EVENTS_LOG = '''
    for {t, what, node} <- Enum.reverse(Agent.get(events, & &1)), do: "#{t} #{what} #{node}"'''

# A line-protocol client of foo on hosta: a GET of a bucket of foo's and of one of bar's,
# every 200 ms, each on a new connection, printed with the time.
LINE_CLIENT = '''
import socket, sys, time
port = int(sys.argv[1])
while True:
    for bucket, key in (("apple", "milk"), ("zebra", "stripes")):
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=120) as s:
                s.sendall(f"GET {bucket} {key}\\r\\n".encode())
                reply = b""
                while not (reply.endswith(b"OK\\r\\n") or reply.endswith(b"ERROR\\r\\n")):
                    chunk = s.recv(1024)
                    if not chunk:
                        break
                    reply += chunk
        except OSError as e:
            reply = repr(e).encode()
        print(f"{time.time():.3f} {bucket} {reply.decode().split()}", flush=True)
    time.sleep(0.2)
'''


@dataclass
class Entry:
    at: float       # seconds since the epoch
    tag: str
    ok: bool
    text: str


def entries(lines: str) -> list[Entry]:
    """The traffic log the shell printed: a list of strings, `ms tag ok result`."""
    found = []
    for m in re.finditer(r'"(\d+) (\w+) (true|false) ((?:[^"\\]|\\.)*)"', lines):
        found.append(Entry(int(m.group(1)) / 1000, m.group(2), m.group(3) == "true", m.group(4)))
    return found


def pykv_events(output: str, pattern: str) -> list[float]:
    """Times (epoch seconds) of pykv log lines matching `pattern`."""
    times = []
    for line in output.splitlines():
        if re.search(pattern, line):
            stamp = datetime.strptime(line[:23], "%Y-%m-%d %H:%M:%S,%f")
            times.append(stamp.timestamp())
    return times


@dataclass
class Cluster:
    a: Host
    b: Host
    c: Host
    foo: HostProcess
    bar: ElixirShell
    client: ElixirShell
    port: int
    line_client: HostProcess


@contextlib.asynccontextmanager
async def cluster(network, cookie: str):
    net = network("hosta", "hostb", "hostc")
    a, b, c = net["hosta"], net["hostb"], net["hostc"]
    b.start_epmd()
    c.start_epmd()
    port = 20000 + int(time.time() * 1000) % 20000
    foo = pykv_node(a, FOO, cookie, "--route", "a-m=foo", "--route", f"n-z={BAR}", "--port", str(port),
                    "--net-ticktime", str(TICKTIME), "--route-timeout", "600")
    bar = ElixirShell(b, BAR, cookie, erl=ERL, kv_app=True, env={"KV_ROUTING_TABLE": f"a-m={FOO},n-z=bar"})
    client = ElixirShell(c, CLIENT, cookie, erl=ERL)
    line_client = HostProcess(a, [PY, "-u", "-c", LINE_CLIENT, str(port)], label="line client")
    the = Cluster(a, b, c, foo, bar, client, port, line_client)
    try:
        await started(foo)
        await bar.start()
        await client.start()
        for shell in (bar, client):
            await shell.eval(NODE_EVENTS)
        assert await client.eval(f"Node.ping({F})") == ":pong"
        # the buckets that are there before: apple on foo, zebra on bar, made through foo
        for bucket, key, value in (("apple", "milk", 3), ("zebra", "stripes", 42)):
            await client.eval(f'b = :erpc.call({F}, KV.Router, :route, ["{bucket}", KV.Registry, :create, '
                              f'[KV.Registry, "{bucket}"]])\n:ok = GenServer.call(b, {{:put, "{key}", {value}}})')
        await line_client.start()
        assert await client.eval(TRAFFIC) == "3"
        yield the
    finally:
        for host in (a, b, c):
            host.link_up()
        for proc in (line_client, client, bar, foo):
            await proc.stop()


async def log_of(shell: ElixirShell) -> list[Entry]:
    return entries(await shell.eval(TRAFFIC_LOG))


def first(found: list[Entry], tag: str, ok: bool, after: float) -> Entry | None:
    return next((e for e in found if e.tag == tag and e.ok is ok and e.at > after), None)


async def all_buckets_there(the: Cluster, buckets: dict[str, str]) -> None:
    """Every bucket (name -> the node it must be on) is found through foo's router and through
    bar's, from the client."""
    for via in (F, B):
        for bucket, owner in buckets.items():
            got = await the.client.eval(f'{{:ok, p}} = :erpc.call({via}, KV.Router, :route, ["{bucket}", '
                                        f'KV.Registry, :lookup, [KV.Registry, "{bucket}"]])\nnode(p)')
            assert got == owner, (bucket, via, got)
    assert await the.client.eval(f'{{:ok, p}} = :erpc.call({F}, KV.Registry, :lookup, [KV.Registry, "apple"])\n'
                                 'GenServer.call(p, {:get, "milk"})') == "3"
    assert await the.client.eval(f'{{:ok, p}} = :erpc.call({B}, KV.Registry, :lookup, [KV.Registry, "zebra"])\n'
                                 'GenServer.call(p, {:get, "stripes"})') == "42"


def report(title: str, down: float, up: float, observed: dict[str, float | None]) -> None:
    print(f"\n{title} (net_ticktime {TICKTIME} s): link down, then up {up - down:.1f} s later")
    for what, at in observed.items():
        base = up if what.startswith("reconnect") else down
        print(f"  {what}: {'-' if at is None else f'{at - base:.2f} s'}")


def test_partition_of_a_beam_host(network, cookie):
    """hostb (bar) is cut off: the client's calls to bar, and foo's requests to bar (for the
    client and for the line client), end in nodedown within about a tick time; foo keeps
    serving its own buckets to both; buckets made meanwhile on foo's side and on bar's are all
    there once the link is back."""

    async def main():
        async with cluster(network, cookie) as the:
            await asyncio.sleep(1)                            # traffic flows
            down = time.time()
            the.b.link_down()
            # calls that bar cannot answer end (their timeouts are infinite)
            await eventually(lambda: _failed(the, "bar", "via_foo", after=down), timeout=60,
                             what="nodedown of bar at the client and at foo")
            await eventually(lambda: _line_at(the.line_client.lines, "zebra", "'ERROR'", down), timeout=60,
                             what="ERROR for bar's bucket at the line client")
            # while cut off: a bucket made on each side
            assert await the.client.eval(f':erpc.call({F}, KV.Router, :route, ["apricot", KV.Registry, :create, '
                                         '[KV.Registry, "apricot"]]) |> node()') == F
            assert await the.bar.eval('KV.Registry.create(KV.Registry, "zucchini") |> node()') == B
            ok, text = await the.client.result(
                f':erpc.call({F}, KV.Router, :route, ["zucchini", KV.Registry, :lookup, [KV.Registry, "zucchini"]])')
            assert not ok, text                                # foo cannot reach bar
            await asyncio.sleep(1)
            up = time.time()
            the.b.link_up()
            await eventually(lambda: _recovered(the, ("bar", "via_foo"), after=up), timeout=60,
                             what="requests to bar served again")
            await eventually(lambda: _line_at(the.line_client.lines, "zebra", "'42', 'OK'", up), timeout=60,
                             what="the line client served bar's bucket again")
            found = await log_of(the.client)
            lines = list(the.line_client.lines)
            await all_buckets_there(the, {"apple": F, "zebra": B, "apricot": F, "zucchini": B})

            # what each caller saw: errors only for calls to bar, and only while it was cut off
            assert all(e.ok for e in found if e.tag == "foo"), [e for e in found if e.tag == "foo" and not e.ok]
            for tag in ("bar", "via_foo"):
                failed = [e for e in found if e.tag == tag and not e.ok]
                assert failed and all(down < e.at for e in failed), failed
            assert all("noconnection" in e.text for e in found if e.tag == "bar" and not e.ok), \
                sorted({e.text for e in found if e.tag == "bar" and not e.ok})
            # foo's router: Task.await's exit, as the seed's KV.Router gives it
            assert all("nodedown" in e.text for e in found if e.tag == "via_foo" and not e.ok), \
                sorted({e.text for e in found if e.tag == "via_foo" and not e.ok})
            line_errors = [line for line in lines if "zebra" in line and "'ERROR'" in line]
            assert line_errors and not [line for line in lines if "apple" in line and "'3', 'OK'" not in line], lines

            bar_events = await the.bar.eval(NODE_EVENTS_LOG)
            report("hostb cut off", down, up, {
                "client sees bar down (its call fails)": _at(first(found, "bar", False, down)),
                "foo sees bar down (pykv log)": next(iter(pykv_events(the.foo.output, "bar@hostb.test not responding")), None),
                "foo's caller fails (via foo)": _at(first(found, "via_foo", False, down)),
                "line client gets ERROR": _line_at(lines, "zebra", "'ERROR'", down),
                "bar sees foo down": _event_at(bar_events, "nodedown", FOO, down),
                "reconnect: client to bar": _at(first(found, "bar", True, up)),
                "reconnect: foo to bar (via foo)": _at(first(found, "via_foo", True, up)),
                "reconnect: line client": _line_at(lines, "zebra", "'42', 'OK'", up),
            })
    run(main(), timeout=240)


def test_partition_of_the_pykv_host(network, cookie):
    """hosta (foo, and the line client beside it) is cut off: the client's calls to foo end in
    nodedown; the line client on foo's side is still served foo's buckets, and gets ERROR for
    bar's; a bucket made on each side is there once the link is back, when the BEAM client
    reconnects to foo and foo to bar."""

    async def main():
        async with cluster(network, cookie) as the:
            await asyncio.sleep(1)
            down = time.time()
            the.a.link_down()
            await eventually(lambda: _failed(the, "foo", "via_foo", after=down), timeout=60,
                             what="nodedown of foo at the client")
            await the.foo.expect("bar@hostb.test not responding")
            await eventually(lambda: _line_at(the.line_client.lines, "zebra", "'ERROR'", down), timeout=60,
                             what="ERROR for bar's bucket at the line client, on foo's side")
            # while cut off: a bucket made on foo's side (by a line client there) and on bar's
            made = await run_python(the.a, f"""
                import socket
                with socket.create_connection(("127.0.0.1", {the.port}), timeout=60) as s:
                    s.sendall(b"CREATE avocado\\r\\nPUT avocado ripe yes\\r\\nGET avocado ripe\\r\\n")
                    reply = b""
                    while reply.count(b"OK") < 3 and (chunk := s.recv(1024)):
                        reply += chunk
                print(reply.decode().split())
            """)
            assert made.stdout.strip() == "['OK', 'OK', 'yes', 'OK']", made
            assert await the.client.eval(f':erpc.call({B}, KV.Router, :route, ["zucchini", KV.Registry, :create, '
                                         '[KV.Registry, "zucchini"]]) |> node()') == B
            await asyncio.sleep(1)
            up = time.time()
            the.a.link_up()
            await eventually(lambda: _recovered(the, ("foo", "via_foo"), after=up), timeout=60,
                             what="requests to foo served again")
            await eventually(lambda: _line_at(the.line_client.lines, "zebra", "'42', 'OK'", up), timeout=60,
                             what="the line client served bar's bucket again")
            found = await log_of(the.client)
            lines = list(the.line_client.lines)
            await all_buckets_there(the, {"apple": F, "zebra": B, "avocado": F, "zucchini": B})

            assert all(e.ok for e in found if e.tag == "bar"), [e for e in found if e.tag == "bar" and not e.ok]
            for tag in ("foo", "via_foo"):
                failed = [e for e in found if e.tag == tag and not e.ok]
                assert failed and all(down < e.at for e in failed), failed
                assert all("noconnection" in e.text for e in failed), failed
            # the line client, on foo's side: foo's bucket all along, bar's not while cut off
            assert not [line for line in lines if "apple" in line and "'3', 'OK'" not in line], lines
            assert [line for line in lines if "zebra" in line and "'ERROR'" in line], lines

            bar_events = await the.bar.eval(NODE_EVENTS_LOG)
            client_events = await the.client.eval(NODE_EVENTS_LOG)
            report("hosta (pykv) cut off", down, up, {
                "client sees foo down (its call fails)": _at(first(found, "foo", False, down)),
                "client nodedown foo": _event_at(client_events, "nodedown", FOO, down),
                "bar sees foo down": _event_at(bar_events, "nodedown", FOO, down),
                "foo sees client down (pykv log)": next(iter(pykv_events(
                    the.foo.output, "client@hostc.test not responding")), None),
                "foo sees bar down (pykv log)": next(iter(pykv_events(
                    the.foo.output, "bar@hostb.test not responding")), None),
                "line client gets ERROR (zebra, on bar)": _line_at(lines, "zebra", "'ERROR'", down),
                "reconnect: client to foo": _at(first(found, "foo", True, up)),
                "reconnect: client to bar via foo": _at(first(found, "via_foo", True, up)),
                "reconnect: line client to bar via foo": _line_at(lines, "zebra", "'42', 'OK'", up),
            })
    run(main(), timeout=240)


async def _failed(the: Cluster, *tags: str, after: float) -> bool:
    await asyncio.sleep(0.3)  # (the log grows by 30 entries a second: not asked too often)
    found = await log_of(the.client)
    return all(first(found, tag, False, after) is not None for tag in tags)


async def _recovered(the: Cluster, tags: tuple[str, ...], after: float) -> bool:
    await asyncio.sleep(0.3)
    found = await log_of(the.client)
    return all(first(found, tag, True, after) is not None for tag in tags)


def _at(entry: Entry | None) -> float | None:
    return None if entry is None else entry.at


def _line_at(lines: list[str], bucket: str, text: str, after: float) -> float | None:
    for line in lines:
        stamp, _, rest = line.partition(" ")
        if re.fullmatch(r"\d+\.\d+", stamp) and float(stamp) > after and bucket in rest and text in rest:
            return float(stamp)
    return None


def _event_at(events: str, what: str, node: str, after: float) -> float | None:
    for m in re.finditer(r'"(\d+) (\w+) (\S+)"', events):
        if m.group(2) == what and m.group(3) == node and int(m.group(1)) / 1000 > after:
            return int(m.group(1)) / 1000
    return None


def test_differing_ticktimes_drop_an_idle_connection_as_between_beam_nodes(cookie, caplog):
    """net_ticktime is not negotiated: each node ticks (every ticktime/4) and judges by its own
    ticktime. So a node with 2 s beside one with 60 s, which ticks only every 15 s, drops their
    idle connection after about 2 s (net_tick_timeout), as two BEAM nodes do (seen with OTP 25:
    2.46 s). Here pykv is first the node with 2 s, then the one with 60 s. (One host, loopback.)"""
    import logging

    from conftest import run_elixir, script, unique
    from pykv import Node

    caplog.set_level(logging.WARNING, logger="pykv")
    watch = """
        :ok = :net_kernel.monitor_nodes(true, [:nodedown_reason, node_type: :all])
        :pong = Node.ping(PY)
        t0 = System.monotonic_time(:millisecond)
        receive do
          {:nodedown, PY, info} -> IO.puts("nodedown #{info[:nodedown_reason]} after #{System.monotonic_time(:millisecond) - t0} ms")
        after 20_000 -> IO.puts("still connected")
        end
    """

    async def main():
        async with Node(unique("fast"), cookie, ticktime=2) as fast, \
                Node(unique("slow"), cookie, ticktime=60) as slow:
            beside_fast, beside_slow = await asyncio.gather(
                run_elixir(script(watch, PY=lit(fast.name)), sname=unique("slow"), cookie=cookie),
                run_elixir(script(watch, PY=lit(slow.name)), sname=unique("fast"), cookie=cookie,
                           args=("--erl", "-kernel net_ticktime 2")))
        # pykv with 2 s drops the BEAM with 60 s; the BEAM with 2 s drops pykv with 60 s
        assert "nodedown connection_closed after" in beside_fast.check().stdout, beside_fast
        assert any("not responding" in r.getMessage() and "net_tick_timeout" in r.getMessage()
                   for r in caplog.records), caplog.text
        assert "nodedown net_tick_timeout after" in beside_slow.check().stdout, beside_slow
        print("\npykv 2 s / BEAM 60 s:", beside_fast.stdout.split("nodedown")[-1].strip(),
              "\nBEAM 2 s / pykv 60 s:", beside_slow.stdout.split("nodedown")[-1].strip())
    run(main(), timeout=90)
