# The BEAM client of pykv's benchmark: one section per run, against one or more nodes.
#
#   elixir --sname CLIENT --cookie C bench/client.exs SECTION --node foo@host --node bar@host [options]
#
# Each result is one line on stdout, `BENCH {json}`, one per node, so that `python -m bench`
# can tell results apart from anything the runtime prints. Latencies are in microseconds,
# measured with the monotonic clock around the whole operation as a caller sees it.
# The machine is noisy, so the nodes share its moments: latency samples alternate between
# them (A B A B ...) and load runs go A B B A, each node's load split in two halves.
#
# Sections (bench/report.py's HOW says what each number means):
#   tasks     1 + 2: Task.Supervisor.async({KV.RouterTasks, node}, Kernel, :node, []) + Task.await,
#             one at a time (latency samples), then with --concurrency in flight (tasks/s)
#   erpc      3: :erpc.call(node, :erlang, :node, []) one at a time (latency samples)
#   calls     4: GenServer.call({KV.Registry, node}, {:lookup, "x"}) from --callers processes
#             for --duration seconds (calls/s)
#   reverse   5: what the Python client does to bar, done by this BEAM client: tasks and
#             GenServer.call lookups, one at a time and with --concurrency in flight
#   scale     8: --tasks tasks in flight (KV.Bucket.put, then KV.Bucket.get of distinct keys,
#             started from one process then all awaited; then the gets again from --tasks
#             processes at once), every answer checked; RSS of the node before and after
#             --buckets buckets created with KV.Registry.create through :erpc from --creators
#             processes
#
# A node given as `name=OSPID` has its OS pid given (the Python node); otherwise the pid is
# asked with :os.getpid/0 (BEAM nodes).

