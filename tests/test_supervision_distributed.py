"""Issue 9 items 1-4 against real BEAM nodes: the Python KV tree (foo) beside elixir_peer's
(bar), asked the same things by a third BEAM node, answer term for term alike where a BEAM
supervisor's answers do not depend on its internals (pids and stacktraces are normalized)."""

from __future__ import annotations

import asyncio
import contextlib
import logging

import pytest

from conftest import free_port_pair, lit, run, run_elixir, script, unique, wait_for_kv
from pykv import Atom, Node
from pykv.kv import start_kv
from pykv.otp.gen_server import GenServer

pytestmark = [pytest.mark.distributed, pytest.mark.usefixtures("elixir_peer_built")]

# Elixir helpers for the scripts: pids, refs and stacktraces made comparable, and a retry loop
HELPERS = r'''
defmodule Norm do
  def n(pid) when is_pid(pid), do: :pid
  def n(ref) when is_reference(ref), do: :ref
  def n([frame | _] = list) do
    if frame?(frame), do: :stack, else: nl(list)
  end
  def n(t) when is_tuple(t), do: t |> Tuple.to_list() |> Enum.map(&n/1) |> List.to_tuple()
  def n(%{} = m), do: :maps.from_list(for {k, v} <- :maps.to_list(m), do: {n(k), n(v)})
  def n(other), do: other
  defp nl([h | t]), do: [n(h) | nl(t)]
  defp nl([]), do: []
  defp nl(improper_tail), do: n(improper_tail)
  defp frame?({m, f, a, loc}) when is_atom(m) and is_atom(f) and (is_integer(a) or is_list(a)) and is_list(loc),
    do: Enum.all?(loc, &is_tuple/1)
  defp frame?(_), do: false

  def until(fun, tries \\ 200) do
    case (try do fun.() catch :exit, _ -> :retry end) do
      :retry when tries > 0 -> Process.sleep(25); until(fun, tries - 1)
      :retry -> raise "gave up waiting"
      result -> result
    end
  end

  def compare(label, foo, bar) do
    {l, r} = {n(foo), n(bar)}
    if l == r, do: IO.puts("SAME #{label}"), else: IO.puts("DIFF #{label}: #{inspect(l)} vs #{inspect(r)}")
  end
end
'''


@contextlib.asynccontextmanager
async def both(cookie: str, beam_nodes, port: int | None = None, beam_port: int | None = None):
    """foo: the Python node with the KV app (every bucket its own); bar: elixir_peer, the same."""
    foo = unique("foo")
    sname = unique("bar")
    env = {"KV_ROUTING_TABLE": f"a-z={sname}"}
    if beam_port is not None:
        env["KV_PORT"] = str(beam_port)
    bar = beam_nodes(sname=sname, kv_app=True, env=env)
    async with Node(foo, cookie) as node:
        await start_kv(node, None, port=port)
        await wait_for_kv(node, bar.name)
        yield node, bar


def checked(result) -> str:
    result.check()
    out = result.stdout
    assert "DIFF" not in out, out
    return out


