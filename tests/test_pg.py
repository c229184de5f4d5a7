"""Issue 12 item 5: `:pg` groups from Python (pykv/otp/pg.py), and net_kernel.monitor_nodes.

The `distributed` tests run a cluster of two BEAM nodes (default scope `pg` started by
kernel, `-kernel start_pg true`, as in a release) and the Python node, connected to both;
Python drives the BEAM side through erpc (`:pg.get_members/2` and a few helpers in PgProbe).
Every one of them checks at the end that the BEAM scopes kept their pid: pykv's messages never
crashed one. The others run without a BEAM: the API on one node, two pykv nodes with each
other, and the scope's state fed random events against a model of what an OTP 25 scope would
raise at (what no real peer can be driven to show in so many interleavings).
"""

from __future__ import annotations

import asyncio
import random
from collections import Counter
from typing import Any

import pytest

from conftest import eventually, free_port, run, unique, wait_until_up
from generations import GENERATIONS, generation, sent  # noqa: F401 (a fixture)
from test_foreign_peers import erl_call
from pykv import Atom, Node, Pid
from pykv.dist import control as C
from pykv.errors import NoProc
from pykv.net_kernel import monitor_nodes
from pykv.otp import pg, rpc
from pykv.otp.pg import DISCOVER, GEN_CAST, JOIN, LEAVE, SYNC, ScopeState, group_key

PG = Atom("pg")
NODEUP, NODEDOWN = Atom("nodeup"), Atom("nodedown")


# -- one node, no BEAM -------------------------------------------------------------------------

def test_join_leave_members_and_exits_on_one_node():
    async def main():
        async with Node(unique("pg"), "c", epmd_port=free_port()) as node:
            scope = pg.start(node)
            assert pg.start(node) is scope and node.whereis("pg") is scope
            a, b = node.process(), node.process()
            pg.join(node, "room", a)
            pg.join(node, b"room", [a, b])          # "room" and b"room": one binary, one group
            assert sorted(pg.get_members(node, "room"), key=repr) == sorted([a.pid, a.pid, b.pid], key=repr)
            assert pg.get_local_members(node, b"room").count(a.pid) == 2
            assert pg.which_groups(node) == ["room"] and pg.which_local_groups(node) == ["room"]
            assert pg.leave(node, "room", a) is True  # one membership of a's two
            assert pg.get_members(node, "room").count(a.pid) == 1
            assert pg.leave(node, "other", a) is False  # not_joined
            b.exit(Atom("gone"))                      # an exit leaves every group
            assert pg.get_members(node, "room") == [a.pid]
            a.exit(Atom("normal"))
            assert pg.get_members(node, "room") == [] and pg.which_groups(node) == []
            assert not scope.state.local and not scope._monitored  # nothing kept for the dead
    run(main())


def test_monitor_and_monitor_scope_notify_joins_and_leaves():
    async def main():
        async with Node(unique("pg"), "c", epmd_port=free_port()) as node:
            scope = pg.start(node)
            watcher, member = node.process(), node.process()
            pg.join(node, (Atom("t"), 1), member)
            ref, members = pg.monitor(watcher, (Atom("t"), 1))
            assert members == [member.pid]
            sref, groups = pg.monitor_scope(watcher)
            assert groups == {(Atom("t"), 1): [member.pid]}
            other = node.process()
            pg.join(node, (Atom("t"), 1), other)
            pg.join(node, "elsewhere", other)         # only the scope watcher hears of this
            other.exit(Atom("bye"))
            t, o = (Atom("t"), 1), [other.pid]
            assert list(watcher.mailbox) == [
                (sref, JOIN, t, o), (ref, JOIN, t, o), (sref, JOIN, "elsewhere", o),
                (sref, LEAVE, t, o), (ref, LEAVE, t, o), (sref, LEAVE, "elsewhere", o)]
            watcher.mailbox.clear()
            pg.join(node, (Atom("t"), 1), node.process())
            assert pg.demonitor(watcher, ref) is True and pg.demonitor(watcher, ref) is False
            assert all(m[0] != ref for m in watcher.mailbox)   # flushed, as pg:demonitor does
            class Broken(type(watcher)):
                def _deliver(self, message):
                    raise RuntimeError("a watcher's bug")
            broken = node.add_process(Broken(node, node.make_pid()))
            pg.monitor(broken, (Atom("t"), 1))
            pg.join(node, (Atom("t"), 1), node.process())       # the scope outlives the bug
            assert pg.scope_of(node).alive and pg.scope_of(node) is scope
            watcher.exit(Atom("normal"))                        # the scope drops its watchers
            broken.exit(Atom("normal"))
            dead = node.process()
            dead.exit(Atom("normal"))
            assert pg.monitor(dead, (Atom("t"), 1))[1] and pg.monitor_scope(dead)[1]   # nothing kept for it
            await asyncio.sleep(0)
            assert not pg.scope_of(node).state.watched
    run(main())


