"""Node names (short, long), the address family and port range of node connections, and the
routing table's host rule: OTP's rules, no BEAM needed (the BEAM's side of the same rules is
tests/test_hosts.py, across test hosts)."""

from __future__ import annotations

import asyncio
import socket

import pytest

from conftest import run
from pykv import Node
from pykv.dist import names, transport
from pykv.dist.names import NodeNameError
from pykv.kv.table import TableError, parse_table


@pytest.mark.parametrize("name, longnames, full, long", [
    ("foo@hosta.test", None, "foo@hosta.test", True),      # the host part says which
    ("foo@10.1.2.3", None, "foo@10.1.2.3", True),
    ("foo@fd00::11", None, "foo@fd00::11", True),
    ("foo@hosta", None, "foo@hosta", False),
    ("foo@hosta.test", True, "foo@hosta.test", True),
    ("foo@vm", True, "foo@vm", True),                      # erl -name foo@vm starts, too
    ("foo@hosta", False, "foo@hosta", False),
])
def test_own_name(name, longnames, full, long):
    assert names.own_name(name, longnames) == (full, long)


def test_own_name_without_host():
    short = socket.gethostname().split(".")[0]
    assert names.own_name("foo") == (f"foo@{short}", False)
    assert names.own_name("foo", False) == (f"foo@{short}", False)


@pytest.mark.parametrize("name, longnames, message", [
    ("foo@hosta.test", False, "Can't set short node name!"),   # erl -sname foo@a.b
    ("fo o@host", None, "Invalid node name!"),
    ("foo@", None, "illegal"),
    ("@host", None, "illegal"),
])
def test_own_name_refused_as_erl_refuses_it(name, longnames, message):
    with pytest.raises(NodeNameError, match=message):
        names.own_name(name, longnames)


def test_long_name_without_a_domain_is_refused(monkeypatch):
    monkeypatch.setattr(socket, "gethostname", lambda: "vm")
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "localhost")
    with pytest.raises(NodeNameError, match="Can't set long node name!"):
        names.own_name("foo", True)
    monkeypatch.setattr(socket, "getfqdn", lambda name="": "vm.example.com")
    assert names.own_name("foo", True) == ("foo@vm.example.com", True)


@pytest.mark.parametrize("node, longnames, family", [
    ("bar@hostb.test", True, socket.AF_INET),
    ("bar@10.1.2.3", True, socket.AF_INET),
    ("bar@fd00::12", True, socket.AF_INET6),     # an address of the family, without a dot
    ("bar@hostb", False, socket.AF_INET),
    ("bar@fd00::12", False, socket.AF_INET),     # no dot: a short host, as splitnode sees it
])
def test_dialable(node, longnames, family):
    assert names.dialable(node, longnames, family) == tuple(node.split("@", 1))


@pytest.mark.parametrize("node, longnames, family, message", [
    ("bar@hostb", True, socket.AF_INET,
     "** System running to use fully qualified hostnames **\n** Hostname hostb is illegal **"),
    ("bar@fd00::12", True, socket.AF_INET,       # an IPv6 address, dialled over inet_tcp
     "** System running to use fully qualified hostnames **\n** Hostname fd00::12 is illegal **"),
    ("bar@hostb.test", False, socket.AF_INET,
     "** System NOT running to use fully qualified hostnames **\n** Hostname hostb.test is illegal **"),
    ("bar@10.1.2.3", False, socket.AF_INET,
     "** System NOT running to use fully qualified hostnames **\n** Hostname 10.1.2.3 is illegal **"),
    ("bar", True, socket.AF_INET, "** Nodename 'bar' illegal, no '@' character **"),
])
def test_not_dialable_with_the_beams_message(node, longnames, family, message):
    with pytest.raises(NodeNameError) as info:
        names.dialable(node, longnames, family)
    assert str(info.value) == message


def test_node_refuses_to_dial_a_node_of_the_other_kind(caplog):
    async def main():
        async with Node("foo@127.0.0.1", "c", epmd_port=_free_port()) as node:
            assert node.longnames
            assert await node.ping("bar@somehost") is False
        assert "** Hostname somehost is illegal **" in caplog.text
    run(main())


# -- the carrier: family and ports ---------------------------------------------------------

def test_proto_dist():
    assert transport.proto_dist("inet_tcp").family == socket.AF_INET
    inet6 = transport.proto_dist("inet6_tcp")
    assert (inet6.family, inet6.loopback, inet6.any_address) == (socket.AF_INET6, "::1", "::")
    with pytest.raises(ValueError, match="unknown -proto_dist 'inet_sctp'"):
        transport.proto_dist("inet_sctp")


