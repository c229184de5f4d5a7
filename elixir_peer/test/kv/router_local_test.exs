defmodule KV.RouterLocalTest do
  # Changes the application's routing table: cannot run concurrently with other tests.
  use ExUnit.Case, async: false

  setup do
    previous = Application.fetch_env!(:kv, :routing_table)
    on_exit(fn -> Application.put_env(:kv, :routing_table, previous) end)
  end

  test "applies the request locally when the entry is this node" do
    Application.put_env(:kv, :routing_table, [{?a..?z, node()}])
    assert KV.Router.route("hello", Kernel, :node, []) == node()
    assert KV.Router.route("zebra", Enum, :sum, [[1, 2, 3]]) == 6
  end

  test "uses the first byte and the first matching entry" do
    Application.put_env(:kv, :routing_table, [{?h..?h, node()}, {?a..?z, :nobody@nohost}])
    assert KV.Router.route("hello", Kernel, :node, []) == node()
  end

  test "the error names the bucket and the table" do
    Application.put_env(:kv, :routing_table, [{?a..?m, node()}])

    assert_raise RuntimeError, ~r/could not find entry for "zebra" in table \[\{97..109, /, fn ->
      KV.Router.route("zebra", Kernel, :node, [])
    end
  end

  test "routes registry requests" do
    Application.put_env(:kv, :routing_table, [{0..255, node()}])
    name = "router-local-#{System.unique_integer([:positive])}"
    pid = KV.Router.route(name, KV.Registry, :create, [KV.Registry, name])
    assert is_pid(pid)
    assert KV.Router.route(name, KV.Registry, :lookup, [KV.Registry, name]) == {:ok, pid}
  end
end
