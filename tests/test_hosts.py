"""Issue 12, long names across hosts: pykv on one test host (tests/hosts.py), BEAM nodes on
others, with the seed's walkthrough between them, whether pykv's host runs a real epmd or
pykv's own; epmd as other hosts see it; and nodes of the other name kind, refused as the
BEAM refuses them.

The BEAM side is an Elixir shell on its host (hosts.ElixirShell): the seed's commands are
evaluated there as if typed in bar's iex.
"""

from __future__ import annotations

import secrets
import time

import pytest

import hosts
from conftest import lit, run
from hosts import ElixirShell, network, pykv_node, run_python, started  # noqa: F401 (fixture)

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("elixir_peer_built")]


def line_port() -> int:
    return 20000 + secrets.randbelow(20000)  # the hosts' own namespaces: no one else's ports


async def line_request(shell: ElixirShell, host: str, port: int, request: str) -> str:
    """The first reply line to `request`, from the line server at host:port, by a client on
    the shell's host (:gen_tcp)."""
    return await shell.eval(f'''
        {{:ok, s}} = :gen_tcp.connect(~c"{host}", {port}, [:binary, active: false, packet: :line])
        :ok = :gen_tcp.send(s, "{request}\\r\\n")
        {{:ok, line}} = :gen_tcp.recv(s, 0, 15_000)
        :gen_tcp.close(s)
        line''')


@pytest.mark.parametrize("ip_names, real_epmd", [(False, False), (True, True)],
                         ids=["host-names,embedded-epmd", "ip-addresses,real-epmd"])
def test_seed_walkthrough_across_hosts(network, cookie, ip_names, real_epmd):
    net = network("hosta", "hostb")
    a, b = net["hosta"], net["hostb"]
    b.start_epmd()
    if real_epmd:
        a.start_epmd()
    host_a, host_b = (a.ipv4, b.ipv4) if ip_names else (a.name, b.name)
    foo, bar = f"foo@{host_a}", f"bar@{host_b}"
    F, B = lit(foo), lit(bar)
    port = line_port()
    extra = ["--bind", a.ipv4, "--dist-port", "9100-9105"] if ip_names else []

    async def main():
        py = pykv_node(a, foo, cookie, "--route", "a-m=foo", "--route", f"n-z={bar}", "--port", str(port), *extra)
        # bar's table names foo in full and itself bare: `bar` is bar@ its own host part
        beam = ElixirShell(b, bar, cookie, kv_app=True, env={"KV_ROUTING_TABLE": f"a-m={foo},n-z=bar"})
        try:
            await started(py)
            await beam.start()
            assert ("serving epmd" in py.output) is not real_epmd
            # foo's host's epmd answers bar's host
            listed = await beam.eval(f':erl_epmd.names(~c"{host_a}") |> elem(1) |> Enum.map(&List.to_string(elem(&1, 0)))')
            assert listed == '["foo"]'
            if ip_names:  # --dist-port 9100-9105: the first free port of the range
                assert await beam.eval(f':erl_epmd.port_please(~c"foo", ~c"{host_a}")') == "{:port, 9100, 6}"
                assert "dist port 9100" in py.output
                # --bind: foo listens on that address only
                probe = await run_python(a, """
                    import socket
                    try:
                        socket.create_connection(("127.0.0.1", 9100), timeout=5)
                        print("reached")
                    except ConnectionRefusedError:
                        print("refused")
                """)
                assert probe.stdout.strip() == "refused", probe

            # foo dials bar first: a line client CREATEs a bucket that bar owns
            assert await line_request(beam, host_a, port, "CREATE world") == '"OK\\r\\n"'
            assert await beam.eval(f"{F} in Node.list(:hidden)") == "true"
            assert await beam.eval('{:ok, w} = KV.Registry.lookup(KV.Registry, "world"); node(w)') == B

            # then, the seed on bar, which dials foo this time
            await beam.eval(f"Node.disconnect({F})")
            assert await beam.eval(f"Node.ping({F})") == ":pong"
            assert await beam.eval(f"{F} in Node.list(:hidden)") == "true"
            assert await beam.eval(f":rpc.call({F}, :erlang, :node, [])") == F
            assert await beam.eval(f"task = Task.Supervisor.async({{KV.RouterTasks, {F}}}, Kernel, :node, [])\n"
                                   "Task.await(task)") == F
            assert await beam.eval('KV.Router.route("hello", Kernel, :node, [])') == F
            assert await beam.eval('KV.Router.route("world", Kernel, :node, [])') == B
            # ... and foo's router, called from bar, sends "world" back to bar
            assert await beam.eval(f':erpc.call({F}, KV.Router, :route, ["world", Kernel, :node, []])') == B
            assert await beam.eval(f':erpc.call({F}, KV.Router, :route, ["hello", Kernel, :node, []])') == F
            ok, raised = await beam.result(f':erpc.call({F}, KV.Router, :route, [<<0>>, Kernel, :node, []])')
            assert not ok and "could not find entry for <<0>> in table" in raised
            table = f"[{{97..109, {F}}}, {{110..122, {B}}}]".replace('"', '\\"')  # inside a string
            assert table in raised, raised

            # buckets across: a Python bucket used from bar, a BEAM bucket made through foo
            assert await beam.eval('apple = KV.Router.route("apple", KV.Registry, :create, [KV.Registry, "apple"])\n'
                                   "node(apple)") == F
            assert await beam.eval('KV.Bucket.put(apple, "milk", 3); KV.Bucket.get(apple, "milk")') == "3"
            assert await beam.eval(f'zebra = :erpc.call({F}, KV.Router, :route, ["zebra", KV.Registry, :create, '
                                   '[KV.Registry, "zebra"]])\nnode(zebra)') == B
            assert await beam.eval('{:ok, z} = KV.Registry.lookup(KV.Registry, "zebra"); z == zebra') == "true"
            assert await line_request(beam, host_a, port, "PUT apple eggs 12") == '"OK\\r\\n"'
            assert await beam.eval('KV.Bucket.get(apple, "eggs")') == '"12"'
        finally:
            await beam.stop()
            await py.stop()
    run(main(), timeout=180)


