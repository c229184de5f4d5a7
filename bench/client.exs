# The BEAM client of pykv's benchmark: one section per run, against one or more nodes.
#
#   elixir --sname CLIENT --cookie C bench/client.exs SECTION --node foo@host --node bar@host [options]
#
# Each result is one line on stdout, `BENCH {json}`, one per node, so that `python -m bench`
# can tell results apart from anything the runtime prints. Latencies are in microseconds,
# measured with the monotonic clock around the whole operation as a caller sees it.
# The machine is noisy, so the nodes share its moments: latency samples and load runs go in
# blocks A B B A, each node's work split in two halves (never request by request A B A B).
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

  # After a warm-up, `samples` operations one at a time against each node, in blocks
  # A..A B..B B..B A..A (each node's samples in two halves): a node is measured on its own,
  # as a user calling it in a loop sees it, and a machine getting busier or quieter
  # meanwhile favours neither. (Alternating A B A B would hand every other request to
  # whichever node was still busy-waiting from its last one.)
  # %{node => %{seq_us: latencies, seq_errors: n}}.
  defp interleaved(nodes, op_of, o) do
    ops = Map.new(nodes, &{&1, op_of.(&1)})
    Enum.each(nodes, &warm(o[:warmup], ops[&1]))
    order = Enum.map(nodes, &{&1, 0}) ++ Enum.map(Enum.reverse(nodes), &{&1, 1})

    order
    |> Enum.map(fn {node, h} -> {node, in_process(fn -> timed_loop(half(o[:samples], h), ops[node]) end)} end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Map.new(fn {node, parts} ->
      {node,
       %{
         seq_us: Enum.flat_map(parts, fn {lat, _} -> Enum.reverse(lat) end),
         seq_errors: Enum.sum(Enum.map(parts, &elem(&1, 1)))
       }}
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

  ## load shapes: the same work in the shapes a user would give it, each with the CPU the
  ## target node used for it (utime + stime from /proc, both nodes measured the same way)

  defp cpu_us(os_pid) do
    {:ok, stat} = File.read("/proc/#{os_pid}/stat")
    fields = stat |> String.split(")") |> List.last() |> String.split()
    # after the command: state is field 3, utime 14, stime 15 (clock ticks of 10 ms)
    (String.to_integer(Enum.at(fields, 11)) + String.to_integer(Enum.at(fields, 12))) * 10_000
  end

  defp vm_kib(os_pid, field) do
    {:ok, status} = File.read("/proc/#{os_pid}/status")
    [_, kib] = Regex.run(~r/#{field}:\s+(\d+) kB/, status)
    String.to_integer(kib)
  end

  # Each node's run in blocks A B B A (`run.(node, half)` does half of its work), with the
  # node's CPU during its blocks and, with `rss: true`, its peak RSS over what it had before
  # (VmHWM reset first). A run returns a map of numbers and lists: they are summed and
  # concatenated over the two halves (peaks: the larger).
  defp shape_blocks(specs, run, opts \\ []) do
    order = Enum.map(specs, &{&1, 0}) ++ Enum.map(Enum.reverse(specs), &{&1, 1})

    order
    |> Enum.map(fn {{node, pid}, h} ->
      rss0 =
        if opts[:rss] do
          File.write!("/proc/#{pid}/clear_refs", "5")
          vm_kib(pid, "VmRSS")
        end

      c0 = cpu_us(pid)
      r = in_process(fn -> run.(node, h) end)
      c1 = cpu_us(pid)
      r = Map.put(r, :cpu_us, c1 - c0)
      r = if opts[:rss], do: Map.put(r, :rss_growth_kib, vm_kib(pid, "VmHWM") - rss0), else: r
      {node, r}
    end)
    |> Enum.group_by(&elem(&1, 0), &elem(&1, 1))
    |> Map.new(fn {node, [a, b]} ->
      {node,
       Map.merge(a, b, fn
         :rss_growth_kib, x, y -> max(x, y)
         _, x, y when is_list(x) -> x ++ y
         _, x, y -> x + y
       end)}
    end)
  end

  # `fun` in a new process that does not trap exits: the links of finished tasks leave no
  # {:EXIT, _, :normal} behind in a mailbox that the next receives would have to scan
  defp in_process(fun) do
    parent = self()
    {pid, ref} = spawn_monitor(fn -> send(parent, {self(), fun.()}) end)

    receive do
      {^pid, r} ->
        Process.demonitor(ref, [:flush])
        r

      {:DOWN, ^ref, :process, _, reason} ->
        raise "a measurement died: #{inspect(reason)}"
    end
  end

  defp timed(fun) do
    t0 = now()
    r = fun.()
    {now() - t0, r}
  end

  # one at a time: latencies
  defp seq_shape(op_of, n) do
    fn node, h ->
      op = op_of.(node)
      warm(div(n, 10), op)
      {elapsed, {lat, errors}} = timed(fn -> timed_loop(half(n, h), op) end)
      %{ops: half(n, h), elapsed_ns: elapsed, lat_us: lat, errors: errors}
    end
  end

  # one process: `batch` Task.Supervisor.async, then Task.await_many, repeated
  defp task_batch_shape(total, batch) do
    fn node, h ->
      rounds = div(half(total, h), batch)

      {elapsed, wrong} =
        timed(fn ->
          Enum.reduce(1..rounds//1, 0, fn _, wrong ->
            tasks = for _ <- 1..batch, do: Task.Supervisor.async({KV.RouterTasks, node}, Kernel, :node, [])
            wrong + Enum.count(Task.await_many(tasks, 30_000), &(&1 != node))
          end)
        end)

      %{ops: rounds * batch, elapsed_ns: elapsed, errors: wrong}
    end
  end

  # `n` :gen_server.send_request to one server at once, then every reply
  defp send_request_shape(n) do
    fn node, _h ->
      server = {KV.Registry, node}

      {elapsed, wrong} =
        timed(fn ->
          reqs = for _ <- 1..n, do: :gen_server.send_request(server, @lookup)
          Enum.count(reqs, fn r -> :gen_server.wait_response(r, 60_000) != {:reply, :error} end)
        end)

      %{ops: n, elapsed_ns: elapsed, errors: wrong}
    end
  end

  # plain sends to a registered process (KV.Registry ignores what it does not know), then
  # one call behind them: it answers once every message before it was taken
  defp send_stream_shape(n) do
    fn node, h ->
      n = half(n, h)
      dest = {KV.Registry, node}

      {elapsed, ok} =
        timed(fn ->
          Enum.each(1..n, fn i -> send(dest, {:bench_message, i, "some payload"}) end)
          GenServer.call(dest, @lookup, 60_000) == :error
        end)

      %{ops: n, elapsed_ns: elapsed, errors: if(ok, do: 0, else: 1)}
    end
  end

  defp bucket_on(node, name) do
    :erpc.call(node, KV.Registry, :create, [KV.Registry, name], 30_000)
  end

  # GenServer.call get of a bucket's value that is a term-heavy map, one at a time
  defp map_reply_shape(n, entries, tag) do
    value = Map.new(1..entries, &{&1, "value #{&1}"})

    fn node, h ->
      bucket = bucket_on(node, "bench_map_#{tag}")
      :ok = GenServer.call(bucket, {:put, "m", value}, 60_000)
      op = fn -> GenServer.call(bucket, {:get, "m"}, 60_000) == value end
      warm(5, op)
      {elapsed, {lat, errors}} = timed(fn -> timed_loop(half(n, h), op) end)
      %{ops: half(n, h), elapsed_ns: elapsed, lat_us: lat, errors: errors}
    end
  end

  # a binary value put then got back, through GenServer.call on a bucket: MB/s each way
  defp big_value_shape(size, n, tag) do
    value = :crypto.strong_rand_bytes(size)

    fn node, h ->
      bucket = bucket_on(node, "bench_big_#{tag}")
      n = half(n, h)

      {puts, gets, wrong} =
        Enum.reduce(1..n//1, {0, 0, 0}, fn _, {p, g, w} ->
          {tp, :ok} = timed(fn -> GenServer.call(bucket, {:put, "big", value}, 120_000) end)
          {tg, got} = timed(fn -> GenServer.call(bucket, {:get, "big"}, 120_000) end)
          {p + tp, g + tg, if(got == value, do: w, else: w + 1)}
        end)

      GenServer.call(bucket, {:delete, "big"}, 120_000)
      %{ops: n, bytes: n * size, to_ns: puts, from_ns: gets, elapsed_ns: puts + gets, errors: wrong}
    end
  end

  # a binary through Bench.Echo.echo/1 (foo: bench/echo.py; BEAM nodes: loaded by load_echo),
  # and one way only: size/1 (to the node) and big/1 (from it)
  defp echo_shape(size, n) do
    value = :crypto.strong_rand_bytes(size)

    fn node, h ->
      n = half(n, h)

      {echo, to, from, wrong} =
        Enum.reduce(1..n//1, {0, 0, 0, 0}, fn _, {e, t, f, w} ->
          {te, back} = timed(fn -> :erpc.call(node, Bench.Echo, :echo, [value], 120_000) end)
          {tt, ^size} = timed(fn -> :erpc.call(node, Bench.Echo, :size, [value], 120_000) end)
          {tf, got} = timed(fn -> :erpc.call(node, Bench.Echo, :big, [size], 120_000) end)
          {e + te, t + tt, f + tf, if(back == value and byte_size(got) == size, do: w, else: w + 1)}
        end)

      %{ops: n, bytes: n * size, echo_ns: echo, to_ns: to, from_ns: from, elapsed_ns: echo + to + from,
        errors: wrong}
    end
  end

  @echo_source """
  defmodule Bench.Echo do
    def echo(x), do: x
    def size(x), do: byte_size(x)
    def big(n), do: :binary.copy(<<7>>, n)
  end
  """

  # Bench.Echo on a BEAM node, compiled here (the nodes share the OTP release)
  defp load_echo(node) do
    [{mod, bin}] = Code.compile_string(@echo_source)
    {:module, ^mod} = :erpc.call(node, :code, :load_binary, [mod, ~c"bench_echo.erl", bin])
  end

  # `run.(node, h)` for every shape that is in `only` (all when nil)
  @shape_names ~w(task_seq erpc_seq call_seq task_conc task_batch send_request send_stream
                  map_reply big_1mib big_16mib echo_50mb)

  def shapes(specs, o) do
    only = if o[:only] == "", do: @shape_names, else: String.split(o[:only], ",")
    for {node, _} <- specs, not String.starts_with?(Atom.to_string(node), "foo"), do: load_echo(node)
    s = o[:samples]

    shapes = [
      task_seq: fn -> shape_blocks(specs, seq_shape(&task_op/1, s)) end,
      erpc_seq: fn -> shape_blocks(specs, seq_shape(&erpc_op/1, s)) end,
      call_seq: fn -> shape_blocks(specs, seq_shape(&call_op/1, s)) end,
      task_conc: fn ->
        shape_blocks(specs, fn node, h ->
          {elapsed, count, lat, errors} = load(task_op(node), half(o[:count], h), o[:concurrency])
          %{ops: count, elapsed_ns: elapsed, lat_us: lat, errors: errors}
        end)
      end,
      task_batch: fn -> shape_blocks(specs, task_batch_shape(o[:count], o[:concurrency])) end,
      send_request: fn -> shape_blocks(specs, send_request_shape(o[:requests])) end,
      send_stream: fn -> shape_blocks(specs, send_stream_shape(o[:messages])) end,
      map_reply: fn -> shape_blocks(specs, map_reply_shape(o[:map_gets], 10_000, o[:tag])) end,
      big_1mib: fn -> shape_blocks(specs, big_value_shape(1_048_576, o[:big_n], o[:tag]), rss: true) end,
      big_16mib: fn ->
        shape_blocks(specs, big_value_shape(16_777_216, max(2, div(o[:big_n], 8)), o[:tag]), rss: true)
      end,
      echo_50mb: fn -> shape_blocks(specs, echo_shape(50_000_000, 2), rss: true) end
    ]

    results =
      for {name, fun} <- shapes, Atom.to_string(name) in only do
        IO.puts(:stderr, "shape #{name}")
        {name, fun.()}
      end

    Map.new(specs, fn {node, _} -> {node, Map.new(results, fn {name, r} -> {name, r[node]} end)} end)
  end

  # fan-in: `--clients` client nodes at once (this one leads, the others follow its
  # messages), each with `concurrency / clients` tasks in flight, in blocks A B B A
  def fanin(specs, o) do
    Process.register(self(), :bench_fanin)
    peers = o[:peers] |> String.split(",", trim: true) |> Enum.map(&String.to_atom/1)

    if o[:index] == 1 do
      Enum.each(peers, &await_peer/1)
      per_client = max(1, div(o[:concurrency], length(peers) + 1))

      r =
        shape_blocks(specs, fn node, h ->
          n = div(half(o[:count], h), length(peers) + 1)
          me = self()
          Enum.each(peers, &send({:bench_fanin, &1}, {:go, me, node, n, per_client}))
          own = load(task_op(node), n, per_client)
          all = [own | for(_ <- peers, do: receive(do: ({:fanin_done, x} -> x)))]

          %{
            ops: Enum.sum(Enum.map(all, &elem(&1, 1))),
            elapsed_ns: Enum.max(Enum.map(all, &elem(&1, 0))),
            lat_us: Enum.flat_map(all, &elem(&1, 2)),
            errors: Enum.sum(Enum.map(all, &elem(&1, 3)))
          }
        end)

      Enum.each(peers, &send({:bench_fanin, &1}, :quit))
      Map.new(specs, fn {node, _} -> {node, %{fanin: Map.put(r[node], :clients, length(peers) + 1)}} end)
    else
      follow()
    end
  end

  defp await_peer(peer, tries \\ 600) do
    cond do
      Node.connect(peer) and is_pid(:rpc.call(peer, Process, :whereis, [:bench_fanin])) -> :ok
      tries == 0 -> raise "fan-in client #{peer} never came up"
      true -> Process.sleep(100); await_peer(peer, tries - 1)
    end
  end

  defp follow do
    receive do
      {:go, from, node, n, concurrency} ->
        send(from, {:fanin_done, load(task_op(node), n, concurrency)})
        follow()

      :quit ->
        %{}
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
    tag: :string,
    only: :string,
    requests: :integer,
    messages: :integer,
    map_gets: :integer,
    big_n: :integer,
    peers: :string,
    index: :integer
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
    tag: "",
    only: "",
    requests: 20_000,
    messages: 200_000,
    map_gets: 400,
    big_n: 64,
    peers: "",
    index: 1
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

        "shapes" ->
          shapes(with_pids(specs), o)

        "fanin" ->
          fanin(with_pids(specs), o)

        # one node after the other: each is loaded on its own
        "scale" ->
          Map.new(specs, fn {node, pid} -> {node, scale(node, pid || os_pid_of(node), o)} end)
      end

    for node <- nodes, Map.has_key?(results, node) do
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

  defp with_pids(specs), do: Enum.map(specs, fn {node, pid} -> {node, pid || os_pid_of(node)} end)

  defp os_pid_of(node), do: :erpc.call(node, :os, :getpid, []) |> List.to_integer()
end

Bench.Client.main(System.argv())
