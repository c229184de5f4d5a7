"""TLS distribution against real BEAM nodes started with `-proto_dist inet_tls
-ssl_dist_optfile F` (OTP's "Using SSL for Erlang Distribution"), the same optfile on both
sides: both directions, mutual TLS, TLS 1.2 and 1.3, peers refused (another CA, no
certificate) with a log line that says why, epmd plaintext; every generation; two hosts."""

from __future__ import annotations

import logging
import subprocess

import pytest

from certs import Atom as A, pki  # noqa: F401 (a fixture)
from conftest import HOST, alongside, eventually, run, run_elixir, unique
from generations import GENERATIONS, generation
from hosts import network  # noqa: F401 (a fixture)
from pykv import Atom, Node
from pykv.dist.tls_transport import dist_protocol
from pykv.kv import start_kv

pytestmark = pytest.mark.distributed


def tls_args(optfile: str) -> tuple[str, ...]:
    return ("--erl", f"-proto_dist inet_tls -ssl_dist_optfile {optfile}")


def tls_version(node: Node, peer: str) -> str:
    return node.peers[Atom(peer)].conn.transport.get_extra_info("ssl_object").version()


@pytest.mark.parametrize("versions", [None, "tlsv1.2", "tlsv1.3"])
def test_beam_and_pykv_over_mutual_tls(pki, cookie, versions):
    """ping, rpc, Task.Supervisor.async on foo's KV.RouterTasks and 50 MB from the BEAM over
    TLS; then foo dials the BEAM; epmd answers in plaintext meanwhile."""
    extra = {} if versions is None else {"versions": [A(versions)]}
    optfile = pki.optfile(server=pki.side(fail_if_no_peer_cert=True, **extra), client=pki.side(**extra))
    carrier = dist_protocol("inet_tls", optfile)
    bar = unique("tlsbar")
    bar_name = f"{bar}@{HOST}"

    async def main() -> None:
        async with Node(unique("tlsfoo"), cookie, proto_dist=carrier) as node:
            await start_kv(node, port=None)
            foo = node.name.name
            echo = node.process("tls_echo")
            seen: dict[str, str] = {}

            async def python_side() -> None:
                from_, data = await echo.receive(timeout=60)
                seen["accepted"] = tls_version(node, bar_name)
                echo.send(from_, data)
                # the BEAM disconnects: foo dials it
                await eventually(lambda: Atom(bar_name) not in node.nodes(), 20, "bar disconnected")
                echo.send((Atom("tls_bar"), Atom(bar_name)), (Atom("dialled"), node.name))
                assert await echo.receive(timeout=30) == Atom("got_it")
                seen["dialled"] = tls_version(node, bar_name)
                echo.send((Atom("tls_bar"), Atom(bar_name)), Atom("bye"))

            result = await alongside(run_elixir(f'''
                foo = :"{foo}"
                {{:port, _, _}} = :erl_epmd.port_please(~c"{foo.partition("@")[0]}", :localhost)
                :pong = Node.ping(foo)
                ^foo = :rpc.call(foo, :erlang, :node, [])
                task = Task.Supervisor.async({{KV.RouterTasks, foo}}, Kernel, :node, [])
                ^foo = Task.await(task)
                big = :binary.copy(<<1, 2, 3, 4, 5>>, 10_000_000)
                send({{:tls_echo, foo}}, {{self(), big}})
                receive do ^big -> IO.puts("50 MB back") after 60_000 -> System.halt(3) end
                Process.register(self(), :tls_bar)
                true = Node.disconnect(foo)
                receive do {{:dialled, ^foo}} -> IO.puts("foo dialled") after 30_000 -> System.halt(4) end
                send({{:tls_echo, foo}}, :got_it)
                receive do :bye -> :ok after 30_000 -> System.halt(5) end
                IO.puts("tls ok")
            ''', sname=bar, cookie=cookie, args=tls_args(optfile)), python_side(), grace=60)
            result.check()
            assert "50 MB back" in result.stdout and "tls ok" in result.stdout
            expected = {None: None, "tlsv1.2": "TLSv1.2", "tlsv1.3": "TLSv1.3"}[versions]
            if expected is not None:
                assert seen == {"accepted": expected, "dialled": expected}
            else:
                assert set(seen.values()) <= {"TLSv1.2", "TLSv1.3"} and len(seen) == 2
    run(main(), timeout=180)


