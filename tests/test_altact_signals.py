"""OTP 28's alternate-action signals against a real BEAM node of each installed generation:
gen_server replies to aliases (op 37 to OTP 28+, ALIAS_SEND to older nodes, which lack
DFLAG_ALTACT_SIG), priority messages and exit signals to aliases both ways, compared with
the order a BEAM process of the same node gives the same signals (tests/beam/altact_peer.erl).
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Any

import pytest

from conftest import HOST, eventually, run, unique
from generations import GENERATIONS, generation, received, sent  # noqa: F401 (fixtures)
from pykv import Atom, Node
from pykv.dist import capabilities
from pykv.dist import control as C
from pykv.otp import gen_server
from pykv.otp.gen_server import GenServer

pytestmark = [pytest.mark.distributed, pytest.mark.generations]

PEER_MODULE = Path(__file__).parent / "beam" / "altact_peer.erl"
LOAD_AND_RUN = (
    f'Src = "{PEER_MODULE}", '
    "{ok, Mod, Bin} = compile:file(Src, [binary, return_errors]), "
    "{module, Mod} = code:load_binary(Mod, Src, Bin), "
    "Mod:main(init:get_plain_arguments())."
)
EXIT, DONE = Atom("EXIT"), Atom("done")


class Pong(GenServer):
    def handle_call(self, request: Any, from_: Any) -> Any:
        return (Atom("pong"), request)


def plain(message: Any) -> Any:
    """{'EXIT', From, Reason} without its pid, as the BEAM side reports them."""
    if type(message) is tuple and len(message) == 3 and message[0] is EXIT:
        return (EXIT, message[2])
    return message


def order(*names: str | tuple[str, str]) -> list[Any]:
    return [(EXIT, Atom(n[1])) if isinstance(n, tuple) else Atom(n) for n in names]


@pytest.mark.parametrize("otp", GENERATIONS)
def test_alias_replies_priority_messages_and_exit_signals_to_aliases(otp, cookie, sent, received):
    gen = generation(otp)

    async def main():
        async with Node(unique("alt"), cookie) as node:
            control = node.process("control")
            Pong.start(node, name="py_server")
            sname = unique("beam")
            beam_node = f"{sname}@{HOST}"
            beam = subprocess.Popen([str(gen.erl), "-sname", sname, "-setcookie", cookie, "-noshell",
                                     "-eval", LOAD_AND_RUN, "-extra", node.name.name],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    env={**os.environ, "ERL_CRASH_DUMP_SECONDS": "0"})
            peer = None
            try:
                _, peer, release = await control.receive(timeout=60)
                altact = release >= 28

                # gen_server calls both ways: replies to the caller's alias
                control.send(peer, (control.pid, Atom("call_python")))
                assert await control.receive(timeout=20) == (Atom("called"), (Atom("pong"), Atom("ping")))
                assert await gen_server.call(node, (Atom("beam_server"), beam_node), Atom("hi")) \
                    == (Atom("pong"), Atom("hi"))
                to_beam, from_beam = sent[beam_node], received[beam_node]
                alias_op = C.ALTACT_SIG_SEND if altact else C.ALIAS_SEND
                assert [c[0] for c in to_beam if c[0] in (C.ALIAS_SEND, C.ALTACT_SIG_SEND)] == [alias_op]
                assert [c[0] for c in from_beam if c[0] in (C.ALIAS_SEND, C.ALTACT_SIG_SEND)] == [alias_op]
                if altact:
                    assert [c[1] for c in to_beam + from_beam if c[0] == C.ALTACT_SIG_SEND] \
                        == [capabilities.ALTACT_ALIAS] * 2

                # Python to a BEAM process: a priority message and a priority exit signal
                # through its priority alias overtake its ordinary messages; a node older
                # than OTP 28 gets them without priority, and the exit to an alias not at all
                control.send(peer, (control.pid, Atom("receiver"), altact))
                _, receiver, alias = await control.receive(timeout=20)
                control.send(receiver, Atom("a"))
                control.send(receiver, Atom("b"))
                control.send(alias, Atom("p1"), priority=True)
                control.send_exit(alias, Atom("pexit"), priority=True)
                control.send(alias, Atom("through_the_alias"))
                control.send(receiver, DONE)
                reported = await control.receive(lambda m: m[0] == Atom("order"), timeout=20)
                if altact:
                    assert reported[2] == order("p1", ("EXIT", "pexit"), "a", "b", "through_the_alias", "done")
                else:
                    assert reported[2] == order("a", "b", "p1", "through_the_alias", "done")
                    assert C.ALTACT_SIG_SEND not in [c[0] for c in sent[beam_node]]

                if not altact:
                    return
                # the BEAM to a Python process: what its own process's queue shows, ours does
                me = node.process()
                me.trap_exit = True
                prio, plain_alias = me.alias(priority=True), me.alias()
                control.send(peer, (control.pid, Atom("sequence"), prio, plain_alias, me.pid))
                _, beam_order = await control.receive(timeout=20)
                await eventually(lambda: DONE in me.mailbox, what="the sequence's end")
                assert [plain(m) for m in me.mailbox] == beam_order
                assert beam_order == order("urgent1", "urgent2", ("EXIT", "urgent_exit"),
                                           "first", "second", "not_a_priority_alias", "no_priority_option",
                                           "to_a_pid", ("EXIT", "exit_through_alias"), "done")
                flags = [c[1] for c in received[beam_node] if c[0] == C.ALTACT_SIG_SEND]
                P, A, X = capabilities.ALTACT_PRIO, capabilities.ALTACT_ALIAS, capabilities.ALTACT_EXIT
                assert flags[-7:] == [P | A, P | A, A, P, P | A, X | A | P, X | A], flags
            finally:
                if peer is not None:
                    control.send(peer, Atom("stop"))
                died = beam.poll()
                beam.terminate()
                out, _ = beam.communicate(timeout=10)
                if died not in (None, 0):
                    print(f"BEAM node {beam_node} exited by itself with status {died}:\n{out.decode(errors='replace')}")
    run(main())
