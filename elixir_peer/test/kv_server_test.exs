defmodule KVServerTest do
  # Changes the application's routing table: cannot run concurrently with other tests.
  use ExUnit.Case, async: false
  @moduletag :capture_log

  setup do
    previous = Application.fetch_env!(:kv, :routing_table)
    # Everything is local, except buckets starting with a digit, which have no entry.
    Application.put_env(:kv, :routing_table, [{?a..?z, node()}, {?A..?Z, node()}])
    on_exit(fn -> Application.put_env(:kv, :routing_table, previous) end)

    port = free_port()
    id = System.unique_integer([:positive])

    start_supervised!(
      {KVServer,
       port: port, name: :"kv_server_test_#{id}", task_supervisor: :"kv_server_test_tasks_#{id}"}
    )

    %{port: port}
  end

  setup %{port: port} do
    %{socket: connect(port)}
  end

  test "server interaction", %{socket: socket} do
    bucket = unique_bucket()
    assert send_and_recv(socket, "UNKNOWN #{bucket}\r\n") == "UNKNOWN COMMAND\r\n"
    assert send_and_recv(socket, "GET #{bucket} eggs\r\n") == "NOT FOUND\r\n"
    assert send_and_recv(socket, "CREATE #{bucket}\r\n") == "OK\r\n"

    # GET returns two lines
    assert send_and_recv(socket, "GET #{bucket} eggs\r\n") == "\r\n"
    assert recv(socket) == "OK\r\n"

    assert send_and_recv(socket, "PUT #{bucket} eggs 3\r\n") == "OK\r\n"

    # GET returns two lines
    assert send_and_recv(socket, "GET #{bucket} eggs\r\n") == "3\r\n"
    assert recv(socket) == "OK\r\n"

    assert send_and_recv(socket, "DELETE #{bucket} eggs\r\n") == "OK\r\n"

    # GET returns two lines
    assert send_and_recv(socket, "GET #{bucket} eggs\r\n") == "\r\n"
    assert recv(socket) == "OK\r\n"
  end

  test "CREATE is idempotent and goes through the registry", %{socket: socket} do
    bucket = unique_bucket()
    assert send_and_recv(socket, "CREATE #{bucket}\r\n") == "OK\r\n"
    {:ok, pid} = KV.Registry.lookup(KV.Registry, bucket)
    :ok = KV.Bucket.put(pid, "milk", "2")
    assert send_and_recv(socket, "CREATE #{bucket}\r\n") == "OK\r\n"
    assert send_and_recv(socket, "GET #{bucket} milk\r\n") == "2\r\n"
    assert recv(socket) == "OK\r\n"
  end

  test "SUBSCRIBE streams the bucket's changes", %{socket: socket, port: port} do
    bucket = unique_bucket()
    assert send_and_recv(socket, "SUBSCRIBE #{bucket}\r\n") == "NOT FOUND\r\n"
    assert send_and_recv(socket, "CREATE #{bucket}\r\n") == "OK\r\n"
    assert send_and_recv(socket, "SUBSCRIBE #{bucket}\r\n") == "OK\r\n"

    # Changes from another connection...
    other = connect(port)
    assert send_and_recv(other, "PUT #{bucket} milk 3\r\n") == "OK\r\n"
    assert recv(socket) == "milk SET TO 3\r\n"
    assert send_and_recv(other, "DELETE #{bucket} milk\r\n") == "OK\r\n"
    assert recv(socket) == "milk DELETED\r\n"

    # ...and from any process
    {:ok, pid} = KV.Registry.lookup(KV.Registry, bucket)
    :ok = KV.Bucket.put(pid, "eggs", 12)
    assert recv(socket) == "eggs SET TO 12\r\n"

    # The subscribed connection still takes commands; its own changes stream too,
    # after the command's reply.
    assert send_and_recv(socket, "PUT #{bucket} bread 1\r\n") == "OK\r\n"
    assert recv(socket) == "bread SET TO 1\r\n"
  end

  test "ERROR and close when the bucket cannot be routed", %{socket: socket} do
    assert send_and_recv(socket, "CREATE 1bucket\r\n") == "ERROR\r\n"
    assert :gen_tcp.recv(socket, 0, 1000) == {:error, :closed}
  end

  test "one failed connection does not affect the others", %{socket: socket, port: port} do
    other = connect(port)
    assert send_and_recv(other, "GET 1bucket k\r\n") == "ERROR\r\n"
    assert send_and_recv(socket, "CREATE #{unique_bucket()}\r\n") == "OK\r\n"
  end

  test "is only started when a port is configured" do
    children = Supervisor.which_children(KV.Supervisor)
    has_server? = Enum.any?(children, fn {id, _, _, _} -> id == KVServer end)
    assert has_server? == (Application.get_env(:kv, :port) != nil)
  end

  defp unique_bucket, do: "bucket#{System.unique_integer([:positive])}"

  defp free_port do
    {:ok, listen} = :gen_tcp.listen(0, [])
    {:ok, port} = :inet.port(listen)
    :ok = :gen_tcp.close(listen)
    port
  end

  # The acceptor listens right after it starts: retry for a moment.
  defp connect(port, attempts \\ 50) do
    opts = [:binary, packet: :line, active: false]

    case :gen_tcp.connect(~c"localhost", port, opts) do
      {:ok, socket} ->
        socket

      {:error, :econnrefused} when attempts > 0 ->
        Process.sleep(20)
        connect(port, attempts - 1)
    end
  end

  defp send_and_recv(socket, command) do
    :ok = :gen_tcp.send(socket, command)
    recv(socket)
  end

  defp recv(socket) do
    {:ok, data} = :gen_tcp.recv(socket, 0, 1000)
    data
  end
end
