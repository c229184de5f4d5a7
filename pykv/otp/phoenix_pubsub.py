"""Phoenix.PubSub on pykv, as its default adapter (Phoenix.PubSub.PG2, phoenix_pubsub 2.x)
lays it out on `:pg`, so that Python subscribes to and broadcasts on a PubSub that Elixir
nodes run (phoenix_pubsub's lib/phoenix/pubsub.ex, supervisor.ex, pubsub/pg2.ex):

- the PubSub `MyApp.PubSub` has the adapter name `MyApp.PubSub.Adapter`, and a pool of
  shards: the groups `MyApp.PubSub.Adapter`, `MyApp.PubSub.Adapter_2`, ... (`:pool_size`);
- on every node, one worker per shard, locally registered under the group's name, has joined
  that group in the `:pg` scope `Phoenix.PubSub`;
- a broadcast picks one shard of the first `:broadcast_pool_size` and sends
  `{:forward_to_local, topic, message, dispatcher}` to each of its members on other nodes,
  then dispatches to its own node's subscribers; a worker that gets one dispatches it to its
  node's subscribers (`direct_broadcast` sends it to `{group, node}`);
- local subscribers are kept by topic (a Registry with duplicate keys, named `MyApp.PubSub`);
  the dispatcher (`Phoenix.PubSub` by default) sends the message to each, but the sender.

    pubsub = phoenix_pubsub.start(node, "MyApp.PubSub")
    pubsub.subscribe(proc, "room:1")             # Phoenix.PubSub.subscribe(MyApp.PubSub, "room:1")
    pubsub.broadcast("room:1", (Atom("new_msg"), b"hi"))   # every node's subscribers get it

A dispatcher other than `Phoenix.PubSub` is an Elixir module that cannot run here: give a
Python one in `pubsub.dispatchers[Atom("Elixir.My.Dispatcher")] = fn`, called as
`fn(entries, exclude, message, send)` (entries: `(pid, metadata)`; `send(pid, message)`);
a message for a dispatcher this node does not have is logged and not delivered (as a BEAM node
without that module would fail to).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any, Callable

from ..atoms import DOWN_TAG
from ..exports import module_atom
from ..process import Process
from ..term import Atom, Pid, Reference, TermError, encode, inspect
from . import pg

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.pubsub")

PHOENIX_PUBSUB = Atom("Elixir.Phoenix.PubSub")  # the pg scope, and the default dispatcher
FORWARD_TO_LOCAL = Atom("forward_to_local")
NONE = Atom("none")

Entries = list[tuple[Pid, Any]]
Send = Callable[[Pid, Any], None]
Dispatcher = Callable[[Entries, Any, Any, Send], None]


def adapter_name(name: Atom) -> Atom:
    """`Module.concat(name, "Adapter")`: `MyApp.PubSub` -> `MyApp.PubSub.Adapter`."""
    return Atom("Elixir." + name.name.removeprefix("Elixir.") + ".Adapter")


def shard_groups(name: Atom, pool_size: int) -> list[Atom]:
    """pg2.ex's groups: the adapter name for the first shard, `:"#{adapter}_#{n}"` after."""
    adapter = adapter_name(name)
    return [adapter] + [Atom(f"{adapter.name}_{n}") for n in range(2, pool_size + 1)]


def topic_binary(topic: str | bytes) -> bytes:
    if isinstance(topic, str):
        return topic.encode()
    if isinstance(topic, bytes):
        return topic
    raise TypeError(f"a topic is a binary (str or bytes), not {topic!r}")