defmodule Bench.JSON do
  @moduledoc "Just enough JSON for the results (Elixir 1.14 has no JSON module)."

  def encode(nil), do: "null"
  def encode(true), do: "true"
  def encode(false), do: "false"
  def encode(a) when is_atom(a), do: encode(Atom.to_string(a))
  def encode(n) when is_integer(n), do: Integer.to_string(n)
  def encode(f) when is_float(f), do: :erlang.float_to_binary(f, [:short])
  def encode(s) when is_binary(s), do: [?", Enum.map(String.to_charlist(s), &char/1), ?"]
  def encode(l) when is_list(l), do: [?[, Enum.map_intersperse(l, ?,, &encode/1), ?]]

  def encode(m) when is_map(m) do
    pairs = Enum.map_intersperse(m, ?,, fn {k, v} -> [encode(to_string(k)), ?:, encode(v)] end)
    [?{, pairs, ?}]
  end

  def encode(other), do: encode(inspect(other))

  defp char(?"), do: "\\\""
  defp char(?\\), do: "\\\\"
  defp char(c) when c < 0x20, do: :io_lib.format("\\u~4.16.0b", [c])
  defp char(c), do: <<c::utf8>>
end

defmodule Bench.Client do
  @moduledoc "The measurements. Every function returns a map that becomes one JSON line."

  @lookup {:lookup, "x"}

  ## helpers

  defp now, do: System.monotonic_time(:nanosecond)
  defp us(ns), do: Float.round(ns / 1000, 1)

  # Runs `fun.(worker_index, count)` in `workers` processes, which start together and share
  # `total` operations between them; returns {elapsed_ns, [result]}.
  defp concurrently(workers, total, fun) do
    parent = self()
    go = make_ref()

    pids =
      for w <- 1..workers do
        n = div(total, workers) + if(w <= rem(total, workers), do: 1, else: 0)

        spawn_link(fn ->
          # a task that crashes must count as an error, not take its worker down
          Process.flag(:trap_exit, true)

          receive do
            ^go -> send(parent, {go, self(), fun.(w, n)})
          end
        end)
      end

    t0 = now()
    Enum.each(pids, &send(&1, go))
    results = for pid <- pids, do: receive(do: ({^go, ^pid, r} -> r))
    {now() - t0, results}
  end

  # Times `op` `n` times in a row: {latencies_us, error_count}. `op` returns true when the
  # answer was the expected one; a timeout or exit counts as an error.
  defp timed_loop(n, op) do
    Enum.reduce(1..n//1, {[], 0}, fn _, {lat, errors} ->
      t0 = now()
      ok = safely(op)
      {[us(now() - t0) | lat], if(ok, do: errors, else: errors + 1)}
    end)
  end

  defp safely(op) do
    op.()
  catch
    _kind, _reason -> false
  end

  defp warm(n, op), do: Enum.each(1..n//1, fn _ -> safely(op) end)

  defp task_op(node) do
    fn ->
      Task.Supervisor.async({KV.RouterTasks, node}, Kernel, :node, []) |> Task.await(10_000) ==
        node
    end
  end

  defp call_op(node) do
    fn -> GenServer.call({KV.Registry, node}, @lookup, 10_000) == :error end
  end

  defp erpc_op(node), do: fn -> :erpc.call(node, :erlang, :node, [], 10_000) == node end

  # After a warm-up, `samples` operations one at a time, alternating between the nodes
  # (A B A B ...) so that each sees the same moments of a noisy machine:
  # %{node => %{seq_us: latencies, seq_errors: n}}.
  defp interleaved(nodes, op_of, o) do
    ops = for node <- nodes, do: {node, op_of.(node)}
    Enum.each(ops, fn {_, op} -> warm(o[:warmup], op) end)

    samples =
      Enum.reduce(1..o[:samples]//1, Map.new(nodes, &{&1, {[], 0}}), fn _, acc ->
        Enum.reduce(ops, acc, fn {node, op}, acc ->
          t0 = now()
          ok = safely(op)
          dt = us(now() - t0)
          Map.update!(acc, node, fn {lat, e} -> {[dt | lat], if(ok, do: e, else: e + 1)} end)
        end)
      end)

    Map.new(samples, fn {node, {lat, e}} ->
      {node, %{seq_us: Enum.reverse(lat), seq_errors: e}}
    end)
  end

  # One load run per node in the order A B B A, each node's load split between its two
  # runs, so that a machine getting busier or quieter meanwhile favours neither node.
  # `run.(node, half)` (half 0 or 1) returns {elapsed_ns, operations, latencies, errors};
  # the result is their sum per node.
  defp abba(nodes, run) do
    order = Enum.map(nodes, &{&1, 0}) ++ Enum.map(Enum.reverse(nodes), &{&1, 1})

    order
    |> Enum.map(fn {node, half} -> {node, run.(node, half)} end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Map.new(fn {node, parts} ->
      {node,
       Enum.reduce(parts, {0, 0, [], 0}, fn {t, n, lat, e}, {t0, n0, lat0, e0} ->
         {t0 + t, n0 + n, lat0 ++ lat, e0 + e}
       end)}
    end)
  end

  defp half(total, 0), do: div(total, 2)
  defp half(total, 1), do: total - div(total, 2)

  # `count` operations shared by `concurrency` processes, each starting its next operation
  # when the previous one answers.
  defp load(op, count, concurrency) do
    {elapsed, results} = concurrently(concurrency, count, fn _, n -> timed_loop(n, op) end)

    {elapsed, count, Enum.flat_map(results, &elem(&1, 0)),
     Enum.sum(Enum.map(results, &elem(&1, 1)))}
  end

  # One at a time (interleaved), then `concurrency` in flight sharing `count` (A B B A).
  defp latency_and_throughput(nodes, op_of, o) do
    seq = interleaved(nodes, op_of, o)
    conc = abba(nodes, fn node, h -> load(op_of.(node), half(o[:count], h), o[:concurrency]) end)

    Map.new(nodes, fn node ->
      {elapsed, count, lat, errors} = conc[node]

      {node,
       Map.merge(seq[node], %{
         conc_us: lat,
         conc_errors: errors,
         conc_count: count,
         concurrency: o[:concurrency],
         conc_elapsed_s: elapsed / 1.0e9,
         conc_per_s: count / (elapsed / 1.0e9)
       })}
    end)
  end

  ## sections: each returns %{node => result}

  def tasks(nodes, o), do: latency_and_throughput(nodes, &task_op/1, o)

  def reverse(nodes, o) do
    tasks = latency_and_throughput(nodes, &task_op/1, o)
    calls = latency_and_throughput(nodes, &call_op/1, o)
    Map.new(nodes, &{&1, %{tasks: tasks[&1], calls: calls[&1]}})
  end

  def erpc(nodes, o), do: interleaved(nodes, &erpc_op/1, o)

  def calls(nodes, o) do
    Enum.each(nodes, &warm(o[:warmup], call_op(&1)))
    duration_ns = round(o[:duration] * 1.0e9 / 2)

    runs =
      abba(nodes, fn node, _half ->
        op = call_op(node)

        {elapsed, results} =
          concurrently(o[:callers], o[:callers], fn _, _ ->
            call_until(op, now() + duration_ns, 0, 0)
          end)

        {elapsed, Enum.sum(Enum.map(results, &elem(&1, 0))), [],
         Enum.sum(Enum.map(results, &elem(&1, 1)))}
      end)

    Map.new(runs, fn {node, {elapsed, calls, _, errors}} ->
      {node,
       %{
         callers: o[:callers],
         calls: calls,
         errors: errors,
         elapsed_s: elapsed / 1.0e9,
         per_s: calls / (elapsed / 1.0e9)
       }}
    end)
  end

  defp call_until(op, deadline, calls, errors) do
    if now() >= deadline do
      {calls, errors}
    else
      ok = safely(op)
      call_until(op, deadline, calls + 1, if(ok, do: errors, else: errors + 1))
    end
  end

  def scale(node, os_pid, o) do
    bucket = :erpc.call(node, KV.Registry, :create, [KV.Registry, "scale#{o[:tag]}"])
    n = o[:tasks]

    puts =
      in_flight(node, n, fn i -> {KV.Bucket, :put, [bucket, "k#{i}", i]} end, fn _i, r ->
        r == :ok
      end)

    gets =
      in_flight(node, n, fn i -> {KV.Bucket, :get, [bucket, "k#{i}"]} end, fn i, r -> r == i end)

    burst = burst(node, n, bucket)

    rss_before = rss_kib(os_pid)

    {elapsed, created} =
      concurrently(o[:creators], o[:buckets], fn w, count ->
        Enum.count(1..count//1, fn j ->
          name = "b#{o[:tag]}_#{w}_#{j}"

          match?(
            pid when is_pid(pid),
            safely_value(fn ->
              :erpc.call(node, KV.Registry, :create, [KV.Registry, name], 30_000)
            end)
          )
        end)
      end)

    Process.sleep(500)
    rss_after = rss_kib(os_pid)

    %{
      tasks: n,
      put: puts,
      get: gets,
      burst: burst,
      buckets: o[:buckets],
      buckets_created: Enum.sum(created),
      create_elapsed_s: elapsed / 1.0e9,
      create_per_s: o[:buckets] / (elapsed / 1.0e9),
      rss_before_kib: rss_before,
      rss_after_kib: rss_after,
      os_pid: os_pid
    }
  end

  defp safely_value(fun) do
    fun.()
  catch
    kind, reason -> {kind, reason}
  end

  # Starts `n` tasks from this one process (Task.Supervisor.async_nolink, so that one lost
  # task is counted instead of taking the caller down), and only then awaits them all.
  defp in_flight(node, n, mfa_of, correct?) do
    t0 = now()

    tasks =
      for i <- 1..n do
        {m, f, a} = mfa_of.(i)
        {i, Task.Supervisor.async_nolink({KV.RouterTasks, node}, m, f, a)}
      end

    started = now()
    replies = Task.yield_many(Enum.map(tasks, &elem(&1, 1)), 120_000)
    elapsed = now() - t0

    correct =
      Enum.zip(tasks, replies)
      |> Enum.count(fn {{i, _}, {_task, reply}} ->
        match?({:ok, _}, reply) and correct?.(i, elem(reply, 1))
      end)

    for {task, nil} <- replies, do: Task.shutdown(task, :brutal_kill)

    %{
      count: n,
      correct: correct,
      lost: n - correct,
      start_s: (started - t0) / 1.0e9,
      elapsed_s: elapsed / 1.0e9,
      per_s: n / (elapsed / 1.0e9)
    }
  end

  # `n` processes at once, each with its own Task.Supervisor.async + Task.await of a get:
  # here every request is open at the same moment, the supervisor's start calls included.
  defp burst(node, n, bucket) do
    {elapsed, results} =
      concurrently(n, n, fn i, _ ->
        safely(fn ->
          Task.Supervisor.async({KV.RouterTasks, node}, KV.Bucket, :get, [bucket, "k#{i}"])
          |> Task.await(120_000) == i
        end)
      end)

    correct = Enum.count(results, & &1)

    %{
      count: n,
      correct: correct,
      lost: n - correct,
      elapsed_s: elapsed / 1.0e9,
      per_s: n / (elapsed / 1.0e9)
    }
  end

  defp rss_kib(os_pid) do
    case File.read("/proc/#{os_pid}/status") do
      {:ok, status} ->
        [_, kib] = Regex.run(~r/VmRSS:\s+(\d+) kB/, status)
        String.to_integer(kib)

      {:error, _} ->
        nil
    end
  end

  ## main

  @switches [
    node: :keep,
    samples: :integer,
    warmup: :integer,
    count: :integer,
    concurrency: :integer,
    callers: :integer,
    duration: :float,
    tasks: :integer,
    buckets: :integer,
    creators: :integer,
    tag: :string
  ]

  @defaults [
    samples: 2000,
    warmup: 500,
    count: 20_000,
    concurrency: 200,
    callers: 120,
    duration: 5.0,
    tasks: 10_000,
    buckets: 100_000,
    creators: 100,
    tag: ""
  ]

  def main([section | argv]) do
    {opts, [], []} = OptionParser.parse(argv, strict: @switches)
    Process.flag(:trap_exit, true)
    o = Keyword.merge(@defaults, opts)

    specs = Enum.map(Keyword.get_values(opts, :node), &parse_node/1)
    nodes = Enum.map(specs, &elem(&1, 0))
    Enum.each(nodes, fn node -> Node.connect(node) || raise "cannot connect to #{node}" end)

    results =
      case section do
        "tasks" ->
          tasks(nodes, o)

        "erpc" ->
          erpc(nodes, o)

        "calls" ->
          calls(nodes, o)

        "reverse" ->
          reverse(nodes, o)

        # one node after the other: each is loaded on its own
        "scale" ->
          Map.new(specs, fn {node, pid} -> {node, scale(node, pid || os_pid_of(node), o)} end)
      end

    for node <- nodes do
      IO.puts([
        "BENCH ",
        Bench.JSON.encode(%{section: section, node: node, result: results[node]})
      ])
    end
  end

  defp parse_node(spec) do
    case String.split(spec, "=") do
      [name] -> {String.to_atom(name), nil}
      [name, pid] -> {String.to_atom(name), String.to_integer(pid)}
    end
  end

  defp os_pid_of(node), do: :erpc.call(node, :os, :getpid, []) |> List.to_integer()
end

Bench.Client.main(System.argv())
