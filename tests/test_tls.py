"""pykv.dist.tls and tls_transport: optfiles into contexts, the errors a bad one gets, why a
handshake failed, and TLS carriers (pykv to pykv here; the BEAM: test_tls_distributed.py)
on asyncio's loop and uvloop, large messages included."""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import Any, Awaitable

import pytest

from certs import Atom as A, pki  # noqa: F401 (a fixture)
from conftest import unique
from pykv import Atom, Node
from pykv.dist.tls import OptfileError, line_server_context, load_optfile, why_failed
from pykv.dist.tls_transport import dist_protocol, tls_server
from pykv.dist.transport import proto_dist
from pykv.loop import loop_factory

LOOPS = ["asyncio"] + (["uvloop"] if loop_factory("auto") is not None else [])


def run_on(loop: str, coro: Awaitable[Any], timeout: float = 60) -> Any:
    with asyncio.Runner(loop_factory=loop_factory(loop)) as runner:
        return runner.run(asyncio.wait_for(coro, timeout))


# -- optfiles -> contexts --------------------------------------------------------------------

def test_mutual_tls_optfile(pki):
    tls = load_optfile(pki.optfile())
    assert tls.server.verify_mode is ssl.CERT_REQUIRED  # verify_peer + fail_if_no_peer_cert
    assert tls.client.verify_mode is ssl.CERT_REQUIRED and tls.client.check_hostname
    assert tls.server_hostname("hosta.test") == "hosta.test"  # the node name's host part
    assert (tls.server.minimum_version, tls.server.maximum_version) == (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3)


def test_defaults_and_choices(pki):
    # verify_peer without fail_if_no_peer_cert: a certificate is asked for, not required
    tls = load_optfile(pki.optfile(server=pki.side(), client=pki.side(versions=[A("tlsv1.3")])))
    assert tls.server.verify_mode is ssl.CERT_OPTIONAL
    assert tls.client.minimum_version == tls.client.maximum_version == ssl.TLSVersion.TLSv1_3
    # the server's default is verify_none; a client that says verify_none checks nothing
    server = {"certfile": pki.cert("node"), "keyfile": pki.key("node")}
    tls = load_optfile(pki.optfile(server=server, client={"verify": A("verify_none")}))
    assert tls.server.verify_mode is ssl.CERT_NONE
    assert tls.client.verify_mode is ssl.CERT_NONE and not tls.client.check_hostname
    assert tls.server_hostname("x") == ""
    # server_name_indication: another name to check, or none at all
    tls = load_optfile(pki.optfile(client=pki.side(server_name_indication="localhost")))
    assert tls.server_hostname("hosta.test") == "localhost"
    tls = load_optfile(pki.optfile(client=pki.side(server_name_indication=A("disable"))))
    assert tls.server_hostname("hosta.test") == "" and not tls.client.check_hostname
    # keyfile defaults to the certfile (a PEM with both); harmless OTP options are accepted
    both = pki.dir / "both.pem"
    both.write_text(open(pki.cert("node")).read() + open(pki.key("node")).read())
    load_optfile(pki.optfile(server={"certfile": str(both), "secure_renegotiate": True,
                                     "reuse_sessions": True, "hibernate_after": 500},
                             client=pki.side(ciphers="ECDHE-ECDSA-AES256-GCM-SHA384")))


@pytest.mark.parametrize("server, client, message", [
    ({"verify_fun": ("m", "f")}, {}, r"server option verify_fun is not supported by pykv \(a fun"),
    ({"depth": 2}, {}, r"server option depth is not supported by pykv \(Python's ssl cannot"),
    ({"crl_check": True}, {}, r"server option crl_check is not supported by pykv; it knows cacertfile, "),
    ({}, {"fail_if_no_peer_cert": True}, r"client option fail_if_no_peer_cert .*server-only"),
    ({"server_name_indication": "x"}, {}, r"server option server_name_indication .*client-only"),
    ({"versions": [A("tlsv1.1")]}, {}, r"versions: tlsv1\.1 is not supported by pykv \(it speaks tlsv1\.2, tlsv1\.3\)"),
    ({"versions": "tlsv1.2"}, {}, r"versions: a list such as"),
    ({"verify": A("verify_maybe")}, {}, r"server option verify: verify_peer or verify_none, not :verify_maybe"),
    ({"fail_if_no_peer_cert": True, "verify": A("verify_none")}, {}, r"fail_if_no_peer_cert true needs \{verify, verify_peer\}"),
    ({"ciphers": "NO-SUCH-CIPHER"}, {}, r"OpenSSL knows none of 'NO-SUCH-CIPHER'"),
    ({"ciphers": [("a", "b")]}, {}, r"pykv takes an OpenSSL cipher string"),
    ({"secure_renegotiate": False}, {}, r"secure_renegotiate: only true"),
    ({"certfile": "/nonexistent.pem"}, {}, r"server certfile /nonexistent\.pem.*No such file"),
    ({"cacertfile": "/nonexistent.pem"}, {}, r"server cacertfile /nonexistent\.pem"),
    ({"certfile": 42}, {}, r"server option certfile: a file name"),
])
def test_bad_options_are_named(pki, server, client, message):
    good = pki.side(fail_if_no_peer_cert=True)
    with pytest.raises(OptfileError, match=message):
        load_optfile(pki.optfile(server={**good, **server}, client={**pki.side(), **client}))


