defmodule KV.DistributedTest do
  @moduledoc """
  Elixir (this node, bar) against pykv's Python node (foo), beyond the guide's
  router test. Run with: elixir --sname bar -S mix test --include distributed
  """
  use ExUnit.Case, async: true
  @moduletag :distributed
  @moduletag :capture_log

  defp foo, do: :"foo@#{KV.RoutingTable.local_host()}"

  # Buckets are fresh on every run, even against a foo that stays up between runs.
  # "a..." routes to foo, "z..." to bar.
  defp bucket(prefix), do: "#{prefix}-#{System.unique_integer([:positive])}"

  test "a distributed task runs on foo" do
    task = Task.Supervisor.async({KV.RouterTasks, foo()}, Kernel, :node, [])
    assert Task.await(task) == foo()
  end

  test "a bucket created through the router lives on foo and keeps the bucket contract" do
    name = bucket("apple")
    pid = KV.Router.route(name, KV.Registry, :create, [KV.Registry, name])
    assert is_pid(pid)
    assert node(pid) == foo()

    # create is idempotent, lookup finds the same pid
    assert KV.Router.route(name, KV.Registry, :create, [KV.Registry, name]) == pid
    assert KV.Router.route(name, KV.Registry, :lookup, [KV.Registry, name]) == {:ok, pid}
    assert KV.Registry.lookup({KV.Registry, foo()}, name) == {:ok, pid}

    assert KV.Bucket.get(pid, "milk") == nil
    assert KV.Bucket.put(pid, "milk", 3) == :ok
    assert KV.Bucket.get(pid, "milk") == 3
    assert KV.Bucket.put(pid, "milk", "three") == :ok
    assert KV.Bucket.get(pid, "milk") == "three"
    assert KV.Bucket.delete(pid, "milk") == "three"
    assert KV.Bucket.get(pid, "milk") == nil
    assert KV.Bucket.delete(pid, "milk") == nil
  end

  test "looking up a missing bucket on foo gives :error" do
    name = bucket("absent")
    assert KV.Router.route(name, KV.Registry, :lookup, [KV.Registry, name]) == :error
  end

  test "subscribing to a bucket on foo delivers its changes here" do
    name = bucket("apple")
    pid = KV.Router.route(name, KV.Registry, :create, [KV.Registry, name])
    assert node(pid) == foo()

    :ok = KV.Bucket.subscribe(pid, self())
    # Same sender, same receiver: the cast is handled before this call.
    :ok = KV.Bucket.put(pid, "eggs", 12)
    assert_receive {:put, "eggs", 12}, 2_000

    assert KV.Bucket.delete(pid, "eggs") == 12
    assert_receive {:delete, "eggs"}, 2_000
  end

  test "foo routes back to bar: a bucket created via foo's router lives here" do
    name = bucket("zebra")
    args = [name, KV.Registry, :create, [KV.Registry, name]]
    pid = Task.Supervisor.async({KV.RouterTasks, foo()}, KV.Router, :route, args) |> Task.await()
    assert node(pid) == node()
    assert KV.Registry.lookup(KV.Registry, name) == {:ok, pid}
  end

  test "the line server here serves buckets that live on foo" do
    port = free_port()
    id = System.unique_integer([:positive])

    start_supervised!(
      {KVServer, port: port, name: :"dist_server_#{id}", task_supervisor: :"dist_tasks_#{id}"}
    )

    socket = connect(port)
    name = bucket("apple")
    assert send_and_recv(socket, "CREATE #{name}\r\n") == "OK\r\n"
    assert {:ok, pid} = KV.Router.route(name, KV.Registry, :lookup, [KV.Registry, name])
    assert node(pid) == foo()

    assert send_and_recv(socket, "SUBSCRIBE #{name}\r\n") == "OK\r\n"
    assert send_and_recv(socket, "PUT #{name} milk 3\r\n") == "OK\r\n"
    assert recv(socket) == "milk SET TO 3\r\n"
    assert send_and_recv(socket, "GET #{name} milk\r\n") == "3\r\n"
    assert recv(socket) == "OK\r\n"
  end

  defp free_port do
    {:ok, listen} = :gen_tcp.listen(0, [])
    {:ok, port} = :inet.port(listen)
    :ok = :gen_tcp.close(listen)
    port
  end

  defp connect(port, attempts \\ 50) do
    case :gen_tcp.connect(~c"localhost", port, [:binary, packet: :line, active: false]) do
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
    {:ok, data} = :gen_tcp.recv(socket, 0, 5_000)
    data
  end
end