def test_the_api_checks_its_arguments_before_anything_is_sent():
    async def main():
        async with Node(unique("pg"), "c", epmd_port=free_port()) as node:
            with pytest.raises(NoProc):
                pg.join(node, "g", node.process())    # no scope yet: as gen_server:call, noproc
            assert pg.get_members(node, "g") == []    # as pg's, [] without the scope's table
            scope = pg.start(node)
            remote = Pid(Atom("bar@elsewhere"), 1, 0, 1)
            with pytest.raises(ValueError, match="nolocal"):
                pg.join(node, "g", remote)             # pg's ensure_local
            with pytest.raises(ValueError, match="nolocal"):
                pg.join(node, "g", [node.process(), remote])
            with pytest.raises(TypeError):
                pg.join(node, object(), node.process())  # not an Erlang term: never on the wire
            with pytest.raises(TypeError):
                pg.join(node, "g", "not a pid")
            with pytest.raises(TypeError):
                pg.start(node, 42)
            assert not scope.state.groups and not scope.state.effects and scope.alive
            pg.join(node, "g", [])                    # nothing to join: no empty group
            assert pg.which_groups(node) == []
    run(main())


def test_group_identity_is_erlangs():
    assert group_key("a") == group_key(b"a")                  # one binary
    assert group_key(1) != group_key(1.0)                     # 1 =/= 1.0
    assert group_key(True) == group_key(Atom("true")) and group_key(True) != group_key(1)
    assert group_key(None) == group_key(Atom("nil"))
    assert group_key({Atom("a"): 1, Atom("b"): [1, {2: 3}]}) == group_key({Atom("b"): [1, {2: 3}], Atom("a"): 1})
    assert group_key({1: 2}) != group_key({2: 1}) and group_key([1, 2]) != group_key((1, 2))
    assert group_key([{1: 2}]) != group_key(({1: 2},))


def test_malformed_messages_from_other_scopes_are_dropped():
    async def main():
        async with Node(unique("pg"), "c", epmd_port=free_port()) as node:
            scope = pg.start(node)
            member = node.process()
            pg.join(node, "g", member)
            stranger = Pid(Atom("x@y"), 5, 0, 1)
            sender = node.process()
            for message in [Atom("hello"), (), (JOIN, b"not a pid", "g", []), (JOIN, stranger, "g", [1, 2]),
                            (LEAVE, stranger, stranger, Atom("notalist")), (GEN_CAST, (SYNC, stranger, [(1,)])),
                            (GEN_CAST, (SYNC, stranger, [("g", stranger)])), (GEN_CAST, Atom("x")),
                            (DISCOVER, 42), (Atom("$gen_call"), (sender.pid, node.make_ref()), Atom("x")),
                            (JOIN, stranger, "g", [stranger]), (LEAVE, stranger, [stranger], ["g"])]:
                sender.send(scope.pid, message)          # join/leave from an unknown scope: ignored
            assert scope.alive and pg.scope_of(node) is scope
            assert pg.get_members(node, "g") == [member.pid]
    run(main())


