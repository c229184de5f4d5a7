defmodule KV.RoutingTable do
  @moduledoc """
  Builds `KV.Router`'s routing table: a list of `{range_of_first_bytes, node}`.

  The text form (the `KV_ROUTING_TABLE` environment variable, and pykv's `--route`
  flags) is a comma-separated list of `KEYS=NODE` entries:

    * `KEYS` is one byte (`x`) or an inclusive byte range (`a-m`);
    * `NODE` is a full node name (`bar@otherhost`), or a bare name (`foo`) which
      gets this machine's short host name (see `local_host/0`).

  Example: `a-m=foo,n-z=bar@otherhost,x=foo`. The first matching entry wins.
  Any byte but `,` can be a key (`-=foo` and `==foo` route `-` and `=`).
  """

  @type t :: [{Range.t(), node()}]

  @doc """
  The table for `value` (the `KV_ROUTING_TABLE` environment variable): `default/1`
  when it is `nil` or blank, `parse!/2` otherwise.
  """
  @spec from_env(String.t() | nil, String.t()) :: t
  def from_env(value, host \\ local_host())

  def from_env(nil, host), do: default(host)

  def from_env(value, host) when is_binary(value) do
    if String.trim(value) == "", do: default(host), else: parse!(value, host)
  end

  @doc """
  The guide's table: `a` to `m` on `foo@host`, `n` to `z` on `bar@host`.
  """
  @spec default(String.t()) :: t
  def default(host \\ local_host()) do
    [{?a..?m, :"foo@#{host}"}, {?n..?z, :"bar@#{host}"}]
  end

  @doc """
  Parses the text form; bare node names get `@host`.

      iex> KV.RoutingTable.parse("a-m=foo,n-z=bar@otherhost,x=foo", "vm")
      {:ok, [{97..109, :foo@vm}, {110..122, :bar@otherhost}, {120..120, :foo@vm}]}

  Returns `{:error, message}` for a malformed entry. Empty entries are ignored.
  """
  @spec parse(String.t(), String.t()) :: {:ok, t} | {:error, String.t()}
  def parse(text, host) when is_binary(text) and is_binary(host) do
    text
    |> String.split(",")
    |> Enum.map(&String.trim/1)
    |> Enum.reject(&(&1 == ""))
    |> Enum.reduce_while({:ok, []}, fn entry, {:ok, acc} ->
      case parse_entry(entry, host) do
        {:ok, route} -> {:cont, {:ok, [route | acc]}}
        {:error, reason} -> {:halt, {:error, "bad routing entry #{inspect(entry)}: #{reason}"}}
      end
    end)
    |> case do
      {:ok, []} -> {:error, "empty routing table"}
      {:ok, routes} -> {:ok, Enum.reverse(routes)}
      error -> error
    end
  end

  @doc "Like `parse/2`, but raises `ArgumentError` on malformed input."
  @spec parse!(String.t(), String.t()) :: t
  def parse!(text, host \\ local_host()) do
    case parse(text, host) do
      {:ok, table} -> table
      {:error, reason} -> raise ArgumentError, reason
    end
  end

  @doc """
  This machine's short host name: the host part of `node()` when distribution is
  on, otherwise `:inet.gethostname/0`.
  """
  @spec local_host() :: String.t()
  def local_host do
    if Node.alive?() do
      [_name, host] = String.split(Atom.to_string(node()), "@", parts: 2)
      host
    else
      {:ok, host} = :inet.gethostname()
      List.to_string(host)
    end
  end

  # Split at the last "=", so that "=" itself can be a key ("==foo").
  defp parse_entry(entry, host) do
    with {:ok, keys, node} <- split_last(entry, "="),
         {:ok, range} <- parse_keys(String.trim(keys)),
         {:ok, node} <- parse_node(String.trim(node), host) do
      {:ok, {range, node}}
    end
  end

  defp split_last(entry, separator) do
    case :binary.matches(entry, separator) do
      [] ->
        {:error, "expected KEYS=NODE"}

      matches ->
        {at, len} = List.last(matches)
        # binary_part, not a size(at) match: Elixir 1.20 wants `^at` there, which 1.14 refuses
        keys = binary_part(entry, 0, at)
        node = binary_part(entry, at + len, byte_size(entry) - at - len)
        {:ok, keys, node}
    end
  end

  defp parse_keys(<<byte>>), do: {:ok, Range.new(byte, byte, 1)}

  defp parse_keys(<<first, ?-, last>>) when first <= last, do: {:ok, Range.new(first, last, 1)}

  defp parse_keys(<<_, ?-, _>>), do: {:error, "range goes backwards"}

  defp parse_keys(_), do: {:error, "keys must be one byte (x) or a byte range (a-m)"}

  defp parse_node("", _host), do: {:error, "missing node name"}

  defp parse_node(node, host) do
    case String.split(node, "@") do
      [name] -> {:ok, String.to_atom(name <> "@" <> host)}
      [name, node_host] when name != "" and node_host != "" -> {:ok, String.to_atom(node)}
      _ -> {:error, "bad node name"}
    end
  end
end
