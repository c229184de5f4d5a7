defmodule KV.Test.PythonNode do
  @moduledoc """
  Starts pykv's Python node `foo@HOST` for the distributed tests, unless it already
  answers `Node.ping/1`, and stops it when the suite ends.

  The command is `$PYKV_PYTHON -m pykv --sname foo --cookie COOKIE --no-server
  --exit-on-stdin-close --route a-m=foo --route n-z=bar` (the port is its standard input:
  if this BEAM dies, foo stops too), run from the repository root (`PYKV_PYTHON`
  defaults to `python3`). Its output goes to `_build/test/pykv-foo.log`.

  The node counts as up once it answers `Node.ping/1` and either has printed a line
  containing `ready` or answers a `KV.Registry` call.
  """

  @start_timeout 15_000
  @stop_timeout 5_000
  @poll_interval 200

  @doc "The Python node's name: `foo` on this host."
  def node_name, do: :"foo@#{KV.RoutingTable.local_host()}"

  @doc """
  Whether the suite will run tests tagged `:distributed`, given the ExUnit
  configuration in force (command line `--include`/`--exclude`/`--only` and the
  helper's own exclusions).
  """
  def distributed_included?(config) do
    include = Keyword.get(config, :include, [])
    exclude = Keyword.get(config, :exclude, [])

    Node.alive?() and
      (tag_filter?(include) or location_filter?(include) or
         not (tag_filter?(exclude) or :test in exclude))
  end

  # `mix test file_test.exs:12` may select a distributed test: be ready for it.
  defp location_filter?(filters) do
    Enum.any?(filters, &match?({key, _} when key in [:line, :location], &1))
  end

  @doc "Whether a list of ExUnit filters names the `:distributed` tag."
  def tag_filter?(filters) do
    Enum.any?(filters, &(&1 in [:distributed, {:distributed, true}, {:distributed, "true"}]))
  end

  @doc """
  Makes sure `node_name/0` is up. Starts it if needed, registers its shutdown at the
  end of the suite, and prints one line if it cannot be started.
  """
  def ensure_started do
    node = node_name()

    if Node.ping(node) == :pong do
      :already_running
    else
      case start(node) do
        {:ok, owner} ->
          ExUnit.after_suite(fn _ -> stop(owner) end)
          # In case the suite never runs (e.g. a test file fails to compile).
          System.at_exit(fn _ -> stop(owner) end)
          {:ok, owner}

        {:error, reason} ->
          IO.puts(:stderr, "test_helper: could not start the Python node #{node}: #{reason}")
          {:error, reason}
      end
    end
  end

  @doc "Stops the node started by `ensure_started/0` (idempotent)."
  def stop(owner) do
    if Process.alive?(owner) do
      ref = Process.monitor(owner)
      send(owner, {:stop, self(), ref})

      receive do
        {^ref, _status} -> Process.demonitor(ref, [:flush])
        {:DOWN, ^ref, _, _, _} -> :ok
      after
        @stop_timeout + 2_000 -> Process.demonitor(ref, [:flush])
      end
    end

    :ok
  end

  defp start(node) do
    # This file is elixir_peer/test/support/: the repository root is three levels up.
    root = Path.expand("../../..", __DIR__)
    python = System.get_env("PYKV_PYTHON", "python3")
    cookie = Atom.to_string(Node.get_cookie())
    [name, _host] = String.split(Atom.to_string(node), "@", parts: 2)

    args =
      ["-m", "pykv", "--sname", name, "--cookie", cookie, "--no-server", "--exit-on-stdin-close"] ++
        ["--route", "a-m=foo", "--route", "n-z=bar"]

    # For messages: the cookie stays out of the output.
    command = Enum.join([python | args], " ") |> String.replace(cookie, "COOKIE")
    log_path = log_path()

    with {:ok, exe} <- find_executable(python) do
      caller = self()
      owner = spawn(fn -> own_port(caller, exe, args, root, log_path) end)
      ref = Process.monitor(owner)

      result =
        receive do
          {^owner, :started} ->
            deadline = System.monotonic_time(:millisecond) + @start_timeout

            case wait_until_up(node, owner, ref, deadline, false) do
              :ok ->
                :ok

              {:error, reason} ->
                stop(owner)
                {:error, "#{reason} (command: #{command}; log: #{log_path})"}
            end

          {^owner, {:error, reason}} ->
            {:error, "cannot run #{exe}: #{reason}"}

          {:DOWN, ^ref, :process, ^owner, reason} ->
            {:error, "its port owner died: #{inspect(reason)}"}
        end

      Process.demonitor(ref, [:flush])

      with :ok <- result, do: {:ok, owner}
    end
  end

  defp find_executable(python) do
    exe =
      if String.contains?(python, "/") do
        path = Path.expand(python)
        if File.regular?(path), do: path
      else
        System.find_executable(python)
      end

    if exe, do: {:ok, exe}, else: {:error, "#{python} not found (set PYKV_PYTHON)"}
  end

  defp log_path do
    dir =
      try do
        Mix.Project.build_path()
      rescue
        _ -> System.tmp_dir!()
      end

    File.mkdir_p!(dir)
    Path.join(dir, "pykv-foo.log")
  end

  defp wait_until_up(node, owner, ref, deadline, ready?) do
    cond do
      Node.ping(node) == :pong and (ready? or registry_answers?(node)) ->
        :ok

      System.monotonic_time(:millisecond) > deadline ->
        {:error, "#{node} was not up within #{div(@start_timeout, 1000)} s#{last_line()}"}

      true ->
        receive do
          {^owner, :ready} ->
            wait_until_up(node, owner, ref, deadline, true)

          {^owner, {:exit_status, status}} ->
            {:error, "it exited with status #{status}#{last_line()}"}

          {:DOWN, ^ref, :process, ^owner, reason} ->
            {:error, "its port owner died: #{inspect(reason)}"}
        after
          @poll_interval -> wait_until_up(node, owner, ref, deadline, ready?)
        end
    end
  end

  # Any answer will do (:error, most likely): the registry is up.
  defp registry_answers?(node) do
    _ = GenServer.call({KV.Registry, node}, {:lookup, "test-helper-probe"}, 1_000)
    true
  catch
    :exit, _ -> false
  end

  defp last_line do
    with {:ok, text} <- File.read(log_path()),
         line when is_binary(line) <-
           text
           |> String.split("\n", trim: true)
           |> Enum.reject(&String.starts_with?(&1, "[exited"))
           |> List.last() do
      ", last output: " <> String.trim(line)
    else
      _ -> ""
    end
  end

  # The port owner: logs the node's output, tells the caller when a line contains
  # "ready", and kills the node on request. Closing a port does not kill the OS
  # process, so stopping sends SIGTERM (then, after 5 s, SIGKILL) to its OS pid.
  defp own_port(caller, exe, args, root, log_path) do
    log = File.open!(log_path, [:write, :binary])

    try do
      Port.open({:spawn_executable, exe}, [
        :binary,
        :exit_status,
        :stderr_to_stdout,
        :hide,
        args: args,
        cd: root,
        env: [{~c"PYTHONUNBUFFERED", ~c"1"}]
      ])
    rescue
      error -> send(caller, {self(), {:error, Exception.message(error)}})
    else
      port ->
        {:os_pid, os_pid} = Port.info(port, :os_pid)
        send(caller, {self(), :started})
        port_loop(%{port: port, os_pid: os_pid, log: log, caller: caller, tail: ""})
    end
  end

  defp port_loop(%{port: port} = state) do
    receive do
      {^port, {:data, data}} ->
        IO.binwrite(state.log, data)

        case state.tail do
          :ready ->
            port_loop(state)

          tail ->
            # "ready" may be split across two reads: look at the previous read's tail too.
            seen = tail <> data

            if String.contains?(seen, "ready") do
              send(state.caller, {self(), :ready})
              port_loop(%{state | tail: :ready})
            else
              port_loop(%{state | tail: binary_tail(seen, 8)})
            end
        end

      {^port, {:exit_status, status}} ->
        IO.binwrite(state.log, "\n[exited with status #{status}]\n")
        File.close(state.log)
        send(state.caller, {self(), {:exit_status, status}})
        exited(status)

      {:stop, from, ref} ->
        kill(state.os_pid, "TERM")

        status =
          with nil <- await_exit(port, state.log, @stop_timeout) do
            kill(state.os_pid, "KILL")
            await_exit(port, state.log, 1_000)
          end

        File.close(state.log)
        send(from, {ref, status})
    end
  end

  defp binary_tail(binary, n) when byte_size(binary) <= n, do: binary
  defp binary_tail(binary, n), do: binary_part(binary, byte_size(binary) - n, n)

  # After the node exited on its own: answer stop requests at once.
  defp exited(status) do
    receive do
      {:stop, from, ref} ->
        send(from, {ref, status})
        exited(status)
    end
  end

  defp await_exit(port, log, timeout) do
    receive do
      {^port, {:data, data}} ->
        IO.binwrite(log, data)
        await_exit(port, log, timeout)

      {^port, {:exit_status, status}} ->
        IO.binwrite(log, "\n[exited with status #{status}]\n")
        status
    after
      timeout -> nil
    end
  end

  # Port programs lead their own process group (erl_child_setup makes them session
  # leaders), so signal the group: that also reaches the children of a wrapper
  # script that does not exec. Fall back to the pid alone.
  defp kill(os_pid, signal) do
    pid = Integer.to_string(os_pid)

    case System.cmd("kill", ["-#{signal}", "--", "-" <> pid], stderr_to_stdout: true) do
      {_, 0} -> :ok
      _ -> System.cmd("kill", ["-#{signal}", pid], stderr_to_stdout: true)
    end
  end
end