def test_supervisor_calls_answer_as_elixir_peers(cookie: str, beam_nodes) -> None:
    async def main() -> None:
        async with both(cookie, beam_nodes) as (node, bar):
            out = checked(await run_elixir(HELPERS + script('''
                foo = FOO; bar = BAR
                ask = fn node ->
                  sup = {KV.Supervisor, node}
                  buckets = {KV.BucketSupervisor, node}
                  first = [
                    which: Supervisor.which_children(sup),
                    count: Supervisor.count_children(sup),
                    childspec: :supervisor.get_childspec(sup, KV.Registry),
                    childspec_nope: :supervisor.get_childspec(sup, :nope),
                    buckets_empty: DynamicSupervisor.which_children(buckets),
                    create: is_pid(GenServer.call({KV.Registry, node}, {:create, "shapes"})),
                    buckets_one: DynamicSupervisor.which_children(buckets),
                    buckets_count: DynamicSupervisor.count_children(buckets),
                    buckets_count_raw: GenServer.call(buckets, :count_children),
                    terminate_nope: Supervisor.terminate_child(sup, :nope),
                    restart_running: Supervisor.restart_child(sup, KV.Registry),
                    delete_running: Supervisor.delete_child(sup, KV.Registry),
                    terminate: Supervisor.terminate_child(sup, KV.Registry),
                    which_terminated: Supervisor.which_children(sup),
                    count_terminated: Supervisor.count_children(sup),
                    restart: Supervisor.restart_child(sup, KV.Registry),
                    restart_again: Supervisor.restart_child(sup, KV.Registry),
                    start_duplicate: Supervisor.start_child(sup, %{id: KV.Registry, start: {KV.Registry, :start_link, [[name: X]]}}),
                    start_undef: Supervisor.start_child(sup, %{id: :x, start: {Nope, :start_link, []}}),
                    start_bad_mfa: Supervisor.start_child(sup, %{id: :y, start: {Nope, :start_link}}),
                    start_bad_restart: Supervisor.start_child(sup, %{id: :y, start: {Nope, :f, []}, restart: :sometimes}),
                    buckets_undef: DynamicSupervisor.start_child(buckets, %{id: :x, start: {Nope, :start_link, []}}),
                    buckets_nope: DynamicSupervisor.terminate_child(buckets, self()),
                  ]
                  # a bucket from a BEAM child spec: on foo, KV.Bucket.start_link/1 is a Python export
                  {:ok, b} = DynamicSupervisor.start_child(buckets, %{id: KV.Bucket, start: {KV.Bucket, :start_link, [[]]}, restart: :temporary})
                  :ok = GenServer.call(b, {:put, "k", 1})
                  1 = GenServer.call(b, {:get, "k"})
                  ref = Process.monitor(b)
                  first ++ [
                    spec_bucket_count: DynamicSupervisor.count_children(buckets),
                    spec_bucket_terminate: DynamicSupervisor.terminate_child(buckets, b),
                    spec_bucket_down: (receive do {:DOWN, ^ref, _, _, r} -> r after 5000 -> :no_down end),
                    tasks: Task.Supervisor.children({KV.RouterTasks, node}),
                    tasks_count: DynamicSupervisor.count_children({KV.RouterTasks, node}),
                    callback: :supervisor.get_callback_module(elem(:sys.get_status(sup), 1)),
                  ]
                end
                left = ask.(foo); right = ask.(bar)
                for {{key, l}, {key, r}} <- Enum.zip(left, right), do: Norm.compare(key, l, r)
                IO.inspect(Norm.n(left), label: "foo", limit: :infinity)
            ''', FOO=lit(node.name), BAR=lit(bar.name)), sname=unique("baz"), cookie=cookie))
            assert out.count("SAME") == 29, out
    run(main())


def test_a_crashed_server_is_restarted_and_clients_see_what_they_see_on_elixir_peer(
        cookie: str, beam_nodes, caplog) -> None:
    py_port, beam_port = free_port_pair()

    async def main() -> None:
        async with both(cookie, beam_nodes, py_port, beam_port) as (node, bar):
            out = checked(await run_elixir(HELPERS + script('''
                foo = FOO; bar = BAR
                line = fn port, text ->
                  # elixir_peer's line server is in its one_for_all tree: while the tree
                  # restarts, nothing listens (econnrefused), and the caller retries
                  case :gen_tcp.connect(~c"127.0.0.1", port, [:binary, active: false, packet: :line]) do
                    {:ok, s} ->
                      :ok = :gen_tcp.send(s, text)
                      answer = case :gen_tcp.recv(s, 0, 5000) do {:ok, a} -> a; {:error, e} -> e end
                      :gen_tcp.close(s)
                      answer
                    {:error, e} -> e
                  end
                end
                pid_of = fn name -> elem(:sys.get_status(name), 1) end
                ask = fn node, port ->
                  reg = {KV.Registry, node}
                  before = pid_of.(reg)
                  old_bucket = GenServer.call(reg, {:create, "before"})
                  mon = Process.monitor(old_bucket)
                  junk = try do GenServer.call(reg, :junk) catch :exit, r -> r end
                  {{:function_clause, [{KV.Registry, :handle_call, [:junk, _from, _state], _} | _]},
                   {GenServer, :call, [^reg, :junk, 5000]}} = junk
                  # restarted (one_for_all: its buckets went with it), then served as before
                  after_ = Norm.until(fn -> pid_of.(reg) end)
                  true = after_ != before
                  down = receive do {:DOWN, ^mon, _, _, r} -> r after 5000 -> :no_down end
                  created = Norm.until(fn -> GenServer.call(reg, {:create, "after"}) end)
                  # the line server finds the new registry: OK once the restart is done
                  lines = Norm.until(fn -> case line.(port, "CREATE fresh\\r\\n") do "OK\\r\\n" -> ["OK"]; _ -> :retry end end)
                  # an unknown cast crashes it with use GenServer's message
                  mon2 = Process.monitor(reg)
                  GenServer.cast(reg, :junk)
                  cast_down = receive do {:DOWN, ^mon2, _, _, r} -> r after 5000 -> :no_down end
                  # matched outside receive: scripts/repro-elixir-link-exit-crash.sh
                  cast_reason = case cast_down do {%RuntimeError{message: m}, _} -> m; other -> other end
                  Norm.until(fn -> GenServer.call(reg, {:lookup, "x"}) end)
                  # an unknown cast to the task supervisor is ignored (DynamicSupervisor's handle_cast)
                  tasks = {KV.RouterTasks, node}
                  tasks_pid = pid_of.(tasks)
                  GenServer.cast(tasks, :junk)
                  ran = Task.await(Task.Supervisor.async(tasks, Kernel, :node, []))
                  [junk: junk, restarted: true, old_bucket_down: down, lookup_before: GenServer.call(reg, {:lookup, "before"}),
                   created: is_pid(created), lines: lines, cast: cast_reason,
                   task_ran_on: ran == node, tasks_same: pid_of.(tasks) == tasks_pid]
                end
                left = ask.(foo, PY_PORT); right = ask.(bar, BEAM_PORT)
                for {{key, l}, {key, r}} <- Enum.zip(left, right), key != :junk, do: Norm.compare(key, l, r)
                IO.inspect(left, label: "foo")
            ''', FOO=lit(node.name), BAR=lit(bar.name), PY_PORT=str(py_port), BEAM_PORT=str(beam_port)),
                sname=unique("baz"), cookie=cookie))
            assert out.count("SAME") == 8, out
            assert 'cast: "attempted to cast GenServer KV.Registry but no handle_cast/2 clause was provided"' in out
    with caplog.at_level(logging.INFO):
        run(main())
    text = caplog.text
    assert "GenServer KV.Registry terminating\n** (FunctionClauseError) no function clause matching in KV.Registry.handle_call/3" in text
    assert "Last message (from #PID<" in text and "): :junk\nState: %{" in text
    assert "Child KV.Registry of Supervisor KV.Supervisor terminated" in text


