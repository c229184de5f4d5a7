"""Issue 12 item 5, on top of pg: Phoenix.PubSub's PG2 adapter shapes (pykv/otp/phoenix_pubsub.py).

Hex is out of reach here, so the BEAM nodes do not run phoenix_pubsub itself: `PUBSUB_SHIM`
below is a minimal `Phoenix.PubSub` that does what phoenix_pubsub 2.x's `pubsub.ex` and
`pubsub/pg2.ex` do on the wire (shard groups in the `:pg` scope `Phoenix.PubSub`, a worker per
shard registered under its group, `{:forward_to_local, topic, message, dispatcher}`), with a
Registry for the local subscribers, on every generation's real `:pg`.
"""

from __future__ import annotations

from collections import Counter

import pytest

from conftest import eventually, free_port, run, unique
from pykv import Atom, Node
from pykv.otp import pg, phoenix_pubsub, rpc
from pykv.otp.phoenix_pubsub import PHOENIX_PUBSUB, adapter_name, shard_groups
from test_pg import same_scopes, scope_pid, start_cluster

NAME = Atom("Elixir.MyApp.PubSub")
GOT = Atom("got")

PUBSUB_SHIM = """
defmodule Phoenix.PubSub do
  # What phoenix_pubsub 2.x does with its default PG2 adapter, in as few lines as it takes.
  def start(name, pool_size) do
    parent = self()
    spawn(fn ->
      {:ok, _} = Registry.start_link(keys: :duplicate, name: name)
      {:ok, _} = :pg.start(__MODULE__)        # Phoenix.PubSub.Application starts this scope
      adapter = Module.concat(name, "Adapter")
      groups = [adapter | for(n <- 2..pool_size//1, do: :"#{adapter}_#{n}")]
      :persistent_term.put(adapter, List.to_tuple(groups))
      for group <- groups do                  # Phoenix.PubSub.PG2Worker
        spawn(fn ->
          Process.register(self(), group)
          :ok = :pg.join(__MODULE__, group, self())
          worker(name)
        end)
      end
      send(parent, :started)
      Process.sleep(:infinity)
    end)
    receive do: (:started -> :ok)
  end

  defp worker(name) do
    receive do
      {:forward_to_local, topic, message, dispatcher} -> local_broadcast(name, topic, message, dispatcher)
      _ -> :ok
    end
    worker(name)
  end

  def subscribe(name, topic), do: elem(Registry.register(name, topic, nil), 0)

  def broadcast(name, topic, message, dispatcher \\\\ __MODULE__) do
    for pid <- :pg.get_members(__MODULE__, group(name)), node(pid) != node(),
        do: send(pid, {:forward_to_local, topic, message, dispatcher})
    local_broadcast(name, topic, message, dispatcher)
  end

  def direct_broadcast(node_name, name, topic, message, dispatcher \\\\ __MODULE__) do
    send({group(name), node_name}, {:forward_to_local, topic, message, dispatcher})
    :ok
  end

  def local_broadcast(name, topic, message, dispatcher \\\\ __MODULE__) do
    Registry.dispatch(name, topic, {dispatcher, :dispatch, [:none, message]})
    :ok
  end

  def dispatch(entries, :none, message), do: for({pid, _} <- entries, do: send(pid, message))
  def dispatch(entries, from, message), do: for({pid, _} <- entries, pid != from, do: send(pid, message))

  defp group(name) do
    groups = :persistent_term.get(Module.concat(name, "Adapter"))
    elem(groups, :erlang.phash2(self(), tuple_size(groups)))
  end
end

defmodule PubSubProbe do
  # a subscriber that forwards what it gets to `to`, tagged with itself
  def subscriber(name, topic, to) do
    parent = self()
    pid = spawn(fn -> :ok = Phoenix.PubSub.subscribe(name, topic); send(parent, :subscribed); loop(to) end)
    receive do: (:subscribed -> pid)
  end

  defp loop(to) do
    receive do
      msg -> send(to, {:got, self(), msg})
    end
    loop(to)
  end
end
"""