def test_a_key_that_does_not_match(pki):
    with pytest.raises(OptfileError, match=r"server certfile .*node\.pem / keyfile .*rogue\.key: "):
        load_optfile(pki.optfile(server={"certfile": pki.cert("node"), "keyfile": pki.key("rogue")}))


@pytest.mark.parametrize("text, message", [
    ("[{server, [{certfile, \"a\"}]}]", r"opt\d+\.conf:1: expected '\.' after a term"),
    ("{server, []}.", r"expected one term, a list"),
    ("[{server, []}, {server, []}].", r"server options given twice"),
    ("[{client, []}].", r"no \{server, \[\.\.\.\]\} options"),
    ("[{servr, []}].", r"expected \{server, \[Options\]\} or \{client, \[Options\]\}, got \{:servr, \[\]\}"),
    ("[{server, [certfile]}].", r"server options are \{Name, Value\} pairs"),
    ("[{server, []}].", r"server options need a certfile"),
])
def test_bad_files(pki, text, message):
    with pytest.raises(OptfileError, match=message):
        load_optfile(pki.optfile(text=text))
    with pytest.raises(OptfileError, match=r"--ssl-dist-optfile /nonexistent: No such file"):
        load_optfile("/nonexistent")


def test_verify_peer_needs_a_ca(pki):
    with pytest.raises(OptfileError, match=r"client: verify_peer \(the client's default, as OTP 26\+\) needs a cacertfile"):
        load_optfile(pki.optfile(server=pki.side(), client={}))
    with pytest.raises(OptfileError, match=r"server: verify_peer needs a cacertfile"):
        load_optfile(pki.optfile(server={"certfile": pki.cert("node"), "keyfile": pki.key("node"),
                                         "verify": A("verify_peer")}, client=pki.side()))


def test_inet_tls_needs_an_optfile():
    with pytest.raises(ValueError, match="inet_tls needs an optfile"):
        proto_dist("inet_tls")


# -- handshakes: what succeeds, and why the others fail -------------------------------------

class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


async def _client(port: int, context: ssl.SSLContext, host: str = "localhost") -> str:
    """A client with Python's blocking ssl (which, unlike asyncio's, sends its alert when it
    refuses the server's certificate): what it got."""
    def connect() -> str:
        import socket
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                    context.wrap_socket(raw, server_hostname=host) as s:
                s.sendall(b"ping")
                answer = s.recv(4)
                return "ok" if answer == b"ping" else f"closed ({answer!r})"
        except ssl.SSLError as e:
            return why_failed(e)
        except ConnectionError as e:
            return f"closed: {why_failed(e)}"
    return await asyncio.to_thread(connect)


def _ctx(pki, leaf: str | None, ca: str = "ca", versions: tuple[ssl.TLSVersion, ...] = ()) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=pki.cert(ca))
    if leaf:
        ctx.load_cert_chain(pki.cert(leaf), pki.key(leaf))
    if versions:
        ctx.minimum_version, ctx.maximum_version = versions[0], versions[-1]
    return ctx


