defmodule KVServer.CommandTest do
  use ExUnit.Case, async: true
  doctest KVServer.Command

  alias KVServer.Command

  test "parses with any whitespace and line ending" do
    assert Command.parse("PUT  b k v") == {:ok, {:put, "b", "k", "v"}}
    assert Command.parse("\tDELETE b k\n") == {:ok, {:delete, "b", "k"}}
  end

  test "commands are case sensitive and need their exact arguments" do
    for line <- [
          "",
          "\r\n",
          "create b\r\n",
          "CREATE\r\n",
          "CREATE a b\r\n",
          "PUT b k\r\n",
          "PUT b k v w\r\n",
          "DELETE b\r\n",
          "SUBSCRIBE\r\n",
          "SUBSCRIBE a b\r\n"
        ] do
      assert Command.parse(line) == {:error, :unknown_command}, inspect(line)
    end
  end

  test "event lines show non-binary terms with inspect" do
    assert Command.event_line({:put, "k", 3}) == "k SET TO 3\r\n"
    assert Command.event_line({:put, :k, nil}) == ":k SET TO \r\n"
    assert Command.event_line({:other, 1}) == nil
  end
end
