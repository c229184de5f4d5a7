"""Issue 13 item 4: CPU-bound exports in worker processes, which use every core."""

from __future__ import annotations

import os

import pytest

import cpu_exports
from conftest import free_port, lit, run, run_elixir, script, unique
from pykv import Atom, Node


def test_a_worker_export_must_be_a_module_level_function():
    node = Node(unique("foo"), "c", epmd_port=free_port())
    with pytest.raises(ValueError, match="module level"):
        node.exports.add("M", "f", lambda x: x, workers=True)
    with pytest.raises(ValueError, match="async def"):
        async def f(x): return x
        node.exports.add("M", "f", f, workers=True)


def test_worker_exports_run_in_other_processes_and_fail_as_plain_ones():
    async def main():
        async with Node(unique("foo"), "c", epmd_port=free_port(), workers=2) as node:
            for fn in (cpu_exports.burn, cpu_exports.echo, cpu_exports.fail, cpu_exports.die):
                node.exports.add("Cpu", fn.__name__, fn, workers=True)
            node.exports.add("Plain", "fail", cpu_exports.fail)
            term = {Atom("a"): [1, 2.5, (b"x", node.name)], b"k": None}
            assert await node.apply("Cpu", "echo", [term]) == term
            pids = {await node.apply("Cpu", "burn", [1]) for _ in range(4)}
            assert pids and os.getpid() not in pids
            with pytest.raises(ValueError, match="nope"):
                await node.apply("Plain", "fail", [b"nope"])
    run(main())


@pytest.mark.distributed
def test_worker_exports_from_a_beam_node(cookie):
    """Calls spread over the workers; failures look as from a plain export; a worker that
    dies fails its call with an error and is replaced; a call whose process is killed stops
    its worker's work."""
    async def main():
        async with Node(unique("foo"), cookie, workers=2) as node:
            for fn in (cpu_exports.burn, cpu_exports.echo, cpu_exports.fail, cpu_exports.die):
                node.exports.add("Cpu", fn.__name__, fn, workers=True)
            node.exports.add("Plain", "fail", cpu_exports.fail)
            r = await run_elixir(script("""
                py = PY
                t = {:a, [1, 2.5, "x"], %{"k" => nil}, self()}
                ^t = :erpc.call(py, Cpu, :echo, [t])
                pids = 1..40 |> Enum.map(fn _ -> Task.async(fn -> :erpc.call(py, Cpu, :burn, [5]) end) end)
                           |> Task.await_many(30_000) |> Enum.uniq()
                2 = length(pids)
                {:error, {:exception, %ArgumentError{message: "bad"}, [{:cpu_exports, :fail, 1, _} | _]}} =
                  try do :erpc.call(py, Cpu, :fail, ["bad"]) catch k, r -> {k, r} end
                {:badrpc, {:EXIT, {%ArgumentError{message: "bad"}, _}}} = :rpc.call(py, Plain, :fail, ["bad"])
                {:badrpc, {:EXIT, {%ArgumentError{message: "bad"}, _}}} = :rpc.call(py, Cpu, :fail, ["bad"])
                {:error, {:exception, %RuntimeError{message: m}, _}} =
                  try do :erpc.call(py, Cpu, :die, [3]) catch k, r -> {k, r} end
                true = m =~ "exited with status 3"
                ^t = :erpc.call(py, Cpu, :echo, [t])
                # two long calls whose processes are killed (as Task.shutdown does)
                for _ <- 1..2 do
                  pid = Node.spawn(py, Cpu, :burn, [20_000])
                  Process.sleep(300)
                  Process.exit(pid, :kill)
                end
                # both workers were stopped with their calls: these do not wait 20 s
                2 = 1..2 |> Enum.map(fn _ -> Task.async(fn -> :erpc.call(py, Cpu, :burn, [1]) end) end)
                      |> Task.await_many(10_000) |> length()
                IO.puts("ALL OK")
            """, PY=lit(node.name)), sname=unique("bar"), cookie=cookie, timeout=90)
            r.check()
            assert "ALL OK" in r.stdout
    run(main(), timeout=120)