def test_a_node_of_the_other_name_kind_is_refused_as_the_beam_refuses_it(network, cookie):
    """Short names and long names do not mix: a BEAM node refuses to dial a node of the
    other kind before any traffic, logging why (inet_tcp_dist:splitnode), and so does pykv;
    nodes of one kind meet across hosts."""
    net = network("hosta", "hostb")
    a, b = net["hosta"], net["hostb"]
    b.start_epmd()

    async def main():
        long_py = pykv_node(a, "foo@hosta.test", cookie, "--no-server")
        short_py = pykv_node(a, "sfoo", cookie, "--no-server")          # sfoo@hosta
        long_beam = ElixirShell(b, "lbar@hostb.test", cookie)
        short_beam = ElixirShell(b, "sbar", cookie)                     # sbar@hostb
        try:
            await started(long_py)
            await started(short_py)
            await long_beam.start()
            await short_beam.start()
            assert await short_beam.eval("node()") == ":sbar@hostb"
            # the BEAM, dialling pykv
            assert await long_beam.eval('Node.ping(:"foo@hosta.test")') == ":pong"
            assert await short_beam.eval("Node.ping(:sfoo@hosta)") == ":pong"
            assert await short_beam.eval('Node.ping(:"foo@hosta.test")') == ":pang"
            await short_beam.expect(r"\*\* System NOT running to use fully qualified hostnames \*\*")
            await short_beam.expect(r"\*\* Hostname hosta\.test is illegal \*\*")
            assert await long_beam.eval("Node.ping(:sfoo@hosta)") == ":pang"
            await long_beam.expect(r"\*\* System running to use fully qualified hostnames \*\*")
            await long_beam.expect(r"\*\* Hostname hosta is illegal \*\*")

            # pykv, dialling the BEAM (the Python API, on hosta)
            probe = await run_python(a, f"""
                import asyncio, logging
                from pykv import Node, NoConnection
                from pykv.term import inspect
                logging.basicConfig(level=logging.ERROR, format="%(levelname)s %(message)s")

                async def main():
                    async with Node("plong@hosta.test", "{cookie}") as node:
                        print("long->long", await node.ping("lbar@hostb.test"))
                        print("long->short", await node.ping("sbar@hostb"))
                        try:
                            await node.connect("sbar@hostb")
                        except NoConnection as e:
                            print("connect:", inspect(e.reason))
                    async with Node("pshort", "{cookie}") as node:
                        print("short name", inspect(node.name))
                        print("short->short", await node.ping("sbar@hostb"))
                        print("short->long", await node.ping("lbar@hostb.test"))
                asyncio.run(main())
            """)
            out = probe.stdout.splitlines()
            assert out == ["long->long True", "long->short False", "connect: {:nodedown, :sbar@hostb}",
                           "short name :pshort@hosta", "short->short True", "short->long False"], probe
            assert ("** System running to use fully qualified hostnames **\n** Hostname hostb is illegal **"
                    in probe.stderr), probe.stderr
            assert ("** System NOT running to use fully qualified hostnames **\n"
                    "** Hostname hostb.test is illegal **" in probe.stderr), probe.stderr
        finally:
            for proc in (short_beam, long_beam, short_py, long_py):
                await proc.stop()
    run(main(), timeout=180)


