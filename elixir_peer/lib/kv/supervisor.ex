defmodule KV.Supervisor do
  @moduledoc """
  The application's supervision tree.

  The line server (`KVServer`) is a child only when a port is configured
  (`config :kv, :port, 4040`, or the `KV_PORT` environment variable).
  """
  use Supervisor

  def start_link(opts) do
    Supervisor.start_link(__MODULE__, :ok, opts)
  end

  @impl true
  def init(:ok) do
    children =
      [
        {DynamicSupervisor, name: KV.BucketSupervisor, strategy: :one_for_one},
        {KV.Registry, name: KV.Registry},
        {Task.Supervisor, name: KV.RouterTasks}
      ] ++ line_server(Application.get_env(:kv, :port))

    # The registry's table is only right while its buckets live: restart them together.
    Supervisor.init(children, strategy: :one_for_all)
  end

  defp line_server(nil), do: []
  defp line_server(port) when is_integer(port), do: [{KVServer, port: port}]
  defp line_server(port) when is_binary(port), do: line_server(String.to_integer(port))
end
