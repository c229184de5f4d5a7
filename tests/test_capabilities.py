"""What pykv sends a peer that lacks a flag: every row of dist/capabilities.TABLE, sans-I/O.

The peer here is pykv's own sans-I/O handshake (as an initiator offering only the flags a
test names, down to the mandatory set no real peer offers alone) and a frame codec, fed
straight into a real Connection of a started Node: no socket for that connection. Rows that
real peers lack too are also tested against them (test_foreign_peers.py: erl_call and
Jinterface; OTP 25/27 lack ALTACT_SIG). Op 37 as a peer sends it is decoded here as well,
and priority messages are ordered as EEP 76 says.
"""

from __future__ import annotations

import asyncio
import struct
from typing import Any, Callable

import pytest

from conftest import free_port, run, unique
from pykv import Atom, ImproperList, Node, Pid, Reference
from pykv.dist import capabilities
from pykv.dist import control as C
from pykv.dist import flags as F
from pykv.dist.connection import Connection
from pykv.dist.handshake import Handshake, HandshakeError, Role
from pykv.otp import rpc
from pykv.otp.gen_server import GenServer
from pykv.process import PriorityMailbox
from pykv.term import decode, encode

LEAN = "lean@host"
EMPTY, DOWN, EXIT, PROCESS = Atom(""), Atom("DOWN"), Atom("EXIT"), Atom("process")
NO_PAYLOAD = object()


class FakeTransport:
    """What Connection writes, kept; a close reaches the connection as a real one's would."""

    def __init__(self) -> None:
        self.data = bytearray()
        self.closed = False
        self.conn: Connection | None = None

    def write(self, data: bytes) -> None:
        self.data += data

    def take(self) -> bytes:
        out = bytes(self.data)
        self.data.clear()
        return out

    def get_extra_info(self, name: str) -> Any:
        return None

    def is_closing(self) -> bool:
        return self.closed

    def close(self) -> None:
        self.abort()

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.abort()  # the peer closes its side when it sees ours shut, as a BEAM node does

    def abort(self) -> None:
        if not self.closed:
            self.closed = True
            asyncio.get_running_loop().call_soon(self.conn.connection_lost, None)


class LeanPeer:
    """A peer node offering `flags` (the mandatory set unless told otherwise), made of a
    sans-I/O handshake and frames: it sends control messages and reads what pykv wrote."""

    def __init__(self, node: Node, flags: int = F.MANDATORY, name: str = LEAN) -> None:
        self.node = node
        self.name = Atom(name)
        self.transport = FakeTransport()
        self.conn = Connection(node, Role.ACCEPTOR)
        self.transport.conn = self.conn
        self.conn.connection_made(self.transport)  # type: ignore[arg-type]
        self.handshake = Handshake(Role.INITIATOR, name=name, cookie=node.cookie, creation=7,
                                   flags=flags, peer_name=node.name.name)
        self.handshake.start()
        for _ in range(4):
            self.conn.data_received(self.handshake.data_to_send())
            self.handshake.receive_data(self.transport.take())  # raises if refused
            if self.handshake.done:
                self.conn.data_received(self.handshake.data_to_send())
                break
        assert self.handshake.done and self.conn.up, "the handshake did not complete"
        self._next = 1

    def pid(self) -> Pid:
        self._next += 1
        return Pid(self.name, self._next, 0, 7)

    def ref(self) -> Reference:
        self._next += 1
        return Reference(self.name, 7, (self._next, 0, 0))

    def send(self, control: tuple, payload: Any = NO_PAYLOAD) -> None:
        body = b"p" + encode(control) + (b"" if payload is NO_PAYLOAD else encode(payload))
        self.conn.data_received(struct.pack(">I", len(body)) + body)

    async def received(self) -> list[tuple[Any, Any]]:
        """The (control, payload) pairs pykv has written to this peer since the last call."""
        await asyncio.sleep(0)  # frames leave at the end of the loop iteration
        await asyncio.sleep(0)
        data, out = self.transport.take(), []
        while data:
            (length,) = struct.unpack_from(">I", data)
            body, data = data[4:4 + length], data[4 + length:]
            if not body:
                continue  # a tick
            assert body[0] == 112, body[:8]
            control, end = decode(body, 1)
            payload = decode(body, end)[0] if end < len(body) else NO_PAYLOAD
            out.append((control, payload))
        return out

    def close(self) -> None:
        self.transport.abort()