def test_a_linked_process_on_a_node_that_goes_down_takes_the_registry_down_loudly(
        cookie: str, beam_nodes, caplog) -> None:
    async def main() -> None:
        async with both(cookie, beam_nodes) as (node, bar):
            before = {n: (await status_pid(node, n)) for n in (node.name, Atom(bar.name))}
            # a BEAM process links to both registries, then its node halts
            (await run_elixir(script('''
                for node <- [FOO, BAR] do
                  Process.link(elem(:sys.get_status({KV.Registry, node}), 1))
                  :sys.get_status({KV.Registry, node})  # answered after the link: it is in place
                end
                System.halt(0)
            ''', FOO=lit(node.name), BAR=lit(bar.name)), sname=unique("linker"), cookie=cookie)).check()
            for name, pid in before.items():
                for _ in range(200):
                    now = await status_pid(node, name)
                    if now is not None and now != pid:
                        break
                    await asyncio.sleep(0.025)
                else:
                    raise AssertionError(f"the registry on {name} was not restarted")
    with caplog.at_level(logging.INFO):
        run(main())
    assert "GenServer KV.Registry terminating\n** (exit) :noconnection\nExit from a linked process" in caplog.text
    assert "Child KV.Registry of Supervisor KV.Supervisor terminated\n** (exit) no connection" in caplog.text


async def status_pid(node: Node, where: Atom):
    from pykv.otp import sys as sys_client
    try:
        return (await sys_client.get_status(node, (Atom("Elixir.KV.Registry"), where), timeout=2))[1]
    except Exception:
        return None