def test_names_subscriptions_and_dispatchers_on_one_node():
    assert adapter_name(NAME) == Atom("Elixir.MyApp.PubSub.Adapter")
    assert adapter_name(Atom("my_pubsub")) == Atom("Elixir.my_pubsub.Adapter")   # Module.concat
    assert shard_groups(NAME, 3) == [Atom("Elixir.MyApp.PubSub.Adapter"), Atom("Elixir.MyApp.PubSub.Adapter_2"),
                                     Atom("Elixir.MyApp.PubSub.Adapter_3")]

    async def main():
        async with Node(unique("ps"), "c", epmd_port=free_port()) as node:
            pubsub = phoenix_pubsub.start(node, "MyApp.PubSub", pool_size=2)
            assert node.whereis(NAME) is pubsub.registry
            assert [node.whereis(group) for group in shard_groups(NAME, 2)] == pubsub.workers
            assert {pid for group in pubsub.groups for pid in pg.get_members(node, group, scope=PHOENIX_PUBSUB)} \
                == {worker.pid for worker in pubsub.workers}
            a, b = node.process(), node.process()
            pubsub.subscribe(a, "t")
            pubsub.subscribe(a, b"t")                 # twice: two deliveries, as Registry's duplicates
            pubsub.subscribe(b, "t", metadata=Atom("meta"))
            pubsub.broadcast("t", Atom("m1"))
            pubsub.broadcast_from(a, "t", Atom("m2"))   # not to a
            assert list(a.mailbox) == [Atom("m1"), Atom("m1")] and list(b.mailbox) == [Atom("m1"), Atom("m2")]
            # a forward from another node, through a shard worker
            pubsub.workers[1]._deliver((Atom("forward_to_local"), b"t", Atom("m3"), PHOENIX_PUBSUB))
            pubsub.direct_broadcast(node.name, "t", Atom("m4"))
            assert list(b.mailbox)[2:] == [Atom("m3"), Atom("m4")]
            # a Python dispatcher for a custom one; an unknown one delivers nothing
            seen = []
            pubsub.dispatchers[Atom("Elixir.My.Dispatcher")] = lambda entries, exclude, m, send: seen.append(
                (sorted(meta is not None for _, meta in entries), m))
            pubsub.broadcast("t", Atom("m5"), "My.Dispatcher")
            pubsub.broadcast("t", Atom("m6"), "Unknown.Dispatcher")
            assert seen == [([False, False, True], Atom("m5"))] and len(b.mailbox) == 4
            def failing(entries, exclude, m, send):
                raise RuntimeError("a dispatcher's bug")
            pubsub.dispatchers[Atom("Elixir.Failing")] = failing   # what comes from another node
            pubsub.workers[0]._deliver((Atom("forward_to_local"), b"t", Atom("m7"), Atom("Elixir.Failing")))
            with pytest.raises(TypeError):
                pubsub.broadcast(42, Atom("x"))       # a topic is a binary
            with pytest.raises(TypeError):
                pubsub.broadcast("t", object())       # not a term: nothing sent at all
            pubsub.unsubscribe(a, "t")
            b.exit(Atom("bye"))                       # an exit unsubscribes
            assert pubsub.subscribers("t") == [] and not pubsub.registry.by_pid
            with pytest.raises(ValueError):
                phoenix_pubsub.start(node, "Other", pool_size=1, broadcast_pool_size=2)
    run(main())


