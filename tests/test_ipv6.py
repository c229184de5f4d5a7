"""Issue 12, IPv6 distribution: `--proto-dist inet6_tcp` beside BEAM nodes started with
`-proto_dist inet6_tcp`, on two test hosts (tests/hosts.py), with long names that are host
names (resolving to fd00:213:: addresses) or IPv6 addresses themselves.

epmd is reached over IPv6 too, as the BEAM does (erl_epmd: a node registers at ::1, and a
node being dialled is looked up at the IPv6 address its host name resolves to): both epmds
here listen on their host's IPv6 address and loopback only (ERL_EPMD_ADDRESS), not on its
IPv4 address, so nothing could be found over IPv4.
"""

from __future__ import annotations

import secrets

import pytest

from conftest import lit, run
from hosts import ElixirShell, network, pykv_node, started  # noqa: F401 (fixture)
from test_hosts import line_request

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("elixir_peer_built")]

INET6 = "-proto_dist inet6_tcp"


@pytest.mark.parametrize("literal", [False, True], ids=["host-names", "ipv6-addresses"])
def test_ipv6_distribution_across_hosts(network, cookie, literal):
    net = network("hosta", "hostb")
    a, b = net["hosta"], net["hostb"]
    b.start_epmd(address=b.ipv6)
    host_a, host_b = (a.ipv6, b.ipv6) if literal else (a.name, b.name)
    foo, bar = f"foo@{host_a}", f"bar@{host_b}"
    F, B = lit(foo), lit(bar)
    port = 20000 + secrets.randbelow(20000)

    async def main():
        py = pykv_node(a, foo, cookie, "--proto-dist", "inet6_tcp", "--route", "a-m=foo",
                       "--route", f"n-z={bar}", "--port", str(port), env={"ERL_EPMD_ADDRESS": a.ipv6})
        beam = ElixirShell(b, bar, cookie, erl=INET6, kv_app=True,
                           env={"KV_ROUTING_TABLE": f"a-m={foo},n-z=bar"})
        try:
            await started(py)
            await beam.start()
            assert f"serving epmd on 127.0.0.1, ::1, {a.ipv6} port 4369" in py.output
            assert "inet6_tcp, long names" in py.output
            # foo dials bar (a line client CREATEs a bucket bar owns), over IPv6
            assert await line_request(beam, a.ipv4, port, "CREATE world") == '"OK\\r\\n"'
            peer = await beam.eval(f"{{_, ctrl}} = List.keyfind(:erlang.system_info(:dist_ctrl), {F}, 0)\n"
                                   ":inet.peername(ctrl) |> elem(1) |> elem(0) |> :inet.ntoa() |> List.to_string()")
            assert peer == f'"{a.ipv6}"'
            # bar dials foo, its epmd found over IPv6
            await beam.eval(f"Node.disconnect({F})")
            assert await beam.eval(f"Node.ping({F})") == ":pong"
            assert await beam.eval(f":rpc.call({F}, :erlang, :node, [])") == F
            assert await beam.eval(f"task = Task.Supervisor.async({{KV.RouterTasks, {F}}}, Kernel, :node, [])\n"
                                   "Task.await(task)") == F
            assert await beam.eval('KV.Router.route("hello", Kernel, :node, [])') == F
            assert await beam.eval(f':erpc.call({F}, KV.Router, :route, ["world", Kernel, :node, []])') == B
            assert await beam.eval('apple = KV.Router.route("apple", KV.Registry, :create, [KV.Registry, "apple"])\n'
                                   'KV.Bucket.put(apple, "milk", 3); {node(apple), KV.Bucket.get(apple, "milk")}') \
                == f"{{{F}, 3}}"
        finally:
            await beam.stop()
            await py.stop()
    run(main(), timeout=180)
