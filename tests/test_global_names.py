"""Issue 12 item 6: `:global` names from Python, as a hidden node (pykv/otp/global_names.py).

A cluster of two BEAM nodes (visible to each other, so one `global` cluster) and the Python
node, connected to the first one only: a name registered from Python must reach both (the
second connects to pykv by itself, to monitor the pid), and go from both when the process
exits or the Python node goes down.
"""

from __future__ import annotations

from typing import Any

import pytest

from conftest import eventually, free_port, run, unique, wait_until_up
from pykv import Atom, Node, Pid
from pykv.errors import Exit, NoProc
from pykv.otp import gen_server, global_names, rpc
from pykv.otp.gen_server import GenServer
from pykv.otp.global_names import GLOBAL, VIA, NoGlobalNode

YES = Atom("yes")

GLOBAL_PROBE = """
defmodule GlobalProbe do
  # a BEAM process under a global name: answers calls, and echoes {:echo_to, pid, x}
  def start(name) do
    pid = spawn(fn -> loop() end)
    :yes = :global.register_name(name, pid)
    pid
  end

  defp loop do
    receive do
      {:"$gen_call", from, request} -> GenServer.reply(from, {:beam_reply, request})
      {:echo_to, pid, x} -> send(pid, {:echoed, x})
      _ -> :ok
    end
    loop()
  end
end
"""


class Echo(GenServer):
    def handle_call(self, request: Any, from_: Any) -> Any:
        return (Atom("python_reply"), request)


async def global_cluster(node: Node, beam_nodes: Any) -> tuple[Atom, Atom]:
    """Two BEAM nodes in one global cluster; the Python node connected to the first only."""
    b1, b2 = (Atom(beam_nodes("gbeam", script=GLOBAL_PROBE).name) for _ in range(2))
    await wait_until_up(node, b1)

    async def loaded(b: Atom) -> bool:
        found = await rpc.call(node, b1, "rpc", "call", [b, Atom("code"), Atom("is_loaded"),
                                                          [Atom("Elixir.GlobalProbe")]])
        return type(found) is tuple and found[0] == Atom("file")

    await eventually(lambda: _connect(node, b1, b2), timeout=30, what="b1 and b2 connected")
    await eventually(lambda: loaded(b1), timeout=30, what="GlobalProbe on b1")
    await eventually(lambda: loaded(b2), timeout=30, what="GlobalProbe on b2")
    await rpc.call(node, b1, "global", "sync", [], timeout=30)
    return b1, b2


async def _connect(node: Node, b1: Atom, b2: Atom) -> bool:
    return await rpc.call(node, b1, "net_kernel", "connect_node", [b2]) is True


async def where_on(node: Node, b1: Atom, beam: Atom, name: Any) -> Any:
    """`:global.whereis_name(name)` as `beam` sees it (asked through b1, the node we know)."""
    return await rpc.call(node, b1, "rpc", "call", [beam, GLOBAL, Atom("whereis_name"), [name]])


def test_without_a_visible_node_there_is_no_global():
    async def main():
        async with Node(unique("gl"), "c", epmd_port=free_port()) as node:
            with pytest.raises(NoGlobalNode):
                await global_names.register_name(node, Atom("x"), node.process())
            with pytest.raises(NoGlobalNode):
                await gen_server.call(node, (GLOBAL, Atom("x")), Atom("hi"))
            with pytest.raises(TypeError):
                await global_names.register_name(node, object(), node.process())
            with pytest.raises(TypeError):
                await global_names.register_name(node, Atom("x"), "not a pid")

            class Registry:                            # a Python via registry
                def __init__(self, pid):
                    self.pid = pid

                async def whereis_name(self, name):
                    return self.pid if name == Atom("here") else None

            server = Echo.start(node)
            registry = Registry(server.pid)
            assert await gen_server.call(node, (VIA, registry, Atom("here")), 1) == (Atom("python_reply"), 1)
            with pytest.raises(NoProc):
                await gen_server.call(node, (VIA, registry, Atom("missing")), 1)
            with pytest.raises(TypeError):
                await gen_server.call(node, (VIA, Atom("Elixir.Registry"), Atom("x")), 1)
            # a 2-tuple {via, Node} is a name and a node, as in gen.erl (here: no such node)
            assert gen_server._registry_name((VIA, Atom("bar@h"))) is False
    run(main())