EPMD_PROBE = """
    import socket, struct, sys

    def request(host, body):
        with socket.create_connection((host, 4369), timeout=10) as s:
            s.sendall(struct.pack(">H", len(body)) + body)
            data = b""
            while chunk := s.recv(4096):
                data += chunk
            return data

    def alive2(host, name):
        n = name.encode()
        body = bytes([120]) + struct.pack(">HBBHHH", 9999, 72, 0, 6, 5, len(n)) + n + b"\\0\\0"
        with socket.create_connection((host, 4369), timeout=10) as s:
            s.sendall(struct.pack(">H", len(body)) + body)
            reply = b""
            while len(reply) < 6 and (chunk := s.recv(6 - len(reply))):  # registered: it stays open
                reply += chunk
            return reply

    for host in sys.argv[1:]:
        names = request(host, bytes([110]))[4:].decode()
        port = request(host, bytes([122]) + b"foo")
        print(host, "names", sorted(line.split()[1] for line in names.splitlines()))
        print(host, "port_please", port[:2] == bytes([119, 0]), struct.unpack_from(">H", port, 2)[0])
        # a registration from this host: only answered when the epmd is on this host
        reply = alive2(host, "intruder")
        print(host, "alive2", reply[:2].hex() if reply else "closed, no reply")
"""


def test_embedded_epmd_answers_other_hosts_as_the_real_epmd_does(network, cookie):
    """PORT_PLEASE2 and NAMES are answered for any host, ALIVE2 only for the epmd's own
    (epmd_srv.c: from loopback or from the host's own address): pykv's epmd on hosta and a
    real epmd on hostc, asked the same from hostb, and each from its own host."""
    net = network("hosta", "hostb", "hostc")
    a, b, c = net["hosta"], net["hostb"], net["hostc"]
    c.start_epmd()

    async def main():
        on_a = pykv_node(a, "foo@hosta.test", cookie, "--no-server")     # serves epmd itself
        on_c = pykv_node(c, "foo@hostc.test", cookie, "--no-server")     # registers with epmd
        try:
            await started(on_a)
            await started(on_c)
            assert "serving epmd" in on_a.output and "serving epmd" not in on_c.output
            port_a = int((await on_a.expect(r"dist port (\d+)")).group(1))
            port_c = int((await on_c.expect(r"dist port (\d+)")).group(1))
            remote = await run_python(b, EPMD_PROBE.replace("sys.argv[1:]", f"{[a.ipv4, c.ipv4]}"))
            assert remote.stdout.splitlines() == [
                f"{a.ipv4} names ['foo']", f"{a.ipv4} port_please True {port_a}", f"{a.ipv4} alive2 closed, no reply",
                f"{c.ipv4} names ['foo']", f"{c.ipv4} port_please True {port_c}", f"{c.ipv4} alive2 closed, no reply",
            ], remote
            await on_a.expect("refused to register a node for 10.213.0.12")
            # from the epmd's own host, by the host's own address (not loopback): registered
            for host in (a, c):
                local = await run_python(host, EPMD_PROBE.replace("sys.argv[1:]", f"{[host.ipv4]}"))
                lines = local.stdout.splitlines()
                assert lines[2].startswith(f"{host.ipv4} alive2 7600"), local   # ALIVE2_X_RESP, ok
        finally:
            await on_c.stop()
            await on_a.stop()
    run(main(), timeout=120)


@pytest.mark.skipif(hosts.cannot_make_namespaces() is not None, reason=str(hosts.cannot_make_namespaces()))
def test_leftovers_of_a_killed_run_are_removed_and_a_live_runs_are_kept():
    """What a killed run left (a namespace with a process in it, its /etc/netns files) is
    removed when a later run starts; a run whose lock is held is left alone."""
    import fcntl
    import subprocess

    dead, live = secrets.token_hex(3), secrets.token_hex(3)
    dead_ns, live_ns = f"{hosts.PREFIX}{dead}-1-hostz", f"{hosts.PREFIX}{live}-1-hostz"
    hosts.LOCKS.mkdir(parents=True, exist_ok=True)
    lock = open(hosts.LOCKS / f"{live}.lock", "w")
    fcntl.flock(lock, fcntl.LOCK_EX)
    sleeper = None
    try:
        for ns in (dead_ns, live_ns):
            subprocess.run(["ip", "netns", "add", ns], check=True)
            (hosts.NETNS_ETC / ns).mkdir(parents=True, exist_ok=True)
            (hosts.NETNS_ETC / ns / "hosts").write_text("127.0.0.1 localhost\n")
        sleeper = subprocess.Popen(["ip", "netns", "exec", dead_ns, "sleep", "600"])
        for _ in range(100):  # until it runs in there
            if subprocess.run(["ip", "netns", "pids", dead_ns], capture_output=True, text=True).stdout.split():
                break
            time.sleep(0.02)
        hosts.sweep(own_run=secrets.token_hex(3))
        assert sleeper.wait(timeout=10) != 0                       # killed
        left = hosts._namespaces()
        assert dead_ns not in left and not (hosts.NETNS_ETC / dead_ns).exists()
        assert live_ns in left and (hosts.NETNS_ETC / live_ns / "hosts").exists()
    finally:
        if sleeper is not None and sleeper.poll() is None:
            sleeper.kill()
        for ns in (dead_ns, live_ns):
            hosts._remove_namespace(ns)
        lock.close()
        (hosts.LOCKS / f"{live}.lock").unlink(missing_ok=True)