def _refused_both_ways(pki, cookie, caplog, beam_optfile: str, *, expect_in: str, expect_out: str | None) -> None:
    carrier = dist_protocol("inet_tls", pki.optfile())
    caplog.set_level(logging.INFO, "pykv")
    bar = unique("tlsbad")

    async def main() -> None:
        async with Node(unique("tlsfoo"), cookie, proto_dist=carrier) as node:
            foo = node.name.name
            result = await run_elixir(f'''
                IO.puts("ping: #{{Node.ping(:"{foo}")}}")
                Process.register(self(), :waiting)
                receive do :stop -> :ok after 15_000 -> :ok end
            ''', sname=bar, cookie=cookie, args=tls_args(beam_optfile), timeout=60) \
                if expect_out is None else None
            if result is not None:
                assert "ping: pang" in result.stdout, result.stdout + result.stderr
                await eventually(lambda: expect_in in caplog.text, 10, "pykv's log line")
                return
            # a long-running BEAM: it dials foo (refused), then foo dials it (refused too)
            proc = subprocess.Popen(["elixir", "--sname", bar, "--cookie", cookie, *tls_args(beam_optfile),
                                     "-e", f'IO.puts("ping: #{{Node.ping(:"{foo}")}}"); Process.sleep(30_000)'],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                await eventually(lambda: expect_in in caplog.text, 30, "pykv's log line for the BEAM's attempt")
                assert not await node.ping(f"{bar}@{HOST}", timeout=10)
                await eventually(lambda: expect_out in caplog.text, 10, "pykv's log line for its own attempt")
                assert node.nodes() == []
            finally:
                proc.kill()
                out = proc.communicate()[0].decode()
            assert "ping: pang" in out, out
    run(main(), timeout=120)
    lines = [r.getMessage() for r in caplog.records if expect_in in r.getMessage()]
    assert lines and all(len(m) < 500 for m in lines)


def test_a_beam_node_with_another_cas_certificate_is_refused_both_ways(pki, cookie, caplog):
    """Its certificate is from other_ca (it trusts ours): foo refuses it as a client, and
    refuses it as a server when foo dials."""
    rogue = pki.optfile(server=pki.side("rogue", "ca", fail_if_no_peer_cert=True), client=pki.side("rogue", "ca"))
    _refused_both_ways(pki, cookie, caplog, rogue,
                       expect_in="failed, connection refused: its certificate is not from a CA in our cacertfile",
                       expect_out="TLS handshake with 127.0.0.1 port")
    assert any("cannot connect to" in r.getMessage() and "its certificate is not from a CA in our cacertfile"
               in r.getMessage() for r in caplog.records)


def test_a_beam_node_that_does_not_trust_us_is_refused_with_its_reason(pki, cookie, caplog):
    """The BEAM trusts only other_ca: it refuses foo's certificate, and foo logs its alert."""
    distrust = pki.optfile(server=pki.side("rogue", "other_ca"), client=pki.side("rogue", "other_ca"))
    _refused_both_ways(pki, cookie, caplog, distrust, expect_out=None,
                       expect_in="it does not trust our certificate (unknown CA)")


def test_no_client_certificate_when_one_is_required(pki, cookie, caplog):
    anonymous = pki.optfile(server=pki.side(), client=pki.side(None))
    _refused_both_ways(pki, cookie, caplog, anonymous, expect_out=None,
                       expect_in="it sent no certificate, and fail_if_no_peer_cert is true")


def test_a_plaintext_beam_node_is_refused(pki, cookie, caplog):
    carrier = dist_protocol("inet_tls", pki.optfile())
    caplog.set_level(logging.INFO, "pykv")

    async def main() -> None:
        async with Node(unique("tlsfoo"), cookie, proto_dist=carrier) as node:
            result = await run_elixir(f'IO.puts("ping: #{{Node.ping(:"{node.name.name}")}}")',
                                      sname=unique("tlsplain"), cookie=cookie)
            assert "ping: pang" in result.stdout
            await eventually(lambda: "it does not speak TLS" in caplog.text, 10, "pykv's log line")
    run(main())


@pytest.mark.generations
@pytest.mark.parametrize("otp", GENERATIONS)
def test_tls_exchange_on_every_generation(pki, cookie, otp):
    """erl of each generation with the same optfile: it dials foo (ping, rpc), then foo dials it."""
    gen = generation(otp)
    optfile = pki.optfile()
    carrier = dist_protocol("inet_tls", optfile)
    sname = unique("tlsgen")
    beam_name = f"{sname}@{HOST}"

    async def main() -> None:
        async with Node(unique("tlsfoo"), cookie, proto_dist=carrier) as node:
            foo = node.name.name
            me = node.process("tls_gen")
            code = (f"Foo = '{foo}', pong = net_adm:ping(Foo), Foo = rpc:call(Foo, erlang, node, []), "
                    "register(tls_gen, self()), {tls_gen, Foo} ! {dial_me, self()}, "
                    "true = erlang:disconnect_node(Foo), "
                    "receive {dialled, Foo} -> io:format(\"tls ok ~s~n\", [erlang:system_info(otp_release)]) "
                    "after 30000 -> halt(3) end, halt().")
            proc = subprocess.Popen([str(gen.erl), "-sname", sname, "-setcookie", cookie, "-noshell",
                                     "-proto_dist", "inet_tls", "-ssl_dist_optfile", optfile, "-eval", code],
                                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
            try:
                message = await me.receive(timeout=60)
                assert message[0] == Atom("dial_me")
                await eventually(lambda: Atom(beam_name) not in node.nodes(), 20, "the BEAM disconnected")
                me.send((Atom("tls_gen"), Atom(beam_name)), (Atom("dialled"), node.name))
                await eventually(lambda: proc.poll() is not None, 30, "the BEAM's end")
            finally:
                if proc.poll() is None:
                    proc.kill()
                out = proc.communicate()[0].decode()
            assert f"tls ok {otp}" in out, out
    run(main(), timeout=120)


@pytest.mark.usefixtures("elixir_peer_built")
def test_tls_across_two_hosts_with_long_names(pki, cookie, network):
    """foo on hosta, bar (elixir_peer's KV app) on hostb, one optfile: bar pings foo; a line
    client makes foo route a bucket to bar, so foo dials bar."""
    import secrets

    from hosts import ElixirShell, pykv_node, started
    from test_hosts import line_request

    net = network("hosta", "hostb")
    a, b = net["hosta"], net["hostb"]
    b.start_epmd()
    optfile = pki.optfile()
    foo, bar = "foo@hosta.test", "bar@hostb.test"
    port = 20000 + secrets.randbelow(20000)

    async def main() -> None:
        py = pykv_node(a, foo, cookie, "--route", "a-m=foo", "--route", f"n-z={bar}", "--port", str(port),
                       "--proto-dist", "inet_tls", "--ssl-dist-optfile", optfile)
        beam = ElixirShell(b, bar, cookie, kv_app=True, erl=f"-proto_dist inet_tls -ssl_dist_optfile {optfile}",
                           env={"KV_ROUTING_TABLE": f"a-m={foo},n-z=bar"})
        try:
            await started(py)
            await beam.start()
            assert "inet_tls" in py.output
            reply = await line_request(beam, a.name, port, "CREATE world")  # foo dials bar
            assert reply == '"OK\\r\\n"', py.output + beam.output
            assert await beam.eval(f':"{foo}" in Node.list(:hidden)') == "true"
            assert await beam.eval(f':erpc.call(:"{foo}", :erlang, :node, [])') == f':"{foo}"'
            # bar's net_kernel: the connection to foo is a TLS one
            assert await beam.eval(f'{{:ok, i}} = :net_kernel.node_info(:"{foo}"); elem(i[:address], 3)') == ":tls"
        finally:
            await beam.stop()
            await py.stop()
    run(main(), timeout=240)
