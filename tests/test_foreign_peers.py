"""OTP's own non-BEAM nodes as pykv's peers: erl_call (erl_interface, C) and Jinterface
(Java), of every installed generation, each beside a BEAM node of that generation doing
the same. They negotiate less than a BEAM node (wire-notes "Peers that negotiate less"):
erl_call lacks SEND_SENDER, DIST_MONITOR_NAME, EXIT_PAYLOAD, ALIAS, SPAWN, UNICODE_IO;
Jinterface lacks DIST_MONITOR too. What pykv wrote to them is recorded and must use only
what they negotiated (dist/capabilities.py).
"""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from conftest import HOST, ROOT, run, unique, wait_until_up
from generations import GENERATIONS, Generation, generation, sent  # noqa: F401 (a fixture)
from pykv import Atom, Node, Reference
from pykv.dist import control as C
from pykv.otp import rpc

pytestmark = [pytest.mark.distributed, pytest.mark.generations]

# what a peer without SEND_SENDER, DIST_MONITOR(_NAME), EXIT_PAYLOAD, ALIAS and SPAWN may get
PLAIN_OPS = {C.LINK, C.SEND, C.EXIT, C.REG_SEND, C.EXIT2, C.UNLINK_ID, C.UNLINK_ID_ACK}


class ErlNode:
    """A plain `erl` node of one generation, for comparison."""

    def __init__(self, gen: Generation, cookie: str) -> None:
        self.sname = unique("beam")
        self.name = f"{self.sname}@{HOST}"
        self.proc = subprocess.Popen([str(gen.erl), "-sname", self.sname, "-setcookie", cookie, "-noshell"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)

    def stop(self) -> None:
        died = self.proc.poll()
        self.proc.terminate()
        try:
            out, _ = self.proc.communicate(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            out, _ = self.proc.communicate()
        if died is not None:
            print(f"BEAM node {self.name} had exited by itself with status {died}:\n{out.decode(errors='replace')}")


# -- erl_call ----------------------------------------------------------------------------------

async def erl_call(gen: Generation, target: str, cookie: str, *args: str, stdin: bytes = b"") -> tuple[int, str]:
    proc = await asyncio.create_subprocess_exec(
        str(gen.erl_call), "-sname", target, "-c", cookie, "-timeout", "20", *args,
        stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
    try:
        out, _ = await asyncio.wait_for(proc.communicate(stdin), 40)
    except asyncio.TimeoutError:
        proc.kill()
        raise AssertionError(f"erl_call {' '.join(args)} against {target} hung")
    return proc.returncode or 0, out.decode(errors="replace").strip()


@pytest.mark.parametrize("otp", GENERATIONS)
def test_erl_call_against_pykv_as_against_a_beam_node(otp, cookie, sent):
    gen = generation(otp, "erl_call")

    async def main():
        async with Node(unique("ecpy"), cookie) as node:
            @node.export("pyk", "hi")
            def hi(x: Any) -> Any:
                return (b"hi", x)

            beam = ErlNode(gen, cookie)
            try:
                await wait_until_up(node, beam.name)
                py = node.name.name.split("@")[0]
                # a built-in: each answers its own name, as a BEAM node does
                assert await erl_call(gen, py, cookie, "-a", "erlang node []") == (0, node.name.name)
                assert await erl_call(gen, beam.sname, cookie, "-a", "erlang node []") == (0, beam.name)
                # an export of the Python program
                assert await erl_call(gen, py, cookie, "-a", "pyk hi [1]") == (0, "{#Bin<104,105>, 1}")
                # nothing exported under that name: the BEAM's very answer
                undef = await erl_call(gen, beam.sname, cookie, "-a", "nosuch fn [a]")
                assert undef == (0, "{badrpc, {'EXIT', {undef, [{nosuch, fn, [a], []}]}}}")
                assert await erl_call(gen, py, cookie, "-a", "nosuch fn [a]") == undef
                # -e evaluates with erl_eval, which Python has not: a clean badrpc, no hang
                assert await erl_call(gen, beam.sname, cookie, "-e", stdin=b"1+2.\n") == (0, "{ok, 3}")
                code, out = await erl_call(gen, py, cookie, "-e", stdin=b"1+2.\n")
                assert code == 0 and out.startswith("{badrpc, {'EXIT', {undef, [{erl_eval, eval_str,"), out
            finally:
                beam.stop()
        to_erl_call = [c for name, controls in sent.items() if name != beam.name for c in controls]
        assert len(to_erl_call) == 4, sent          # the four answers of rex
        assert {c[:2] for c in to_erl_call} == {(C.SEND, Atom(""))}, sent   # SEND, not SEND_SENDER
    run(main())


# -- Jinterface --------------------------------------------------------------------------------

_compiled: dict[Path, Path] = {}


def jinterface_classes(jar: Path) -> Path:
    """tests/peers/JinterfacePeer.java compiled against `jar` (once per jar and run)."""
    if jar not in _compiled:
        out = Path(tempfile.mkdtemp(prefix="pykv-jinterface-"))
        result = subprocess.run(["javac", "-cp", str(jar), "-d", str(out), str(ROOT / "tests" / "peers" / "JinterfacePeer.java")],
                                capture_output=True, text=True)
        assert result.returncode == 0, f"javac failed:\n{result.stdout}\n{result.stderr}"
        _compiled[jar] = out
    return _compiled[jar]


class JavaPeer:
    """tests/peers/JinterfacePeer.java running as a node: commands in, "= ..." results and
    "! ..." events out."""

    def __init__(self, gen: Generation, cookie: str) -> None:
        assert gen.jar is not None
        self.classpath = f"{jinterface_classes(gen.jar)}:{gen.jar}"
        self.cookie = cookie
        self.sname = unique("java")
        self.name = f"{self.sname}@{HOST}"
        self.results: asyncio.Queue[str] = asyncio.Queue()
        self.events: list[str] = []
        self.transcript: list[str] = []
        self._changed = asyncio.Event()

    async def start(self) -> "JavaPeer":
        self.proc = await asyncio.create_subprocess_exec(
            shutil.which("java") or "java", "-cp", self.classpath, "JinterfacePeer", self.sname, self.cookie,
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT)
        self._reader = asyncio.ensure_future(self._read())
        ready = await self.result(timeout=60)
        assert ready == f"ready {self.name}", ready
        return self

    async def _read(self) -> None:
        assert self.proc.stdout is not None
        while line := await self.proc.stdout.readline():
            text = line.decode(errors="replace").rstrip("\n")
            self.transcript.append(text)
            if text.startswith("= "):
                self.results.put_nowait(text[2:])
            elif text.startswith("! "):
                self.events.append(text[2:])
                self._changed.set()

    async def result(self, timeout: float = 30) -> str:
        try:
            return await asyncio.wait_for(self.results.get(), timeout)
        except asyncio.TimeoutError:
            raise AssertionError("the Java peer did not answer:\n" + "\n".join(self.transcript)) from None

    async def command(self, line: str, timeout: float = 30) -> str:
        assert self.proc.stdin is not None
        self.proc.stdin.write(line.encode() + b"\n")
        await self.proc.stdin.drain()
        return await self.result(timeout)

    async def event(self, prefix: str, timeout: float = 20) -> str:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            for i, text in enumerate(self.events):
                if text.startswith(prefix):
                    return self.events.pop(i)
            self._changed.clear()
            remaining = deadline - loop.time()
            if remaining <= 0:
                raise AssertionError(f"no {prefix!r} event from the Java peer:\n" + "\n".join(self.transcript))
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except asyncio.TimeoutError:
                pass

    async def stop(self) -> None:
        if self.proc.returncode is None:
            self.proc.kill()
            await self.proc.wait()
        self._reader.cancel()


@pytest.mark.parametrize("otp", GENERATIONS)
def test_jinterface_and_pykv_as_jinterface_and_a_beam_node(otp, cookie, sent):
    gen = generation(otp, "jinterface")

    async def main():
        async with Node(unique("jpy"), cookie) as node:
            @node.export("pyk", "hi")
            def hi(x: Any) -> Any:
                return (b"hi", x)

            @node.export("pyk", "shout")
            def shout(text: bytes) -> Atom:
                print(text.decode())
                return Atom("ok")

            me = node.process("py")
            beam = ErlNode(gen, cookie)
            java = await JavaPeer(gen, cookie).start()
            py, jnode = node.name.name, java.name
            try:
                await wait_until_up(node, beam.name)
                # OtpNode.ping, both ways, and to a BEAM node alike
                assert await java.command(f"ping {py}") == "ping true"
                assert await java.command(f"ping {beam.name}") == "ping true"
                assert await node.ping(jnode) is True
                assert await rpc.call(node, beam.name, "net_adm", "ping", [Atom(jnode)]) == Atom("pong")

                # a Jinterface mailbox sends to a Python process, which answers its pid
                asking = asyncio.ensure_future(java.command(f"call py {py} b:hello"))
                sender, text = await me.receive(timeout=20)
                me.send(sender, (Atom("pong"), text))
                assert await asking == 'reply {pong,<<"hello">>}'
                # a Python process sends to a Jinterface mailbox by name, which answers its pid
                me.send((Atom("echo"), Atom(jnode)), (me.pid, b"hi"))
                assert await me.receive(timeout=20) == (Atom("echo"), b"hi")

                # OtpConnection.sendRPC/receiveRPC into pykv, as into a BEAM node
                assert await java.command(f"rpc {beam.name} erlang node") == f"rpc {beam.name}"
                assert await java.command(f"rpc {py} erlang node") == f"rpc {py}"
                assert await java.command(f"rpc {py} pyk hi 5") == 'rpc {<<"hi">>,5}'
                undef = await java.command(f"rpc {beam.name} nosuch fn a")
                assert undef == "rpc {badrpc,{'EXIT',{undef,[{nosuch,fn,[a],[]}]}}}"
                assert await java.command(f"rpc {py} nosuch fn a") == undef

                # pykv calls the Java node: no SPAWN there, so to its rex; as the BEAM's
                # rpc:block_call does (OTP 25+'s rpc:call would say {badrpc, notsup})
                assert await rpc.call(node, jnode, "java", "echo", [b"x"]) == b"x"
                assert (await java.event("rex ")).startswith("rex {'$gen_call',{#Pid<" + py + ">,[alias|#Ref<")
                with pytest.raises(rpc.BadRpc) as failed:
                    await rpc.call(node, jnode, "java", "nosuch", [])
                assert failed.value.reason == (Atom("EXIT"), (Atom("undef"), [(Atom("java"), Atom("nosuch"), [], [])]))
                assert await rpc.call(node, beam.name, "rpc", "block_call", [Atom(jnode), Atom("java"), Atom("echo"), [b"x"]]) == b"x"
                assert await rpc.call(node, beam.name, "rpc", "call", [Atom(jnode), Atom("java"), Atom("echo"), [b"x"]]) \
                    == (Atom("badrpc"), Atom("notsup"))

                # io to a group leader on the Java node (no UNICODE_IO): the BEAM sends text as
                # a unicode put_chars all the same (only format requests lose the encoding),
                # and so does pykv, whose requests are all text
                assert await java.command(f"glrpc {beam.name} io put_chars b:hey") == "glrpc {rex,ok}"
                assert await java.event("io ") == 'io {put_chars,unicode,<<"hey">>}'
                assert await java.command(f"glrpc {beam.name} io format b:hey") == "glrpc {rex,ok}"
                assert await java.event("io ") == 'io {put_chars,io_lib,format,[<<"hey">>,[]]}'
                assert await java.command(f"glrpc {py} pyk shout b:hey") == "glrpc {rex,ok}"
                assert await java.event("io ") == 'io {put_chars,unicode,<<"hey\\n">>}'

                # links and exit signals without EXIT_PAYLOAD
                assert await java.command(f"hello py {py}") == "sent"
                _, watch, echo, _gl = await me.receive(timeout=20)
                worker = node.process()
                worker.link(watch)
                worker.exit(Atom("boom"))
                assert await java.event("exit ") == f"exit boom from #Pid<{py}> to watch"
                me.send_exit(watch, Atom("stop"))
                assert await java.event("exit ") == f"exit stop from #Pid<{py}> to watch"

                # a monitor of a Jinterface pid stays local; an alias send to it is dropped:
                # neither closes the connection, and the monitor fires on nodedown
                mref = me.monitor(echo)
                me.send(Reference(Atom(jnode), 1, (1, 2, 3)), Atom("dropped"))
                me.send((Atom("echo"), Atom(jnode)), (me.pid, b"still connected"))
                assert await me.receive(timeout=20) == (Atom("echo"), b"still connected")
                assert await java.command("quit") == "bye"
                down = await me.receive(timeout=20)
                assert down == (Atom("DOWN"), mref, Atom("process"), echo, Atom("noconnection"))
                assert not [e for e in java.events if e.startswith("error")], java.transcript
            finally:
                await java.stop()
                beam.stop()
        ops = {control[0] for name, controls in sent.items() if name != beam.name for control in controls}
        assert ops and ops <= PLAIN_OPS, ops
    run(main())
