defmodule KV.RouterTest do
  use ExUnit.Case, async: true

  # The guide's nodes, on this machine: foo is pykv's Python node, bar is this one.
  defp foo, do: :"foo@#{KV.RoutingTable.local_host()}"
  defp bar, do: :"bar@#{KV.RoutingTable.local_host()}"

  @tag :distributed
  test "route requests across nodes" do
    assert KV.Router.route("hello", Kernel, :node, []) == foo()
    assert KV.Router.route("world", Kernel, :node, []) == bar()
  end

  test "raises on unknown entries" do
    assert_raise RuntimeError, ~r/could not find entry/, fn ->
      KV.Router.route(<<0>>, Kernel, :node, [])
    end
  end
end
