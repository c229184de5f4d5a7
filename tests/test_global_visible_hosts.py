"""Issue 14 item 5 across test hosts (tests/hosts.py): foo, a visible pykv node with global
(hosta), and three BEAM nodes b1-b3 (hostb-d), net_ticktime 2 everywhere. The link between
foo and b1 only is cut (blackhole routes on both hosts; b2 and b3 still reach both), then
restored and the nodes connect again: every node must end with the same names, and the
BEAM nodes' partitions must be fully connected meanwhile. Times are printed, not asserted.
The shells run the `elixir` on PATH: CI runs this on OTP 25, 27 and 29 in turn.
"""

from __future__ import annotations

import asyncio
import time

import pytest

from conftest import eventually, run
from hosts import PY, ElixirShell, HostProcess, _ip, network  # noqa: F401 (a fixture)

pytestmark = [pytest.mark.distributed]

TICK = 2
FOO = "foo@hosta.test"
BEAMS = ["b1@hostb.test", "b2@hostc.test", "b3@hostd.test"]

FOO_SCRIPT = r"""
import asyncio, sys
from pykv import Atom, Node
from pykv.otp import global_names, global_server

async def main(cookie, b1):
    node = Node("foo@hosta.test", cookie, hidden=False, ticktime=2)
    await node.start()
    server = global_server.GlobalServer.start(node)

    def view():
        return sorted(((n, p.node) for n in server.registered_names() if (p := server.where(n))),
                      key=lambda t: repr(t[0]))
    node.exports.add("gvns", "view", view, 0, blocking=False)
    node.exports.add("gvns", "nodes", lambda: [n for n in node.nodes()], 0, blocking=False)
    print("foo ready", flush=True)
    await node.connect(b1)
    await global_server.sync(node)
    me = node.process()
    assert await global_names.register_name(node, Atom("foo_name"), me)
    print("foo joined", flush=True)
    await asyncio.sleep(3600)

asyncio.run(main(*sys.argv[1:]))
"""

VIEW = ('Enum.sort(for n <- :global.registered_names(), p = :global.whereis_name(n), is_pid(p), '
        'do: {n, node(p)})')


def test_foo_b1_link_cut_then_restored(network, cookie):
    """Once with foo the Python node, once with a BEAM node in its place (same name, same
    host): the names must end the same; both partitionings are printed."""
    outcomes = [run(scenario(network("hosta", "hostb", "hostc", "hostd"), cookie, python), timeout=600)
                for python in (True, False)]
    print(f"outcomes (python, all-BEAM): {outcomes}")
    assert outcomes[0][1] == outcomes[1][1]


async def scenario(net, cookie: str, python: bool) -> tuple:
    label = "python" if python else "all-BEAM"
    hosts = [net[h] for h in ("hostb", "hostc", "hostd")]
    for h in hosts:
        h.start_epmd()

    def cut(up: bool) -> None:
        a, b = net["hosta"], net["hostb"]
        for here, there in ((a, b), (b, a)):
            _ip("-n", here.netns, "route", "del" if up else "add", "blackhole", f"{there.ipv4}/32")

    if True:
        shells = [await ElixirShell(h, n, cookie, erl=f"-kernel net_ticktime {TICK}").start()
                  for h, n in zip(hosts, BEAMS)]
        if python:
            foo = HostProcess(net["hosta"], [PY, "-c", FOO_SCRIPT, cookie, BEAMS[0]],
                              env={"PYTHONPATH": str(__import__("conftest").ROOT)}, label="foo")
        else:
            net["hosta"].start_epmd()
            foo = ElixirShell(net["hosta"], FOO, cookie, erl=f"-kernel net_ticktime {TICK}")
        try:
            b1, b2, b3 = shells
            for other in BEAMS[1:]:
                assert await b1.eval(f'Node.connect(:"{other}")') == "true"
            await b1.eval(":global.sync()")
            await b2.eval('pid = spawn(fn -> Process.sleep(:infinity) end); :global.register_name(:b_name, pid)')
            await foo.start()
            if python:
                await foo.expect("foo joined", 60)
            else:
                assert await foo.eval(f'Node.connect(:"{BEAMS[0]}")') == "true"
                await foo.eval(":global.sync()")
                await foo.eval('me = spawn(fn -> Process.sleep(:infinity) end); :global.register_name(:foo_name, me)')
            everyone = sorted(BEAMS + [FOO])

            async def nodes_of(s: ElixirShell) -> list[str]:
                text = await s.eval("Enum.sort([node() | Node.list()]) |> Enum.map(&Atom.to_string/1)")
                return [n.strip(' "') for n in text.strip("[]").split(",") if n.strip()]

            async def all_see_all() -> bool:
                return all([await nodes_of(s) == everyone for s in shells])
            await eventually(all_see_all, timeout=60, what="every node sees every other")
            expected = await b1.eval(VIEW)
            print(f"\n[{label}] names before the cut: {expected}")

            t = time.monotonic()
            cut(False)
            last: list = []

            async def partitions_settled() -> bool:
                parts = [frozenset(await nodes_of(s)) for s in shells]
                ok = all(p == q or not (p & q) for p in parts for q in parts) and FOO not in parts[0]
                if ok and parts == last:
                    return True
                last[:] = parts if ok else []
                await asyncio.sleep(1)
                return False
            await eventually(partitions_settled, timeout=120, what="fully connected partitions")
            shape = sorted(sorted(p) for p in set(last))
            print(f"[{label}] partitions settled {time.monotonic() - t:.1f} s after the cut: {shape}")

            t = time.monotonic()
            cut(True)
            for s in shells:
                await s.eval(f'Node.connect(:"{FOO}")')
                for other in BEAMS:
                    await s.eval(f'Node.connect(:"{other}")')
            await eventually(all_see_all, timeout=120, what="every node sees every other again")

            async def same_names() -> bool:
                views = [await s.eval(VIEW) for s in shells]
                views.append(await b1.eval(f':erpc.call(:"{FOO}", :gvns, :view, [])') if python
                             else await foo.eval(VIEW))
                return len(set(views)) == 1
            await eventually(same_names, timeout=120, what="the same names everywhere")
            names = await b1.eval(VIEW)
            print(f"[{label}] healed, names agreed {time.monotonic() - t:.1f} s after the link came back: {names}")
            return shape, names
        finally:
            with __import__("contextlib").suppress(Exception):
                cut(True)
            await foo.stop()
            for s in shells:
                await s.stop()
