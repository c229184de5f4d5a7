defmodule KV.Bucket do
  @moduledoc """
  A bucket: a process holding a map.

  A GenServer rather than the guide's Agent, because an Agent is driven by closures
  and a bucket must be usable from any node, Python ones included. The messages are
  the contract shared with pykv's buckets, so a bucket pid from either side works
  from the other:

    * call `{:get, key}` -> the value or `nil`
    * call `{:put, key, value}` -> `:ok`
    * call `{:delete, key}` -> the old value or `nil`
    * cast `{:subscribe, pid}`: `pid` then gets `{:put, key, value}` and
      `{:delete, key}` for every put and delete on the bucket, until it exits.
  """
  use GenServer, restart: :temporary

  @doc "Starts a bucket. `opts` are `GenServer` options (e.g. `:name`)."
  def start_link(opts \\ []) do
    GenServer.start_link(__MODULE__, :ok, opts)
  end

  @doc "Gets the value for `key`, or `nil`."
  def get(bucket, key) do
    GenServer.call(bucket, {:get, key})
  end

  @doc "Puts `value` under `key`."
  def put(bucket, key, value) do
    GenServer.call(bucket, {:put, key, value})
  end

  @doc "Deletes `key`, returning its value, or `nil` if there was none."
  def delete(bucket, key) do
    GenServer.call(bucket, {:delete, key})
  end

  @doc "Sends `pid` a message for every put and delete on the bucket from now on."
  def subscribe(bucket, pid) when is_pid(pid) do
    GenServer.cast(bucket, {:subscribe, pid})
    # A call after the cast is handled after it: once it returns, the subscription is in
    # place and no later change can be missed.
    _ = GenServer.call(bucket, {:get, nil})
    :ok
  end

  ## Callbacks

  @impl true
  def init(:ok) do
    # subscribers: monitor ref => pid
    {:ok, %{data: %{}, subscribers: %{}}}
  end

  @impl true
  def handle_call({:get, key}, _from, state) do
    {:reply, Map.get(state.data, key), state}
  end

  def handle_call({:put, key, value}, _from, state) do
    notify(state, {:put, key, value})
    {:reply, :ok, %{state | data: Map.put(state.data, key, value)}}
  end

  def handle_call({:delete, key}, _from, state) do
    {old, data} = Map.pop(state.data, key)
    notify(state, {:delete, key})
    {:reply, old, %{state | data: data}}
  end

  @impl true
  def handle_cast({:subscribe, pid}, state) when is_pid(pid) do
    if pid in Map.values(state.subscribers) do
      {:noreply, state}
    else
      ref = Process.monitor(pid)
      {:noreply, put_in(state.subscribers[ref], pid)}
    end
  end

  def handle_cast(_unknown, state) do
    {:noreply, state}
  end

  @impl true
  def handle_info({:DOWN, ref, :process, _pid, _reason}, state) do
    {_, subscribers} = Map.pop(state.subscribers, ref)
    {:noreply, %{state | subscribers: subscribers}}
  end

  def handle_info(_msg, state) do
    {:noreply, state}
  end

  defp notify(state, message) do
    for {_ref, pid} <- state.subscribers, do: send(pid, message)
    :ok
  end
end
