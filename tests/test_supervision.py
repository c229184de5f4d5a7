"""Supervisor, DynamicSupervisor, GenServer defaults and the :sys protocol, on the Python node
alone (issue 9, items 1, 3, 4): the semantics of OTP's supervisor.erl that need no BEAM to show.
What BEAM tools see of the same is in test_supervision_distributed.py."""

from __future__ import annotations

import asyncio
import logging

import pytest

from conftest import eventually, free_port_pair, run, unique
from pykv import Atom, Exit, Node
from pykv.errors import Timeout
from pykv.kv import start_kv, stop_kv
from pykv.otp import gen_server, supervisor as sup_client, sys as sys_client
from pykv.otp.child_spec import ChildSpec, StartError
from pykv.otp.dynamic_supervisor import DynamicSupervisor
from pykv.otp.gen_server import GenServer
from pykv.otp.supervisor import Supervisor
from pykv.term import ExportFun

OK, SHUTDOWN, NORMAL, KILLED = Atom("ok"), Atom("shutdown"), Atom("normal"), Atom("killed")
CRASH, PING, STOP = Atom("crash"), Atom("ping"), Atom("stop")


def node_here() -> Node:
    return Node(unique("foo"), "c", epmd_port=free_port_pair()[0])


class Worker(GenServer):
    """Records its starts and stops in a shared list; crashes or stops on request."""

    beam_module = "Test.Worker"

    def init(self, tag: str, events: list, fail: bool = False) -> None:
        if fail:
            raise RuntimeError(f"{tag} cannot start")
        self.tag = tag
        self.events = events
        events.append(("start", tag))

    def handle_call(self, request, from_):
        if request is PING:
            return (Atom("pong"), self.tag)
        if request is CRASH:
            raise RuntimeError(f"{self.tag} crashed on purpose")
        if request is STOP:
            raise Exit(NORMAL)
        return super().handle_call(request, from_)

    def terminate(self, reason) -> None:
        self.events.append(("stop", self.tag, reason))


def spec(tag: str, events: list, **kwargs) -> ChildSpec:
    fail = kwargs.pop("fail", False)
    return Worker.child_spec(tag, events, fail=fail, id=tag, name=f"w_{tag}", **kwargs)


def pid_of(node: Node, tag: str):
    proc = node.whereis(f"w_{tag}")
    return proc.pid if proc is not None else None


async def crash(node: Node, tag: str) -> None:
    with pytest.raises(Exit):
        await gen_server.call(node, Atom(f"w_{tag}"), CRASH)


def test_children_start_in_order_and_stop_in_reverse() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            sup = await Supervisor.start_link(node, [spec(t, events) for t in "abc"], name="Sup")
            assert events == [("start", "a"), ("start", "b"), ("start", "c")]
            ids = [child[0] for child in await sup_client.which_children(node, "Sup")]
            assert ids == [Atom("c"), Atom("b"), Atom("a")]  # OTP lists the newest first
            assert await sup_client.count_children(node, "Sup") == {
                Atom("specs"): 3, Atom("active"): 3, Atom("supervisors"): 0, Atom("workers"): 3}
            events.clear()
            await sup.stop(SHUTDOWN)
            assert events == [("stop", "c", SHUTDOWN), ("stop", "b", SHUTDOWN), ("stop", "a", SHUTDOWN)]
            assert not sup.alive and node.whereis("Sup") is None and pid_of(node, "a") is None
    run(main())


@pytest.mark.parametrize("strategy, restarted", [
    ("one_for_one", "b"), ("one_for_all", "abc"), ("rest_for_one", "bc")])
