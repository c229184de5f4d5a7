defmodule KV.SupervisionTest do
  @moduledoc """
  pykv's Python node (foo) runs the guide's supervision tree, as this node does: asked
  from here with Supervisor's own functions, the two trees answer alike, and a crash of
  foo's registry is followed by a restart. Not async: the crash takes foo's buckets with it
  (one_for_all), which would disturb the other distributed tests.
  """
  use ExUnit.Case, async: false
  @moduletag :distributed
  @moduletag :capture_log

  defp foo, do: :"foo@#{KV.RoutingTable.local_host()}"

  defp shape(children), do: Enum.map(children, fn {id, pid, type, mods} -> {id, is_pid(pid), type, mods} end)

  test "foo's KV.Supervisor has this node's children, in the same order" do
    mine = Supervisor.which_children(KV.Supervisor)
    theirs = Supervisor.which_children({KV.Supervisor, foo()})
    assert shape(theirs) == shape(mine)
    assert Supervisor.count_children({KV.Supervisor, foo()}) == Supervisor.count_children(KV.Supervisor)
    assert :supervisor.get_childspec({KV.Supervisor, foo()}, KV.Registry) ==
             :supervisor.get_childspec(KV.Supervisor, KV.Registry)
    assert [{:undefined, pid, :worker, [KV.Bucket]} | _] =
             (
               _ = GenServer.call({KV.Registry, foo()}, {:create, "supervised"})
               DynamicSupervisor.which_children({KV.BucketSupervisor, foo()})
             )

    assert node(pid) == foo()
  end

  test "a registry on foo that crashes is restarted, and serves again" do
    registry = {KV.Registry, foo()}
    before = elem(:sys.get_status(registry), 1)

    assert {{:function_clause, [{KV.Registry, :handle_call, [:junk, _, _], _} | _]}, _} =
             catch_exit(GenServer.call(registry, :junk))

    after_ = wait_for(fn -> elem(:sys.get_status(registry), 1) end)
    assert after_ != before
    name = "restarted-#{System.unique_integer([:positive])}"
    pid = wait_for(fn -> KV.Router.route("a" <> name, KV.Registry, :create, [KV.Registry, "a" <> name]) end)
    assert node(pid) == foo()
  end

  defp wait_for(fun, tries \\ 200) do
    try do
      fun.()
    catch
      :exit, _ when tries > 0 ->
        Process.sleep(25)
        wait_for(fun, tries - 1)
    end
  end
end