def test_a_crashed_scope_is_restarted_with_fresh_state():
    async def main():
        async with Node(unique("pg"), "c", epmd_port=free_port()) as node:
            scope = pg.start(node, "chat")
            pg.join(node, "g", node.process(), scope="chat")
            scope.exit(Atom("kill"))                     # killed, as by exit(Pid, kill)
            fresh = pg.scope_of(node, "chat")
            assert fresh is not None and fresh is not scope and fresh.alive
            assert pg.get_members(node, "g", scope="chat") == []   # OTP: members are not kept
            pg.join(node, "g", node.process(), scope="chat")
            fresh.stop()                                  # a normal stop stays stopped
            assert pg.scope_of(node, "chat") is None
    run(main())


# -- two pykv nodes: the same protocol, both ends Python --------------------------------------

def test_two_pykv_nodes_see_each_others_members_and_nodedowns():
    async def main():
        epmd_port = free_port()
        async with Node(unique("pga"), "c", epmd_port=epmd_port) as a, \
                Node(unique("pgb"), "c", epmd_port=epmd_port) as b:
            pg.start(a)
            watcher = b.process()
            monitor_nodes(watcher)
            ma = a.process()
            pg.join(a, "g", ma)
            await b.connect(a.name)
            assert await watcher.receive(timeout=5) == (NODEUP, a.name)
            pg.start(b)                                   # started after the connection
            mb = b.process()
            pg.join(b, "g", mb)
            for node in (a, b):
                await eventually(lambda node=node: sorted(pg.get_members(node, "g"), key=repr)
                                 == sorted([ma.pid, mb.pid], key=repr), what=f"both members on {node.name}")
            mb.exit(Atom("bye"))
            await eventually(lambda: pg.get_members(a, "g") == [ma.pid], what="b's exit seen on a")
            pg.join(b, "g", b.process())
            await eventually(lambda: len(pg.get_members(a, "g")) == 2, what="b's new member on a")
            a.peers[b.name].conn.close()                  # a connection lost: both drop the other's
            assert await watcher.receive(timeout=5) == (NODEDOWN, a.name)
            await eventually(lambda: pg.get_members(a, "g") == [ma.pid], what="nodedown on a")
            await eventually(lambda: len(pg.get_members(b, "g")) == 1, what="nodedown on b")
            await b.connect(a.name)                       # and both find each other again
            assert await watcher.receive(timeout=5) == (NODEUP, a.name)
            for node in (a, b):
                await eventually(lambda node=node: len(pg.get_members(node, "g")) == 2, what="reconnected")
    run(main())


# -- the state against a model of an OTP 25 scope: no interleaving makes pykv send what raises --