def test_strategies_restart_the_children_they_should(strategy: str, restarted: str, caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            await Supervisor.start_link(node, [spec(t, events) for t in "abc"], strategy=strategy, name="Sup")
            before = {t: pid_of(node, t) for t in "abc"}
            events.clear()
            await crash(node, "b")
            await eventually(lambda: all(pid_of(node, t) not in (None, before[t]) for t in restarted), 5,
                             "the restarts")
            assert {t for t in "abc" if pid_of(node, t) != before[t]} == set(restarted)
            # the others stop in reverse order, then all start again in order
            stopped = [e[1] for e in events if e[0] == "stop" and e[1] != "b"]
            assert stopped == sorted(set(restarted) - {"b"}, reverse=True)
            assert [e[1] for e in events if e[0] == "start"] == sorted(restarted)
    with caplog.at_level(logging.INFO):
        run(main())
    assert "Child :b of Supervisor Sup terminated" in caplog.text
    assert "(RuntimeError) b crashed on purpose" in caplog.text


def test_restart_types_permanent_transient_temporary() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            await Supervisor.start_link(node, [spec("p", events), spec("t", events, restart="transient"),
                                               spec("m", events, restart="temporary")], name="Sup")
            pids = {t: pid_of(node, t) for t in "ptm"}
            for tag in "ptm":  # a normal exit: only the permanent child comes back
                with pytest.raises(Exit):
                    await gen_server.call(node, Atom(f"w_{tag}"), STOP)
            await eventually(lambda: pid_of(node, "p") not in (None, pids["p"]), 5)
            children = {c[0]: c[1] for c in await sup_client.which_children(node, "Sup")}
            assert children[Atom("t")] is Atom("undefined") and Atom("m") not in children
            # a crash brings the transient one back too (restart_child first: it is not running)
            assert await sup_client.restart_child(node, "Sup", Atom("t")) == (OK, pid_of(node, "t"))
            t = pid_of(node, "t")
            await crash(node, "t")
            await eventually(lambda: pid_of(node, "t") not in (None, t), 5)
    run(main())


def test_too_many_restarts_shut_the_supervisor_down(caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            sup = await Supervisor.start_link(node, [spec("a", events), spec("b", events)], name="Sup")
            watcher = node.process()
            ref = watcher.monitor(sup.pid)
            for n in range(4):  # the default intensity is 3 restarts in 5 seconds
                await eventually(lambda: pid_of(node, "a") is not None, 5)
                await crash(node, "a")
            down = await watcher.receive(lambda m: m[1] == ref, timeout=5)
            assert down[4] is SHUTDOWN
            assert pid_of(node, "a") is None and pid_of(node, "b") is None
            assert ("stop", "b", SHUTDOWN) in events
    with caplog.at_level(logging.INFO):
        run(main())
    assert "Child :a of Supervisor Sup caused shutdown\n** (exit) :reached_max_restart_intensity" in caplog.text


def test_a_child_that_cannot_start_fails_the_start_and_stops_the_others() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            with pytest.raises(StartError) as info:
                await Supervisor.start_link(node, [spec("a", events), spec("b", events, fail=True),
                                                   spec("c", events)], name="Sup")
            reason = info.value.reason
            assert reason[0] is SHUTDOWN and reason[1][:2] == (Atom("failed_to_start_child"), Atom("b"))
            assert reason[1][2][0][Atom("message")] == "b cannot start"
            assert "failed to start child :b" in str(info.value)
            assert events == [("start", "a"), ("stop", "a", SHUTDOWN)]
            assert node.whereis("Sup") is None and pid_of(node, "a") is None
    run(main())


class Stubborn(GenServer):
    """Traps exits and takes its time to terminate."""

    def init(self, delay: float) -> None:
        self.trap_exit = True
        self.delay = delay

    async def terminate(self, reason) -> None:
        await asyncio.sleep(self.delay)


def test_shutdown_times_kill_a_child_that_does_not_stop(caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            slow = Stubborn.child_spec(30, id="slow", name="slow", shutdown=100)
            brutal = Stubborn.child_spec(30, id="brutal", name="brutal", shutdown="brutal_kill")
            quick = Stubborn.child_spec(0.01, id="quick", name="quick")
            sup = await Supervisor.start_link(node, [slow, brutal, quick], name="Sup")
            procs = {n: node.whereis(n) for n in ("slow", "brutal", "quick")}
            await asyncio.wait_for(sup.stop(SHUTDOWN), 5)
            assert procs["slow"].exit_reason is KILLED        # after its 100 ms
            assert procs["brutal"].exit_reason is KILLED
            assert procs["quick"].exit_reason is SHUTDOWN     # it finished its terminate in time
    with caplog.at_level(logging.INFO):
        run(main())
    assert "Child :slow of Supervisor Sup shut down abnormally\n** (exit) killed" in caplog.text
    assert "brutal of Supervisor Sup shut down" not in caplog.text


def test_terminate_restart_delete_child_and_ignore() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            ignored = ChildSpec("ignored", lambda sup: None)
            await Supervisor.start_link(node, [spec("a", events), ignored], name="Sup")
            ask = sup_client
            assert await ask.terminate_child(node, "Sup", Atom("nope")) == (Atom("error"), Atom("not_found"))
            assert await ask.delete_child(node, "Sup", Atom("a")) == (Atom("error"), Atom("running"))
            assert await ask.restart_child(node, "Sup", Atom("a")) == (Atom("error"), Atom("running"))
            assert await ask.terminate_child(node, "Sup", Atom("a")) == OK
            assert ("stop", "a", SHUTDOWN) in events
            children = await ask.which_children(node, "Sup")
            assert children == [(Atom("ignored"), Atom("undefined"), Atom("worker"), [Atom("undefined")]),
                                (Atom("a"), Atom("undefined"), Atom("worker"), [Atom("Elixir.Test.Worker")])]
            assert (await ask.count_children(node, "Sup"))[Atom("active")] == 0
            ok, pid = await ask.restart_child(node, "Sup", Atom("a"))
            assert ok is OK and pid == pid_of(node, "a")
            assert await ask.terminate_child(node, "Sup", Atom("a")) == OK
            assert await ask.delete_child(node, "Sup", Atom("a")) == OK
            assert await ask.restart_child(node, "Sup", Atom("a")) == (Atom("error"), Atom("not_found"))
            # start_child with a Python spec, then the same id again
            ok, pid = await ask.start_child(node, "Sup", spec("d", events))
            assert ok is OK and pid == pid_of(node, "d")
            assert await ask.start_child(node, "Sup", spec("d", events)) == (
                Atom("error"), (Atom("already_started"), pid))
            got = await gen_server.call(node, "Sup", (Atom("get_childspec"), Atom("d")))
            assert got[1][Atom("restart")] is Atom("permanent") and got[1][Atom("shutdown")] == 5000
    run(main())


class Flaky(GenServer):
    """Starts only while `allowed` says so."""

    def init(self, allowed: list) -> None:
        if not allowed[0]:
            raise RuntimeError("not now")


def test_a_failed_restart_is_tried_again() -> None:
    async def main() -> None:
        async with node_here() as node:
            allowed = [True]
            await Supervisor.start_link(node, [Flaky.child_spec(allowed, id="f", name="f")],
                                        name="Sup", max_restarts=10**9)  # retries count: never give up here
            first = node.whereis("f").pid
            allowed[0] = False
            node.whereis("f").exit(Atom("boom"))
            await asyncio.sleep(0.1)  # retried meanwhile, while the loop still serves others
            children = await sup_client.which_children(node, "Sup")
            assert children[0][1] is Atom("restarting")
            allowed[0] = True
            await eventually(lambda: node.whereis("f") is not None and node.whereis("f").pid != first, 5)
    run(main())


def test_dynamic_supervisor_children_limits_and_restarts() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            dyn = DynamicSupervisor.start(node, name="Dyn", max_children=2)
            a = await dyn.start_child(Worker.child_spec("a", events, restart="temporary"))
            b = dyn.start_child_nowait(Worker.child_spec("b", events, name="w_b"))
            with pytest.raises(StartError) as info:
                await dyn.start_child(Worker.child_spec("c", events))
            assert info.value.reason is Atom("max_children")
            children = await sup_client.which_children(node, "Dyn")
            assert {c[1] for c in children} == {a, b}
            assert all(c[0] is Atom("undefined") and c[2] is Atom("worker") for c in children)
            assert await sup_client.count_children(node, "Dyn") == {
                Atom("specs"): 2, Atom("active"): 2, Atom("supervisors"): 0, Atom("workers"): 2}
            assert await sup_client.terminate_child(node, "Dyn", a) == OK
            assert await sup_client.terminate_child(node, "Dyn", a) == (Atom("error"), Atom("not_found"))
            await crash(node, "b")  # permanent: restarted under the same name
            await eventually(lambda: pid_of(node, "b") not in (None, b), 5)
            with pytest.raises(StartError) as info:
                await dyn.start_child(Worker.child_spec("x", events, fail=True))
            assert info.value.reason[0][Atom("message")] == "x cannot start"
            gen_server.cast(node, "Dyn", Atom("junk"))  # ignored, as Elixir's
            assert await sup_client.count_children(node, "Dyn") == {
                Atom("specs"): 1, Atom("active"): 1, Atom("supervisors"): 0, Atom("workers"): 1}
            # extra_arguments come first, as in Elixir
            seen: list = []
            extra = DynamicSupervisor.start(node, extra_arguments=[1, 2])
            await extra.start_child(ChildSpec("e", lambda sup, *args: seen.append(args)))
            assert seen == [(1, 2)]
            await dyn.stop(SHUTDOWN)
            assert ("stop", "b", SHUTDOWN) in events
    run(main())


# -- GenServer defaults -----------------------------------------------------------------------

class Bare(GenServer):
    """No callbacks of its own: every default is use GenServer's."""


class Partial(GenServer):
    beam_module = "Partial"

    def handle_call(self, request, from_):
        if request is PING:
            return Atom("pong")
        return super().handle_call(request, from_)


def test_genserver_defaults_are_elixirs(caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            Bare.start(node, name="bare")
            with pytest.raises(Exit) as info:
                await gen_server.call(node, Atom("bare"), Atom("hello"))
            error, _stack = info.value.reason
            assert error[Atom("message")] == "attempted to call GenServer :bare but no handle_call/3 clause was provided"
            Partial.start(node, name="partial")
            with pytest.raises(Exit) as info:
                await gen_server.call(node, Atom("partial"), Atom("hello"))
            assert info.value.reason[0] is Atom("function_clause")
            module, function, args, _ = info.value.reason[1][0]
            assert (module, function, args[0]) == (Atom("Elixir.Partial"), Atom("handle_call"), Atom("hello"))
            bare = Bare.start(node)
            watcher = node.process()
            ref = watcher.monitor(bare.pid)
            gen_server.cast(node, bare.pid, Atom("hi"))
            down = await watcher.receive(lambda m: m[1] == ref, timeout=5)
            assert down[4][0][Atom("message")].startswith(f"attempted to cast GenServer {bare.pid!r} but no handle_cast/2")
            quiet = Bare.start(node, name="quiet")
            quiet.send(quiet.pid, (Atom("junk"), 1))
            assert quiet.alive
            # a linked process's exit kills a server that does not trap exits, with a log line
            linked = Bare.start(node, name="linked")
            other = node.process()
            other.link(linked.pid)
            other.exit(Atom("boom"))
            assert not linked.alive and linked.exit_reason is Atom("boom")
    with caplog.at_level(logging.INFO):
        run(main())
    text = caplog.text
    assert "GenServer :bare terminating\n** (RuntimeError) attempted to call GenServer :bare" in text
    assert "Last message (from #PID<" in text and "): :hello" in text
    assert ":\"test_supervision.Bare\" :quiet received unexpected message in handle_info/2: {:junk, 1}" in text
    assert "GenServer :linked terminating\n** (exit) :boom\nExit from a linked process" in text


def test_init_failures_and_names_already_taken() -> None:
    async def main() -> None:
        async with node_here() as node:
            events: list = []
            with pytest.raises(StartError) as info:
                Worker.start(node, "x", events, fail=True, name="x")
            assert info.value.reason[0][Atom("message")] == "x cannot start"
            assert node.whereis("x") is None
            Worker.start(node, "y", events, name="y")
            with pytest.raises(StartError) as info:
                Worker.start(node, "y", events, name="y")
            assert info.value.reason == (Atom("already_started"), node.whereis("y").pid)
    run(main())


# -- :sys from Python ---------------------------------------------------------------------------

class Counter(GenServer):
    def init(self) -> None:
        self.count = 0
        self.socket = object()  # no term: shown as its repr

    def handle_call(self, request, from_):
        self.count += 1
        return self.count


def test_sys_protocol_served_to_python_callers() -> None:
    async def main() -> None:
        async with node_here() as node:
            counter = Counter.start(node, name="counter")
            state = await sys_client.get_state(node, "counter")
            assert state[Atom("count")] == 0 and state[Atom("socket")].startswith(b"<object object at")

            @node.export("Probe", "bump", blocking=False)
            def bump(old):
                return {**old, Atom("count"): old[Atom("count")] + 10}
            new = await sys_client.replace_state(node, "counter", ExportFun(Atom("Elixir.Probe"), Atom("bump"), 1))
            assert new[Atom("count")] == 10 and counter.count == 10
            status = await sys_client.get_status(node, "counter")
            tag, pid, module, (pdict, sys_state, parent, debug, misc) = status
            assert (tag, pid, module, sys_state) == (Atom("status"), counter.pid, (Atom("module"), Atom("gen_server")), Atom("running"))
            assert misc[0] == (Atom("header"), list(b"Status for generic server counter"))
            assert misc[2][1][0][1][Atom("count")] == 10
            # suspended, it queues calls and still answers :sys
            assert await sys_client.suspend(node, "counter") == OK
            pending = asyncio.ensure_future(gen_server.call(node, "counter", Atom("inc")))
            with pytest.raises(Timeout):
                await gen_server.call(node, "counter", Atom("inc"), timeout=0.2)
            assert (await sys_client.get_status(node, "counter"))[3][1] is Atom("suspended")
            assert not pending.done()
            assert await sys_client.resume(node, "counter") == OK
            # both queued calls are served now, the one that timed out first (as on the BEAM)
            assert await asyncio.wait_for(pending, 5) == 12
            assert await sys_client.statistics(node, "counter", True) == OK
            await gen_server.call(node, "counter", Atom("inc"))
            ok, stats = await sys_client.statistics(node, "counter", Atom("get"))
            assert ok is OK and dict(stats)[Atom("messages_in")] == 1 and dict(stats)[Atom("messages_out")] == 1
            assert await sys_client.log_events(node, "counter", True) == OK
            await gen_server.call(node, "counter", Atom("inc"))
            ok, events = await sys_client.log_events(node, "counter", Atom("get"))
            assert [e[0] for e in events] == [Atom("in"), Atom("out")] and events[1][1] == 14
            with pytest.raises(Exception) as info:  # a closure cannot run here
                await sys_client.replace_state(node, "counter", ExportFun(Atom("Nope"), Atom("f"), 1))
            assert info.value.reason[2] == (Atom("error"), Atom("notsup"))
    run(main())


# -- the KV tree -----------------------------------------------------------------------------------

def test_kv_tree_restarts_a_crashed_registry_and_stops_in_order(caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            await start_kv(node, None, port=None)
            registry = Atom("Elixir.KV.Registry")
            apple = await node.apply("KV.Registry", "create", [registry, b"apple"])
            first = node.whereis("KV.Registry")
            with pytest.raises(Exit):
                await gen_server.call(node, registry, Atom("junk"))
            await eventually(lambda: node.whereis("KV.Registry") not in (None, first), 5)
            # one_for_all: the buckets went with it, and the new registry starts empty
            assert apple not in node.processes
            assert await node.apply("KV.Registry", "lookup", [registry, b"apple"]) == Atom("error")
            assert (await node.apply("KV.Registry", "create", [registry, b"apple"])).node is node.name
            buckets = node.whereis("KV.BucketSupervisor")
            assert len(buckets._children) == 1
            await stop_kv(node)
            assert all(node.whereis(n) is None for n in
                       ("KV.Supervisor", "KV.BucketSupervisor", "KV.Registry", "KV.RouterTasks"))
    with caplog.at_level(logging.INFO):
        run(main())
    assert "Child KV.Registry of Supervisor KV.Supervisor terminated" in caplog.text
    assert "Application kv exited: :stopped" in caplog.text


def test_the_kv_app_gives_up_after_too_many_crashes_and_the_node_stays_up(caplog) -> None:
    async def main() -> None:
        async with node_here() as node:
            await start_kv(node, None, port=None)
            registry = Atom("Elixir.KV.Registry")
            for _ in range(4):  # KV.Supervisor's intensity: 3 restarts in 5 s
                await eventually(lambda: node.whereis("KV.Registry") is not None, 5)
                with pytest.raises(Exit):
                    await gen_server.call(node, registry, Atom("junk"))
            await eventually(lambda: node.whereis("KV.Supervisor") is None, 5)
            assert all(node.whereis(n) is None for n in ("KV.BucketSupervisor", "KV.Registry", "KV.RouterTasks"))
            assert await node.apply("erlang", "node", []) == node.name  # the node serves on
    with caplog.at_level(logging.INFO):
        run(main())
    assert "Child KV.Registry of Supervisor KV.Supervisor caused shutdown\n** (exit) :reached_max_restart_intensity" in caplog.text
    assert "Application kv exited: :shutdown (too many restarts" in caplog.text
