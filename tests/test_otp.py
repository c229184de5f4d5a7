"""Issue 3 against real BEAM nodes: exports, errors, GenServer, Task.Supervisor, rpc/erpc and
group-leader IO, both ways.

BEAM-driven tests run an Elixir script that asserts with pattern matches and prints what it
saw, with the Python node serving in the same event loop. Python-as-client tests talk to a
module-wide BEAM node (`services`) that runs a GenServer, a Task.Supervisor and helpers.
"""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path

import pytest

from conftest import HOST, BeamNode, eventually, lit, run, run_elixir, script, unique, wait_until_up
from pykv import Atom, ImproperList, Node, Pid
from pykv.errors import ElixirException, ErlangError, Exit, NoConnection, NoProc, Throw, Timeout
from pykv.otp import gen_server, rpc, task_supervisor
from pykv.otp.gen_server import NOREPLY, GenServer
from pykv.otp.task_supervisor import TaskSupervisor
from pykv.process import current_process

pytestmark = pytest.mark.distributed

THIS_FILE = str(Path(__file__).resolve())
SOURCE = Path(__file__).read_text().splitlines()
OK = Atom("ok")


def line_of(marker: str) -> int:
    [line] = [i for i, text in enumerate(SOURCE, 1) if text.rstrip().endswith(f"# {marker}")]
    return line


class Served:
    """What the Python node exports for these tests, and what the exports saw."""

    def __init__(self, node: Node) -> None:
        self.calls: list[tuple] = []
        self.cancelled: list[int] = []
        self.release = threading.Event()
        export = node.export

        @export("Hello", "world")
        def world(x):                       # plain: runs in a worker thread
            self.calls.append(("world", x))
            return (Atom("hello"), x)

        @export("Hello", "async_world")
        async def async_world(x):           # async: runs on the node's loop
            await asyncio.sleep(0)
            return (Atom("async_hello"), x)

        @export("Hello", "square")
        async def square(n):
            await asyncio.sleep(0.001)
            return n * n

        @export("Hello", "plain_square")
        def plain_square(n):
            return n * n

        @export("Hello", "wait_release")
        def wait_release():                 # blocks its thread until release/0 runs on the loop
            return Atom("released") if self.release.wait(10) else Atom("stalled")

        @export("Hello", "release")
        async def release():
            self.release.set()
            return OK

        @export("Hello", "notify")
        async def notify(pid, tag):
            current_process().send(pid, (Atom("notify"), tag))
            return OK

        @export("Hello", "sleepy")
        async def sleepy(ms):
            try:
                await asyncio.sleep(ms / 1000)
            except asyncio.CancelledError:
                self.cancelled.append(ms)
                raise
            return Atom("slept")

        @export("Hello", "say")
        def say(text):
            print(text.decode())
            return OK

        @export("Hello", "say_async")
        async def say_async(text):
            print(text.decode(), end="")
            print("!")
            return OK

        @export("Hello", "fail")
        def fail(kind):
            if kind == Atom("value"):
                raise ValueError("bad value")  # RAISE-VALUE
            if kind == Atom("key"):
                raise KeyError("missing")
            if kind == Atom("zero"):
                return 1 // 0
            if kind == Atom("runtime"):
                raise RuntimeError("runtime trouble")
            if kind == Atom("other"):
                raise LookupError("looked everywhere")
            if kind == Atom("elixir"):
                raise ElixirException("ArgumentError", "on purpose")
            if kind == Atom("elixir_key"):
                raise ElixirException("KeyError", "no such key", key=Atom("k"), term={})
            if kind == Atom("exit"):
                raise Exit((Atom("shutdown"), Atom("on_purpose")))
            if kind == Atom("throw"):
                raise Throw(Atom("ball"))
            if kind == Atom("badarith"):
                raise ErlangError(Atom("badarith"))
            return Atom("no_failure")

        # the same failures under the names the BEAM twin module uses (differential tests)
        @export("Twin", "fail")
        def twin_fail(msg):
            raise ValueError(msg.decode())

        @export("Twin", "leave")
        def twin_leave(reason):
            raise Exit(reason)

        @export("Twin", "toss")
        def twin_toss(value):
            raise Throw(value)

        @export("Twin", "ok")
        def twin_ok(value):
            return value


# -- exports ---------------------------------------------------------------------------------