class Otp25Scope:
    """What an OTP 25 scope does with the messages of one other scope (`pg.erl` handle_info
    and handle_cast), raising where it raises: an unknown message (catch-all badarg), a
    3-tuple discover (no such clause before OTP 26), a leave naming a group it does not hold
    for the sender (maps:get in leave_remote), a sync naming a group twice."""

    def __init__(self, me: Pid, name: Atom) -> None:
        self.me, self.name = me, name
        self.view: dict[bytes, list[Pid]] | None = None  # its `remote` entry for us
        self.out: list[tuple[str, Any]] = []  # what it sends us: ("sync", groups), ("discover",)

    def handle(self, message: Any) -> None:
        tag = message[0]
        if tag is DISCOVER:
            assert len(message) == 2 and type(message[1]) is Pid, f"OTP 25 raises at {message}"
            self.out.append(("sync", []))
            if self.view is None:
                self.view = {}
                self.out.append(("discover",))
        elif tag is GEN_CAST:
            _, (sync, _peer, groups) = message
            assert sync is SYNC and type(groups) is list
            keys = [group_key(g) for g, _ in groups]
            assert len(keys) == len(set(keys)), f"a group twice in {groups}"
            assert all(type(pids) is list and pids and all(type(p) is Pid for p in pids) for _, pids in groups)
            self.view = {group_key(g): list(pids) for g, pids in groups}
        elif tag is JOIN:
            _, _peer, group, pids = message
            assert type(pids) is list and pids and all(type(p) is Pid for p in pids)
            if self.view is not None:
                self.view.setdefault(group_key(group), []).extend(pids)
        elif tag is LEAVE:
            _, _peer, pids, groups = message
            assert type(pids) is list and type(groups) is list and pids and groups
            if self.view is not None:
                for group in groups:
                    key = group_key(group)
                    assert key in self.view, f"OTP 25's leave_remote raises: {group!r} unknown"
                    have = self.view[key]
                    for pid in pids:
                        if pid in have:
                            have.remove(pid)
                    if not have:
                        del self.view[key]
        else:
            raise AssertionError(f"OTP 25's catch-all raises at {message}")


@pytest.mark.parametrize("seed", range(40))
def test_random_interleavings_never_send_what_an_otp25_scope_raises_at(seed):
    rng = random.Random(seed)
    me = Pid(Atom("py@h"), 1, 0, 1)
    them = Pid(Atom("beam@h"), 9, 0, 1)
    state = ScopeState(me, PG)
    beam = Otp25Scope(them, PG)
    locals_ = [Pid(Atom("py@h"), 100 + i, 0, 1) for i in range(5)]
    groups = ["a", b"a", "b", (Atom("c"), 1), {Atom("k"): [1]}]
    connected = True
    to_beam: list[Any] = []   # in flight, each way, in order; a nodedown loses them

    def deliver(count: int) -> None:
        for kind, dest, message in list(state.effects):
            if kind == "send" and (dest == them or dest == (PG, them.node)):
                to_beam.append(message)
        state.effects.clear()
        for _ in range(count):
            if to_beam:
                beam.handle(to_beam.pop(0))
            if beam.out:
                answer = beam.out.pop(0)
                if answer[0] == "sync":
                    state.sync(them, answer[1])
                else:
                    state.discover(them)
            for kind, dest, message in list(state.effects):
                if kind == "send" and (dest == them or dest == (PG, them.node)):
                    to_beam.append(message)
            state.effects.clear()

    for _ in range(300):
        action = rng.random()
        pids = rng.sample(locals_, rng.randint(1, 3)) * rng.choice([1, 1, 2])
        group = rng.choice(groups)
        if action < 0.35:
            state.join(group, group_key(group), pids)
        elif action < 0.6:
            state.leave(group_key(group), pids)
        elif action < 0.75:
            state.member_down(rng.choice(locals_))
        elif action < 0.82 and connected:              # a nodedown: both forget the other
            connected = False
            to_beam.clear()
            beam.out.clear()
            beam.view = None
            state.scope_down(them)
        elif action < 0.9 and not connected:           # reconnect: pykv discovers (nodeup)
            connected = True
            to_beam.append((DISCOVER, me))
        elif action < 0.95 and connected:              # a second discover (a retry)
            to_beam.append((DISCOVER, me))
        if connected:
            deliver(rng.randint(0, 2))
        else:
            state.effects.clear()
    if not connected:
        connected = True
        to_beam.append((DISCOVER, me))
    while to_beam or beam.out or state.effects:
        deliver(1)
    ours = {group_key(term): Counter(pids) for term, pids in state.local_groups()}
    assert {key: Counter(pids) for key, pids in (beam.view or {}).items()} == ours


# -- against real BEAM nodes --------------------------------------------------------------------