def test_sys_on_python_servers_as_on_beam_servers(cookie: str, beam_nodes) -> None:
    async def main() -> None:
        async with both(cookie, beam_nodes) as (node, bar):
            @node.export("Probe", "bump", blocking=False)
            def bump(state):
                return {**state, Atom("bumped"): True}

            out = checked(await run_elixir(HELPERS + script('''
                foo = FOO; bar = BAR
                ask = fn node ->
                  reg = {KV.Registry, node}
                  sup = {KV.Supervisor, node}
                  state = :sys.get_state(reg)
                  {:status, reg_pid, {:module, :gen_server}, [pdict, :running, parent, [], misc]} = :sys.get_status(reg)
                  [header: header, data: [{~c"Status", :running}, {~c"Parent", ^parent}, {~c"Logged events", []}],
                   data: [{~c"State", ^state}]] = misc
                  {:status, sup_pid, {:module, :gen_server}, [sup_pdict, :running, _, [], sup_misc]} = :sys.get_status(sup)
                  true = parent == sup_pid
                  st = :sys.get_state(sup)  # the #state{} record: its first fields are the same in OTP 25-29
                  {:state, sup_name, strategy, {ids, _db}, _, 3, 5} = st |> Tuple.to_list() |> Enum.take(7) |> List.to_tuple()
                  ds_pdict = elem(:sys.get_status({KV.RouterTasks, node}), 3) |> hd()
                  ds = :sys.get_state({KV.BucketSupervisor, node})
                  # suspended: calls wait, :sys is still served
                  :ok = :sys.suspend(reg)
                  timed_out = try do GenServer.call(reg, {:lookup, "x"}, 200) catch :exit, {r, _} -> r end
                  waiting = Task.async(fn -> GenServer.call(reg, {:lookup, "y"}, 10_000) end)
                  suspended = :sys.get_status(reg) |> elem(3) |> Enum.at(1)
                  :ok = :sys.resume(reg)
                  served = Task.await(waiting)
                  :ok = :sys.statistics(reg, true)
                  GenServer.call(reg, {:lookup, "x"})
                  {:ok, stats} = :sys.statistics(reg, :get)
                  :ok = :sys.statistics(reg, false)
                  :ok = :sys.log(reg, true)
                  GenServer.call(reg, {:lookup, "x"})
                  {:ok, events} = :sys.log(reg, :get)
                  :ok = :sys.log(reg, false)
                  [state_keys: state |> Map.keys() |> Enum.sort(), state_sup: state.bucket_supervisor,
                   initial_call: pdict[:"$initial_call"], first_ancestor: hd(pdict[:"$ancestors"]),
                   header: List.to_string(header), sup_initial_call: sup_pdict[:"$initial_call"],
                   callback: :supervisor.get_callback_module(sup_pid), sup_state: {sup_name, strategy, ids},
                   status_items: Enum.map(sup_misc, &elem(&1, 0)) |> Enum.take(3),
                   task_defaults: List.keyfind(ds_pdict, Task.Supervisor, 0),
                   ds_keys: ds |> Map.keys() |> Enum.sort(),
                   ds_fields: Map.take(ds, [:__struct__, :mod, :name, :strategy, :max_children, :max_restarts, :max_seconds, :extra_arguments]),
                   timed_out: timed_out, suspended: suspended, served: served,
                   stats: Keyword.keys(stats), counted: {stats[:messages_in], stats[:messages_out]},
                   # (the state in an :out event: the registry's names are an ETS table on the BEAM)
                   events: Enum.map(Norm.n(events), fn {:out, r, to, _state} -> {:out, r, to}; e -> e end),
                   trace: :sys.trace(reg, true), untrace: :sys.trace(reg, false),
                   inspected: is_binary(inspect(:sys.get_status(sup))), pid: is_pid(reg_pid)]
                end
                left = ask.(foo); right = ask.(bar)
                for {{key, l}, {key, r}} <- Enum.zip(left, right), do: Norm.compare(key, l, r)
                IO.inspect(left, label: "foo")
                # what only Python has: no closure runs here; an exported &Mod.fun/1 does
                err = try do :sys.replace_state({KV.Registry, foo}, fn s -> s end) catch :error, r -> r end
                IO.inspect(err, label: "closure")
                {:callback_failed, {:gen_server, :system_replace_state}, {:error, :notsup}} = err
                %{bumped: true} = :sys.replace_state({KV.Registry, foo}, &Probe.bump/1)
                %{bumped: true} = :sys.get_state({KV.Registry, foo})
                IO.puts("replaced")
            ''', FOO=lit(node.name), BAR=lit(bar.name)), sname=unique("baz"), cookie=cookie))
            assert out.count("SAME") == 22 and "replaced" in out, out
            assert node.whereis("KV.Registry").bumped is True
    run(main())


class Bare(GenServer):
    beam_module = "Bare"


def test_genserver_defaults_match_a_beam_genserver(cookie: str, caplog) -> None:
    async def main() -> None:
        async with Node(unique("foo"), cookie) as node:
            Bare.start(node, name="bare")
            out = checked(await run_elixir(HELPERS + script('''
                defmodule Bare do
                  use GenServer
                  def init(s), do: {:ok, s}
                end
                {:ok, _} = GenServer.start(Bare, %{}, name: :bare)
                mine = try do GenServer.call(:bare, :hello) catch :exit, {reason, _} -> reason end
                theirs = try do GenServer.call({:bare, FOO}, :hello) catch :exit, {reason, _} -> reason end
                {%RuntimeError{message: m1}, [_ | _]} = mine
                {%RuntimeError{message: m2}, [_ | _]} = theirs
                Norm.compare(:message, m1, m2)
                IO.puts(m2)
            ''', FOO=lit(node.name)), sname=unique("baz"), cookie=cookie))
            assert "SAME message" in out
            assert "attempted to call GenServer :bare but no handle_call/3 clause was provided" in out
            quiet = Bare.start(node, name="quiet")
            (await run_elixir(script('''
                send({:quiet, FOO}, {:junk, "from the BEAM"})
                :sys.get_state({:quiet, FOO})
            ''', FOO=lit(node.name)), sname=unique("baz"), cookie=cookie)).check()
            assert quiet.alive
    with caplog.at_level(logging.INFO):
        run(main())
    assert 'Bare :quiet received unexpected message in handle_info/2: {:junk, "from the BEAM"}' in caplog.text