@pytest.mark.distributed
def test_python_names_reach_every_beam_node_and_go_with_the_process(cookie, beam_nodes):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            b1, b2 = await global_cluster(node, beam_nodes)
            server = Echo.start(node)
            name = Atom(unique("py_echo"))
            assert await global_names.register_name(node, name, server) is True
            for beam in (b1, b2):
                await eventually(lambda beam=beam: _is(where_on(node, b1, beam, name), server.pid), timeout=10,
                                 what=f":global.whereis_name on {beam.name}")
                # GenServer.call({:global, name}, ...) from each BEAM node reaches Python
                reply = await rpc.call(node, b1, "rpc", "call", [beam, Atom("Elixir.GenServer"), Atom("call"),
                                                                 [(GLOBAL, name), (Atom("hi"), beam)]])
                assert reply == (Atom("python_reply"), (Atom("hi"), beam))
            assert b2 in node.nodes()           # b2 connected to pykv by itself (its monitor)
            # taken: no, for another process too
            assert await global_names.register_name(node, name, node.process()) is False
            assert await global_names.whereis_name(node, name) == server.pid
            assert name in await global_names.registered_names(node)
            # unregister, then register again, then the process exits: gone everywhere
            await global_names.unregister_name(node, name)
            for beam in (b1, b2):
                await eventually(lambda beam=beam: _is(where_on(node, b1, beam, name), Atom("undefined")),
                                 timeout=10, what=f"unregistered on {beam.name}")
            assert await global_names.register_name(node, name, server, at=b1) is True
            for beam in (b1, b2):
                await eventually(lambda beam=beam: _is(where_on(node, b1, beam, name), server.pid), timeout=10,
                                 what=f"registered again on {beam.name}")
            server.exit(Atom("bye"))
            for beam in (b1, b2):
                await eventually(lambda beam=beam: _is(where_on(node, b1, beam, name), Atom("undefined")),
                                 timeout=10, what=f"gone with the process on {beam.name}")
            with pytest.raises(NoProc):
                await gen_server.call(node, (GLOBAL, name), Atom("hi"))
    run(main(), timeout=150)


async def _is(value: Any, expected: Any) -> bool:
    return await value == expected


@pytest.mark.distributed
def test_beam_names_from_python_and_python_names_go_with_the_node(cookie, beam_nodes):
    async def main():
        async with Node(unique("obs"), cookie) as observer:
            async with Node(unique("foo"), cookie) as node:
                b1, b2 = await global_cluster(node, beam_nodes)
                await wait_until_up(observer, b1)
                beam_name = Atom(unique("beam_echo"))
                beam_pid = await rpc.call(node, b2, "GlobalProbe", "start", [beam_name])
                await eventually(lambda: _is(global_names.whereis_name(node, beam_name), beam_pid), timeout=10,
                                 what="the BEAM's name seen from Python")
                assert await gen_server.call(node, (GLOBAL, beam_name), 7) == (Atom("beam_reply"), 7)
                assert await gen_server.call(node, (VIA, GLOBAL, beam_name), 8) == (Atom("beam_reply"), 8)
                me = node.process()
                assert await global_names.send(me, beam_name, (Atom("echo_to"), me.pid, 9)) == beam_pid
                assert await me.receive(timeout=10) == (Atom("echoed"), 9)
                gen_server.cast(me, (GLOBAL, beam_name), Atom("ignored"))   # a cast is resolved too
                with pytest.raises(Exit) as raised:
                    await global_names.send(me, Atom("nobody_has_this"), 1)
                assert raised.value.reason == (Atom("badarg"), (Atom("nobody_has_this"), 1))
                # a Python name, then the Python node goes down
                py_name = Atom(unique("py_name"))
                assert await global_names.register_name(node, py_name, node.process()) is True
                for beam in (b1, b2):
                    await eventually(lambda beam=beam: _pid(where_on(observer, b1, beam, py_name)), timeout=10,
                                     what=f"registered on {beam.name}")
            for beam in (b1, b2):   # pykv stopped: every node saw its connection go, and the name
                await eventually(lambda beam=beam: _is(where_on(observer, b1, beam, py_name), Atom("undefined")),
                                 timeout=15, what=f"gone with the node on {beam.name}")
            assert await where_on(observer, b1, b2, beam_name) == beam_pid   # BEAM names stay
    run(main(), timeout=150)


async def _pid(value: Any) -> bool:
    return type(await value) is Pid
