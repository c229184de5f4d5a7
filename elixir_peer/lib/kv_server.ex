defmodule KVServer do
  @moduledoc """
  The guide's line server: a TCP server speaking the `KVServer.Command` protocol,
  one line per command.

      CREATE shopping        OK
      PUT shopping milk 1    OK
      GET shopping milk      1, then OK
      DELETE shopping milk   OK
      SUBSCRIBE shopping     OK, then "KEY SET TO VALUE" / "KEY DELETED" per change

  Replies end in `\\r\\n`. An unknown bucket gives `NOT FOUND`, a malformed command
  `UNKNOWN COMMAND`; any other failure (no routing entry, a node down, ...) gives
  `ERROR` and closes the connection.

  `KVServer` is a supervisor for one listening socket: `{KVServer, port: 4040}`.
  Options: `:port` (required), `:name` (default `KVServer`) and `:task_supervisor`
  (the connections' `Task.Supervisor`, default `KVServer.TaskSupervisor`).
  """
  use Supervisor
  require Logger

  def start_link(opts) do
    Supervisor.start_link(__MODULE__, opts, name: Keyword.get(opts, :name, __MODULE__))
  end

  @impl true
  def init(opts) do
    port = Keyword.fetch!(opts, :port)
    task_supervisor = Keyword.get(opts, :task_supervisor, KVServer.TaskSupervisor)

    children = [
      {Task.Supervisor, name: task_supervisor},
      Supervisor.child_spec({Task, fn -> accept(port, task_supervisor) end},
        id: :acceptor,
        restart: :permanent
      )
    ]

    Supervisor.init(children, strategy: :one_for_one)
  end

  @doc """
  Listens on `port` and serves each connection in a task under `task_supervisor`.
  Does not return.
  """
  def accept(port, task_supervisor \\ KVServer.TaskSupervisor) do
    # The options below mean:
    #
    # 1. `:binary` - receives data as binaries (instead of lists)
    # 2. `packet: :line` - receives data line by line
    # 3. `active: false` - the owner reads the socket explicitly
    # 4. `reuseaddr: true` - allows us to reuse the address if the listener crashes
    #
    {:ok, socket} =
      :gen_tcp.listen(port, [:binary, packet: :line, active: false, reuseaddr: true])

    {:ok, actual_port} = :inet.port(socket)
    Logger.info("Accepting connections on port #{actual_port}")
    loop_acceptor(socket, task_supervisor)
  end

  defp loop_acceptor(socket, task_supervisor) do
    {:ok, client} = :gen_tcp.accept(socket)
    ready = make_ref()
    parent = GenServer.whereis(task_supervisor)

    {:ok, pid} =
      Task.Supervisor.start_child(task_supervisor, fn ->
        # Wait until the socket is ours before reading from it.
        receive do
          ^ready -> serve(client, parent)
        end
      end)

    case :gen_tcp.controlling_process(client, pid) do
      :ok ->
        send(pid, ready)

      {:error, _} ->
        Process.exit(pid, :kill)
        :gen_tcp.close(client)
    end

    loop_acceptor(socket, task_supervisor)
  end

  # A connection: one command per line, plus the messages of subscribed buckets.
  # Exits are trapped so that a failed remote request (a crashed or unreachable
  # router task) is answered with ERROR instead of silently killing the connection.
  defp serve(socket, parent) do
    Process.flag(:trap_exit, true)
    :ok = :inet.setopts(socket, active: :once)
    loop(socket, parent)
  end

  defp loop(socket, parent) do
    receive do
      {:tcp, ^socket, line} ->
        reply =
          with {:ok, command} <- KVServer.Command.parse(line) do
            run(command)
          end

        write_line(socket, reply)

        case :inet.setopts(socket, active: :once) do
          :ok -> loop(socket, parent)
          {:error, _} -> exit(:shutdown)
        end

      {:tcp_closed, ^socket} ->
        exit(:shutdown)

      {:tcp_error, ^socket, _reason} ->
        exit(:shutdown)

      {:EXIT, from, reason} ->
        # Our supervisor going down takes us with it; router tasks ending do not.
        if from == parent, do: exit(reason)
        loop(socket, parent)

      message ->
        case KVServer.Command.event_line(message) do
          nil -> :ok
          text -> write_line(socket, {:ok, text})
        end

        loop(socket, parent)
    end
  end

  defp run(command) do
    KVServer.Command.run(command)
  rescue
    exception -> {:error, exception}
  catch
    :exit, reason -> {:error, {:exit, reason}}
  end

  defp write_line(socket, {:ok, text}) do
    send_or_close(socket, text)
  end

  defp write_line(socket, {:error, :unknown_command}) do
    # Known error; write to the client
    send_or_close(socket, "UNKNOWN COMMAND\r\n")
  end

  defp write_line(socket, {:error, :not_found}) do
    send_or_close(socket, "NOT FOUND\r\n")
  end

  defp write_line(socket, {:error, error}) do
    # Unknown error; write to the client and exit
    Logger.warning("KVServer: closing connection after error: #{inspect(error)}")
    _ = :gen_tcp.send(socket, "ERROR\r\n")
    :gen_tcp.close(socket)
    exit({:shutdown, error})
  end

  defp send_or_close(socket, text) do
    case :gen_tcp.send(socket, text) do
      :ok -> :ok
      # The connection was closed, exit politely
      {:error, _} -> exit(:shutdown)
    end
  end
end