class Registry(Process):
    """The local subscribers, by topic, registered under the PubSub's name (as Elixir's
    Registry is); it monitors them, so that an exit unsubscribes."""

    def __init__(self, node: "Node", pid: Pid) -> None:
        super().__init__(node, pid)
        self.topics: dict[bytes, Entries] = {}
        self.by_pid: dict[Pid, tuple[Reference, set[bytes]]] = {}

    def register(self, pid: Pid, topic: bytes, metadata: Any) -> None:
        self.topics.setdefault(topic, []).append((pid, metadata))
        known = self.by_pid.get(pid)
        if known is None:
            self.by_pid[pid] = (self.monitor(pid), {topic})
        else:
            known[1].add(topic)

    def unregister(self, pid: Pid, topic: bytes) -> None:
        entries = self.topics.get(topic)
        if entries is not None:
            kept = [entry for entry in entries if entry[0] != pid]
            if kept:
                self.topics[topic] = kept
            else:
                del self.topics[topic]
        known = self.by_pid.get(pid)
        if known is not None:
            known[1].discard(topic)
            if not known[1]:
                del self.by_pid[pid]
                self.demonitor(known[0])

    def _deliver(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 5 and message[0] is DOWN_TAG:
            pid = message[3]
            known = self.by_pid.get(pid)
            if known is not None and known[0] == message[1]:
                for topic in list(known[1]):
                    self.unregister(pid, topic)


class Worker(Process):
    """One shard's worker (PG2Worker): dispatches what other nodes forward to it."""

    def __init__(self, node: "Node", pid: Pid, pubsub: "PubSub") -> None:
        super().__init__(node, pid)
        self.pubsub = pubsub

    def _deliver(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 4 and message[0] is FORWARD_TO_LOCAL:
            _, topic, payload, dispatcher = message
            if type(topic) is bytes and type(dispatcher) is Atom:
                try:  # what another node sends must not reach its connection as an error
                    self.pubsub._dispatch(topic, payload, dispatcher, NONE, self.pid)
                except Exception:
                    log.exception("%s: dispatching a forwarded message failed", inspect(self.name))
                return
        log.debug("%s: ignored %s", self.name, inspect(message)[:200])  # as PG2Worker's catch-all


class PubSub:
    """A Phoenix.PubSub server of the PG2 adapter's shape on this node (see the module)."""

    def __init__(self, node: "Node", name: str | Atom, pool_size: int = 1,
                 broadcast_pool_size: int | None = None) -> None:
        broadcast_pool_size = pool_size if broadcast_pool_size is None else broadcast_pool_size
        if not 1 <= broadcast_pool_size <= pool_size:
            raise ValueError("the pool_size option must be greater than or equal to the "
                             "broadcast_pool_size option (and both at least 1)")
        self.node = node
        self.name = module_atom(name)
        self.groups = shard_groups(self.name, pool_size)
        self.broadcast_groups = self.groups[:broadcast_pool_size]
        self.dispatchers: dict[Atom, Dispatcher] = {PHOENIX_PUBSUB: default_dispatch}
        self.registry: Registry | None = None
        self.workers: list[Worker] = []

    def start(self) -> "PubSub":
        node = self.node
        pg.start(node, PHOENIX_PUBSUB)  # Phoenix.PubSub.Application starts this scope
        registry = Registry(node, node.make_pid())
        node.add_process(registry, self.name)
        self.registry = registry
        for group in self.groups:
            worker = Worker(node, node.make_pid(), self)
            node.add_process(worker, group)
            pg.join(node, group, worker, scope=PHOENIX_PUBSUB)
            self.workers.append(worker)
        return self

    def stop(self) -> None:
        for proc in [*self.workers, self.registry]:
            if proc is not None:
                proc.exit(Atom("shutdown"))
        self.workers = []
        self.registry = None

    # -- subscribing ------------------------------------------------------------------------

    def subscribe(self, proc: Process | Pid, topic: str | bytes, metadata: Any = None) -> None:
        """`Phoenix.PubSub.subscribe/3` for a process of this node (duplicates allowed)."""
        pid = self._local(proc)
        self._registry().register(pid, topic_binary(topic), metadata)

    def unsubscribe(self, proc: Process | Pid, topic: str | bytes) -> None:
        """`Phoenix.PubSub.unsubscribe/2`: every subscription of `proc` to `topic`."""
        self._registry().unregister(self._local(proc), topic_binary(topic))

    def subscribers(self, topic: str | bytes) -> Entries:
        return list(self._registry().topics.get(topic_binary(topic), ()))

    # -- broadcasting -----------------------------------------------------------------------

    def broadcast(self, topic: str | bytes, message: Any, dispatcher: str | Atom = PHOENIX_PUBSUB,
                  *, via: Process | None = None) -> None:
        """`Phoenix.PubSub.broadcast/4`: every subscriber on every node of the shard's group.
        `via` is the sending process (default: the node's own)."""
        self._broadcast(topic, message, dispatcher, NONE, via)

    def broadcast_from(self, sender: Process, topic: str | bytes, message: Any,
                       dispatcher: str | Atom = PHOENIX_PUBSUB) -> None:
        """`broadcast_from/5`: as broadcast, but not to `sender` on this node (other nodes get
        it all, as from pg2.ex, which forwards no sender)."""
        self._broadcast(topic, message, dispatcher, sender.pid, sender)

    def local_broadcast(self, topic: str | bytes, message: Any, dispatcher: str | Atom = PHOENIX_PUBSUB) -> None:
        self._dispatch(topic_binary(topic), self._checked(message), self._dispatcher(dispatcher), NONE, None)

    def local_broadcast_from(self, sender: Process, topic: str | bytes, message: Any,
                             dispatcher: str | Atom = PHOENIX_PUBSUB) -> None:
        self._dispatch(topic_binary(topic), self._checked(message), self._dispatcher(dispatcher),
                       sender.pid, sender.pid)

    def direct_broadcast(self, node_name: str | Atom, topic: str | bytes, message: Any,
                         dispatcher: str | Atom = PHOENIX_PUBSUB, *, via: Process | None = None) -> None:
        """`direct_broadcast/5`: the subscribers of one node, through its shard worker."""
        target = Atom(node_name) if isinstance(node_name, str) else node_name
        forward = (FORWARD_TO_LOCAL, topic_binary(topic), self._checked(message), self._dispatcher(dispatcher))
        self.node.route(via.pid if via else None, (self._group_for(via), target), forward)

    def _broadcast(self, topic: str | bytes, message: Any, dispatcher: str | Atom, exclude: Any,
                   via: Process | None) -> None:
        topic = topic_binary(topic)
        message = self._checked(message)
        dispatcher = self._dispatcher(dispatcher)
        sender = via.pid if via else None
        forward = (FORWARD_TO_LOCAL, topic, message, dispatcher)
        me = self.node.name
        for pid in pg.get_members(self.node, self._group_for(via), scope=PHOENIX_PUBSUB):
            if pid.node is not me:
                self.node.route(sender, pid, forward)
        self._dispatch(topic, message, dispatcher, exclude, sender)

    def _group_for(self, via: Process | None) -> Atom:
        # pg2.ex: elem(groups, :erlang.phash2(self(), size)); any shard serves, this spreads them
        groups = self.broadcast_groups
        return groups[hash(via.pid if via else self.node.name) % len(groups)]

    def _dispatch(self, topic: bytes, message: Any, dispatcher: Atom, exclude: Any, sender: Pid | None) -> None:
        entries = self._registry().topics.get(topic)
        if not entries:
            return
        dispatch = self.dispatchers.get(dispatcher)
        if dispatch is None:
            log.warning("%s: no dispatcher %s on this node: a message to %r not delivered",
                        inspect(self.name), inspect(dispatcher), topic[:100])
            return
        route = self.node.route
        dispatch(list(entries), exclude, message, lambda pid, m: route(sender, pid, m))

    # -- checks -----------------------------------------------------------------------------

    def _registry(self) -> Registry:
        if self.registry is None or not self.registry.alive:
            raise RuntimeError(f"the PubSub {inspect(self.name)} is not running")
        return self.registry

    def _local(self, proc: Process | Pid) -> Pid:
        pid = proc.pid if isinstance(proc, Process) else proc
        if type(pid) is not Pid or pid.node is not self.node.name:
            raise ValueError(f"only processes of this node subscribe here, not {proc!r}")
        return pid

    @staticmethod
    def _checked(message: Any) -> Any:
        try:
            encode(message)  # before anything goes out: all or nothing
        except TermError as e:
            raise TypeError(f"the message is not an Erlang term: {e}") from None
        return message

    @staticmethod
    def _dispatcher(dispatcher: str | Atom) -> Atom:
        if not isinstance(dispatcher, (str, Atom)):
            raise TypeError(f"a dispatcher is a module (an atom), not {dispatcher!r}")
        return module_atom(dispatcher)


def default_dispatch(entries: Entries, exclude: Any, message: Any, send: Send) -> None:
    """`Phoenix.PubSub.dispatch/3`: to every subscriber but `exclude` (`:none`: to all)."""
    for pid, _metadata in entries:
        if pid != exclude:
            send(pid, message)


def start(node: "Node", name: str | Atom, *, pool_size: int = 1,
          broadcast_pool_size: int | None = None) -> PubSub:
    """Start the PubSub `name` on `node` (and the `:pg` scope `Phoenix.PubSub` it uses), as
    `{Phoenix.PubSub, name: name, pool_size: n}` in a supervision tree does."""
    return PubSub(node, name, pool_size, broadcast_pool_size).start()