@pytest.mark.distributed
def test_python_subscribers_and_broadcasts_with_beam_pubsub_nodes(cookie, beam_nodes):
    async def main():
        async with Node(unique("foo"), cookie) as node:
            (b1, b2), _ = await start_cluster(node, beam_nodes, script=PUBSUB_SHIM)
            for b in (b1, b2):
                assert await rpc.call(node, b, "Phoenix.PubSub", "start", [NAME, 2]) == Atom("ok")
            pubsub = phoenix_pubsub.start(node, "MyApp.PubSub", pool_size=2)   # discovers both at once
            scopes = {b: await scope_pid(node, b, PHOENIX_PUBSUB) for b in (b1, b2)}
            everyone = {node.name, b1, b2}
            for group in shard_groups(NAME, 2):          # every shard: a worker on each node, seen everywhere
                await eventually(lambda g=group: {p.node for p in pg.get_members(node, g, scope=PHOENIX_PUBSUB)} == everyone,
                                 timeout=20, what=f"{group.name} on Python")
                for b in (b1, b2):
                    async def known(b=b, g=group) -> bool:
                        pids = await rpc.call(node, b, "pg", "get_members", [PHOENIX_PUBSUB, g])
                        return {p.node for p in pids} == everyone
                    await eventually(known, timeout=20, what=f"{group.name} on {b.name}")
            sink, mine = node.process(), node.process()
            pubsub.subscribe(mine, "room:1")
            s1 = await rpc.call(node, b1, "PubSubProbe", "subscriber", [NAME, b"room:1", sink.pid])
            s2 = await rpc.call(node, b2, "PubSubProbe", "subscriber", [NAME, b"room:1", sink.pid])

            async def beam_got(count: int) -> Counter:
                got = Counter()
                for _ in range(count):
                    tag, sub, message = await sink.receive(timeout=10)
                    assert tag is GOT
                    got[(sub, message)] += 1
                return got

            # a BEAM broadcast reaches the Python subscriber (and the BEAM ones)
            hello = (Atom("from_beam"), 1)
            assert await rpc.call(node, b2, "Phoenix.PubSub", "broadcast", [NAME, b"room:1", hello]) == Atom("ok")
            assert await mine.receive(timeout=10) == hello
            assert await beam_got(2) == Counter({(s1, hello): 1, (s2, hello): 1})
            # a Python broadcast reaches the BEAM subscribers, through each shard
            # a sender's shard follows its pid's hash: take senders until every shard has one
            senders, shards = [], set()
            while len(senders) < 8 or shards != set(pubsub.groups):
                assert len(senders) < 1000, f"no sender hashes to {set(pubsub.groups) - shards}"
                senders.append(node.process())
                shards.add(pubsub._group_for(senders[-1]))
            n = len(senders)
            for i, via in enumerate(senders):
                pubsub.broadcast("room:1", (Atom("from_python"), i), via=via)
            expected = Counter({(s, (Atom("from_python"), i)): 1 for s in (s1, s2) for i in range(n)})
            assert await beam_got(2 * n) == expected
            assert [await mine.receive(timeout=1) for _ in range(n)] == [(Atom("from_python"), i) for i in range(n)]
            # direct broadcasts: one node's subscribers only (a later broadcast from the same
            # sender, so through the same shard worker on b2, shows nothing came before it)
            via = senders[0]
            pubsub.direct_broadcast(b1, "room:1", Atom("direct"), via=via)
            pubsub.broadcast("room:1", Atom("after"), via=via)
            assert await beam_got(3) == Counter({(s1, Atom("direct")): 1, (s1, Atom("after")): 1, (s2, Atom("after")): 1})
            assert await mine.receive(timeout=5) == Atom("after")
            assert await rpc.call(node, b1, "Phoenix.PubSub", "direct_broadcast",
                                  [node.name, NAME, b"room:1", Atom("to_python")]) == Atom("ok")
            assert await mine.receive(timeout=10) == Atom("to_python")
            # broadcast_from: not to the sender here; the other nodes get it all
            pubsub.broadcast_from(mine, "room:1", Atom("not_to_me"))
            pubsub.local_broadcast("room:1", Atom("local"))
            assert await beam_got(2) == Counter({(s1, Atom("not_to_me")): 1, (s2, Atom("not_to_me")): 1})
            assert await mine.receive(timeout=5) == Atom("local")
            await same_scopes(node, scopes, PHOENIX_PUBSUB)
    run(main(), timeout=150)