@pytest.mark.parametrize("text, expected", [
    ("0", (0, 0)), ("9100", (9100, 9100)), ("9100-9105", (9100, 9105)), (9100, (9100, 9100)),
])
def test_port_range(text, expected):
    assert transport.port_range(text) == expected


@pytest.mark.parametrize("text", ["9105-9100", "x", "9100-", "0-10", "70000", "-1"])
def test_bad_port_range(text):
    with pytest.raises(ValueError, match="port range"):
        transport.port_range(text)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _taken_port_with_a_free_one_above() -> socket.socket:
    """A listening socket on some port p while p + 1 was free a moment ago.

    Another process (a parallel test run) may hold any ephemeral port, so p + 1 is checked
    rather than assumed."""
    for _ in range(100):
        taken = socket.socket()
        taken.bind(("127.0.0.1", 0))
        with socket.socket() as probe:
            try:
                probe.bind(("127.0.0.1", taken.getsockname()[1] + 1))
            except OSError:
                taken.close()
                continue
        taken.listen()
        return taken
    raise RuntimeError("no pair of free ports")


def test_listen_takes_the_first_free_port_of_the_range():
    async def main():
        with _taken_port_with_a_free_one_above() as taken:
            low = taken.getsockname()[1]
            server = await transport.INET_TCP.listen(asyncio.Protocol, "127.0.0.1", (low, low + 1))
            try:
                assert server.sockets[0].getsockname()[1] == low + 1
                with pytest.raises(OSError, match=f"no free port for node connections in {low}-{low + 1}"):
                    await transport.INET_TCP.listen(asyncio.Protocol, "127.0.0.1", (low, low + 1))
            finally:
                server.close()
    run(main())


def test_resolve_in_the_family():
    async def main():
        assert await transport.INET_TCP.resolve("localhost") == "127.0.0.1"
        assert await transport.INET_TCP.resolve("10.1.2.3") == "10.1.2.3"
        assert await transport.INET6_TCP.resolve("fd00::12") == "fd00::12"

        async def unknown(*args, **kwargs):  # (no DNS query leaves this machine)
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        asyncio.get_running_loop().getaddrinfo = unknown
        with pytest.raises(ConnectionError, match="cannot resolve hostz.example to an AF_INET address"):
            await transport.INET_TCP.resolve("hostz.example")
    run(main())


# -- the routing table's host rule -----------------------------------------------------------

def test_a_bare_node_is_on_this_host_whole():
    routes = parse_table(["a-m=foo", "n-z=bar"], "hosta.example.com", longnames=True)
    assert [r.node.name for r in routes] == ["foo@hosta.example.com", "bar@hosta.example.com"]
    routes = parse_table(["a-z=bar"], "10.1.2.3", longnames=True)
    assert routes[0].node.name == "bar@10.1.2.3"
    assert parse_table(["a-z=bar"], "hosta", longnames=False)[0].node.name == "bar@hosta"


@pytest.mark.parametrize("route, host, longnames, message", [
    ("n-z=bar@hostb", "hosta.test", True, "bar@hostb cannot be reached from a node with long names: "
     "** System running to use fully qualified hostnames ** ** Hostname hostb is illegal **"),
    ("n-z=bar@hostb.test", "hosta", False, "bar@hostb.test cannot be reached from a node with short names"),
])
def test_a_node_of_the_other_kind_in_the_table_is_refused(route, host, longnames, message):
    with pytest.raises(TableError, match=message.replace("*", r"\*")):
        parse_table([route], host, longnames)


def test_cli_flags_for_hosts():
    from pykv.cli import parse_args

    args = parse_args(["--name", "foo@hosta.test", "--dist-port", "9100-9105", "--net-ticktime", "2",
                       "--proto-dist", "inet6_tcp", "--bind", "fd00::11"])
    assert (args.dist_port, args.net_ticktime, args.proto_dist, args.bind) == ((9100, 9105), 2, "inet6_tcp", "fd00::11")
    assert parse_args(["--sname", "foo"]).dist_port == (0, 0)
    for bad in (["--dist-port", "9-3"], ["--net-ticktime", "0"], ["--proto-dist", "inet_sctp"]):
        with pytest.raises(SystemExit):
            parse_args(["--sname", "foo", *bad])