@pytest.mark.parametrize("loop", LOOPS)
def test_refused_peers_are_logged_and_the_server_serves_on(pki, loop, caplog):
    tls = load_optfile(pki.optfile(server=pki.side(fail_if_no_peer_cert=True, versions=[A("tlsv1.2")])))
    caplog.set_level(logging.INFO, "pykv")
    v12 = (ssl.TLSVersion.TLSv1_2,)

    async def main() -> dict[str, str]:
        server = await tls_server(Echo, tls.server, "127.0.0.1", 0, "test server")
        port = server.sockets[0].getsockname()[1]
        try:
            return {
                "good": await _client(port, _ctx(pki, "node", versions=v12)),
                "no cert": await _client(port, _ctx(pki, None, versions=v12)),
                "other CA": await _client(port, _ctx(pki, "rogue", versions=v12)),
                "tls 1.3 only": await _client(port, _ctx(pki, "node", versions=(ssl.TLSVersion.TLSv1_3,))),
                "we distrust it": await _client(port, _ctx(pki, "node", ca="other_ca", versions=v12)),
                "wrong name": await _client(port, _ctx(pki, "node", versions=v12), host="nothere.invalid"),
                "good again": await _client(port, _ctx(pki, "node", versions=v12)),
            }
        finally:
            server.close()

    results = run_on(loop, main())
    assert results["good"] == results["good again"] == "ok"
    # a refusing server closes the connection (asyncio sends no alert then): the reason is
    # in the server's log line
    assert results["no cert"] != "ok" and results["tls 1.3 only"] != "ok" and results["other CA"] != "ok"
    assert results["we distrust it"].startswith("its certificate is not from a CA in our cacertfile")
    assert results["wrong name"].startswith("its certificate does not name the host dialled")
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert any("it sent no certificate, and fail_if_no_peer_cert is true" in m for m in lines), lines
    assert any("its certificate is not from a CA in our cacertfile" in m for m in lines), lines
    assert any("no TLS version in common" in m for m in lines), lines
    assert any("it does not trust our certificate (unknown CA)" in m for m in lines), lines
    assert all(m.startswith("test server: TLS handshake with 127.0.0.1 port ") for m in lines)
    assert all(len(m) < 400 for m in lines)


@pytest.mark.parametrize("loop", LOOPS)
def test_a_plaintext_client_and_a_silent_one(pki, loop, caplog, monkeypatch):
    """Bytes that are not TLS, and a client that says nothing: refused, each with a line."""
    tls = load_optfile(pki.optfile())
    caplog.set_level(logging.INFO, "pykv")

    async def main() -> None:
        server = await tls_server(Echo, tls.server, "127.0.0.1", 0, "test server", timeout=0.5)
        port = server.sockets[0].getsockname()[1]
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(b"\x00\x10N" + b"x" * 30)  # a plaintext dist handshake's start
            await asyncio.wait_for(reader.read(), 10)  # refused: closed
            writer.close()
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            assert await asyncio.wait_for(reader.read(), 10) == b""  # closed after the timeout
            writer.close()
        finally:
            server.close()

    run_on(loop, main())
    lines = [r.getMessage() for r in caplog.records if "TLS handshake with" in r.getMessage()]
    assert any("it does not speak TLS" in m for m in lines), lines
    assert any("timed out" in m for m in lines), lines


def test_line_server_context(pki):
    ctx = line_server_context(pki.cert("node"), pki.key("node"))
    assert ctx.verify_mode is ssl.CERT_NONE
    ctx = line_server_context(pki.cert("node"), pki.key("node"), pki.cert("ca"), "verify_peer")
    assert ctx.verify_mode is ssl.CERT_REQUIRED
    with pytest.raises(OptfileError, match="needs a cacertfile"):
        line_server_context(pki.cert("node"), pki.key("node"), None, "verify_peer")


# -- pykv to pykv over inet_tls --------------------------------------------------------------

