defmodule KV.MixProject do
  use Mix.Project

  def project do
    [
      app: :kv,
      version: "0.1.0",
      elixir: "~> 1.14",
      start_permanent: Mix.env() == :prod,
      # No dependencies at all: hex.pm is not needed to build or test this project.
      deps: [],
      # test/support holds helpers, not tests (Elixir 1.18+ warns about unmatched files)
      test_ignore_filters: [~r"^test/support/"]
    ]
  end

  def application do
    [
      # :ssl: with -proto_dist inet_tls, Elixir 1.15+ would prune its code path (undef in the TLS handshake)
      extra_applications: [:logger, :ssl],
      mod: {KV, []}
    ]
  end
end