@pytest.mark.distributed
@pytest.mark.generations
@pytest.mark.parametrize("otp", GENERATIONS)
def test_erl_call_is_not_asked_for_a_scope(otp, cookie, sent):
    # erl_call takes the first message that comes for its rpc's answer: a scope must not
    # discover it (it negotiated no DFLAG_SPAWN), and it gets its answers as without pg
    gen = generation(otp, "erl_call")

    async def main():
        async with Node(unique("ecpg"), cookie) as node:
            pg.start(node)
            pg.start(node, "chat")
            py = node.name.name.split("@")[0]
            for _ in range(3):
                assert await erl_call(gen, py, cookie, "-a", "erlang node []") == (0, node.name.name)
        assert sent and all(control[:2] == (C.SEND, Atom("")) for controls in sent.values() for control in controls), sent
    run(main())


PG_PROBE = """
defmodule PgProbe do
  # test helpers only: a member that forwards what it gets to `to`, tagged with itself
  def member(scope, group, to) do
    pid = spawn(fn -> loop(to) end)
    :ok = :pg.join(scope, group, pid)
    pid
  end

  defp loop(to) do
    receive do
      msg -> send(to, {:got, self(), msg})
    end
    loop(to)
  end

  def send_all(scope, group, msg) do
    for pid <- :pg.get_members(scope, group), do: send(pid, msg)
    :ok
  end

  def start_scope(scope) do
    {:ok, pid} = :pg.start(scope)
    pid
  end
end
"""

BEAM_PG = {"ELIXIR_ERL_OPTIONS": "-kernel start_pg true"}


async def start_cluster(node: Node, beam_nodes: Any, count: int = 2,
                        script: str = "") -> tuple[list[Atom], list[Any]]:
    """`count` BEAM nodes connected to each other, and to the Python node: names, BeamNodes.
    `script` runs first (PgProbe defined means it has run)."""
    beams = [beam_nodes("pgbeam", script=script + PG_PROBE, env=BEAM_PG) for _ in range(count)]
    names = [Atom(beam.name) for beam in beams]
    for name in names:
        await wait_until_up(node, name)
        await eventually(lambda name=name: scope_pid(node, name), timeout=30, what=f"pg on {name}")
        await eventually(lambda name=name: probe_loaded(node, name), timeout=30, what=f"PgProbe on {name}")
    for other in names[1:]:
        assert await rpc.call(node, names[0], "net_kernel", "connect_node", [other]) is True
    return names, beams


async def scope_pid(node: Node, beam: Atom, scope: Atom = PG) -> Any:
    pid = await rpc.call(node, beam, "erlang", "whereis", [scope])
    return pid if type(pid) is Pid else None


async def probe_loaded(node: Node, beam: Atom) -> bool:
    return await rpc.call(node, beam, "code", "is_loaded", [Atom("Elixir.PgProbe")]) is not False


async def members_on(node: Node, beam: Atom, group: Any, scope: Atom = PG) -> Counter:
    return Counter(await rpc.call(node, beam, "pg", "get_members", [scope, group]))


async def same_scopes(node: Node, scopes: dict[Atom, Any], scope: Atom = PG) -> None:
    for beam, pid in scopes.items():
        assert await scope_pid(node, beam, scope) == pid, f"the {scope.name} scope on {beam.name} restarted"


