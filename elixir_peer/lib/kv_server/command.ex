defmodule KVServer.Command do
  @moduledoc """
  Parses and runs the line server's commands. Every command goes through
  `KV.Router`, so the bucket may live on another node (Elixir or Python).
  """

  @type t ::
          {:create, String.t()}
          | {:get, String.t(), String.t()}
          | {:put, String.t(), String.t(), String.t()}
          | {:delete, String.t(), String.t()}
          | {:subscribe, String.t()}

  @doc ~S"""
  Parses the given `line` into a command.

  ## Examples

      iex> KVServer.Command.parse("CREATE shopping\r\n")
      {:ok, {:create, "shopping"}}

      iex> KVServer.Command.parse("CREATE  shopping  \r\n")
      {:ok, {:create, "shopping"}}

      iex> KVServer.Command.parse("PUT shopping milk 1\r\n")
      {:ok, {:put, "shopping", "milk", "1"}}

      iex> KVServer.Command.parse("GET shopping milk\r\n")
      {:ok, {:get, "shopping", "milk"}}

      iex> KVServer.Command.parse("DELETE shopping eggs\r\n")
      {:ok, {:delete, "shopping", "eggs"}}

      iex> KVServer.Command.parse("SUBSCRIBE shopping\r\n")
      {:ok, {:subscribe, "shopping"}}

  Unknown commands or commands with the wrong number of
  arguments return an error:

      iex> KVServer.Command.parse("UNKNOWN shopping eggs\r\n")
      {:error, :unknown_command}

      iex> KVServer.Command.parse("GET shopping\r\n")
      {:error, :unknown_command}

  """
  @spec parse(String.t()) :: {:ok, t} | {:error, :unknown_command}
  def parse(line) do
    case String.split(line) do
      ["CREATE", bucket] -> {:ok, {:create, bucket}}
      ["GET", bucket, key] -> {:ok, {:get, bucket, key}}
      ["PUT", bucket, key, value] -> {:ok, {:put, bucket, key, value}}
      ["DELETE", bucket, key] -> {:ok, {:delete, bucket, key}}
      ["SUBSCRIBE", bucket] -> {:ok, {:subscribe, bucket}}
      _ -> {:error, :unknown_command}
    end
  end

  @doc """
  Runs the given command, returning `{:ok, reply_text}` or `{:error, reason}`.

  `{:subscribe, bucket}` subscribes the calling process: it then receives the
  bucket's `{:put, key, value}` and `{:delete, key}` messages (see `KV.Bucket`).
  Routing failures (no routing entry, a node down) raise or exit.
  """
  @spec run(t) :: {:ok, String.t()} | {:error, term}
  def run(command)

  def run({:create, bucket}) do
    case KV.Router.route(bucket, KV.Registry, :create, [KV.Registry, bucket]) do
      pid when is_pid(pid) -> {:ok, "OK\r\n"}
      _ -> {:error, "FAILED TO CREATE BUCKET"}
    end
  end

  def run({:get, bucket, key}) do
    lookup(bucket, fn pid ->
      value = KV.Bucket.get(pid, key)
      {:ok, "#{format(value)}\r\nOK\r\n"}
    end)
  end

  def run({:put, bucket, key, value}) do
    lookup(bucket, fn pid ->
      KV.Bucket.put(pid, key, value)
      {:ok, "OK\r\n"}
    end)
  end

  def run({:delete, bucket, key}) do
    lookup(bucket, fn pid ->
      KV.Bucket.delete(pid, key)
      {:ok, "OK\r\n"}
    end)
  end

  def run({:subscribe, bucket}) do
    lookup(bucket, fn pid ->
      KV.Bucket.subscribe(pid, self())
      {:ok, "OK\r\n"}
    end)
  end

  @doc ~S"""
  The line sent to a subscribed connection for a bucket message, or `nil` for
  any other message.

      iex> KVServer.Command.event_line({:put, "milk", "3"})
      "milk SET TO 3\r\n"

      iex> KVServer.Command.event_line({:delete, "milk"})
      "milk DELETED\r\n"

  """
  @spec event_line(term) :: String.t() | nil
  def event_line({:put, key, value}), do: "#{format(key)} SET TO #{format(value)}\r\n"
  def event_line({:delete, key}), do: "#{format(key)} DELETED\r\n"
  def event_line(_other), do: nil

  defp lookup(bucket, callback) do
    case KV.Router.route(bucket, KV.Registry, :lookup, [KV.Registry, bucket]) do
      {:ok, pid} -> callback.(pid)
      :error -> {:error, :not_found}
    end
  end

  # Buckets written by other clients (Elixir or Python) may hold any term.
  defp format(nil), do: ""
  defp format(value) when is_binary(value), do: value
  defp format(value), do: inspect(value)
end