def started_node() -> Node:
    return Node(unique("cap"), "cookie", epmd_port=free_port())


# every row of capabilities.TABLE names the tests that show it to a peer lacking the flag
COVERED: dict[str, list[str]] = {}


def covers(choice: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    def mark(test: Callable[..., None]) -> Callable[..., None]:
        COVERED.setdefault(choice, []).append(test.__name__)
        return test
    return mark


def test_every_row_of_the_table_is_tested_against_a_peer_lacking_its_flag():
    assert {row.choice for row in capabilities.TABLE} == set(COVERED), \
        "rows and tests differ: " + repr({row.choice for row in capabilities.TABLE} ^ set(COVERED))


# -- messages ----------------------------------------------------------------------------------

@covers("message to a pid")
def test_a_message_to_a_pid_is_send_without_send_sender():
    async def main():
        async with started_node() as node:
            me = node.process()
            lean, full = LeanPeer(node), LeanPeer(node, F.MANDATORY | F.SEND_SENDER, "full@host")
            to_lean, to_full = lean.pid(), full.pid()
            me.send(to_lean, "hi")
            me.send(to_full, "hi")
            assert await lean.received() == [((C.SEND, EMPTY, to_lean), b"hi")]
            assert await full.received() == [((C.SEND_SENDER, me.pid, to_full), b"hi")]
    run(main())


@covers("message to an alias")
def test_an_alias_message_is_dropped_without_alias_and_op_37_with_altact():
    async def main():
        async with started_node() as node:
            me = node.process()
            lean = LeanPeer(node)
            aliasing = LeanPeer(node, F.MANDATORY | F.ALIAS, "old@host")
            altact = LeanPeer(node, F.MANDATORY | F.ALIAS | F.ALTACT_SIG, "new@host")
            for peer in (lean, aliasing, altact):
                me.send(peer.ref(), "reply")
            assert await lean.received() == []                      # the BEAM drops it too
            [(control, payload)] = await aliasing.received()
            assert control[:2] == (C.ALIAS_SEND, me.pid) and payload == b"reply"
            [(control, payload)] = await altact.received()
            assert control[:3] == (C.ALTACT_SIG_SEND, capabilities.ALTACT_ALIAS, me.pid)
            # the connection that dropped it still serves
            me.send(lean.pid(), "still here")
            assert len(await lean.received()) == 1
    run(main())


@covers("message to an alias")
def test_a_gen_server_reply_to_an_alias_tag_follows_the_same_rule():
    async def main():
        async with started_node() as node:
            server = node.process("server")
            for flags, op in ((F.MANDATORY | F.ALIAS, C.ALIAS_SEND),
                              (F.MANDATORY | F.ALIAS | F.ALTACT_SIG, C.ALTACT_SIG_SEND)):
                peer = LeanPeer(node, flags, unique("caller") + "@host")
                caller, mref = peer.pid(), peer.ref()
                tag = ImproperList((Atom("alias"),), mref)
                node.reply((caller, tag), Atom("ok"), server.pid)
                [(control, payload)] = await peer.received()
                assert control[0] == op and control[-1] == mref and payload == (tag, Atom("ok"))
    run(main())


@covers("priority message (to an alias, a pid or a name)")
def test_priority_messages_lose_their_priority_without_altact():
    async def main():
        async with started_node() as node:
            me = node.process()
            old = LeanPeer(node, F.MANDATORY | F.SEND_SENDER | F.ALIAS, "old@host")
            new = LeanPeer(node, F.MANDATORY | F.SEND_SENDER | F.ALIAS | F.ALTACT_SIG, "new@host")
            for peer in (old, new):
                me.send(peer.ref(), 1, priority=True)
                me.send(peer.pid(), 2, priority=True)
                me.send((Atom("name"), peer.name), 3, priority=True)
            assert [c[0] for c, _ in await old.received()] == [C.ALIAS_SEND, C.SEND_SENDER, C.REG_SEND]
            sent = await new.received()
            assert [c[:2] for c, _ in sent] == [
                (C.ALTACT_SIG_SEND, capabilities.ALTACT_PRIO | capabilities.ALTACT_ALIAS),
                (C.ALTACT_SIG_SEND, capabilities.ALTACT_PRIO),
                (C.ALTACT_SIG_SEND, capabilities.ALTACT_PRIO | capabilities.ALTACT_NAME)]
            assert sent[2][0][3] == Atom("name") and [p for _, p in sent] == [1, 2, 3]
    run(main())


# -- exits -------------------------------------------------------------------------------------

@covers("exit signal (exit/2) to a pid")
def test_exit2_carries_its_reason_in_the_control_message_without_exit_payload():
    async def main():
        async with started_node() as node:
            me = node.process()
            lean = LeanPeer(node)
            modern = LeanPeer(node, F.MANDATORY | F.EXIT_PAYLOAD | F.ALTACT_SIG, "new@host")
            a, b = lean.pid(), modern.pid()
            me.send_exit(a, Atom("stop"))
            me.send_exit(a, Atom("stop"), priority=True)       # no op 37: a plain exit2
            me.send_exit(b, Atom("stop"))
            me.send_exit(b, Atom("stop"), priority=True)
            assert await lean.received() == [((C.EXIT2, me.pid, a, Atom("stop")), NO_PAYLOAD)] * 2
            assert await modern.received() == [
                ((C.PAYLOAD_EXIT2, me.pid, b), Atom("stop")),
                ((C.ALTACT_SIG_SEND, capabilities.ALTACT_EXIT | capabilities.ALTACT_PRIO, me.pid, b), Atom("stop"))]
    run(main())


@covers("exit signal to an alias (OTP 28 exit_signal/2,3)")
def test_an_exit_signal_to_an_alias_needs_altact():
    async def main():
        async with started_node() as node:
            me = node.process()
            old = LeanPeer(node, F.MANDATORY | F.ALIAS | F.EXIT_PAYLOAD, "old@host")
            new = LeanPeer(node, F.MANDATORY | F.ALIAS | F.EXIT_PAYLOAD | F.ALTACT_SIG, "new@host")
            me.send_exit(old.ref(), Atom("stop"))
            alias = new.ref()
            me.send_exit(alias, Atom("stop"), priority=True)
            assert await old.received() == []                       # dropped, as dist.c does
            assert await new.received() == [((C.ALTACT_SIG_SEND, capabilities.ALTACT_EXIT | capabilities.ALTACT_ALIAS
                                               | capabilities.ALTACT_PRIO, me.pid, alias), Atom("stop"))]
    run(main())


@covers("link exit")
def test_a_link_exit_without_exit_payload():
    async def main():
        async with started_node() as node:
            lean = LeanPeer(node)
            me, remote = node.process(), lean.pid()
            me.link(remote)
            me.exit(Atom("boom"))
            assert await lean.received() == [((C.LINK, me.pid, remote), NO_PAYLOAD),
                                              ((C.EXIT, me.pid, remote, Atom("boom")), NO_PAYLOAD)]
            # and a link to a process that is gone is answered noproc in the same form
            gone = Pid(node.name, 9999, 0, node.creation)
            lean.send((C.LINK, remote, gone))
            assert await lean.received() == [((C.EXIT, gone, remote, Atom("noproc")), NO_PAYLOAD)]
    run(main())


# -- monitors ----------------------------------------------------------------------------------

@covers("monitor and demonitor of a remote pid or name")
@pytest.mark.parametrize("flags", [F.MANDATORY, F.MANDATORY | F.DIST_MONITOR],
                         ids=["no monitor flags", "DIST_MONITOR alone"])
def test_a_monitor_stays_local_and_fires_on_nodedown(flags):
    async def main():
        async with started_node() as node:
            me = node.process()
            lean = LeanPeer(node, flags)
            target = lean.pid()
            ref = me.monitor(target)
            named = me.monitor((Atom("server"), lean.name))
            dropped = me.monitor(lean.pid())
            me.demonitor(dropped)
            assert await lean.received() == []    # dist.c needs DIST_MONITOR and DIST_MONITOR_NAME
            lean.close()
            downs = {(await me.receive(timeout=5))[1:] for _ in range(2)}
            assert downs == {(ref, PROCESS, target, Atom("noconnection")),
                             (named, PROCESS, (Atom("server"), lean.name), Atom("noconnection"))}
    run(main())


@covers("monitor and demonitor of a remote pid or name")
def test_a_monitor_with_both_flags_is_sent():
    async def main():
        async with started_node() as node:
            me = node.process()
            lean = LeanPeer(node, F.MANDATORY | F.DIST_MONITOR | F.DIST_MONITOR_NAME)
            target = lean.pid()
            ref = me.monitor(target)
            me.demonitor(ref)
            assert await lean.received() == [((C.MONITOR_P, me.pid, target, ref), NO_PAYLOAD),
                                              ((C.DEMONITOR_P, me.pid, target, ref), NO_PAYLOAD)]
    run(main())


@covers("DOWN to a remote watcher")
def test_a_down_to_a_remote_watcher_by_its_flags():
    async def main():
        async with started_node() as node:
            for flags, expect in ((F.MANDATORY, "nothing"),
                                  (F.MANDATORY | F.DIST_MONITOR | F.DIST_MONITOR_NAME, "in the control"),
                                  (F.MANDATORY | F.DIST_MONITOR | F.DIST_MONITOR_NAME | F.EXIT_PAYLOAD, "payload")):
                lean = LeanPeer(node, flags, unique("watcher") + "@host")
                watched = node.process()
                watcher, ref = lean.pid(), lean.ref()
                lean.send((C.MONITOR_P, watcher, watched.pid, ref))
                missing = lean.ref()
                lean.send((C.MONITOR_P, watcher, Atom("nobody"), missing))  # answered at once
                watched.exit(Atom("bye"))
                sent = await lean.received()
                if expect == "nothing":
                    assert sent == []
                elif expect == "in the control":
                    assert sent == [((C.MONITOR_P_EXIT, Atom("nobody"), watcher, missing, Atom("noproc")), NO_PAYLOAD),
                                    ((C.MONITOR_P_EXIT, watched.pid, watcher, ref, Atom("bye")), NO_PAYLOAD)]
                else:
                    assert sent == [((C.PAYLOAD_MONITOR_P_EXIT, Atom("nobody"), watcher, missing), Atom("noproc")),
                                    ((C.PAYLOAD_MONITOR_P_EXIT, watched.pid, watcher, ref), Atom("bye"))]
    run(main())


# -- spawn -------------------------------------------------------------------------------------

@covers("spawn request (rpc.call, rpc.cast)")
def test_rpc_goes_to_rex_without_spawn():
    async def main():
        async with started_node() as node:
            lean = LeanPeer(node)
            me = node.process()
            call = asyncio.ensure_future(rpc.call(me, lean.name, "m", "f", [1], timeout=5))
            [(control, payload)] = await lean.received()   # no MONITOR_P before it, no SPAWN_REQUEST
            assert control == (C.REG_SEND, me.pid, EMPTY, Atom("rex"))
            gen_call, (caller, tag), request = payload
            assert gen_call == Atom("$gen_call") and caller == me.pid
            assert request[:4] == (Atom("call"), Atom("m"), Atom("f"), [1]) and type(request[4]) is Pid
            lean.send((C.SEND, EMPTY, me.pid), (tag, Atom("done")))
            assert await call == Atom("done")
            # a failure comes back as rpc's {badrpc, Reason}
            call = asyncio.ensure_future(rpc.call(me, lean.name, "m", "g", [], timeout=5))
            [(_, (_, (_, tag), _))] = await lean.received()
            undef = (Atom("EXIT"), (Atom("undef"), [(Atom("m"), Atom("g"), [], [])]))
            lean.send((C.SEND, EMPTY, me.pid), (tag, (Atom("badrpc"), undef)))
            with pytest.raises(rpc.BadRpc) as failed:
                await call
            assert failed.value.reason == undef
            rpc.cast(me, lean.name, "m", "f", [2])
            [(control, payload)] = await lean.received()
            assert control == (C.REG_SEND, me.pid, EMPTY, Atom("rex"))
            assert payload[0] == Atom("$gen_cast") and payload[1][:4] == (Atom("cast"), Atom("m"), Atom("f"), [2])
    run(main())


@covers("spawn request (rpc.call, rpc.cast)")
def test_rpc_cast_sent_while_connecting_is_decided_by_the_flags_that_come():
    async def main():
        async with started_node() as node:
            me = node.process()
            name = Atom("late@host")
            peer = node.peer(name)            # dialling (it will fail: nobody is there)...
            rpc.cast(me, name, "m", "f", [])  # ...queued undecided
            lean = LeanPeer(node, F.MANDATORY | F.SPAWN, "late@host")   # ...and this one comes first
            [(control, payload)] = await lean.received()
            assert control[0] == C.SPAWN_REQUEST and control[4] == (Atom("erpc"), Atom("execute_cast"), 3)
            assert node.peers[name] is peer and peer.caps.spawn
    run(main())


# -- unlink, trace tokens, io, encodings: what no peer may lack, and what pykv never sends ----

@covers("unlink")
@covers("term encodings")
@pytest.mark.parametrize("missing", [bit for bit in F._NAMES if F.MANDATORY & bit],
                         ids=lambda bit: F._NAMES[bit])
def test_a_peer_lacking_a_mandatory_flag_is_refused(missing):
    async def main():
        async with started_node() as node:
            with pytest.raises(HandshakeError, match="not_allowed"):
                LeanPeer(node, F.MANDATORY & ~missing)
            assert Atom(LEAN) not in node.peers
            LeanPeer(node, F.MANDATORY)      # exactly the mandatory set is enough
            assert node.peers[Atom(LEAN)].conn is not None
    run(main())


@covers("unlink")
def test_unlink_id_to_a_peer_with_the_mandatory_set():
    async def main():
        async with started_node() as node:
            lean = LeanPeer(node)
            me, remote = node.process(), lean.pid()
            me.link(remote)
            me.unlink(remote)
            lean.send((C.UNLINK_ID, 5, remote, me.pid))
            sent = await lean.received()
            assert [c[0] for c, _ in sent] == [C.LINK, C.UNLINK_ID, C.UNLINK_ID_ACK]
            assert sent[2][0] == (C.UNLINK_ID_ACK, 5, me.pid, remote)
    run(main())


@covers("sequential trace tokens")
def test_trace_tokens_are_dropped_and_never_sent():
    async def main():
        async with started_node() as node:
            me = node.process("me")
            me.alias()
            lean = LeanPeer(node, F.MANDATORY | F.ALTACT_SIG)
            sender = lean.pid()
            token = (0, Atom("label"), 1, sender, 2)
            lean.send((C.REG_SEND_TT, sender, EMPTY, Atom("me"), token), "traced")
            lean.send((C.SEND_TT, EMPTY, me.pid, token), "traced too")
            lean.send((C.ALTACT_SIG_SEND, capabilities.ALTACT_TOKEN | capabilities.ALTACT_NAME, sender,
                       Atom("me"), token), "traced op 37")
            assert [await me.receive(timeout=1) for _ in range(3)] == [b"traced", b"traced too", b"traced op 37"]
            me.send(sender, "answer")
            assert await lean.received() == [((C.SEND, EMPTY, sender), b"answer")]   # no token
    run(main())


@covers("io request to a remote group leader")
def test_io_to_a_group_leader_is_unicode_put_chars_whatever_the_flag():
    async def main():
        async with started_node() as node:
            @node.export("pyk", "shout")
            def shout(text: bytes) -> Atom:
                print(text.decode())
                return Atom("ok")

            # as the BEAM's io:put_chars/2 (seen sending a Jinterface group leader the same)
            request = (Atom("put_chars"), Atom("unicode"), b"hey\n")
            for flags in (F.MANDATORY, F.MANDATORY | F.UNICODE_IO):
                lean = LeanPeer(node, flags, unique("io") + "@host")
                caller, leader = lean.pid(), lean.pid()
                lean.send((C.REG_SEND, caller, EMPTY, Atom("rex")),
                          (caller, (Atom("call"), Atom("pyk"), Atom("shout"), [b"hey"], leader)))
                sent = []
                for _ in range(50):
                    sent += await lean.received()
                    if len(sent) == 2:
                        break
                    await asyncio.sleep(0.02)
                (io_control, io_request), (reply_control, reply) = sent
                assert io_control == (C.SEND, EMPTY, leader)
                assert io_request[0] == Atom("io_request") and io_request[3] == request
                assert reply_control == (C.SEND, EMPTY, caller) and reply == (Atom("rex"), Atom("ok"))
    run(main())


# -- op 37 coming in -------------------------------------------------------------------------

P, A, N, X, T = (capabilities.ALTACT_PRIO, capabilities.ALTACT_ALIAS, capabilities.ALTACT_NAME,
                 capabilities.ALTACT_EXIT, capabilities.ALTACT_TOKEN)


def test_op_37_orders_priority_messages_as_the_beam_does():
    """The arrival sequence an OTP 29 node was seen to send (wire facts in the report), and
    the mailbox order it gave on the BEAM: priority messages through the priority alias
    first, in arrival order; the rest as ordinary messages."""
    async def main():
        async with started_node() as node:
            me = node.process("me")
            me.trap_exit = True
            prio, plain = me.alias(priority=True), me.alias()
            lean = LeanPeer(node, F.MANDATORY | F.ALTACT_SIG)
            s = lean.pid()
            lean.send((C.REG_SEND, s, EMPTY, Atom("me")), "first")
            lean.send((C.ALTACT_SIG_SEND, P | A, s, prio), "urgent1")
            lean.send((C.ALTACT_SIG_SEND, P | A, s, plain), "not a priority alias")
            lean.send((C.ALTACT_SIG_SEND, A, s, prio), "no priority option")
            lean.send((C.ALTACT_SIG_SEND, P, s, me.pid), "priority to a pid")
            lean.send((C.ALTACT_SIG_SEND, P | N, s, Atom("me")), "priority to a name")
            lean.send((C.ALTACT_SIG_SEND, P | A, s, prio), "urgent2")
            lean.send((C.ALTACT_SIG_SEND, X | A | P, s, prio), Atom("urgent_exit"))
            lean.send((C.ALTACT_SIG_SEND, X | A, s, plain), Atom("exit"))
            assert list(me.mailbox) == [
                b"urgent1", b"urgent2", (EXIT, s, Atom("urgent_exit")),
                b"first", b"not a priority alias", b"no priority option", b"priority to a pid",
                b"priority to a name", (EXIT, s, Atom("exit"))]
            assert [await me.receive(timeout=1) for _ in range(3)][:2] == [b"urgent1", b"urgent2"]
            lean.send((C.ALTACT_SIG_SEND, P | A, s, prio), "urgent3")   # ahead of what is left
            assert await me.receive(timeout=1) == b"urgent3"
            me.unalias(prio)
            lean.send((C.ALTACT_SIG_SEND, P | A, s, prio), "to an inactive alias")  # dropped
            assert [await me.receive(timeout=1) for _ in range(6)][-1] == (EXIT, s, Atom("exit"))
            assert not me.mailbox
    run(main())


def test_op_37_names_pids_exits_and_future_flags():
    async def main():
        async with started_node() as node:
            me = node.process("me")
            lean = LeanPeer(node, F.MANDATORY | F.ALTACT_SIG)
            s = lean.pid()
            alias = me.alias()
            lean.send((C.ALTACT_SIG_SEND, N, s, Atom("nobody")), "dropped")
            lean.send((C.ALTACT_SIG_SEND, 0, s, me.pid), "to a pid")
            lean.send((C.ALTACT_SIG_SEND, (1 << 70) | 0x100 | A, s, alias), "bits beyond the low byte")
            lean.send((C.ALTACT_SIG_SEND, A, s, alias, "a future element"), "a longer tuple")
            assert [await me.receive(timeout=1) for _ in range(3)] == [
                b"to a pid", b"bits beyond the low byte", b"a longer tuple"]
            victim = node.process()
            lean.send((C.ALTACT_SIG_SEND, X, s, victim.pid), Atom("kill"))
            await asyncio.sleep(0)
            assert not victim.alive and victim.exit_reason == Atom("killed")
            assert node.peers[lean.name].conn is lean.conn
    run(main())


@pytest.mark.parametrize("control", [
    (C.ALTACT_SIG_SEND, -1, "pid", "to"),
    (C.ALTACT_SIG_SEND, A, "pid", Atom("not_a_ref")),
    (C.ALTACT_SIG_SEND, A | N, "pid", "ref"),
    (C.ALTACT_SIG_SEND, N, "pid", "ref"),
    (C.ALTACT_SIG_SEND, T, "pid", "pid"),
    (C.ALTACT_SIG_SEND, 0, Atom("not_a_pid"), "pid"),
    (C.ALTACT_SIG_SEND, 0, "pid", "pid", NO_PAYLOAD),
    (C.SEND, EMPTY, "pid", NO_PAYLOAD),
], ids=["negative flags", "alias flag, atom", "alias and name", "name flag, ref", "token missing",
        "sender not a pid", "no message after op 37", "no message after SEND"])
def test_an_invalid_op_37_closes_that_connection(control):
    async def main():
        async with started_node() as node:
            me = node.process("me")
            lean = LeanPeer(node, F.MANDATORY | F.ALTACT_SIG)
            values = {"pid": me.pid, "ref": me.alias()}
            *control_items, payload = control if control[-1] is NO_PAYLOAD else (*control, "x")
            lean.send(tuple(values.get(v, v) if isinstance(v, str) else v for v in control_items), payload)
            await asyncio.sleep(0.01)
            assert lean.transport.closed and Atom(LEAN) not in node.peers
            assert not me.mailbox
    run(main())


# -- priority messages on this node ----------------------------------------------------------

def test_local_priority_messages_overtake_ordinary_ones():
    async def main():
        async with started_node() as node:
            me, other = node.process(), node.process()
            prio = me.alias(priority=True)
            assert type(me.mailbox) is PriorityMailbox
            other.send(me.pid, "a")
            other.send(me.pid, "b")
            other.send(prio, "p1", priority=True)
            other.send(me.pid, "c")
            other.send(prio, "p2", priority=True)
            other.send(prio, "ordinary through the alias")
            other.send(me.pid, "also ordinary", priority=True)    # not through a priority alias
            assert list(me.mailbox) == ["p1", "p2", "a", "b", "c", "ordinary through the alias", "also ordinary"]
            # a selective receive takes a priority message out of the middle of the region...
            assert await me.receive(lambda m: m == "p2", timeout=1) == "p2"
            other.send(prio, "p3", priority=True)       # ...and the next one still goes behind p1
            assert list(me.mailbox)[:3] == ["p1", "p3", "a"]
            me.monitor(node.process().pid)              # a monitor to flush (nothing to drop)
            ref = me.monitor(Pid(node.name, 99999, 0, node.creation))   # DOWN noproc at once
            me.demonitor(ref, flush=True)
            other.send(prio, "p4", priority=True)
            assert list(me.mailbox)[:4] == ["p1", "p3", "p4", "a"]
            # exit signals to an alias: only an active one, with priority only if it is one
            me.trap_exit = True
            other.send_exit(prio, Atom("urgent"), priority=True)
            other.send_exit(me.alias(), Atom("through an alias"))
            other.send_exit(prio, Atom("not priority"))
            assert list(me.mailbox)[:4] == ["p1", "p3", "p4", (EXIT, other.pid, Atom("urgent"))]
            assert list(me.mailbox)[-2:] == [(EXIT, other.pid, Atom("through an alias")),
                                             (EXIT, other.pid, Atom("not priority"))]
    run(main())


class Busy(GenServer):
    def init(self, gate: asyncio.Event) -> None:
        self.gate = gate
        self.handled: list[Any] = []
        self.prio = self.alias(priority=True)

    async def handle_cast(self, request: Any) -> None:
        if request == "wait":
            await self.gate.wait()
        self.handled.append(request)

    def handle_info(self, message: Any) -> None:
        self.handled.append(message)


def test_a_busy_gen_server_handles_priority_messages_next():
    async def main():
        async with started_node() as node:
            gate = asyncio.Event()
            server = Busy.start(node, gate)
            client = node.process()
            client.send(server.pid, (Atom("$gen_cast"), "wait"))
            await asyncio.sleep(0)
            for m in ("a", "b"):
                client.send(server.pid, m)
            client.send(server.prio, "urgent", priority=True)
            gate.set()
            for _ in range(100):
                if len(server.handled) == 4:
                    break
                await asyncio.sleep(0.01)
            assert server.handled == ["wait", "urgent", "a", "b"]
            client.send(server.prio, "idle: at once", priority=True)   # nothing to overtake
            assert server.handled[-1] == "idle: at once" and server.mailbox.priority == 0
    run(main())


# -- framing ----------------------------------------------------------------------------------

@covers("frame form")
@covers("a message longer than 64 KiB")
def test_a_peer_without_fragments_or_the_header_gets_whole_pass_through_frames():
    """The lean peer reads only `112` frames (LeanPeer.received asserts it): a 300 KB
    message reaches it as one of them, where a peer with FRAGMENTS gets 64 KiB fragments."""
    async def main():
        async with started_node() as node:
            me = node.process()
            big = b"x" * 300_000
            lean = LeanPeer(node)
            me.send(lean.pid(), big)
            [(control, payload)] = await lean.received()
            assert control[0] == C.SEND and payload == big
            frag = LeanPeer(node, F.MANDATORY | F.FRAGMENTS, "frag@host")
            me.send(frag.pid(), big)
            await asyncio.sleep(0.05)
            data = frag.transport.take()
            starts = []
            while data:
                (length,) = struct.unpack_from(">I", data)
                starts.append(data[4:6])
                data = data[4 + length:]
            assert starts[0] == b"\x83E" and set(starts[1:]) == {b"\x83F"} and len(starts) == 5
    run(main())


@covers("native record (RECORD_EXT)")
def test_a_native_record_is_refused_to_a_peer_without_native_records():
    from pykv.term import Record, TermError
    point = Record(Atom("geo"), Atom("point"), ((Atom("x"), 1), (Atom("y"), 2)), False)

    async def main():
        async with started_node() as node:
            me = node.process()
            lean = LeanPeer(node)
            with pytest.raises(TermError, match="NATIVE_RECORDS"):
                me.send(lean.pid(), point)
            me.send(lean.pid(), Atom("after"))  # the connection is still good
            assert [p for _, p in await lean.received()] == [Atom("after")]
            modern = LeanPeer(node, F.MANDATORY | F.NATIVE_RECORDS, "modern@host")
            me.send(modern.pid(), point)
            assert [p for _, p in await modern.received()] == [point]
    run(main())