@pytest.mark.distributed
def test_membership_both_ways_with_a_beam_cluster(cookie, beam_nodes):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            pg.start(node)
            (b1, b2), beams = await start_cluster(node, beam_nodes)
            scopes = {b: await scope_pid(node, b) for b in (b1, b2)}
            me, other = node.process(), node.process()
            pg.join(node, b"room", me)
            pg.join(node, b"room", [me, other])
            for b in (b1, b2):
                await eventually(lambda b=b: _eq(members_on(node, b, b"room"), {me.pid: 2, other.pid: 1}),
                                 timeout=10, what=f"Python members on {b.name}")
            # BEAM members, one on each node; Python sees both
            m1 = await rpc.call(node, b1, "PgProbe", "member", [PG, b"room", me.pid])
            m2 = await rpc.call(node, b2, "PgProbe", "member", [PG, b"room", me.pid])
            await eventually(lambda: Counter(pg.get_members(node, b"room")) == Counter({me.pid: 2, other.pid: 1, m1: 1, m2: 1}),
                             timeout=10, what="BEAM members on Python")
            # a message sent from the BEAM to every member reaches the Python ones
            await rpc.call(node, b2, "PgProbe", "send_all", [PG, b"room", (Atom("hello"), 1)])
            got = Counter()
            for _ in range(4):                          # me twice (a member twice gets two), m1, m2
                message = await me.receive(timeout=5)
                got[message if message == (Atom("hello"), 1) else message[1]] += 1
            assert got == Counter({(Atom("hello"), 1): 2, m1: 1, m2: 1})
            assert (await other.receive(timeout=5)) == (Atom("hello"), 1)
            # leaves and exits, both sides
            assert pg.leave(node, "room", me) is True
            other.exit(Atom("bye"))
            await rpc.call(node, b1, "erlang", "exit", [m1, Atom("kill")])
            await rpc.call(node, b2, "pg", "leave", [PG, b"room", m2])
            for b in (b1, b2):
                await eventually(lambda b=b: _eq(members_on(node, b, b"room"), {me.pid: 1}),
                                 timeout=10, what=f"leaves on {b.name}")
            await eventually(lambda: pg.get_members(node, b"room") == [me.pid], timeout=10, what="leaves on Python")
            await same_scopes(node, scopes)
    run(main(), timeout=150)


async def _eq(members: Any, expected: dict) -> bool:
    return await members == Counter(expected)


@pytest.mark.distributed
def test_monitor_nodedown_reconnect_and_a_scope_started_later(cookie, beam_nodes):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            pg.start(node)
            pg.start(node, "chat", rediscover=2.0)       # asks again every 2 s at most
            (b1, b2), beams = await start_cluster(node, beam_nodes)
            scopes = {b: await scope_pid(node, b) for b in (b1, b2)}
            watcher, me = node.process(), node.process()
            ref, now = pg.monitor(watcher, Atom("g"))
            assert now == []
            pg.join(node, Atom("g"), me)
            m1 = await rpc.call(node, b1, "PgProbe", "member", [PG, Atom("g"), me.pid])
            m2 = await rpc.call(node, b2, "PgProbe", "member", [PG, Atom("g"), me.pid])
            seen = [await watcher.receive(timeout=10) for _ in range(3)]
            assert sorted(seen, key=repr) == sorted([(ref, JOIN, Atom("g"), [p]) for p in (me.pid, m1, m2)], key=repr)
            # the BEAM drops pykv (erlang:disconnect_node): both sides drop the other's members
            rpc.cast(node, b1, "erlang", "disconnect_node", [node.name])  # (a call's reply would be lost)
            assert await watcher.receive(timeout=10) == (ref, Atom("leave"), Atom("g"), [m1])
            await eventually(lambda: _eq(members_on(node, b2, Atom("g")), {me.pid: 1, m1: 1, m2: 1}),
                             timeout=10, what="b2 unchanged")
            # reconnect: pykv discovers b1's scope again, and b1 learns pykv's members again
            await wait_until_up(node, b1)
            assert await watcher.receive(timeout=10) == (ref, JOIN, Atom("g"), [m1])
            await eventually(lambda: _eq(members_on(node, b1, Atom("g")), {me.pid: 1, m1: 1, m2: 1}),
                             timeout=10, what="b1 knows pykv's member again")
            # a named scope the BEAM starts after the connection is found (it never discovers pykv)
            chat = await rpc.call(node, b2, "PgProbe", "start_scope", [Atom("chat")])
            pg.join(node, "lobby", me, scope="chat")
            await eventually(lambda: _eq(members_on(node, b2, b"lobby", Atom("chat")), {me.pid: 1}),
                             timeout=20, what="the later scope sees Python's member")
            c2 = await rpc.call(node, b2, "PgProbe", "member", [Atom("chat"), b"lobby", me.pid])
            await eventually(lambda: c2 in pg.get_members(node, "lobby", scope="chat"), timeout=10,
                             what="Python sees the later scope's member")
            # a BEAM node goes down: its members go
            beams[1].kill()
            assert await watcher.receive(timeout=20) == (ref, Atom("leave"), Atom("g"), [m2])
            await eventually(lambda: pg.get_members(node, "lobby", scope="chat") == [me.pid], timeout=10,
                             what="the dead node's chat member gone")
            await same_scopes(node, {b1: scopes[b1]})
            assert type(chat) is Pid and await scope_pid(node, b1, Atom("chat")) is None
    run(main(), timeout=150)


