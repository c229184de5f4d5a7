defmodule KV do
  @moduledoc """
  The key-value store of Elixir's Mix/OTP guide, as the BEAM peer of pykv.

  Buckets (`KV.Bucket`) are created and found through `KV.Registry`; requests are sent
  to the node that owns a bucket by `KV.Router`; `KVServer` is the optional line server.
  """
  use Application

  @impl true
  def start(_type, _args) do
    KV.Supervisor.start_link(name: KV.Supervisor)
  end
end
