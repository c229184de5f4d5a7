import Config

# KV_ROUTING_TABLE="a-m=foo,n-z=bar@otherhost": see KV.RoutingTable.
# Unset or empty: [{?a..?m, :"foo@HOST"}, {?n..?z, :"bar@HOST"}], HOST = this machine.
config :kv, :routing_table, KV.RoutingTable.from_env(System.get_env("KV_ROUTING_TABLE"))

# KV_PORT=4040 starts the line server (KVServer) on that port; unset or empty: no server.
case String.trim(System.get_env("KV_PORT", "")) do
  "" ->
    :ok

  port ->
    case Integer.parse(port) do
      {port, ""} when port in 0..65535 -> config :kv, :port, port
      _ -> raise ArgumentError, "KV_PORT must be a TCP port number, got: #{inspect(port)}"
    end
end
