"""The read-only introspection built-ins (pykv/otp/introspection.py), called from real BEAM
nodes and compared with what the BEAM answers for its own processes: a Python process and a
BEAM process in the same state (registered, trapping exits, one link, one monitor each way,
one message waiting) must give the same items with the same shapes, and the same values
where the state is the same; errors must be the BEAM's own badarg, stacktrace included."""

from __future__ import annotations

import pytest

from conftest import alongside, run, run_elixir, unique
from pykv import Atom, Node
from pykv.otp import introspection

pytestmark = pytest.mark.distributed

# Elixir helpers: the shape of a term (types, recursively), and the first frame of an error
HELPERS = r'''
defmodule Shape do
  def of(v) when is_boolean(v), do: :boolean
  def of(v) when is_atom(v), do: :atom
  def of(v) when is_pid(v), do: :pid
  def of(v) when is_integer(v), do: :integer
  def of([]), do: :empty
  def of(v) when is_list(v), do: {:list, v |> Enum.map(&of/1) |> Enum.uniq()}
  def of(v) when is_tuple(v), do: {:tuple, v |> Tuple.to_list() |> Enum.map(&of/1)}
  def of(v) when is_map(v), do: :map
  def of(_), do: :other
end
'''


def test_process_info_and_friends_answer_as_the_beam_does(cookie: str) -> None:
    foo = unique("foo")

    async def main() -> None:
        async with Node(foo, cookie) as node:
            introspection.install(node)
            probe = node.process("probe")
            nameless = node.process()

            async def set_up() -> None:
                _, sender, watched = await probe.receive(timeout=30)
                probe.trap_exit = True
                probe.link(sender)
                probe.monitor(watched)
                probe.send(sender, (Atom("ready"), nameless.pid))

            result = await alongside(run_elixir(HELPERS + f'''
                foo = :"{node.name.name}"
                me = self()
                watched = spawn(fn -> receive do :stop -> :ok end end)

                # the BEAM's own probe: registered, trapping exits, linked to me, monitoring
                # `watched`, monitored by me, one message waiting
                beam = spawn(fn ->
                  Process.flag(:trap_exit, true)
                  Process.link(me)
                  Process.monitor(watched)
                  send(me, :beam_ready)
                  receive do :stop -> :ok end
                end)
                Process.register(beam, :beam_probe)
                receive do :beam_ready -> :ok end
                Process.monitor(beam)
                send(beam, :queued)

                # the Python probe, in the same state
                send({{:probe, foo}}, {{:setup, me, watched}})
                py_nameless = receive do {{:ready, pid}} -> pid after 10_000 -> raise "no ready" end
                py = :rpc.call(foo, :erlang, :whereis, [:probe])
                true = is_pid(py) and node(py) == foo
                Process.monitor(py)
                send(py, :queued)
                Process.sleep(200)

                py_info = :rpc.call(foo, :erlang, :process_info, [py])
                beam_info = :erlang.process_info(beam)
                IO.inspect(py_info, label: "python")
                for {{key, value}} <- py_info do
                  true = Keyword.has_key?(beam_info, key) || raise "#{{key}}: not a BEAM item"
                  beam_value = beam_info[key]
                  if Shape.of(value) != Shape.of(beam_value) and beam_value != [] do
                    raise "#{{key}}: #{{inspect(value)}} is not shaped as the BEAM's #{{inspect(beam_value)}}"
                  end
                end
                # the same state gives the same values
                for key <- [:status, :message_queue_len, :links, :monitors, :monitored_by, :trap_exit,
                            :priority, :dictionary] do
                  if py_info[key] != beam_info[key] do
                    raise "#{{key}}: python #{{inspect(py_info[key])}}, beam #{{inspect(beam_info[key])}}"
                  end
                end
                :probe = py_info[:registered_name]
                [:registered_name | _] = Keyword.keys(py_info)  # first, as on the BEAM

                # process_info/2: {{item, value}}, [] for no name, lists, dead pids
                {{:registered_name, :probe}} = :rpc.call(foo, :erlang, :process_info, [py, :registered_name])
                {{:messages, [:queued]}} = :rpc.call(foo, :erlang, :process_info, [py, :messages])
                {{:message_queue_len, 1}} = :rpc.call(foo, :erlang, :process_info, [py, :message_queue_len])
                rex = :rpc.call(foo, :erlang, :whereis, [:rex])
                nameless = spawn(fn -> receive do :stop -> :ok end end)
                [] = :erlang.process_info(nameless, :registered_name)
                [] = :rpc.call(foo, :erlang, :process_info, [py_nameless, :registered_name])
                [registered_name: [], status: _] = :erlang.process_info(nameless, [:registered_name, :status])
                [registered_name: [], status: :waiting] =
                  :rpc.call(foo, :erlang, :process_info, [py_nameless, [:registered_name, :status]])
                [] = :erlang.process_info(nameless, [])
                [] = :rpc.call(foo, :erlang, :process_info, [py_nameless, []])
                send(nameless, :stop)

                dead = Node.spawn(foo, :erlang, :node, [])
                Process.sleep(200)
                false = :rpc.call(foo, :erlang, :is_process_alive, [dead])
                true = :rpc.call(foo, :erlang, :is_process_alive, [py])
                for args <- [[dead], [dead, :status], [dead, [:status]]] do
                  :undefined = :rpc.call(foo, :erlang, :process_info, args)
                end

                # badarg, with the BEAM's stacktrace: a non-local pid, an unknown item, a non-atom
                beam_error = fn f, args ->
                  try do
                    apply(:erlang, f, args)
                    :no_error
                  catch
                    :error, reason -> {{reason, hd(__STACKTRACE__)}}
                  end
                end
                for {{f, args}} <- [{{:process_info, [me]}}, {{:process_info, [py, :bogus]}},
                                   {{:process_info, [py, [:status, :bogus]]}}, {{:is_process_alive, [me]}},
                                   {{:whereis, ["probe"]}}, {{:system_info, [:bogus]}}, {{:nodes, [:bogus]}},
                                   {{:statistics, [:bogus]}}] do
                  {{:badrpc, {{:EXIT, {{:badarg, [frame]}}}}}} = :rpc.call(foo, :erlang, f, args)
                  # the BEAM, asked the same about a pid that is not its own (or the same bad argument)
                  beam_args = Enum.map(args, fn ^me -> py; ^py -> beam; a -> a end)
                  {{:badarg, beam_frame}} = beam_error.(f, beam_args)
                  {{m, ^f, _, location}} = frame
                  {{^m, ^f, _, ^location}} = beam_frame
                  IO.puts("badarg #{{f}}: " <> Exception.format_banner(:error, :badarg, [frame]))
                end
                # the caller's shell explains it as for a BEAM node
                try do
                  :erpc.call(foo, :erlang, :process_info, [me])
                rescue
                  e in ErlangError -> {{:exception, :badarg, [_]}} = e.original
                end

                # the system
                registered = :rpc.call(foo, :erlang, :registered, [])
                true = Enum.all?([:probe, :rex, :net_kernel], &(&1 in registered))
                processes = :rpc.call(foo, :erlang, :processes, [])
                true = py in processes and rex in processes and Enum.all?(processes, &(node(&1) == foo))
                count = :rpc.call(foo, :erlang, :system_info, [:process_count])
                true = is_integer(count) and count >= length(registered)
                release = :erpc.call(foo, :erlang, :system_info, [:otp_release])
                true = Shape.of(release) == Shape.of(:erlang.system_info(:otp_release))
                {{_, ""}} = Integer.parse(List.to_string(release))
                version = :rpc.call(foo, :erlang, :system_info, [:system_version])
                true = Shape.of(version) == Shape.of(:erlang.system_info(:system_version))
                for item <- [:schedulers, :schedulers_online, :logical_processors, :wordsize, :atom_count, :creation] do
                  true = is_integer(:rpc.call(foo, :erlang, :system_info, [item])) || raise "#{{item}}"
                end
                8 = :rpc.call(foo, :erlang, :system_info, [:wordsize])
                [] = :rpc.call(foo, :erlang, :nodes, [])           # pykv's connections are hidden
                true = node() in :rpc.call(foo, :erlang, :nodes, [:hidden])
                true = node() in :rpc.call(foo, :erlang, :nodes, [:connected])
                [^foo] = :rpc.call(foo, :erlang, :nodes, [[:this]])
                [^foo | _] = :rpc.call(foo, :erlang, :nodes, [[:this, :hidden]])
                [total: total] = :rpc.call(foo, :erlang, :memory, [])
                true = is_integer(total) and total > 0 and Keyword.has_key?(:erlang.memory(), :total)
                true = is_integer(:rpc.call(foo, :erlang, :memory, [:total]))
                for item <- [:wall_clock, :runtime] do
                  {{a, b}} = :rpc.call(foo, :erlang, :statistics, [item])
                  true = Shape.of({{a, b}}) == Shape.of(:erlang.statistics(item))
                end
                :undefined = :rpc.call(foo, :erlang, :whereis, [:nobody])
                IO.puts("compared")
            ''', sname=unique("bar"), cookie=cookie), set_up())
            print(result.stdout)
            result.check()
            assert "compared" in result.stdout, result.stdout

    run(main())


def test_the_built_ins_are_only_there_when_installed(cookie: str) -> None:
    async def main() -> None:
        async with Node(unique("foo"), cookie) as node:
            result = await run_elixir(f'''
                {{:badrpc, {{:EXIT, {{:undef, _}}}}}} = :rpc.call(:"{node.name.name}", :erlang, :registered, [])
                IO.puts("undef")
            ''', sname=unique("bar"), cookie=cookie)
            result.check()
    run(main())


def test_otp_release_names_the_release_pykv_speaks_as() -> None:
    from pykv.dist import flags as F
    # OTP 26 made V4_NC and UNLINK_ID mandatory; pykv offers both
    assert F.OURS & F.V4_NC and F.OURS & F.UNLINK_ID
    assert int(introspection.speaks_as()) >= 26
