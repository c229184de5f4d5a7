Code.require_file("support/python_node.exs", __DIR__)

# The command line's --include/--exclude/--only are already configured at this point.
cli_config = ExUnit.configuration()

exclude = if Node.alive?(), do: [], else: [distributed: true]

ExUnit.start(exclude: exclude)

config = Keyword.update(cli_config, :exclude, exclude, &(&1 ++ exclude))

cond do
  KV.Test.PythonNode.distributed_included?(config) ->
    # Run as: elixir --sname bar -S mix test --include distributed
    KV.Test.PythonNode.ensure_started()

  KV.Test.PythonNode.tag_filter?(Keyword.get(cli_config, :include, [])) ->
    IO.puts(
      :stderr,
      "test_helper: this node is not alive, so distributed tests cannot reach foo; " <>
        "run: elixir --sname bar -S mix test --include distributed"
    )

  true ->
    :ok
end
