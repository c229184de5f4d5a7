defmodule KV.Registry do
  @moduledoc """
  Names buckets: bucket name => bucket pid.

  As in the guide, the names live in a named ETS table (named after the registry
  process) so that local lookups do not go through the server; creation is serialized
  by the server. Buckets are monitored and removed when they die.

  Messages (shared with pykv's registry, so `{KV.Registry, node}` works on any node):

    * call `{:create, name}` -> the bucket's pid (the existing one if there is one)
    * call `{:lookup, name}` -> `{:ok, pid}` or `:error`
  """
  use GenServer

  @doc """
  Starts the registry. `:name` is required: it names both the process and its ETS
  table. `:bucket_supervisor` (default `KV.BucketSupervisor`) is the DynamicSupervisor
  that buckets are started under.
  """
  def start_link(opts) do
    name = Keyword.fetch!(opts, :name)
    bucket_supervisor = Keyword.get(opts, :bucket_supervisor, KV.BucketSupervisor)
    GenServer.start_link(__MODULE__, {name, bucket_supervisor}, name: name)
  end

  @doc """
  Looks up the bucket pid for `name` in `server`.

  Returns `{:ok, pid}` if the bucket exists, `:error` otherwise. For a local registry
  name this reads the ETS table directly; any other server (a pid, `{name, node}`) is
  asked with a call.
  """
  def lookup(server, name) when is_atom(server) do
    case :ets.whereis(server) do
      :undefined -> GenServer.call(server, {:lookup, name})
      _table -> lookup_table(server, name)
    end
  end

  def lookup(server, name) do
    GenServer.call(server, {:lookup, name})
  end

  @doc """
  Returns the pid of the bucket `name` in `server`, creating the bucket if needed.
  """
  def create(server, name) do
    GenServer.call(server, {:create, name})
  end

  defp lookup_table(table, name) do
    case :ets.lookup(table, name) do
      [{^name, pid}] -> {:ok, pid}
      [] -> :error
    end
  end

  ## Callbacks

  @impl true
  def init({table, bucket_supervisor}) do
    names = :ets.new(table, [:named_table, read_concurrency: true])
    {:ok, %{names: names, refs: %{}, bucket_supervisor: bucket_supervisor}}
  end

  @impl true
  def handle_call({:lookup, name}, _from, state) do
    {:reply, lookup_table(state.names, name), state}
  end

  def handle_call({:create, name}, _from, state) do
    case lookup_table(state.names, name) do
      {:ok, pid} ->
        {:reply, pid, state}

      :error ->
        {:ok, pid} = DynamicSupervisor.start_child(state.bucket_supervisor, KV.Bucket)
        ref = Process.monitor(pid)
        true = :ets.insert(state.names, {name, pid})
        {:reply, pid, put_in(state.refs[ref], name)}
    end
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    case Map.pop(state.refs, ref) do
      {nil, _refs} ->
        {:noreply, state}

      {name, refs} ->
        :ets.delete(state.names, name)
        {:noreply, %{state | refs: refs}}
    end
  end

  def handle_info(_msg, state) do
    {:noreply, state}
  end
end
