defmodule KV.RoutingTableTest do
  use ExUnit.Case, async: true
  doctest KV.RoutingTable

  alias KV.RoutingTable

  test "the default table is the guide's, on the given host" do
    assert RoutingTable.default("vm") == [{?a..?m, :foo@vm}, {?n..?z, :bar@vm}]
    assert RoutingTable.from_env(nil, "vm") == RoutingTable.default("vm")
    assert RoutingTable.from_env("", "vm") == RoutingTable.default("vm")
    assert RoutingTable.from_env("  ", "vm") == RoutingTable.default("vm")
  end

  test "parses ranges, single bytes and node names" do
    assert RoutingTable.from_env("a-m=foo,n-z=bar@otherhost,x=foo", "vm") ==
             [{?a..?m, :foo@vm}, {?n..?z, :bar@otherhost}, {?x..?x, :foo@vm}]
  end

  test "ignores blanks and empty entries" do
    assert RoutingTable.parse(" a - m = foo , ,n-z=bar ,", "h") ==
             {:error,
              ~s[bad routing entry "a - m = foo": keys must be one byte (x) or a byte range (a-m)]}

    assert RoutingTable.parse(" a-m = foo , ,n-z=bar ,", "h") ==
             {:ok, [{?a..?m, :foo@h}, {?n..?z, :bar@h}]}
  end

  test "any byte may be a key, including - and =" do
    assert RoutingTable.parse("-=foo", "h") == {:ok, [{?-..?-, :foo@h}]}

    assert RoutingTable.parse("0-9=foo,A-Z=bar", "h") ==
             {:ok, [{?0..?9, :foo@h}, {?A..?Z, :bar@h}]}

    assert RoutingTable.parse("==foo", "h") == {:ok, [{?=..?=, :foo@h}]}
  end

  test "ranges work with the router's membership test" do
    {:ok, [{range, _}]} = RoutingTable.parse("a-c=foo", "h")
    assert ?a in range and ?b in range and ?c in range
    refute ?d in range
    {:ok, [{single, _}]} = RoutingTable.parse("x=foo", "h")
    assert ?x in single
    refute ?y in single
  end

  test "rejects malformed entries" do
    for text <- [
          "a-m",
          "a-m=",
          "ab=foo",
          "=foo",
          "m-a=foo",
          "a-m=foo@",
          "a-m=@h",
          "a-m=a@b@c",
          ""
        ] do
      assert {:error, message} = RoutingTable.parse(text, "h"),
             "expected an error for #{inspect(text)}"

      assert is_binary(message)
    end

    assert_raise ArgumentError, ~r/range goes backwards/, fn ->
      RoutingTable.from_env("z-a=foo", "h")
    end
  end

  test "local_host is the host part of node() when alive" do
    host = RoutingTable.local_host()
    assert is_binary(host) and host != ""

    if Node.alive?() do
      assert Atom.to_string(node()) |> String.ends_with?("@" <> host)
    else
      {:ok, name} = :inet.gethostname()
      assert host == List.to_string(name)
    end
  end

  test "the application's table comes from the environment at boot" do
    assert KV.Router.table() == Application.get_env(:kv, :routing_table)

    if System.get_env("KV_ROUTING_TABLE") in [nil, ""] do
      assert KV.Router.table() == RoutingTable.default()
    end
  end
end