@pytest.mark.distributed
def test_the_python_node_going_down_takes_its_members_away(cookie, beam_nodes):
    async def main():
        async with Node(unique("obs"), cookie) as observer:
            async with Node(unique("foo"), cookie) as node:
                pg.start(node)
                (b1, b2), beams = await start_cluster(node, beam_nodes)
                scopes = {b: await scope_pid(node, b) for b in (b1, b2)}
                pg.join(node, "g", [node.process(), node.process()])
                for b in (b1, b2):
                    await eventually(lambda b=b: _len(members_on(node, b, b"g"), 2), timeout=10,
                                     what=f"members on {b.name}")
            for b in (b1, b2):                           # pykv stopped: its node went down
                await eventually(lambda b=b: _len(members_on(observer, b, b"g"), 0), timeout=10,
                                 what=f"members gone from {b.name}")
            await same_scopes(observer, scopes)
    run(main(), timeout=150)


async def _len(members: Any, n: int) -> bool:
    return sum((await members).values()) == n


@pytest.mark.distributed
def test_random_joins_leaves_and_exits_keep_every_view_equal(cookie, beam_nodes):
    # Random work on both sides, then every node's view of every group is the same, and no
    # BEAM scope restarted along the way.
    async def main():
        rng = random.Random(12)
        async with Node(unique("foo"), cookie) as node:
            pg.start(node)
            (b1, b2), beams = await start_cluster(node, beam_nodes)
            scopes = {b: await scope_pid(node, b) for b in (b1, b2)}
            sink = node.process()
            procs = [node.process() for _ in range(6)]
            beam_members: list[tuple[Atom, Pid]] = []
            groups = [b"a", b"b", (Atom("c"), 1), [1, 2]]
            for _ in range(120):
                group = rng.choice(groups)
                action = rng.random()
                if action < 0.3:
                    pg.join(node, group, rng.sample(procs, rng.randint(1, 3)) * rng.choice([1, 2]))
                elif action < 0.5:
                    pg.leave(node, group, rng.sample(procs, rng.randint(1, 3)))
                elif action < 0.6:
                    victim = rng.randrange(len(procs))
                    procs[victim].exit(Atom("bye"))
                    procs[victim] = node.process()
                elif action < 0.8:
                    b = rng.choice((b1, b2))
                    beam_members.append((b, await rpc.call(node, b, "PgProbe", "member", [PG, group, sink.pid])))
                elif beam_members:
                    b, pid = beam_members.pop(rng.randrange(len(beam_members)))
                    await rpc.call(node, b, "erlang", "exit", [pid, Atom("kill")])
                if rng.random() < 0.2:
                    await asyncio.sleep(0)
            for group in groups:
                async def agreed(group=group) -> bool:
                    ours = Counter(pg.get_members(node, group))
                    return all([await members_on(node, b, group) == ours for b in (b1, b2)])
                await eventually(agreed, timeout=10, what=f"{group!r} the same everywhere")
            await same_scopes(node, scopes)
    run(main(), timeout=150)