@pytest.mark.parametrize("loop", LOOPS)
def test_two_pykv_nodes_over_tls_with_a_50_mb_message(pki, loop, cookie):
    carrier = dist_protocol("inet_tls", pki.optfile())
    big = bytes(range(256)) * (50 * 1024 * 1024 // 256)

    async def main() -> None:
        async with Node(unique("tlsa"), cookie, proto_dist=carrier) as a, \
                Node(unique("tlsb"), cookie, proto_dist=carrier) as b:
            rx = a.process("rx")
            tx = b.process()
            tx.send((Atom("rx"), a.name), (Atom("small"), 1))
            tx.send((Atom("rx"), a.name), (Atom("big"), big, tx.pid))
            tx.send((Atom("rx"), a.name), (Atom("small"), 2))
            assert await rx.receive(timeout=30) == (Atom("small"), 1)
            got = await rx.receive(timeout=60)
            assert got[0] == Atom("big") and got[1] == big
            assert await rx.receive(timeout=30) == (Atom("small"), 2)
            rx.send(got[2], (Atom("back"), big))  # and the other way
            back = await tx.receive(timeout=60)
            assert back[1] == big
            conn = a.peers[b.name].conn
            assert conn.transport.get_extra_info("ssl_object").version() == "TLSv1.3"
    run_on(loop, main(), timeout=120)


def test_pykv_refuses_a_pykv_node_of_another_ca(pki, cookie, caplog):
    good = dist_protocol("inet_tls", pki.optfile())
    rogue = dist_protocol("inet_tls", pki.optfile(server=pki.side("rogue", "other_ca"),
                                                  client=pki.side("rogue", "other_ca")))
    caplog.set_level(logging.INFO, "pykv")

    async def main() -> None:
        async with Node(unique("tlsa"), cookie, proto_dist=good) as a, \
                Node(unique("tlsr"), cookie, proto_dist=rogue) as r:
            assert not await r.ping(a.name.name, timeout=10)
            assert not await a.ping(r.name.name, timeout=10)
            assert a.nodes() == [] and r.nodes() == []
    run_on("asyncio", main())
    text = "\n".join(r.getMessage() for r in caplog.records)
    assert "TLS handshake with 127.0.0.1 port" in text and "failed, connection refused: " in text
    assert "its certificate is not from a CA in our cacertfile" in text


# -- the command line: --proto-dist inet_tls --ssl-dist-optfile, --line-tls-* ------------------

@pytest.mark.parametrize("args, words", [
    (["--proto-dist", "inet_tls"], ["needs --ssl-dist-optfile FILE"]),
    (["--ssl-dist-optfile", "x.conf"], ["--ssl-dist-optfile is for --proto-dist inet_tls"]),
    (["--proto-dist", "inet_tls", "--ssl-dist-optfile", "/nonexistent.conf"], ["/nonexistent.conf: No such file"]),
    (["--line-tls-keyfile", "k.pem"], ["need --line-tls-certfile"]),
])
def test_cli_refuses_bad_tls_flags_in_one_line(args, words):
    from test_cli import assert_one_line_failure, pykv
    assert_one_line_failure(pykv("--sname", unique("tlscli"), "--cookie", "c", "--no-server", *args), *words)


def test_cli_names_the_bad_option_of_an_optfile(pki):
    from test_cli import assert_one_line_failure, pykv
    optfile = pki.optfile(server={**pki.side(), "verify_fun": ("m", "f", [])})
    assert_one_line_failure(pykv("--sname", unique("tlscli"), "--cookie", "c", "--no-server",
                                 "--proto-dist", "inet_tls", "--ssl-dist-optfile", optfile),
                            "server option verify_fun is not supported by pykv")
    bad = pki.optfile(text="[{server, [{certfile, Path}]}].")
    assert_one_line_failure(pykv("--sname", unique("tlscli"), "--cookie", "c", "--no-server",
                                 "--proto-dist", "inet_tls", "--ssl-dist-optfile", bad),
                            ":1: a variable (Path) is not a term")


def test_the_line_server_over_tls_with_client_certificates(pki, cookie):
    import socket
    import sys

    from conftest import ROOT, free_port
    port = free_port()

    async def main() -> str:
        node = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "pykv", "--sname", unique("tlsline"), "--cookie", cookie, "--port", str(port),
            "--line-tls-certfile", pki.cert("node"), "--line-tls-keyfile", pki.key("node"),
            "--line-tls-cacertfile", pki.cert("ca"), "--line-tls-verify", "verify_peer",
            stderr=asyncio.subprocess.PIPE, cwd=ROOT)
        try:
            seen: list[bytes] = []
            while not seen or b"KV app ready" not in seen[-1]:
                seen.append(await asyncio.wait_for(node.stderr.readline(), 60))

            def client(leaf: str | None, ca: str = "ca") -> str:
                ctx = _ctx(pki, leaf, ca)
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=10) as raw, \
                            ctx.wrap_socket(raw, server_hostname="localhost") as s:
                        s.sendall(b"CREATE shopping\r\nPUT shopping milk 3\r\nGET shopping milk\r\n")
                        got = b""
                        while got.count(b"\r\n") < 4:
                            chunk = s.recv(100)
                            if not chunk:
                                break
                            got += chunk
                        return got.decode() or "refused: closed without a reply (TLS 1.3: after our Finished)"
                except (ssl.SSLError, ConnectionError) as e:
                    return f"refused: {e}"

            assert await asyncio.to_thread(client, "node") == "OK\r\nOK\r\n3\r\nOK\r\n"
            assert (await asyncio.to_thread(client, None)).startswith("refused")
            assert (await asyncio.to_thread(client, "node", "other_ca")).startswith("refused")
            assert await asyncio.to_thread(client, "node") == "OK\r\nOK\r\n3\r\nOK\r\n"  # serving on
        finally:
            node.terminate()
            _, err = await node.communicate()
        return b"".join(seen).decode() + err.decode()

    log = run_on("asyncio", main(), timeout=90)
    assert "(TLS)" in log
    assert "line server: TLS handshake with 127.0.0.1 port" in log
    assert "it sent no certificate, and fail_if_no_peer_cert is true" in log
    assert "it does not trust our certificate (unknown CA)" in log

