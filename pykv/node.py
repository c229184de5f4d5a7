"""The local node: names, pids, processes, connections to peers, and the signals between them.

Control messages and their shapes: OTP erts/doc "Distribution Protocol"; what BEAM nodes were
seen to send is in shared/docs/wire-notes.md. Links use the new protocol (UNLINK_ID/ACK).
What goes out to a peer is written by its Peer (dist/peer.py), as its flags allow
(dist/capabilities.py); this module keeps the local bookkeeping and handles what comes in.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import secrets
from threading import get_ident
from typing import Any, Callable, Coroutine

from . import inbound
from .atoms import ALIAS, DOWN_TAG, NOCONNECTION, NOPROC, NORMAL, PROCESS
from .dist import epmd, names
from .dist import flags as F
from .dist.cookie import default_cookie
from .dist.transport import DistProtocol, port_range, proto_dist as dist_protocol
from .dist.connection import HANDSHAKE_TIMEOUT, Connection, FrameError, closed
from .dist.handshake import Completed, PeerNamed, Role
from .dist.peer import Peer
from .errors import NoConnection
from .exports import Exports, module_atom
from .loop import BusyWait
from .process import Process, Sink
from .term import Atom, ImproperList, Pid, Reference, inspect
from .threads import DEFAULT_QUEUE, BlockingPool, default_threads
from .workers import WorkerPool

log = logging.getLogger("pykv.node")

TICKTIME = 60.0

SpawnRequestHandler = Callable[["Node", Peer, tuple, Any], None]


class Node:
    """A node of an Erlang cluster, living in this Python process.

        async with Node("foo", cookie="secret") as node:
            me = node.process()
            me.send(("shell", "bar@host"), "hello")
    """

    def __init__(self, name: str, cookie: str | None = None, *, longnames: bool | None = None,
                 hidden: bool = True, listen_host: str | None = None,
                 dist_port: int | tuple[int, int] = 0, proto_dist: str | DistProtocol = "inet_tcp",
                 epmd_port: int = epmd.EPMD_PORT, ticktime: float = TICKTIME,
                 busy_wait: float = 0.0, threads: int | None = None,
                 thread_queue: int = DEFAULT_QUEUE, workers: int | None = None) -> None:
        # `foo` or `foo@host`, short or long (longnames None: as the host part says), and what
        # carries node connections: names.py, dist/transport.py
        full, self.longnames = names.own_name(name, longnames)
        self.name = Atom(full)
        self.proto_dist = dist_protocol(proto_dist)
        self.cookie = cookie if cookie is not None else default_cookie()
        self.hidden = hidden
        self.flags = F.OURS if hidden else F.OURS | F.PUBLISHED
        self.listen_host = listen_host  # erl's inet_dist_use_interface; None: every address
        self.dist_ports = port_range(dist_port)  # inet_dist_listen_min..max
        self.dist_port = 0
        self.epmd_port = epmd_port
        self.ticktime = ticktime
        # seconds to keep polling after traffic before the loop sleeps (see loop.BusyWait)
        self.busy_wait = BusyWait(busy_wait) if busy_wait > 0 else None
        self.creation = 0
        self.processes: dict[Pid, Process] = {}
        self.registered: dict[Atom, Process] = {}
        self.aliases: dict[Reference, Process] = {}
        self.peers: dict[Atom, Peer] = {}
        self.spawn_request_handler: SpawnRequestHandler | None = None
        # told `(node, True)` once a connection is up, `(node, False)` once it is gone:
        # net_kernel.monitor_nodes builds on this (the node does not import what listens)
        self.node_listeners: list[Callable[[Atom, bool], None]] = []
        # blocking exports run in threads of their own (never the loop's default executor)
        # and CPU-bound ones (workers=True) in worker processes
        self.exports = Exports(BlockingPool(threads or default_threads(), thread_queue), WorkerPool(workers))
        self.export = self.exports.export
        for module in ("erlang", "Kernel"):  # the node/0 that tasks and rpc probes ask for
            self.exports.add(module, "node", self._node_name, 0, blocking=False)
        self._ids = itertools.count(1)
        self._unlink_ids = itertools.count(1)
        self._ref_salt = secrets.randbits(32)
        self._server: asyncio.base_events.Server | None = None
        self._registration: epmd.Registration | None = None
        self._embedded_epmd: epmd.EmbeddedEpmd | None = None
        self._ticker: asyncio.TimerHandle | None = None
        self._system: Process | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = get_ident()

    def __repr__(self) -> str:
        return f"<Node {self.name.name} creation={self.creation}>"

    def _node_name(self) -> Atom:
        return self.name

    # -- life cycle ---------------------------------------------------------------------------

    async def __aenter__(self) -> "Node":
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._loop_thread = get_ident()
        self._server = await self.proto_dist.listen(
            lambda: Connection(self, Role.ACCEPTOR), self.listen_host, self.dist_ports)
        self.dist_port = self._server.sockets[0].getsockname()[1]
        alive, _ = epmd.split_node_name(self.name.name)
        info = epmd.NodeInfo(alive, self.dist_port,
                             epmd.NODE_TYPE_HIDDEN if self.hidden else epmd.NODE_TYPE_NORMAL)
        self._registration = await self._register(info)
        self.creation = self._registration.creation
        self._system = self.add_process(Sink(self, self.make_pid()))
        from .net_kernel import NetKernel  # the node's own system process
        from .otp import rpc               # rex and spawn requests: how the BEAM runs code here
        NetKernel.start(self)
        rpc.install(self)
        self._schedule_tick()
        log.info("node %s ready (dist port %d, %s, %s names, %s)", self.name.name, self.dist_port,
                 self.proto_dist.name, "long" if self.longnames else "short",
                 "hidden" if self.hidden else "visible")

    async def _register(self, info: epmd.NodeInfo) -> epmd.Registration:
        for _ in range(3):
            try:
                return await epmd.register(info, self.proto_dist.loopback, self.epmd_port)
            except (ConnectionRefusedError, OSError) as e:
                if isinstance(e, epmd.EpmdError):
                    raise
                try:
                    self._embedded_epmd = epmd.EmbeddedEpmd()
                    await self._embedded_epmd.start(port=self.epmd_port)
                except OSError:
                    self._embedded_epmd = None  # someone else started one meanwhile: retry
        raise epmd.EpmdError("could not reach or start epmd")

    async def stop(self) -> None:
        # Connections go first, as when a BEAM node halts (kernel, and with it the
        # distribution, stops before the remaining processes are killed): remote links and
        # monitors then see `:noconnection`, not the local `:shutdown` of each process.
        closing = [conn for peer in list(self.peers.values()) for conn in (peer.conn, peer.attempt)
                   if conn is not None]
        for conn in closing:
            conn.close()
        for proc in list(self.processes.values()):
            proc.exit(Atom("shutdown"))
        await closed(closing)
        if self._ticker is not None:
            self._ticker.cancel()
        for closable in (self._server, self._registration, self._embedded_epmd):
            if closable is not None:
                closable.close()
        self.exports.pool.shutdown()
        self.exports.workers.stop()

    # -- identifiers --------------------------------------------------------------------------

    def make_pid(self) -> Pid:
        n = next(self._ids)
        return Pid(self.name, n & 0x7FFF, (n >> 15) & 0x1FFF, self.creation)

    def make_ref(self) -> Reference:
        n = next(self._ids)
        return Reference(self.name, self.creation, (n & 0x3FFFF, (n >> 18) & 0xFFFFFFFF, self._ref_salt))

    # -- processes ------------------------------------------------------------------------------

    def process(self, name: str | Atom | None = None) -> Process:
        """A process with a mailbox and no code of its own: Python code drives it by
        calling `send` and `await receive()` (the way a shell process is used)."""
        return self.add_process(Process(self, self.make_pid()), name)

    def add_process(self, proc: Process, name: str | Atom | None = None) -> Process:
        self.processes[proc.pid] = proc
        if name is not None:
            self.register(name, proc)
        return proc

    def spawn(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any,
              name: str | Atom | None = None, link: Process | None = None) -> Process:
        """Run `await fn(process, *args)` as a new process; it exits when fn returns."""
        proc = self.process(name)
        if link is not None:
            self.link(link, proc.pid)
        proc._start(fn, args)
        return proc

    async def apply(self, module: str | Atom, function: str | Atom, args: list[Any]) -> Any:
        """Run an exported function here, in a process of its own, as a call from the
        cluster would: `await node.apply("KV.Router", "route", [b"apple", ...])`."""
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()

        async def body(proc: Process) -> None:
            try:
                done.set_result(await self.exports.apply(
                    module_atom(module), Atom(function) if isinstance(function, str) else function, list(args)))
            except Exception as e:
                done.set_exception(e)

        self.spawn(body)
        return await done

    def register(self, name: str | Atom, proc: Process) -> None:
        """Register a name; a str naming an Elixir alias ("KV.Registry") is that module's atom."""
        name = module_atom(name)
        if name in self.registered or proc.name is not None:
            raise ValueError(f"{inspect(name)} is already registered" if name in self.registered
                             else f"{proc!r} already has a name")
        self.registered[name] = proc
        proc.name = name

    def whereis(self, name: str | Atom) -> Process | None:
        return self.registered.get(module_atom(name))

    def process_exited(self, proc: Process, reason: Any) -> None:
        """Called once per process: unregister it, signal its links and monitors."""
        self.processes.pop(proc.pid, None)
        if proc.name is not None and self.registered.get(proc.name) is proc:
            del self.registered[proc.name]
        for ref in proc.aliases:
            self.aliases.pop(ref, None)
        for other in proc.links:
            self._signal_exit(proc.pid, other, reason)
        proc.links.clear()
        for ref, (watcher, named) in proc.monitored_by.items():
            self._send_down(proc.pid, watcher, ref, named, reason)
        proc.monitored_by.clear()
        for ref in list(proc.monitors):
            self.demonitor(proc, ref)

    def _signal_exit(self, sender: Pid, target: Pid, reason: Any) -> None:
        if target.node is self.name:
            other = self.processes.get(target)
            if other is not None:
                other.links.discard(sender)
                other.exit_signal(sender, reason, from_link=True)
            return
        peer = self.peers.get(target.node)
        if peer is not None and (sender, target) in peer.links:
            peer.links.discard((sender, target))
            peer.link_exit(sender, target, reason)

    def send_exit(self, sender: Pid, target: Pid | Reference, reason: Any, priority: bool = False) -> None:
        """exit/2 (OTP 28's exit_signal/3 with `priority`): an exit signal from `sender` to a
        pid or an alias, here or on another node."""
        if target.node is not self.name:
            self.peer(target.node).exit2(sender, target, reason, priority)
        elif type(target) is Pid:
            proc = self.processes.get(target)
            if proc is not None:
                proc.exit_signal(sender, reason, from_link=False)
        else:
            self.exit_through_alias(sender, target, reason, priority)

    def exit_through_alias(self, sender: Pid, alias: Reference, reason: Any, priority: bool) -> None:
        """An exit signal through one of this node's aliases (OTP 28): as deliver_to_alias."""
        proc = self.aliases.get(alias)
        if proc is not None:
            proc.exit_signal(sender, reason, from_link=False,
                             priority=priority and alias in proc.priority_aliases)

    def _send_down(self, target: Pid, watcher: Pid, ref: Reference, named: Any, reason: Any) -> None:
        if watcher.node is self.name:
            proc = self.processes.get(watcher)
            if proc is not None and proc.monitors.pop(ref, None) is not None:
                obj = (named, self.name) if isinstance(named, Atom) else target
                proc._deliver((DOWN_TAG, ref, PROCESS, obj, reason))
            return
        peer = self.peers.get(watcher.node)
        if peer is None or peer.monitors_in.pop(ref, None) is None:
            return
        subject = named if isinstance(named, Atom) else target  # DOWN names what was monitored
        peer.monitor_exit(subject, watcher, ref, reason)

    # -- sending ---------------------------------------------------------------------------------

    def route(self, sender: Pid | None, dest: Any, message: Any, priority: bool = False) -> None:
        """Deliver a message to a pid, name, `(name, node)` or alias, local or remote
        (`priority`: see Process.send). Safe from a worker thread (a blocking export): the
        loop's thread does the work."""
        if get_ident() != self._loop_thread:
            self._loop.call_soon_threadsafe(self.route, sender, dest, message, priority)
            return
        sender = sender or self._system_pid()
        kind = type(dest)
        if kind is Pid:
            if dest.node is self.name:
                proc = self.processes.get(dest)
                if proc is not None:
                    proc._deliver(message)
            else:
                self.peer(dest.node).message(sender, dest, message, priority)
        elif kind is Atom:
            proc = self.registered.get(dest)
            if proc is not None:
                proc._deliver(message)
        elif kind is str:
            self.route(sender, module_atom(dest), message)
        elif kind is Reference:
            if dest.node is self.name:
                self.deliver_to_alias(dest, message, priority)
            else:
                self.peer(dest.node).message(sender, dest, message, priority)
        elif kind is tuple and len(dest) == 2:
            name, node = dest
            name = module_atom(name) if isinstance(name, str) else name
            node = Atom(node) if isinstance(node, str) else node
            if node is self.name:
                self.route(sender, name, message)
            else:
                self.peer(node).message(sender, name, message, priority)
        else:
            raise TypeError(f"cannot send to {dest!r}: expected a pid, a name, (name, node) or an alias")

    def deliver_to_alias(self, alias: Reference, message: Any, priority: bool) -> None:
        """A message through one of this node's aliases: dropped if inactive, a priority
        message only through a priority alias (erl_proc_sig_queue.c handle_altact_msg)."""
        proc = self.aliases.get(alias)
        if proc is not None:
            if priority and alias in proc.priority_aliases:
                proc._deliver_priority(message)
            else:
                proc._deliver(message)

    async def send(self, dest: Any, message: Any) -> None:
        """Send from this node (no particular process); waits for a remote node's connection."""
        node = self._node_of(dest)
        if node is not None and node is not self.name:
            await self.connect(node)
        self.route(None, dest, message)

    def reply(self, from_: Any, value: Any, sender: Pid | None = None) -> None:
        """Answer a `$gen_call` whose From is `{pid, tag}`; an OTP 24+ tag `[:alias | ref]`
        is answered through the alias (the caller may no longer accept its pid)."""
        pid, tag = from_
        if type(tag) is ImproperList and tag.items == (ALIAS,):
            self.route(sender, tag.tail, (tag, value))
        else:
            self.route(sender, pid, (tag, value))

    def _system_pid(self) -> Pid:
        assert self._system is not None, "the node is not started"
        return self._system.pid

    @staticmethod
    def _node_of(dest: Any) -> Atom | None:
        if isinstance(dest, (Pid, Reference)):
            return dest.node
        if isinstance(dest, tuple) and len(dest) == 2:
            node = dest[1]
            return Atom(node) if isinstance(node, str) else node
        return None

    # -- links and monitors -------------------------------------------------------------------

    def link(self, proc: Process, pid: Pid) -> None:
        if pid == proc.pid or pid in proc.links:
            return
        if pid.node is self.name:
            other = self.processes.get(pid)
            if other is None:
                proc.exit_signal(pid, NOPROC, from_link=True)
                return
            proc.links.add(pid)
            other.links.add(proc.pid)
            return
        proc.links.add(pid)
        peer = self.peer(pid.node)
        peer.links.add((proc.pid, pid))
        peer.link(proc.pid, pid)

    def unlink(self, proc: Process, pid: Pid) -> None:
        if pid not in proc.links:
            return
        proc.links.discard(pid)
        if pid.node is self.name:
            other = self.processes.get(pid)
            if other is not None:
                other.links.discard(proc.pid)
            return
        peer = self.peers.get(pid.node)
        if peer is not None:
            peer.links.discard((proc.pid, pid))
            uid = next(self._unlink_ids)
            peer.unlinking[(proc.pid, pid)] = uid
            peer.unlink(uid, proc.pid, pid)

    def monitor(self, proc: Process, target: Any) -> Reference:
        ref = self.make_ref()
        if isinstance(target, str):
            target = module_atom(target)
        if isinstance(target, tuple):
            name, node = target
            name = module_atom(name) if isinstance(name, str) else name
            node = Atom(node) if isinstance(node, str) else node
            target = name if node is self.name else (name, node)
        if isinstance(target, Atom):  # a local name
            other = self.registered.get(target)
            if other is None:
                proc._deliver((DOWN_TAG, ref, PROCESS, (target, self.name), NOPROC))
            else:
                proc.monitors[ref] = target
                other.monitored_by[ref] = (proc.pid, target)
            return ref
        if isinstance(target, Pid) and target.node is self.name:
            other = self.processes.get(target)
            if other is None:
                proc._deliver((DOWN_TAG, ref, PROCESS, target, NOPROC))
            else:
                proc.monitors[ref] = target
                other.monitored_by[ref] = (proc.pid, target)
            return ref
        if isinstance(target, tuple):
            name, node = target
            peer = self.peer(node)
            peer.monitors_out[ref] = proc
            proc.monitors[ref] = target
            peer.monitor(proc.pid, name, ref)  # without DIST_MONITOR it fires only on nodedown
            return ref
        if isinstance(target, Pid):
            peer = self.peer(target.node)
            peer.monitors_out[ref] = proc
            proc.monitors[ref] = target
            peer.monitor(proc.pid, target, ref)
            return ref
        raise TypeError(f"cannot monitor {target!r}")

    def demonitor(self, proc: Process, ref: Reference) -> None:
        target = proc.monitors.pop(ref, None)
        if target is None:
            return
        if isinstance(target, Atom):
            other = self.registered.get(target)
            if other is not None:
                other.monitored_by.pop(ref, None)
            return
        if isinstance(target, Pid) and target.node is self.name:
            other = self.processes.get(target)
            if other is not None:
                other.monitored_by.pop(ref, None)
            return
        node = target[1] if isinstance(target, tuple) else target.node
        name_or_pid = target[0] if isinstance(target, tuple) else target
        peer = self.peers.get(node)
        if peer is not None and peer.monitors_out.pop(ref, None) is not None:
            peer.demonitor(proc.pid, name_or_pid, ref)

    # -- connections ---------------------------------------------------------------------------

    def peer(self, node: Atom) -> Peer:
        """The peer for `node`, connecting in the background if needed (as a send does)."""
        peer = self.peers.get(node)
        if peer is None:
            peer = self.peers[node] = Peer(node)
            peer.dialling = True  # pending from now on, as net_kernel marks it: see handshake_status
            asyncio.get_event_loop().create_task(self._connect(peer))
        return peer

    async def connect(self, node: str | Atom) -> None:
        """Connect to `node` (no-op when connected); raises NoConnection if it cannot."""
        node = Atom(node) if isinstance(node, str) else node
        if node is self.name:
            return
        peer = self.peer(node)
        try:
            await asyncio.shield(peer.up)
        except ConnectionError as e:
            raise NoConnection(node) from e

    async def ping(self, node: str | Atom, timeout: float = 10.0) -> bool:
        """As `Node.ping/1`: True for pong, False for pang."""
        from .otp.gen_server import call  # ping is a call to the peer's net_kernel
        node = Atom(node) if isinstance(node, str) else node
        try:
            await self.connect(node)
            me = self.process()
            try:
                reply = await call(me, (Atom("net_kernel"), node), (Atom("is_auth"), self.name),
                                   timeout=timeout)
            finally:
                me.exit(NORMAL)
            return reply is True or reply == Atom("yes")
        except Exception as e:
            log.info("ping %s: pang (%s)", node.name, e)
            return False

    def nodes(self) -> list[Atom]:
        return [name for name, peer in self.peers.items() if peer.conn is not None]

    def disconnect(self, node: Atom) -> None:
        """`erlang:disconnect_node/1`: take the connection down (nodedown follows)."""
        if (peer := self.peers.get(node)) is not None and peer.conn is not None:
            self._peer_down(peer, NOCONNECTION, None)

    async def _connect(self, peer: Peer) -> None:
        name = peer.name.name
        try:
            alive, host = names.dialable(name, self.longnames, self.proto_dist.family)
            try:  # net_setuptime bounds it all, as dist_util's setup timer: a host that went
                async with asyncio.timeout(HANDSHAKE_TIMEOUT):  # away answers nothing at all
                    address = await self.proto_dist.resolve(host)
                    info = await epmd.port_please(alive, address, self.epmd_port)
                    if info is None:
                        raise ConnectionError(f"epmd on {host} knows no node named {alive}")
                    if peer.conn is not None or peer.attempt is not None:
                        return  # the peer dialled us meanwhile
                    _, conn = await self.proto_dist.connect(
                        lambda: Connection(self, Role.INITIATOR, name), address, info.port, host)
            except TimeoutError:
                raise ConnectionError(f"{host} did not answer within {HANDSHAKE_TIMEOUT:g} s "
                                      "(net_setuptime)") from None
            if peer.conn is not None or peer.attempt is not None:
                conn.transport.close()  # the peer dialled us meanwhile: that connection serves
                return
            peer.attempt = conn
            conn.peer = peer
            await conn.done
        except (OSError, ValueError, ConnectionError, epmd.EpmdError) as e:
            if self.peers.get(peer.name) is peer and peer.conn is None and not peer.awaiting_theirs and (
                    peer.attempt is None or peer.attempt.role is Role.INITIATOR):
                # a name of the other kind is refused with the BEAM's own error log line
                log.log(logging.ERROR if isinstance(e, names.NodeNameError) else logging.INFO,
                        "cannot connect to %s: %s", name, e)
                self._peer_down(peer, NOCONNECTION, e)
        finally:
            peer.dialling = False

    def handshake_status(self, conn: Connection, event: PeerNamed) -> str:
        """Acceptor side: may this initiator in? Resolves simultaneous connects as OTP does:
        the node with the greater name keeps its own attempt."""
        name = Atom(event.name)
        if name is self.name:
            return "not_allowed"
        peer = self.peers.get(name)
        if peer is None:
            peer = self.peers[name] = Peer(name)
        elif peer.conn is not None:
            return "alive"
        elif (peer.attempt is not None and peer.attempt.role is Role.INITIATOR and peer.attempt is not conn) \
                or (peer.attempt is None and peer.dialling):
            # we are dialling them too (perhaps still asking epmd): a simultaneous connect
            if name.name < self.name.name:
                return "nok"
            status = "ok_simultaneous"
            if peer.attempt is not None:
                peer.attempt.peer = None  # our own attempt loses; its failure is not a nodedown
            peer.attempt = conn
            conn.peer = peer
            return status
        peer.attempt = conn
        conn.peer = peer
        return "ok"

    def connection_up(self, conn: Connection, event: Completed) -> None:
        name = Atom(event.name)
        peer = conn.peer
        if peer is None or self.peers.get(name) is not peer:
            old = self.peers.get(name)
            if old is not None and old.conn is not None and old.conn is not conn:
                log.info("%s reconnected: dropping its old connection", name.name)
                self._peer_down(old, NOCONNECTION, None)
            peer = self.peers.get(name) or self.peers.setdefault(name, Peer(name))
            conn.peer = peer
        peer.attempt = None
        peer.awaiting_theirs = False
        peer.connected(conn, event.flags)
        if not peer.up.done():
            peer.up.set_result(None)
        log.info("connected to %s (%s)", name.name, "accepted" if conn.role is Role.ACCEPTOR else "dialled")
        self._tell_listeners(name, True)

    def connection_lost(self, conn: Connection) -> None:
        peer = conn.peer
        if peer is None or self.peers.get(peer.name) is not peer:
            return
        if peer.conn is conn:
            log.info("connection to %s lost", peer.name.name)
            self._peer_down(peer, NOCONNECTION, None)
        elif peer.attempt is conn and peer.conn is None:
            if conn.handshake.lost_simultaneous:
                # `nok`: the peer is dialling us too and its attempt wins. As dist_util does,
                # wait for that connection instead of failing (the peer, its pending frames,
                # links and monitors stay); give up only if it does not come in time.
                peer.attempt = None
                peer.awaiting_theirs = True
                asyncio.get_running_loop().call_later(HANDSHAKE_TIMEOUT, self._theirs_overdue, peer)
                return
            self._peer_down(peer, NOCONNECTION, ConnectionError("handshake failed"))

    def _theirs_overdue(self, peer: Peer) -> None:
        if self.peers.get(peer.name) is peer and peer.conn is None and peer.attempt is None:
            self._peer_down(peer, NOCONNECTION, ConnectionError(
                "lost a simultaneous connect, and the peer's own connection never came"))

    def _peer_down(self, peer: Peer, reason: Atom, error: BaseException | None) -> None:
        """nodedown: links get `noconnection`, monitors a DOWN, remote monitors are dropped."""
        was_up = peer.conn is not None
        if self.peers.get(peer.name) is peer:
            del self.peers[peer.name]
        if not peer.up.done():
            peer.up.set_exception(error if isinstance(error, ConnectionError)
                                  else ConnectionError(str(error or "connection lost")))
            peer.up.exception()  # retrieved: nobody may be waiting for it
        peer.pending.clear()
        for local, remote in peer.links:
            proc = self.processes.get(local)
            if proc is not None:
                proc.links.discard(remote)
                proc.exit_signal(remote, reason, from_link=True)
        for ref, proc in peer.monitors_out.items():
            target = proc.monitors.pop(ref, None)
            if target is not None and proc.alive:
                obj = target if isinstance(target, (Pid, tuple)) else (target, peer.name)
                proc._deliver((DOWN_TAG, ref, PROCESS, obj, reason))
        watched: set[Process] = set()
        for ref, local in peer.monitors_in.items():
            proc = self.processes.get(local)
            if proc is not None:
                proc.monitored_by.pop(ref, None)
                watched.add(proc)
        for proc in watched:  # a dict keeps its size when emptied: a peer's million
            proc.monitored_by = dict(proc.monitored_by)  # monitors must not stay in memory
        for conn in (peer.conn, peer.attempt):
            if conn is not None and conn.transport is not None:
                conn.transport.close()
        if was_up:
            self._tell_listeners(peer.name, False)

    def _tell_listeners(self, node: Atom, up: bool) -> None:
        for listener in list(self.node_listeners):
            try:
                listener(node, up)
            except Exception:
                log.exception("a nodeup/nodedown listener failed")

    def _schedule_tick(self) -> None:
        self._ticker = asyncio.get_running_loop().call_later(self.ticktime / 4, self._tick)

    def _tick(self) -> None:
        """Every ticktime/4: tick idle connections; four silent periods mean the peer is gone."""
        for peer in list(self.peers.values()):
            conn = peer.conn
            if conn is None:
                continue
            if not conn.sent_since_tick:
                conn.tick()
            conn.sent_since_tick = False
            if conn.received_since_tick:
                conn.missed_ticks = 0
            else:
                conn.missed_ticks += 1
                if conn.missed_ticks >= 4:
                    conn.abort(f"node {peer.name.name} not responding, connection removed: "
                               f"nothing received for {self.ticktime:g} s (net_tick_timeout)")
            conn.received_since_tick = False
        self._schedule_tick()

    # -- incoming control messages (what each does: inbound.py) ------------------------------

    def dispatch(self, conn: Connection, control: Any, payload: Any) -> None:
        if type(control) is not tuple or not control or type(control[0]) is not int:
            raise FrameError(f"control message is not a tuple with an operation: {inspect(control)[:200]}")
        handler = inbound.HANDLERS.get(control[0])
        if handler is None:
            log.warning("%s sent unsupported control message %s: ignored", conn.peer_name, inspect(control)[:200])
            return
        try:
            handler(self, conn.peer, control, payload)
        except (ValueError, TypeError, IndexError, AttributeError) as e:
            raise FrameError(f"bad control message {inspect(control)[:200]}: {e}") from None