def test_exports_plain_async_and_blocking_does_not_stall(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            served = Served(node)
            r = await run_elixir(script("""
                py = PY
                {:hello, 21} = :rpc.call(py, Hello, :world, [21])
                {:async_hello, "x"} = :erpc.call(py, Hello, :async_world, ["x"])
                ^py = :rpc.call(py, :erlang, :node, [])
                ^py = :erpc.call(py, Kernel, :node, [])
                # terms cross both ways unchanged
                term = %{list: [1, 2.5, "bin", :atom, {1, 2}], map: %{"k" => [a: 1]}, pid: self()}
                {:hello, ^term} = :erpc.call(py, Hello, :world, [term])
                # a blocking function runs off the loop: release/0 (on the loop) frees it
                waiter = Task.async(fn -> :erpc.call(py, Hello, :wait_release, []) end)
                Process.sleep(200)
                nil = Task.yield(waiter, 0)
                :ok = :erpc.call(py, Hello, :release, [])
                :released = Task.await(waiter, 15_000)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert len(served.calls) == 2 and served.calls[0] == ("world", 21)
            assert served.calls[1][1][Atom("list")] == [1, 2.5, b"bin", Atom("atom"), (1, 2)]
    run(main())


def test_unexported_is_undef_and_nothing_runs(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            served = Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                undef = {:undef, [{Hello, :world, [1, 2], []}]}
                # erpc raises {:exception, reason, remote_stacktrace}
                {:error, {:exception, :undef, [{Hello, :world, [1, 2], []}]}} =
                  try do :erpc.call(py, Hello, :world, [1, 2]) catch k, r -> {k, r} end
                {:badrpc, {:EXIT, ^undef}} = :rpc.call(py, Hello, :world, [1, 2])
                {:badrpc, {:EXIT, {:undef, [{Nope, :nothing, [], []}]}}} = :rpc.call(py, Nope, :nothing, [])
                {:badrpc, {:EXIT, {:undef, [{:os, :cmd, ['touch /tmp/x'], []}]}}} = :rpc.call(py, :os, :cmd, ['touch /tmp/x'])
                # the exit reason of a task / spawned process is exactly {:undef, [{m, f, args, []}]}
                t = Task.Supervisor.async_nolink({KV.RouterTasks, py}, Hello, :world, [1, 2])
                {:exit, ^undef} = Task.yield(t, 5000)
                {pid, ref} = :erlang.spawn_monitor(py, Hello, :world, [1, 2])
                receive do {:DOWN, ^ref, :process, ^pid, ^undef} -> :ok after 5000 -> raise "no undef DOWN" end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert served.calls == []              # Hello.world/1 never ran for world/2
    run(main())


# -- errors ----------------------------------------------------------------------------------

def test_python_exceptions_become_elixir_exceptions(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                exit_of = fn kind ->
                  t = Task.Supervisor.async_nolink(sup, Hello, :fail, [kind])
                  {:exit, reason} = Task.yield(t, 5000)
                  reason
                end
                # ValueError -> ArgumentError; the stacktrace names the Python file and line
                {%ArgumentError{message: "bad value"} = e, [entry | _] = stack} = exit_of.(:value)
                {:test_otp, :fail, 1, [file: file, line: LINE]} = entry
                ^file = String.to_charlist(FILE)
                text = Exception.format_exit({e, stack})
                IO.puts(text)
                true = text =~ "(ArgumentError) bad value"
                true = text =~ "test_otp.py:" <> Integer.to_string(LINE)
                # erpc callers get the struct and the stacktrace
                {:error, {:exception, %ArgumentError{message: "bad value"}, [{:test_otp, :fail, 1, _} | _]}} =
                  try do :erpc.call(py, Hello, :fail, [:value]) catch k, r -> {k, r} end
                {%KeyError{key: "missing"}, [_ | _]} = exit_of.(:key)
                {%ArithmeticError{}, [_ | _]} = exit_of.(:zero)
                {%RuntimeError{message: "runtime trouble"}, [_ | _]} = exit_of.(:runtime)
                {%RuntimeError{message: message}, [_ | _]} = exit_of.(:other)
                true = message =~ "LookupError"
                true = message =~ "looked everywhere"
                # the formatted reasons are readable, not raw terms
                for kind <- [:key, :zero, :runtime] do
                  IO.puts(Exception.format_exit(exit_of.(kind)))
                end
                IO.puts("ALL OK")
            """, PY=lit(node.name), FILE=f'"{THIS_FILE}"', LINE=str(line_of("RAISE-VALUE"))),
                sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert f"test_otp.py:{line_of('RAISE-VALUE')}" in r.stdout
            assert "(KeyError) key \"missing\" not found" in r.stdout
    run(main())


def test_elixir_exceptions_exits_and_throws_raised_on_purpose(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                exit_of = fn kind ->
                  t = Task.Supervisor.async_nolink(sup, Hello, :fail, [kind])
                  {:exit, reason} = Task.yield(t, 5000)
                  reason
                end
                {%ArgumentError{message: "on purpose"}, [_ | _]} = exit_of.(:elixir)
                {%KeyError{key: :k, term: %{}, message: "no such key"}, _} = exit_of.(:elixir_key)
                {:error, {:exception, %KeyError{message: "no such key"}, _}} =
                  try do :erpc.call(py, Hello, :fail, [:elixir_key]) catch k, r -> {k, r} end
                {:badrpc, {:EXIT, {%KeyError{key: :k}, [_ | _]}}} = :rpc.call(py, Hello, :fail, [:elixir_key])
                # an exit reason on purpose is the bare reason, as exit/1
                {:shutdown, :on_purpose} = exit_of.(:exit)
                {:exit, {:exception, {:shutdown, :on_purpose}}} = try do :erpc.call(py, Hello, :fail, [:exit]) catch k, r -> {k, r} end
                {:badrpc, {:EXIT, {:shutdown, :on_purpose}}} = :rpc.call(py, Hello, :fail, [:exit])
                # throw: uncaught in a task it is {:nocatch, value}; erpc re-throws it
                {{:nocatch, :ball}, [_ | _]} = exit_of.(:throw)
                {:throw, :ball} = try do :erpc.call(py, Hello, :fail, [:throw]) catch k, r -> {k, r} end
                # erlang:error(badarith) is normalised by Elixir into ArithmeticError
                {:badarith, [_ | _]} = exit_of.(:badarith)
                {:error, {:exception, :badarith, [_ | _]}} = try do :erpc.call(py, Hello, :fail, [:badarith]) catch k, r -> {k, r} end
                %ArithmeticError{} = Exception.normalize(:error, :badarith, [])
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


# -- GenServer served from Python -----------------------------------------------------------------

class Counter(GenServer):
    def init(self, start=0):
        self.count = start
        self.tags = []

    def handle_call(self, request, from_):
        self.tags.append(from_[1])
        if request == Atom("get"):
            return self.count
        if request == Atom("whoami"):
            return self.pid
        if request == Atom("crash"):
            raise RuntimeError("crashed on purpose")
        if type(request) is tuple and request[0] == Atom("add"):
            self.count += request[1]
            return self.count
        if type(request) is tuple and request[0] == Atom("later"):
            asyncio.get_running_loop().call_later(0.05, self.reply, from_, (Atom("later"), request[1]))
            return NOREPLY
        if type(request) is tuple and request[0] == Atom("async_add"):
            return self._async_add(request[1])
        return super().handle_call(request, from_)

    async def _async_add(self, n):
        await asyncio.sleep(0.01)
        self.count += n
        return (Atom("async"), self.count)

    def handle_cast(self, request):
        if type(request) is tuple and request[0] == Atom("add"):
            self.count += request[1]

    def handle_info(self, message):
        if type(message) is tuple and message[0] == Atom("info_add"):
            self.count += message[1]

    def terminate(self, reason):
        self.terminated = reason


def test_genserver_served_from_python(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            counter = Counter.start(node, 0, name="counter")
            crasher = Counter.start(node, 0, name="crasher")
            stoppable = Counter.start(node, 0, name="stoppable")
            r = await run_elixir(script("""
                py = PY
                server = {:counter, py}
                1 = GenServer.call(server, {:add, 1})
                pid = GenServer.call(server, :whoami)
                ^py = node(pid)
                3 = GenServer.call(pid, {:add, 2})                 # by pid
                :ok = GenServer.cast(server, {:add, 10})
                send(server, {:info_add, 100})                      # plain message: handle_info
                113 = GenServer.call(server, :get)
                {:later, :x} = GenServer.call(server, {:later, :x}) # replied later by the server
                {:async, 114} = GenServer.call(server, {:async_add, 1})
                # an old-style {pid, ref} tag, as pre-OTP-24 callers and :gen send it
                ref = make_ref()
                send(server, {:"$gen_call", {self(), ref}, :get})
                receive do {^ref, 114} -> :ok after 5000 -> raise "no reply to a {pid, ref} tag" end
                # a crash in handle_call: the caller exits with the server's reason
                {{%RuntimeError{message: "crashed on purpose"}, [_ | _]}, {GenServer, :call, _}} =
                  try do GenServer.call({:crasher, py}, :crash) catch :exit, r -> r end
                {:noproc, {GenServer, :call, _}} =
                  try do GenServer.call({:crasher, py}, :get) catch :exit, r -> r end
                {:noproc, _} = try do GenServer.call({:nobody, py}, :get, 30_000) catch :exit, r -> r end
                # GenServer.stop (a sys terminate request): :ok once the server is gone
                ms = Process.monitor({:stoppable, py})
                :ok = GenServer.stop({:stoppable, py}, {:shutdown, :asked})
                receive do {:DOWN, ^ms, :process, _, {:shutdown, :asked}} -> :ok after 5000 -> raise "not stopped" end
                # the :sys protocol: the state is the server's attributes; an unknown request
                # gets sys's own error reply, not a hang
                %{count: 114} = :sys.get_state({:counter, py}, 5000)
                {:ok, {:error, {:unknown_system_msg, :bogus}}} = :gen.call({:counter, py}, :system, :bogus)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert counter.count == 114 and counter.alive
            assert not stoppable.alive and stoppable.terminated == (Atom("shutdown"), Atom("asked"))
            assert not crasher.alive and crasher.exit_reason[0][Atom("message")] == "crashed on purpose"
            kinds = {type(t).__name__ for t in counter.tags}
            assert kinds == {"ImproperList", "Reference"}      # [:alias | ref] and a plain ref
            assert all(t.items == (Atom("alias"),) for t in counter.tags if isinstance(t, ImproperList))
    run(main())


# -- the BEAM services node, for Python as a client ------------------------------------------

SERVICES = """
defmodule Echo do
  use GenServer
  def init(s), do: {:ok, s}
  def handle_call({:slow, ms}, _from, s) do
    Process.sleep(ms)
    {:reply, :late, s}
  end
  def handle_call({:die, reason}, _from, s), do: {:stop, reason, s}
  def handle_call(msg, {pid, _tag}, s), do: {:reply, {:echo, msg, pid}, s}
end

defmodule Helpers do
  def boom(msg), do: raise(msg)
  def sleep_then(ms, value) do
    Process.sleep(ms)
    value
  end
end

{:ok, _} = Task.Supervisor.start_link(name: KV.RouterTasks)
{:ok, _} = GenServer.start(Echo, nil, name: Echo)   # last: once it answers, all is up
IO.puts("services up")
Process.sleep(:infinity)
"""


@pytest.fixture(scope="module")
def services(cookie):
    node = BeamNode(unique("svc"), cookie, script=SERVICES).start()
    yield node
    node.stop()


async def connected(node: Node, beam: BeamNode) -> Atom:
    await wait_until_up(node, beam.name)

    async def echo_up():
        try:
            await gen_server.call(node, ("Elixir.Echo", beam.name), Atom("probe"), timeout=2)
            return True
        except (NoProc, Timeout):
            return False
    await eventually(echo_up, 30, "the services script")
    return Atom(beam.name)


def test_genserver_client_calls_beam_genservers(cookie, services):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            beam = await connected(node, services)
            me = node.process()
            echo = (Atom("Elixir.Echo"), beam)
            # by {name, node}
            tag, msg, caller = await gen_server.call(me, echo, Atom("hi"))
            assert (tag, msg, caller) == (Atom("echo"), Atom("hi"), me.pid)
            # by pid
            pid = await rpc.call(node, beam, "erlang", "whereis", [Atom("Elixir.Echo")])
            assert isinstance(pid, Pid) and pid.node == beam
            assert (await gen_server.call(node, pid, [1, b"two"]))[:2] == (Atom("echo"), [1, b"two"])
            # with str names
            assert (await gen_server.call(node, ("Elixir.Echo", beam.name), 5))[1] == 5
            # a timeout; the late reply does not linger in the caller's mailbox
            with pytest.raises(Timeout):
                await gen_server.call(me, echo, (Atom("slow"), 300), timeout=0.1)
            await asyncio.sleep(0.5)
            assert list(me.mailbox) == [], f"stray messages after a timed-out call: {list(me.mailbox)}"
            # no such process: at once
            with pytest.raises(NoProc):
                await gen_server.call(me, (Atom("nobody"), beam), Atom("hi"), timeout=30)
            with pytest.raises(NoProc):
                await gen_server.call(me, Pid(pid.node, pid.id + 10000, pid.serial, pid.creation),
                                      Atom("hi"), timeout=30)
            # the server stops without replying: Exit with its reason
            ok, spare = await rpc.call(node, beam, "Elixir.GenServer", "start", [Atom("Elixir.Echo"), None])
            assert ok == OK
            with pytest.raises(Exit) as info:
                await gen_server.call(me, spare, (Atom("die"), (Atom("shutdown"), Atom("asked"))))
            assert info.value.reason == (Atom("shutdown"), Atom("asked"))
            assert not isinstance(info.value, (NoProc, NoConnection, Timeout))
            # no such node
            with pytest.raises(NoConnection):
                await gen_server.call(me, (Atom("Elixir.Echo"), Atom(f"nobody@{HOST}")), Atom("hi"))
            # a local Python server, by name and by pid, through the same client
            local = Counter.start(node, 5, name="local_counter")
            assert await gen_server.call(me, "local_counter", (Atom("add"), 1)) == 6
            assert await gen_server.call(me, local.pid, Atom("get")) == 6
            assert await gen_server.call(me, ("local_counter", node.name.name), Atom("get")) == 6
            assert me.alive and not me.mailbox
    run(main())


# -- Task.Supervisor served from Python ------------------------------------------------------

def test_task_supervisor_async_await_and_crashes(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                ^py = Task.Supervisor.async(sup, Kernel, :node, []) |> Task.await()
                ^py = Task.Supervisor.async(sup, :erlang, :node, []) |> Task.await()
                {:hello, [1, 2]} = Task.Supervisor.async(sup, Hello, :world, [[1, 2]]) |> Task.await()
                {:async_hello, 3} = Task.Supervisor.async_nolink(sup, Hello, :async_world, [3]) |> Task.await()
                # async_nolink: a crash is {:exit, reason} for the caller, who lives on
                t = Task.Supervisor.async_nolink(sup, Hello, :fail, [:value])
                {:exit, {%ArgumentError{message: "bad value"}, [_ | _]}} = Task.yield(t, 5000)
                # async: the linked owner crashes with the task's reason
                {owner, ref} = spawn_monitor(fn ->
                  Task.Supervisor.async(sup, Hello, :fail, [:value]) |> Task.await()
                end)
                {%ArgumentError{message: "bad value"}, [_ | _]} =
                  receive do {:DOWN, ^ref, :process, ^owner, r} -> r after 5000 -> raise "owner lived" end
                # an owner trapping exits sees the EXIT, and Task.await exits with the reason
                {owner2, ref2} = spawn_monitor(fn ->
                  Process.flag(:trap_exit, true)
                  t = Task.Supervisor.async(sup, Hello, :fail, [:runtime])
                  receive do {:EXIT, pid, r} when pid == t.pid -> exit({:saw, r}) after 5000 -> exit(:no_exit) end
                end)
                {:saw, {%RuntimeError{message: "runtime trouble"}, _}} =
                  receive do {:DOWN, ^ref2, :process, ^owner2, r} -> r after 6000 -> raise "no EXIT seen" end
                {:ok, child} = Task.Supervisor.start_child(sup, Hello, :world, [:child])
                ^py = node(child)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


def test_a_task_whose_owner_sends_no_start_message_exits_timeout(cookie, monkeypatch):
    """As Task.Supervised: a task started for async waits OWNER_WAIT s for its owner's start
    message, then exits :timeout; one that got it runs. (One timer of the supervisor ends
    the waits, each at its own deadline.)"""
    monkeypatch.setattr(task_supervisor, "OWNER_WAIT", 0.2)
    down, timeout = Atom("DOWN"), Atom("timeout")

    async def main():
        async with Node(unique("foo"), cookie) as node:
            sup = TaskSupervisor.start(node, name="Test.Tasks")
            owner = node.process()

            async def start_task():
                request = (Atom("start_task"), [(node.name, owner.pid, owner.pid), Atom("monitor")],
                           Atom("temporary"), None)
                ok, pid = await gen_server.call(owner, "Test.Tasks", request)
                assert ok == Atom("ok")
                return pid, owner.monitor(pid)

            silent, silent_ref = await start_task()
            started, started_ref = await start_task()
            await asyncio.sleep(0.1)
            later, later_ref = await start_task()             # a deadline after the first one's
            tref = node.make_ref()
            owner.send(started, (owner.pid, tref, owner.pid, [owner.pid], (Atom("Elixir.Kernel"), Atom("node"), [])))
            assert await owner.receive(lambda m: type(m) is tuple and m[0] == tref, timeout=5) == (tref, node.name)
            for pid, ref, reason in [(started, started_ref, Atom("normal")), (silent, silent_ref, timeout),
                                     (later, later_ref, timeout)]:
                got = await owner.receive(lambda m: type(m) is tuple and m[0] == down and m[1] == ref, timeout=5)
                assert got[4] == reason, (pid, got)
            await eventually(lambda: not sup._waiting and sup._expiry is None)
            assert not sup.children
    run(main())


def test_task_supervisor_start_child_stream_yield_shutdown(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            served = Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                # start_child: runs, sends nothing back to us but what the function sends
                {:ok, child} = Task.Supervisor.start_child(sup, Hello, :notify, [self(), :child])
                ^py = node(child)
                receive do {:notify, :child} -> :ok after 5000 -> raise "start_child did not run" end
                # async_stream, in order, several at a time
                expected = Enum.map(1..30, &{:ok, &1 * &1})
                ^expected = Task.Supervisor.async_stream(sup, 1..30, Hello, :square, [], max_concurrency: 8) |> Enum.to_list()
                ^expected = Task.Supervisor.async_stream_nolink(sup, 1..30, Hello, :plain_square, []) |> Enum.to_list()
                # Task.yield: nil while running, then the result
                t = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [300])
                nil = Task.yield(t, 0)
                {:ok, :slept} = Task.yield(t, 5000)
                # Task.shutdown: the task dies with :shutdown (no result)
                t = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [10_000])
                m = Process.monitor(t.pid)
                Process.sleep(100)
                nil = Task.shutdown(t)
                receive do {:DOWN, ^m, :process, _, :shutdown} -> :ok after 2000 -> raise "not shut down" end
                # ... also when it comes right after the start
                t = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [10_001])
                m = Process.monitor(t.pid)
                nil = Task.shutdown(t)
                receive do {:DOWN, ^m, :process, _, :shutdown} -> :ok after 2000 -> raise "not shut down early" end
                # :brutal_kill
                t = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [10_002])
                Process.sleep(100)
                nil = Task.shutdown(t, :brutal_kill)
                # the owner of an async task crashes: the linked task dies with its reason
                parent = self()
                {owner, oref} = spawn_monitor(fn ->
                  t = Task.Supervisor.async(sup, Hello, :sleepy, [10_003])
                  send(parent, {:task, t.pid})
                  receive do :crash -> exit(:owner_crashed) end
                end)
                task_pid = receive do {:task, p} -> p after 5000 -> raise "no task" end
                tm = Process.monitor(task_pid)
                Process.sleep(100)
                send(owner, :crash)
                receive do {:DOWN, ^oref, :process, _, :owner_crashed} -> :ok after 5000 -> raise "owner lived" end
                receive do {:DOWN, ^tm, :process, _, :owner_crashed} -> :ok after 5000 -> raise "task outlived its owner" end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            await asyncio.sleep(0.1)
            assert {10_000, 10_002, 10_003} <= set(served.cancelled)
    run(main())


def test_task_supervisor_children_and_terminate_child(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            sup_proc = TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                [] = Task.Supervisor.children(sup)
                t1 = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [10_000])
                t2 = Task.Supervisor.async_nolink(sup, Hello, :sleepy, [10_000])
                children = Task.Supervisor.children(sup)
                true = Enum.sort(children) == Enum.sort([t1.pid, t2.pid])
                %{active: 2, workers: 2, supervisors: 0, specs: 2} = DynamicSupervisor.count_children(sup)
                :ok = Task.Supervisor.terminate_child(sup, t1.pid)
                {:exit, :shutdown} = Task.yield(t1, 2000)
                {:error, :not_found} = Task.Supervisor.terminate_child(sup, t1.pid)
                [p] = Task.Supervisor.children(sup)
                ^p = t2.pid
                {:error, :not_found} = Task.Supervisor.terminate_child(sup, self())
                :ok = Task.Supervisor.terminate_child(sup, t2.pid)
                {:exit, :shutdown} = Task.yield(t2, 2000)
                [] = Task.Supervisor.children(sup)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            assert sup_proc.children == set()
    run(main())


def test_2000_concurrent_task_supervisor_async_calls(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                sup = {KV.RouterTasks, py}
                # 2,000 callers at once, each its own Task.Supervisor.async with its own argument
                results =
                  1..2000
                  |> Enum.map(fn i ->
                    Task.async(fn ->
                      f = if rem(i, 2) == 0, do: :square, else: :plain_square
                      {i, Task.Supervisor.async(sup, Hello, f, [i]) |> Task.await(60_000)}
                    end)
                  end)
                  |> Task.await_many(120_000)
                expected = Enum.map(1..2000, &{&1, &1 * &1})
                ^expected = results
                [] = Task.Supervisor.children(sup)
                IO.puts("2000 answered")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=150)
            r.check()
            assert "2000 answered" in r.stdout
    run(main(), timeout=180)


# -- Task.Supervisor client from Python ---------------------------------------------------

def test_task_supervisor_client_against_a_beam_supervisor(cookie, services):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            beam = await connected(node, services)
            sup = ("KV.RouterTasks", services.name)
            task = await task_supervisor.async_(node, sup, "Kernel", "node", [])
            assert await task.await_(timeout=5) == beam
            task = await task_supervisor.async_(node, sup, "Enum", "sum", [[1, 2, 3]])
            assert await task.await_(timeout=5) == 6
            # a remote crash: Exit with the BEAM's reason
            task = await task_supervisor.async_(node, sup, "String", "to_integer", ["x"])
            with pytest.raises(Exit) as info:
                await task.await_(timeout=5)
            reason = info.value.reason
            assert type(info.value) is Exit
            assert reason[0] == Atom("badarg")
            assert reason[1][0][:3] == (Atom("erlang"), Atom("binary_to_integer"), [b"x"])
            task = await task_supervisor.async_(node, sup, "Helpers", "boom", ["kaput"])
            with pytest.raises(Exit) as info:
                await task.await_(timeout=5)
            struct, stack = info.value.reason
            assert struct[Atom("__struct__")] == Atom("Elixir.RuntimeError") and struct[Atom("message")] == b"kaput"
            assert stack[0][:2] == (Atom("Elixir.Helpers"), Atom("boom"))
            task = await task_supervisor.async_(node, sup, "erlang", "exit", [Atom("boom")])
            with pytest.raises(Exit) as info:
                await task.await_(timeout=5)
            assert info.value.reason == Atom("boom")
            # a timeout: Timeout, and the task is gone (killed through its link to the owner)
            task = await task_supervisor.async_(node, sup, "Helpers", "sleep_then", [5000, 1])
            assert await rpc.call(node, beam, "Elixir.Task.Supervisor", "children",
                                  [Atom("Elixir.KV.RouterTasks")]) == [task.pid]
            with pytest.raises(Timeout):
                await task.await_(timeout=0.2)

            async def no_children():
                return await rpc.call(node, beam, "Elixir.Task.Supervisor", "children",
                                      [Atom("Elixir.KV.RouterTasks")]) == []
            await eventually(no_children, 5, "the timed-out task to die")
            # no such supervisor
            with pytest.raises(NoProc):
                await task_supervisor.async_(node, ("Nobody.Tasks", services.name), "Kernel", "node", [])
    run(main())


def test_calls_to_a_node_that_goes_down_raise_noconnection(cookie, beam_nodes):
    bar = beam_nodes("bar", script=SERVICES)

    async def main():
        async with Node(unique("foo"), cookie) as node:
            beam = await connected(node, bar)
            task = await task_supervisor.async_(node, ("KV.RouterTasks", bar.name), "Helpers", "sleep_then", [10_000, 1])
            call = asyncio.ensure_future(gen_server.call(node, (Atom("Elixir.Echo"), beam), (Atom("slow"), 10_000), timeout=30))
            erpc = asyncio.ensure_future(rpc.call(node, beam, "Elixir.Helpers", "sleep_then", [10_000, 1], timeout=30))
            await asyncio.sleep(0.3)
            bar.kill()
            with pytest.raises(NoConnection):
                await task.await_(timeout=30)
            with pytest.raises(NoConnection):
                await call
            with pytest.raises(NoConnection):
                await erpc
            with pytest.raises(NoConnection):
                await task_supervisor.async_(node, ("KV.RouterTasks", bar.name), "Kernel", "node", [])
    run(main())


# -- rpc and erpc into Python -----------------------------------------------------------------

def test_rpc_erpc_and_spawn_into_python(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            r = await run_elixir(script("""
                py = PY
                Process.flag(:trap_exit, true)
                ^py = :rpc.call(py, :erlang, :node, [])
                ^py = :rpc.call(py, Kernel, :node, [], 5000)
                {:hello, 2} = :erpc.call(py, Hello, :world, [2])
                {:hello, 2} = :erpc.call(py, Hello, :world, [2], 5000)
                me = node()
                [{:ok, ^py}, {:ok, ^me}] = :erpc.multicall([py, node()], Kernel, :node, [])
                [{:ok, {:hello, 1}}, {:error, {:erpc, :noconnection}}] =
                  :erpc.multicall([py, :"nobody@HOST"], Hello, :world, [1])
                {[{:hello, 4}], [:"nobody@HOST"]} = :rpc.multicall([py, :"nobody@HOST"], Hello, :world, [4])
                {:hello, 3} = :rpc.block_call(py, Hello, :world, [3])
                # C-node style request straight to rex
                send({:rex, py}, {self(), {:call, Hello, :world, [5], Process.group_leader()}})
                receive do {:rex, {:hello, 5}} -> :ok after 5000 -> raise "rex did not answer" end
                send({:rex, py}, {self(), {:call, Nope, :f, [], Process.group_leader()}})
                receive do {:rex, {:badrpc, {:EXIT, {:undef, [{Nope, :f, [], []}]}}}} -> :ok after 5000 -> raise "rex undef" end
                # Node.spawn/4 and spawn_link/4 run an MFA in a new Python process
                p = Node.spawn(py, Hello, :notify, [self(), :spawned])
                ^py = node(p)
                receive do {:notify, :spawned} -> :ok after 5000 -> raise "Node.spawn did not run" end
                l = Node.spawn_link(py, Hello, :notify, [self(), :linked])
                receive do {:notify, :linked} -> :ok after 5000 -> raise "spawn_link did not run" end
                receive do {:EXIT, ^l, :normal} -> :ok after 5000 -> raise "no normal EXIT" end
                c = Node.spawn_link(py, Hello, :fail, [:value])
                exit_c = receive do {:EXIT, ^c, r} -> r after 5000 -> raise "no crash EXIT" end
                {%ArgumentError{message: "bad value"}, _} = exit_c  # outside receive: scripts/repro-elixir-link-exit-crash.sh
                {m, ref} = :erlang.spawn_monitor(py, Hello, :notify, [self(), :monitored])
                receive do {:notify, :monitored} -> :ok after 5000 -> raise "spawn_monitor did not run" end
                receive do {:DOWN, ^ref, :process, ^m, :normal} -> :ok after 5000 -> raise "no DOWN" end
                # casts
                true = :rpc.cast(py, Hello, :notify, [self(), :rpc_cast])
                receive do {:notify, :rpc_cast} -> :ok after 5000 -> raise "rpc.cast did not run" end
                :ok = :erpc.cast(py, Hello, :notify, [self(), :erpc_cast])
                receive do {:notify, :erpc_cast} -> :ok after 5000 -> raise "erpc.cast did not run" end
                # erpc errors as a BEAM caller understands them
                {:error, {:erpc, :timeout}} = try do :erpc.call(py, Hello, :sleepy, [2000], 100) catch k, r -> {k, r} end
                {:error, {:erpc, :noconnection}} = try do :erpc.call(:"nobody@HOST", Hello, :world, [1]) catch k, r -> {k, r} end
                {:badrpc, :nodedown} = :rpc.call(:"nobody@HOST", Hello, :world, [1])
                {:badrpc, :timeout} = :rpc.call(py, Hello, :sleepy, [2000], 100)
                IO.puts("ALL OK")
            """, PY=lit(node.name), HOST=HOST), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


def test_rpc_and_erpc_failure_shapes_match_a_beam_node(cookie):
    """Differential: the same failing calls against the script's own (BEAM) node and
    against the Python node give the same terms, stacktraces aside."""
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            TaskSupervisor.start(node, name="KV.RouterTasks")
            r = await run_elixir(script("""
                py = PY
                defmodule Twin do
                  def fail(msg), do: raise(ArgumentError, msg)
                  def leave(reason), do: exit(reason)
                  def toss(value), do: throw(value)
                  def ok(value), do: value
                end
                {:ok, _} = Task.Supervisor.start_link(name: KV.RouterTasks)
                strip = fn
                  {reason, [{_, _, _, _} | _]} -> {reason, :stack}
                  {:exception, reason, [{_, _, _, _} | _]} -> {:exception, reason, :stack}
                  other -> other
                end
                shapes = fn n, f, args ->
                  rpc = case :rpc.call(n, Twin, f, args) do
                    {:badrpc, {:EXIT, r}} -> {:badrpc, {:EXIT, strip.(r)}}
                    other -> other
                  end
                  erpc = try do {:ok, :erpc.call(n, Twin, f, args)} catch k, r -> {k, strip.(r)} end
                  t = Task.Supervisor.async_nolink({KV.RouterTasks, n}, Twin, f, args)
                  task = case Task.yield(t, 5000) do
                    {:exit, r} -> {:exit, strip.(r)}
                    other -> other
                  end
                  {rpc, erpc, task}
                end
                for {f, args} <- [{:fail, ["bad"]}, {:leave, [{:shutdown, :x}]}, {:leave, [:normal]},
                                  {:toss, [:ball]}, {:ok, [{:a, [1, 2]}]}, {:missing, [1]}] do
                  beam = shapes.(node(), f, args)
                  python = shapes.(py, f, args)
                  IO.inspect({f, beam}, label: "beam  ")
                  IO.inspect({f, python}, label: "python")
                  ^beam = python
                end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
    run(main())


def test_closures_are_refused_and_the_node_keeps_serving(cookie):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            r = await run_elixir(script("""
                py = PY
                Process.flag(:trap_exit, true)
                {:badrpc, :notsup} = :rpc.call(py, :erlang, :apply, [fn -> 1 end, []])
                {:error, {:erpc, :notsup}} = try do :erpc.call(py, fn -> 1 end) catch k, r -> {k, r} end
                {:error, {:erpc, :notsup}} = try do :erpc.call(py, :erlang, :apply, [fn -> 1 end, []]) catch k, r -> {k, r} end
                p = Node.spawn_link(py, fn -> 1 end)
                receive do {:EXIT, ^p, :notsup} -> :ok after 5000 -> raise "no notsup EXIT" end
                # a fun passed as a plain argument is only data: it can cross and come back
                f = fn x -> x end
                {:hello, ^f} = :erpc.call(py, Hello, :world, [f])
                ^py = :rpc.call(py, :erlang, :node, [])
                true = py in Node.list(:hidden)
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            assert "ALL OK" in r.stdout
            rex = node.whereis("rex")
            assert rex is not None and rex.alive                  # the node's servers lived on
    run(main())


# -- rpc from Python to the BEAM ----------------------------------------------------------------

def test_rpc_from_python_to_beam(cookie, services, capsys):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            beam = await connected(node, services)
            assert await rpc.call(node, beam, "erlang", "node", []) == beam
            assert await rpc.call(node, services.name, "Enum", "reverse", [[1, 2, 3]]) == [3, 2, 1]
            assert await rpc.call(node, beam, "String", "upcase", ["héllo"]) == "HÉLLO".encode()
            # remote raise: RemoteError with the BEAM's reason and stack
            with pytest.raises(rpc.RemoteError) as info:
                await rpc.call(node, beam, "Helpers", "boom", ["kaput"])
            assert info.value.reason[Atom("__struct__")] == Atom("Elixir.RuntimeError")
            assert info.value.reason[Atom("message")] == b"kaput"
            assert info.value.stacktrace[0][:2] == (Atom("Elixir.Helpers"), Atom("boom"))
            assert "(RuntimeError) kaput" in str(info.value)
            with pytest.raises(rpc.RemoteError) as info:
                await rpc.call(node, beam, "String", "to_integer", ["x"])
            assert info.value.reason == Atom("badarg")
            with pytest.raises(rpc.RemoteError) as info:
                await rpc.call(node, beam, "Nope", "nothing", [])
            assert info.value.reason == Atom("undef")
            with pytest.raises(Exit) as exit_info:
                await rpc.call(node, beam, "erlang", "exit", [Atom("boom")])
            assert exit_info.value.reason == Atom("boom")
            with pytest.raises(Throw) as throw_info:
                await rpc.call(node, beam, "erlang", "throw", [Atom("ball")])
            assert throw_info.value.value == Atom("ball")
            with pytest.raises(Timeout):
                await rpc.call(node, beam, "Helpers", "sleep_then", [2000, 1], timeout=0.2)
            with pytest.raises(NoConnection):
                await rpc.call(node, f"nobody@{HOST}", "erlang", "node", [])
            # a cast runs there: it sends us a message
            me = node.process()
            rpc.cast(me, beam, "erlang", "send", [me.pid, (Atom("cast"), 1)])
            assert await me.receive(timeout=5) == (Atom("cast"), 1)
            # what the remote function prints comes to our console (our group leader)
            assert await rpc.call(node, beam, "IO", "puts", ["printed over there"]) == OK
    run(main())
    assert "printed over there" in capsys.readouterr().out


# -- group-leader IO ---------------------------------------------------------------------------

def test_group_leader_io_shows_on_the_callers_console(cookie, capfd):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            Served(node)
            r = await run_elixir(script("""
                py = PY
                :ok = :rpc.call(py, Hello, :say, ["hello world"])
                :ok = :erpc.call(py, Hello, :say_async, ["hello async world"])
                Process.flag(:trap_exit, true)
                p = Node.spawn_link(py, Hello, :say, ["hello from spawn_link"])
                receive do {:EXIT, ^p, :normal} -> :ok after 5000 -> raise "spawn_link did not end" end
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie)
            r.check()
            return r
    r = run(main())
    out_lines = r.stdout.splitlines()
    assert "hello world" in out_lines
    assert "hello async world!" in out_lines
    assert "hello from spawn_link" in out_lines
    assert out_lines.index("hello world") < out_lines.index("ALL OK")
    ours = capfd.readouterr().out
    assert "hello world" not in ours        # printed there, not here
