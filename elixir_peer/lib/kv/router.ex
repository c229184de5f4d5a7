defmodule KV.Router do
  @moduledoc """
  Sends a request to the node that owns a bucket, as in the guide's
  "Distributed tasks and tags" chapter.
  """

  @doc """
  Dispatch the given `mod`, `fun`, `args` request
  to the appropriate node based on the `bucket`.
  """
  def route(bucket, mod, fun, args) do
    # Get the first byte of the binary
    first = :binary.first(bucket)

    # Try to find an entry in the table() or raise
    entry =
      Enum.find(table(), fn {enum, _node} ->
        first in enum
      end) || no_entry_error(bucket)

    # If the entry node is the current node
    if elem(entry, 1) == node() do
      apply(mod, fun, args)
    else
      {KV.RouterTasks, elem(entry, 1)}
      |> Task.Supervisor.async(KV.Router, :route, [bucket, mod, fun, args])
      |> Task.await()
    end
  end

  defp no_entry_error(bucket) do
    raise "could not find entry for #{inspect(bucket)} in table #{inspect(table())}"
  end

  @doc """
  The routing table: `config :kv, :routing_table` (set at boot from
  `KV_ROUTING_TABLE`, see `KV.RoutingTable`), or the guide's default.
  """
  def table do
    Application.get_env(:kv, :routing_table) || KV.RoutingTable.default()
  end
end
