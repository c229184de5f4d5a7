"""`global_name_server` for a visible pykv node: `:global`'s names and locks, held here as a
member of the cluster, speaking global's protocol version 8 (OTP 25, 27 and 29 all speak 8;
read from lib/kernel/src/global.erl of each). What the BEAM was seen to send: README, "Wire
notes: global".

Three processes, as global.erl has them:

  * the server (`global_name_server`): the replica of names and locks, the connect protocol
    with each new visible node (init_connect / init_connect_ack / exchange / resolved /
    new_nodes / in_sync / cancel_connect), and the "prevent overlapping partitions" messages
    (lost_connection / remove_connection);
  * the locker: when a node connects, it takes the lock `{global, [MyLocker, HisLocker]}` on
    every node of our partition (set_lock multi_calls to their servers, the boss first), tells
    the other locker through its server (`lock_set`), and holds the lock until the names are
    exchanged;
  * the registrar: register/unregister under the `{global, Registrar}` lock on all known
    nodes (trans_all_known), so that a name change never crosses a connect.

A name's resolve method is kept as the BEAM sent it (an opaque fun); names registered from
Python carry `fun global:random_exit_name/3`, which every BEAM node can run. Conflicts this
node resolves for its own pids (`global:resolve_it/4`, called by the smaller node over rpc)
run the three documented methods; any other fun cannot run here and the name is dropped, as
global does when a method returns something else.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import random
import secrets
from collections import deque
from typing import TYPE_CHECKING, Any, Callable, Iterable

from ..atoms import DOWN_TAG, GEN_CALL, GEN_CAST, KILL
from ..dist import flags as F
from ..net_kernel import NODEDOWN, NODEUP, monitor_nodes
from ..process import Process
from ..term import Atom, ExportFun, Pid, Reference, inspect
from .global_group import GlobalGroups
from .pg import group_key

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.global")

VSN = 8                  # global's protocol version (?vsn)
POP_VSN = 7              # lost_connection / remove_connection (?pop_vsn)
GG_POP_VSN = 8           # a global group member is excluded, not disconnected (?gg_pop_vsn)
PGPV_VSN = 7             # known lists carry versions (?pgpv_vsn)
VERIFY_CONNECT_VSN = 8   # init_connect_ack / cancel_connect
LOST_CONN_CLEANUP = 3600.0
MAX_NAMES = 1_000_000    # names and locks a cluster may make this replica hold
MAX_LOCKS = 1_000_000
MAX_HOLDERS = 1_000_000  # pids holding locks (shared locks count each holder)
MAX_LOST_CONNECTIONS = 10_000  # (node, node) pairs seen lost within the last hour

SERVER = Atom("global_name_server")
GLOBAL = Atom("global")
(INIT_CONNECT, INIT_CONNECT_ACK, CANCEL_CONNECT, LOCKER, NO_LONGER_A_PID, LOCK_IS_SET, LOCK_SET,
 EXCHANGE, EXCHANGE_OPS, RESOLVED, NEW_NODES, IN_SYNC, UNUSED, REGISTER, UNREGISTER, REGISTER_EXT,
 SET_LOCK, DEL_LOCK, GET_KNOWN, GET_SYNCED, SYNC, GET_PROTOCOL_VERSION, GET_NAMES_EXT, INSERT,
 DELETE, VSN_A, LOCK_A, LOST_CONNECTION, REMOVE_CONNECTION, YES, NO, OK,
 ASYNC_DEL_NAME, ASYNC_DEL_LOCK, REGISTRAR, WHEREIS, UNDEFINED, NONE, RESOLVE_IT,
 GLOBAL_NAME_CONFLICT, RANDOM_EXIT_NAME, RANDOM_NOTIFY_NAME, NOTIFY_ALL_NAME) = (Atom(a) for a in (
    "init_connect", "init_connect_ack", "cancel_connect", "locker", "no_longer_a_pid",
    "lock_is_set", "lock_set", "exchange", "exchange_ops", "resolved", "new_nodes", "in_sync",
    "unused", "register", "unregister", "register_ext", "set_lock", "del_lock", "get_known",
    "get_synced", "sync", "get_protocol_version", "get_names_ext", "insert", "delete", "vsn",
    "lock", "lost_connection", "remove_connection", "yes", "no", "ok",
    "async_del_name", "async_del_lock", "registrar", "whereis", "undefined", "none",
    "resolve_it", "global_name_conflict", "random_exit_name", "random_notify_name",
    "notify_all_name"))
DEFAULT_METHOD = ExportFun(GLOBAL, RANDOM_EXIT_NAME, 3)


def pid_order(pid: Pid) -> tuple:
    """Erlang's term order of pids, as the BEAM sorts them (seen: number, serial, then node)."""
    return (pid.id, pid.serial, pid.node.name, pid.creation)


def the_boss(nodes: Iterable[Atom]) -> Atom:
    return max(nodes, key=lambda n: n.name)


def _is_locker_id(requester: Any, pid: Pid) -> bool:
    """The requester id two lockers lock their partitions with (vsn 5 and later): the sorted
    pair of their pids, pid one of them."""
    return type(requester) is list and len(requester) == 2 and pid in requester


def _is_pid(x: Any) -> bool:
    return type(x) is Pid


class Session:
    """What global.erl keeps in its process dictionary per connecting node."""
    __slots__ = ("my_tag", "his_tag", "prot_vsn", "wait_lock", "save_ops", "pre_connect",
                 "lock_id")

    def __init__(self) -> None:
        self.my_tag: Any = None
        self.his_tag: Any = None
        self.prot_vsn: Any = None
        self.wait_lock: Any = None
        self.save_ops: Any = None
        self.pre_connect: Any = None
        self.lock_id: Any = None


class GlobalServer(Process):
    """The node's `global_name_server`."""

    @classmethod
    def start(cls, node: "Node", groups: Iterable[str | Atom] | None = None) -> "GlobalServer":
        """Start global on a visible node; `groups`: the nodes of its global group (the
        kernel's `global_groups` for this node), None for none (otp/global_group.py)."""
        if node.hidden:
            raise ValueError("global runs on a visible node only (Node(..., hidden=False))")
        server = cls(node, node.make_pid())
        server.groups = GlobalGroups(node, groups)
        server.group_process = node.add_process(_GroupProcess(node, node.make_pid(), server), "global_group")
        node.add_process(server, SERVER)
        monitor_nodes(server)
        server.locker = node.spawn(_guarded, server, _locker)
        server.registrar = node.spawn(_guarded, server, _registrar)
        node.exports.add("global", "resolve_it", server._resolve_it, 4, blocking=False)
        for other in node.nodes():
            server._deliver((NODEUP, other))
        return server

    def __init__(self, node: "Node", pid: Pid) -> None:
        super().__init__(node, pid)
        self.known: dict[Atom, int] = {}       # known node -> its protocol version
        self.pending: dict[Atom, int] = {}     # connecting node, not yet known -> version
        self.removing: set[Atom] = set()
        self.synced: list[Atom] = []
        self.resolvers: dict[Atom, tuple[Any, Process]] = {}   # node -> (my tag, resolver)
        self.sessions: dict[Atom, Session] = {}
        self.syncers: list[Callable[[list[Atom] | None, Atom | None], None]] = []
        # name key -> (name, pid, method, monitor ref); ref -> ("name", key) / ("lock", rid key)
        self.names: dict[bytes, tuple[Any, Pid, Any, Reference]] = {}
        self.names_ext: dict[bytes, tuple[Any, Pid, Atom]] = {}   # C nodes' names: key -> {N, P, RegNode}
        self.pid_names: dict[Pid, set[bytes]] = {}
        # resource key -> [resource id, requester id, [(pid, ref)]]
        self.locks: dict[bytes, list[Any]] = {}
        self.pid_locks: dict[Pid, set[bytes]] = {}
        self.holders = 0
        self.stale_locks_dropped = 0  # see _drop_stale_locker_lock
        self.refs: dict[Reference, tuple[str, bytes]] = {}
        self.global_lock_down = False
        self.lost_connections: dict[tuple[Atom, Atom], list[Any]] = {}
        self.locker: Process | None = None
        self.registrar: Process | None = None
        self.groups: GlobalGroups
        self.group_process: Process | None = None
        self._queue: deque[Any] = deque()
        self._busy = False
        self._tags = itertools.count(-(1 << 59))
        self._op_ids = itertools.count(1)
        # creation extension: tells this incarnation's lost_connection messages from earlier ones
        self.x_creation = (secrets.randbits(27) << 32) + node.creation + (1 << 59)

    # -- helpers ----------------------------------------------------------------------------

    def _session(self, node: Atom) -> Session:
        s = self.sessions.get(node)
        if s is None:
            s = self.sessions[node] = Session()
        return s

    def _tag(self, node: Atom) -> Any:
        s = self.sessions.get(node)
        return None if s is None else s.my_tag

    def _connected(self, node: Atom) -> bool:
        peer = self.node.peers.get(node)
        return peer is not None and peer.conn is not None

    def _visible(self, node: Atom) -> bool:
        peer = self.node.peers.get(node)
        return (peer is not None and peer.conn is not None
                and bool(peer.conn.handshake.peer_flags & F.PUBLISHED))

    def cast_to(self, node: Atom, message: Any) -> None:
        """gen_server:cast to the server at `node` (connects, as a cast does)."""
        self.send((SERVER, node), (GEN_CAST, message))

    def volatile_send(self, node: Atom, message: Any) -> None:
        """erlang:send(..., [noconnect]): dropped unless connected."""
        if self._connected(node):
            self.send((SERVER, node), message)

    def volatile_multicast(self, message: Any, ignore: Atom, min_vsn: int, also_pending: bool) -> None:
        targets = [n for n, v in self.known.items() if n is not ignore and v >= min_vsn]
        if also_pending:
            targets += [n for n, v in self.pending.items() if n is not ignore and v >= min_vsn]
        for n in targets:
            self.volatile_send(n, message)

    def node_vsn(self, node: Atom) -> int:
        if node is self.node.name:
            return VSN
        return self.known.get(node, self.pending.get(node, 0))

    def known_list(self, vsn: int) -> list[Any]:
        if vsn < PGPV_VSN:
            return list(self.known)
        return [(n, v) for n, v in self.known.items()]

    def get_known(self) -> list[Atom]:
        return list(self.known)

    def where(self, name: Any) -> Pid | None:
        entry = self.names.get(group_key(name))
        if entry is None:
            return None
        pid = entry[1]
        if pid.node is self.node.name:
            proc = self.node.processes.get(pid)
            return pid if proc is not None and proc.alive else None
        return pid

    def registered_names(self) -> list[Any]:
        return [entry[0] for entry in self.names.values()]

    def names_list(self) -> list[tuple]:
        return [(n, p, m) for n, p, m, _ in self.names.values()]

    # -- the mailbox --------------------------------------------------------------------------

    def _deliver(self, message: Any) -> None:
        # one message at a time, as a process: what the handling of one causes to arrive
        # (the nodedown of a node it disconnects) is handled after it, not inside it
        if not self.alive:
            return
        self._queue.append(message)
        if self._busy:
            return
        self._busy = True
        try:
            while self._queue:
                m = self._queue.popleft()
                if log.isEnabledFor(logging.DEBUG):
                    log.debug("server <- %s", inspect(m)[:400])
                try:
                    self._handle(m)
                except Exception as e:  # a malformed message: one line, and go on serving
                    log.warning("global_name_server: dropped %s (%s: %s)", inspect(m)[:200],
                                type(e).__name__, str(e)[:200])
                    self._drop_offender(m)
        finally:
            self._busy = False

    def _drop_offender(self, m: Any) -> None:
        """A connect-protocol message from a node failed half-way: its session may be left
        holding global's lock cluster-wide. On the BEAM the same failure restarts global and
        drops every connection; dropping this node's connection is enough here (its
        nodedown resets the session and the lock holders on both sides)."""
        if not (type(m) is tuple and len(m) == 2 and m[0] is GEN_CAST and type(m[1]) is tuple
                and len(m[1]) >= 3):
            return
        c = m[1]
        node = c[2] if c[0] is INIT_CONNECT else c[1].node if _is_pid(c[1]) else c[1]
        if type(node) is Atom and node is not self.node.name and self._connected(node):
            log.warning("global: disconnecting %s after its malformed message", node.name)
            self.node.disconnect(node)

    def _handle(self, m: Any) -> None:
        if type(m) is not tuple or not m:
            return self._unexpected(m)
        tag, size = m[0], len(m)
        if tag is GEN_CALL and size == 3:
            return self._call(m[1], m[2])
        if tag is GEN_CAST and size == 2:
            return self._cast(m[1])
        if tag is NODEUP and size == 2:
            node = m[1]
            if node is self.node.name or not self._visible(node):
                return
            if not self.groups.configured:
                self.handle_nodeup(node)
            elif not self.groups.member(node):
                self.group_disconnect(node)
            else:
                self.node.spawn(_group_check, self, node)
            return
        if tag == "group_nodeup" and size == 2:
            if self._connected(m[1]):
                self.handle_nodeup(m[1])
            return
        if tag == "group_nodedown" and size == 2:
            return self.group_nodedown(m[1])
        if tag is NODEDOWN and size == 2:
            node = m[1]
            if node in self.known or node in self.pending or node in self.sessions or node in self.removing:
                self.handle_nodedown(node, "disconnected" if self.groups.participant(node) else "ignore_node")
            for syncer in list(self.syncers):
                syncer(None, node)
            return
        if tag is DOWN_TAG and size == 5:
            return self._down(m[1])
        if tag is LOST_CONNECTION and size == 5:
            return self._lost_connection(*m[1:])
        if tag is REMOVE_CONNECTION and size == 2 and type(m[1]) is Atom:
            return self._remove_connection(m[1])
        if tag is CANCEL_CONNECT and size == 3 and type(m[1]) is Atom:
            node, my_tag = m[1], m[2]
            if my_tag is not None and self._tag(node) == my_tag:
                self.cancel_locker(node, my_tag)
                self.reset_node_state(node)
                self.pending.pop(node, None)
                self.restart_connect(node, my_tag)
            return
        if tag is INIT_CONNECT_ACK and size == 4 and type(m[1]) is Atom:
            node, his_my, his_his = m[1:]
            s = self.sessions.get(node)
            if s is None or s.my_tag != his_my or s.his_tag != his_his:
                self.send_cancel_connect_message(node, his_his)
                self.restart_connect(node, None if s is None else s.my_tag)
            return
        if tag == "exchange_ops" and size == 5:  # from a resolver of ours
            return self._exchange_ops(*m[1:])
        if tag == "extra_nodedown" and size == 2:
            for syncer in list(self.syncers):
                syncer(None, m[1])
            if m[1] in self.known or m[1] in self.pending:
                self.handle_nodedown(m[1], "disconnected")
            return
        if tag == "lost_conn_timeout" and size == 3:
            entry = self.lost_connections.get(m[1])
            if entry is not None and entry[2].token is m[2]:
                del self.lost_connections[m[1]]
            return
        self._unexpected(m)

    def crashed(self, which: str, error: BaseException) -> None:
        """The locker or the registrar crashed. On the BEAM that takes global_name_server
        down and kernel_sup restarts the kernel, connections too; here: drop every visible
        connection (so that no peer keeps a lock or a sync session this node forgot) and
        start global afresh; it syncs again with each node as it reconnects."""
        if not self.alive:
            return
        log.error("global: the %s crashed (%s: %s): restarting global, disconnecting its nodes",
                  which, type(error).__name__, str(error)[:200])
        for proc in (self.locker, self.registrar, self.group_process):
            if proc is not None and proc.alive:
                if proc is self.registrar:
                    for m in proc.mailbox:  # waiting registrations fail rather than hang
                        if type(m) is tuple and len(m) == 3 and m[0] == "trans_all_known" and not m[2].done():
                            m[2].set_exception(RuntimeError("global restarted"))
                proc.exit(KILL)
        for _, resolver in self.resolvers.values():
            resolver.exit(KILL)
        for entry in self.lost_connections.values():
            entry[2].cancel()
        self.exit(KILL)
        for n in [n for n in self.node.nodes() if self._visible(n)]:
            self.node.disconnect(n)
        GlobalServer.start(self.node, self.groups.own)

    def group_disconnect(self, node: Atom) -> None:
        """global_group's disconnect_nodes/2: the connection stays, global leaves the node
        out here and asks the node's global_group to do the same."""
        self._deliver(("group_nodedown", node))
        if self._connected(node):
            self.send((Atom("global_group"), node), (Atom("disconnect_node"), self.node.name))

    def group_nodedown(self, node: Atom) -> None:
        """{group_nodedown, Node, CId}: the node is out of our group while still connected,
        so no DOWN comes for its names and locks: drop them here."""
        if not self._connected(node):
            return
        for key, entry in list(self.names.items()):
            if entry[1].node is node:
                self._drop_name(key, entry)
        for key, lock in list(self.locks.items()):
            for pid, _ in list(lock[2]):
                if pid.node is node and key in self.locks:
                    self.remove_lock(key, pid, True)
        for syncer in list(self.syncers):
            syncer(None, node)
        self.handle_nodedown(node, "ignore_node")

    def _unexpected(self, m: Any) -> None:
        log.warning("global_name_server: unexpected message %s", inspect(m)[:200])

    # -- calls (from multi_calls of other nodes' registrars and lockers, and ours) -----------

    def _call(self, from_: Any, request: Any) -> None:
        if type(from_) is not tuple or len(from_) != 2 or not _is_pid(from_[0]):
            return self._unexpected(request)
        caller = from_[0]
        reply: Any
        r = request if type(request) is tuple else (request,)
        if r[0] is REGISTER and len(r) == 4 and _is_pid(r[2]):
            self.ins_name(r[1], r[2], r[3], caller, [])
            reply = YES
        elif r[0] is UNREGISTER and len(r) == 2:
            self.delete_global_name(r[1])
            reply = OK
        elif r[0] is REGISTER_EXT and len(r) == 5 and _is_pid(r[2]) and type(r[4]) is Atom:
            # a C node's name, registered through the Erlang node r[4] (which links to it)
            self.ins_name(r[1], r[2], r[3], caller, [], reg_node=r[4])
            reply = YES
        elif r[0] is SET_LOCK and len(r) == 2 and type(r[1]) is tuple and len(r[1]) == 2:
            reply = self.handle_set_lock(r[1], caller)
        elif r[0] is DEL_LOCK and len(r) == 2 and type(r[1]) is tuple and len(r[1]) == 2:
            self.handle_del_lock(r[1], caller)
            reply = True
        elif request is GET_KNOWN:
            reply = self.get_known()
        elif request is GET_SYNCED:
            reply = list(self.synced)
        elif request is GET_PROTOCOL_VERSION:
            reply = VSN
        elif request is GET_NAMES_EXT:
            reply = self.get_names_ext()
        elif r[0] is SYNC and len(r) == 2 and type(r[1]) in (list, tuple):
            waiting = {n for n in r[1] if type(n) is Atom and n is not self.node.name
                       and self._visible(n) and self.groups.participant(n)} - set(self.synced)
            self.start_sync(waiting, lambda: self.node.reply(from_, OK, self.pid))
            return
        else:
            return self._unexpected(request)
        self.node.reply(from_, reply, self.pid)

    def start_sync(self, waiting: set[Atom], done: Callable[[], None]) -> None:
        waiting = {n for n in waiting if self._connected(n)}
        if not waiting:
            done()
            return

        def syncer(synced: list[Atom] | None, down: Atom | None) -> None:
            for n in synced or ():
                waiting.discard(n)
            if down is not None:
                waiting.discard(down)
            if not waiting:
                self.syncers.remove(syncer)
                done()
        self.syncers.append(syncer)

    def _tell_syncers(self, nodes: list[Atom]) -> None:
        for syncer in list(self.syncers):
            syncer(nodes, None)

    # -- casts: the connect protocol ----------------------------------------------------------

    def _cast(self, c: Any) -> None:
        if type(c) is not tuple or not c:
            return self._unexpected(c)
        tag, size = c[0], len(c)
        if tag is INIT_CONNECT and size == 4 and type(c[2]) is Atom:
            vsn, node, init_msg = c[1], c[2], c[3]
            if not self._connected(node):  # bounded: state is kept for connected nodes only
                return self._unexpected(c)  # (their nodeup comes before what they send)
            if type(vsn) is tuple and len(vsn) >= 2 and type(vsn[0]) is int:
                his_vsn, his_tag = vsn[0], vsn[1]
                self.init_connect(min(his_vsn, VSN), node, init_msg, his_tag, his_vsn)
            else:
                log.info("global: illegal protocol version %s from %s", inspect(vsn)[:80], node.name)
            return
        if tag is LOCK_IS_SET and size == 4:
            node, my_tag, lock_id = c[1:]
            if self._tag(node) == my_tag and my_tag is not None:
                self.lock_is_set(node, lock_id)
            else:
                self.cancel_locker(node, my_tag)
            return
        if tag is EXCHANGE and size == 5 and type(c[1]) is Atom and type(c[2]) is list:
            node, names, _ext, my_tag = c[1:]
            if my_tag is not None and self._tag(node) == my_tag:
                self.exchange(node, names)
            else:
                self.cancel_locker(node, my_tag)
            return
        if (tag is RESOLVED and size == 7 and type(c[1]) is Atom and type(c[2]) is list
                and _node_list(c[3])):
            node, his_resolved, his_known, _unused, names_ext, my_tag = c[1:]
            if my_tag is not None and self._tag(node) == my_tag:
                s = self._session(node)
                if type(s.save_ops) is list:
                    self.resolved(node, list(his_resolved), list(his_known), names_ext)
                else:
                    s.save_ops = ("resolved", list(his_known), names_ext, list(his_resolved))
            else:
                self.cancel_locker(node, my_tag)
            return
        if (tag is NEW_NODES and size == 6 and type(c[1]) is Atom and type(c[2]) is list
                and _node_list(c[4])):
            node, ops, names_ext, nodes, extra = c[1:]
            added = self.add_to_known(list(nodes))
            self.sync_others(added)
            self.do_ops(ops, node, _pairs(extra), names_ext)
            self.locker_send(("add_to_known", added))
            return
        if tag is IN_SYNC and size == 3 and type(c[1]) is Atom:
            node = c[1]
            if not (self._connected(node) or node in self.known or node in self.pending):
                return  # bounded: synced holds nodes we are or were connected to
            self._tell_syncers([node])
            if node not in self.synced:
                self.synced.append(node)
            self.pending.pop(node, None)
            self.cancel_locker(node, self._tag(node))
            self.reset_node_state(node)
            return
        if tag is LOCK_SET and size in (4, 5) and _is_pid(c[1]):
            if size == 4 or (self._tag(c[1].node) == c[4]):
                self.locker_send(c)
            return
        if tag in (ASYNC_DEL_NAME, ASYNC_DEL_LOCK):
            return
        self._unexpected(c)

    def locker_send(self, message: Any) -> None:
        if self.locker is not None and self.locker.alive:
            self.locker._deliver(message)

    def handle_nodeup(self, node: Atom) -> None:
        if node in self.known or node in self.resolvers:
            return
        s = self._session(node)
        pre = s.pre_connect
        s.pre_connect = None
        my_tag = next(self._tags)
        s.my_tag = my_tag
        init = (INIT_CONNECT, (VSN, my_tag), self.node.name,
                (LOCKER, NO_LONGER_A_PID, {n: v for n, v in self.known.items()}, self.locker.pid))
        self.cast_to(node, init)
        resolver = self.node.spawn(_resolver, self, node, my_tag)
        self.resolvers[node] = (my_tag, resolver)
        if pre is not None:  # an init_connect that came before the nodeup
            vsn, init_msg, his_tag = pre
            self._cast((INIT_CONNECT, (vsn, his_tag), node, init_msg))

    def init_connect(self, vsn: int, node: Atom, init_msg: Any, his_tag: Any, his_vsn: int) -> None:
        if node in self.pending:
            # a second connect attempt while one is going on: cancel both, start over
            self.send_cancel_connect_message(node, his_tag)
            self.restart_connect(node, self._tag(node))
        s = self._session(node)
        s.prot_vsn = vsn
        s.his_tag = his_tag
        entry = self.resolvers.get(node)
        if entry is not None:
            if type(init_msg) is not tuple or len(init_msg) != 4 or not _is_pid(init_msg[3]):
                log.info("global: malformed init_connect from %s", node.name)
                return
            self.locker_send(("his_the_locker", init_msg[3], (vsn, []), his_tag, s.my_tag))
            if his_vsn >= VERIFY_CONNECT_VSN:
                self.volatile_send(node, (INIT_CONNECT_ACK, self.node.name, his_tag, s.my_tag))
            self.pending[node] = his_vsn
        else:
            s.pre_connect = (vsn, init_msg, his_tag)

    def restart_connect(self, node: Atom, my_tag: Any) -> None:
        self.cancel_locker(node, my_tag)
        self.reset_node_state(node)
        self.pending.pop(node, None)
        if type(my_tag) is int and self._connected(node):
            self.handle_nodeup(node)

    def lock_is_set(self, node: Atom, lock_id: Any) -> None:
        s = self._session(node)
        self.cast_to(node, (EXCHANGE, self.node.name, self.names_list(), [], s.his_tag))
        s.lock_id = lock_id
        if type(s.wait_lock) is tuple and s.wait_lock[0] == "exchange":
            names = s.wait_lock[1]
            s.wait_lock = "lock_is_set"
            self.exchange(node, names)
        else:
            s.wait_lock = "lock_is_set"

    def exchange(self, node: Atom, names: Any) -> None:
        s = self._session(node)
        if s.wait_lock == "lock_is_set":
            s.wait_lock = None
            entry = self.resolvers.get(node)
            if entry is not None:
                entry[1]._deliver(("resolve", list(names), node))
        else:
            s.wait_lock = ("exchange", names)

    def _exchange_ops(self, node: Atom, my_tag: Any, ops: list, resolved: list) -> None:
        if self._tag(node) != my_tag:
            self.cancel_locker(node, my_tag)
            return
        s = self._session(node)
        self.cast_to(node, (RESOLVED, self.node.name, resolved, self.known_list(self.node_vsn(node)),
                            UNUSED, self.get_names_ext(), s.his_tag))
        saved = s.save_ops
        s.save_ops = ops
        if type(saved) is tuple and saved[0] == "resolved":
            _, his_known, names_ext, his_resolved = saved
            self.resolved(node, his_resolved, his_known, names_ext)

    def resolved(self, node: Atom, his_resolved: list, his_known: list, names_ext: Any) -> None:
        s = self._session(node)
        ops = list(s.save_ops) + his_resolved
        s.save_ops = None
        known_before = dict(self.known)
        new_nodes = self.make_node_vsn_list([node] + his_known)
        his_known_nodes = [n if type(n) is Atom else n[0] for n in his_known]
        self.sync_others(his_known_nodes)
        extra = [(VSN_A, s.prot_vsn), (LOCK_A, s.lock_id)]
        self.do_ops(ops, self.node.name, extra, names_ext)
        self._tell_syncers([node])
        for other in his_known_nodes:
            self.cancel_resolved_locker(other, None)
        me = self.node.name
        message = (NEW_NODES, me, ops, names_ext if type(names_ext) is list else [], new_nodes, extra)
        old_message = (NEW_NODES, me, ops, [], [n for n, _ in new_nodes], extra)

        def send_new_nodes() -> None:  # run by the locker before it lets go of the lock
            for n, v in known_before.items():
                self.cast_to(n, message if v >= PGPV_VSN else old_message)
        self.cancel_resolved_locker(node, send_new_nodes)
        added = self.add_to_known(new_nodes)
        self.locker_send(("add_to_known", added))
        if node not in self.synced:
            self.synced.append(node)

    def cancel_resolved_locker(self, node: Atom, fun: Callable[[], None] | None) -> None:
        tag = self._tag(node)
        self.pending.pop(node, None)
        self.cancel_locker(node, tag, fun)
        self.reset_node_state(node)

    def make_node_vsn_list(self, nodes: list[Any]) -> list[tuple[Atom, int]]:
        out = []
        for n in nodes:
            if type(n) is Atom:
                out.append((n, self.node_vsn(n)))
            elif type(n) is tuple and len(n) == 2 and type(n[0]) is Atom:
                out.append((n[0], self.node_vsn(n[0])) if n[1] == 0 else (n[0], n[1]))
        return out

    def add_to_known(self, nodes: list[Any]) -> list[Atom]:
        added = []
        for n in nodes:
            name, vsn = (n, 0) if type(n) is Atom else (n[0], n[1]) if type(n) is tuple and len(n) == 2 else (None, 0)
            if type(name) is not Atom or name is self.node.name:
                continue
            if name not in self.known:
                added.append(name)
                self.known[name] = vsn if type(vsn) is int else 0
            elif self.known[name] < 0:
                self.known[name] = vsn
        return added

    def sync_others(self, nodes: list[Atom]) -> None:
        for n in nodes:
            if type(n) is Atom and n is not self.node.name:
                self.node.spawn(_sync_other, self, n)

    def cancel_locker(self, node: Atom, tag: Any, fun: Callable[[], None] | None = None) -> None:
        self.locker_send(("cancel", node, tag, fun))
        self.send_cancel_connect(node, tag)
        entry = self.resolvers.get(node)
        if entry is not None and entry[0] == tag:
            entry[1].exit(KILL)
            del self.resolvers[node]

    def send_cancel_connect(self, node: Atom, my_tag: Any) -> None:
        vsn = self.pending.get(node)
        if vsn is None or vsn < VERIFY_CONNECT_VSN:
            return
        s = self.sessions.get(node)
        if s is not None and s.my_tag == my_tag:
            self.send_cancel_connect_message(node, s.his_tag)

    def send_cancel_connect_message(self, node: Atom, his_tag: Any) -> None:
        self.volatile_send(node, (CANCEL_CONNECT, self.node.name, his_tag))

    def reset_node_state(self, node: Atom) -> None:
        self.sessions.pop(node, None)

    # -- nodedown and overlapping partitions --------------------------------------------------

    def handle_nodedown(self, node: Atom, what: str) -> None:
        self.cancel_locker(node, self._tag(node))
        self.locker_send(("remove_from_known", node))
        self.reset_node_state(node)
        if what == "remove_connection":
            self.removing.add(node)
        elif what == "ignore_node":
            self.removing.discard(node)
        elif node in self.removing:
            self.removing.discard(node)
        else:
            self.inform_connection_loss(node)
        self.pending.pop(node, None)
        self.known.pop(node, None)
        if node in self.synced:
            self.synced.remove(node)

    def inform_connection_loss(self, node: Atom) -> None:
        message = (LOST_CONNECTION, self.node.name, self.x_creation, next(self._op_ids), node)
        self.volatile_multicast(message, node, POP_VSN, True)

    def _lost_connection(self, node_a: Any, x_creation: Any, op_id: Any, node_b: Any) -> None:
        if type(node_a) is not Atom or type(node_b) is not Atom or type(op_id) is not int:
            return self._unexpected((LOST_CONNECTION, node_a, x_creation, op_id, node_b))
        key = (node_a, node_b)
        seen = self.lost_connections.get(key)
        if seen is not None and seen[0] == x_creation and op_id <= seen[1]:
            return
        self.volatile_multicast((LOST_CONNECTION, node_a, x_creation, op_id, node_b), node_a, POP_VSN, True)
        if seen is None and len(self.lost_connections) >= MAX_LOST_CONNECTIONS:
            self.lost_connections.pop(next(iter(self.lost_connections)))[2].cancel()
        if seen is not None:
            seen[2].cancel()
        token = object()
        timer = asyncio.get_running_loop().call_later(
            LOST_CONN_CLEANUP, self._deliver, ("lost_conn_timeout", key, token))
        self.lost_connections[key] = [x_creation, op_id, _Timer(timer, token)]
        rm = node_a if node_b is self.node.name else node_b
        if (rm in self.known or rm in self.pending) and self.groups.participant(rm):
            vsn = self.node_vsn(rm)
            if vsn < POP_VSN:
                self.node.disconnect(rm)
                what, how = "disconnected old", "remove_connection"
            else:
                self.volatile_send(rm, (REMOVE_CONNECTION, self.node.name))
                if self.groups.member(rm) and vsn >= GG_POP_VSN:
                    # the connection stays: rm's global leaves this node out in turn
                    what, how = "excluded global group member", "ignore_node"
                else:
                    what, how = "requested disconnect from", "remove_connection"
            self._log_partition_prevention(what, rm)
            self.handle_nodedown(rm, how)

    def _remove_connection(self, node: Atom) -> None:
        if node in self.known or node in self.pending:
            if self.groups.member(node):
                # as global_group's {disconnect_node, Node}: the connection stays, the node's
                # names and locks go (no DOWN will come for them)
                self.handle_nodedown(node, "ignore_node")
                self._deliver(("group_nodedown", node))
                what = "excluded global group member"
            else:
                self.node.disconnect(node)
                self.handle_nodedown(node, "remove_connection")
                what = "disconnected"
            self._log_partition_prevention(what, node)

    def _log_partition_prevention(self, what: str, node: Atom) -> None:
        log.warning("'global' at node %s %s node %s in order to prevent overlapping partitions",
                    self.node.name.name, what, node.name)

    # -- names ---------------------------------------------------------------------------------

    def get_names_ext(self) -> list[tuple]:
        return list(self.names_ext.values())

    def ins_name(self, name: Any, pid: Pid, method: Any, from_: Pid | Atom, extra: list,
                 reg_node: Atom | None = None) -> None:
        key = group_key(name)
        old = self.names.get(key)
        if old is not None:
            self._drop_name(key, old)
        elif len(self.names) >= MAX_NAMES:
            log.warning("global: %d names held, %s not registered here", MAX_NAMES, inspect(name)[:80])
            return
        ref = self.monitor(pid)
        self.refs[ref] = ("name", key)
        self.names[key] = (name, pid, method, ref)
        self.pid_names.setdefault(pid, set()).add(key)
        if reg_node is not None:
            self.names_ext[key] = (name, pid, reg_node)
        if not self.lock_still_set(from_, extra):
            self.delete_global_name(name)

    def lock_still_set(self, from_: Pid | Atom, extra: list) -> bool:
        lock = self.locks.get(group_key(GLOBAL))
        if lock is None:
            return not self.global_lock_down
        if type(from_) is Pid:
            return any(p == from_ for p, _ in lock[2])
        lock_id = next((v for k, v in extra if k is LOCK_A), None) if extra else None
        return type(lock_id) is tuple and len(lock_id) == 2 and lock[1] == lock_id[1]

    def delete_global_name(self, name: Any) -> None:
        key = group_key(name)
        entry = self.names.get(key)
        if entry is not None:
            self._drop_name(key, entry)

    def _drop_name(self, key: bytes, entry: tuple) -> None:
        _, pid, _, ref = entry
        del self.names[key]
        self.names_ext.pop(key, None)
        self.demonitor(ref, flush=True)
        self.refs.pop(ref, None)
        keys = self.pid_names.get(pid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.pid_names[pid]

    def do_ops(self, ops: list, conn_node: Atom, extra: list, names_ext: Any = ()) -> None:
        # names_ext: [{Name, Pid, RegNode}] of the other side: those inserts are C nodes' names
        ext = {}
        for item in names_ext if type(names_ext) is list else ():
            if type(item) is tuple and len(item) == 3 and _is_pid(item[1]) and type(item[2]) is Atom:
                ext[(group_key(item[0]), item[1])] = item[2]
        for op in ops:
            if type(op) is not tuple or len(op) != 2:
                continue
            if op[0] is INSERT and type(op[1]) is tuple and len(op[1]) == 3 and _is_pid(op[1][1]):
                name, pid, method = op[1]
                self.ins_name(name, pid, method, conn_node, extra, ext.get((group_key(name), pid)))
        for op in ops:
            if type(op) is tuple and len(op) == 2 and op[0] is DELETE:
                self.delete_global_name(op[1])

    # -- locks ---------------------------------------------------------------------------------

    def can_set_lock(self, lock_id: tuple) -> list | bool:
        resource, requester = lock_id
        lock = self.locks.get(group_key(resource))
        if lock is None:
            return []
        if lock[1] == requester:
            return lock[2]
        return False

    def is_global_lock_set(self) -> bool:
        return group_key(GLOBAL) in self.locks

    def handle_set_lock(self, lock_id: tuple, pid: Pid) -> bool:
        self._drop_stale_locker_lock(lock_id, pid)
        holders = self.can_set_lock(lock_id)
        if holders is False:
            return False
        if any(p == pid for p, _ in holders):  # type: ignore[union-attr]
            return True
        resource, requester = lock_id
        key = group_key(resource)
        if (key not in self.locks and len(self.locks) >= MAX_LOCKS) or self.holders >= MAX_HOLDERS:
            return False
        self.holders += 1
        ref = self.monitor(pid)
        self.refs[ref] = ("lock", key)
        self.pid_locks.setdefault(pid, set()).add(key)
        self.locks[key] = [resource, requester, [(pid, ref)] + list(holders)]  # type: ignore[operator]
        return True

    def _drop_stale_locker_lock(self, lock_id: tuple, pid: Pid) -> None:
        """A locker asking for global's lock under a new session id while it still holds the
        lock here under an old one never deleted the old one here: a locker holds one session's
        lock at a time and deletes it everywhere (and waits for the replies) before it asks
        for the next. That happens when the locker's boss (the greatest node it knows) goes
        down and comes back while it locks its partition: it locks the boss over the new
        connection, then drops the boss from its known list and deletes the lock on that
        list only (global.erl's lock_nodes_safely, every generation). The lock would then
        stay here as long as that connection does, and every registration here wait on it."""
        resource, requester = lock_id
        if resource is not GLOBAL or not _is_locker_id(requester, pid):
            return
        key = group_key(GLOBAL)
        lock = self.locks.get(key)
        if (lock is None or lock[1] == requester or not _is_locker_id(lock[1], pid)
                or not any(p == pid for p, _ in lock[2])):
            return
        log.warning("global: %s asks for global's lock while still holding it for an ended "
                    "session; dropping that stale lock", inspect(pid))
        self.stale_locks_dropped += 1
        self.remove_lock(key, pid, False)

    def handle_del_lock(self, lock_id: tuple, pid: Pid) -> None:
        resource, requester = lock_id
        key = group_key(resource)
        lock = self.locks.get(key)
        if lock is not None and lock[1] == requester:
            self.remove_lock(key, pid, False)

    def remove_lock(self, key: bytes, pid: Pid, down: bool) -> None:
        lock = self.locks[key]
        holders = lock[2]
        for i, (p, ref) in enumerate(holders):
            if p == pid:
                del holders[i]
                self.holders -= 1
                self.demonitor(ref, flush=True)
                self.refs.pop(ref, None)
                break
        keys = self.pid_locks.get(pid)
        if keys is not None:
            keys.discard(key)
            if not keys:
                del self.pid_locks[pid]
        if not holders:
            del self.locks[key]
            if key == group_key(GLOBAL):
                self.global_lock_down = down

    def _down(self, ref: Any) -> None:
        what = self.refs.pop(ref, None)
        if what is None:
            return
        kind, key = what
        if kind == "name":
            entry = self.names.get(key)
            if entry is not None and entry[3] == ref:
                self.refs[ref] = what  # _drop_name pops it
                self._drop_name(key, entry)
        else:
            lock = self.locks.get(key)
            if lock is not None:
                for p, r in lock[2]:
                    if r == ref:
                        self.refs[ref] = what
                        self.remove_lock(key, p, True)
                        break

    # -- name conflicts ------------------------------------------------------------------------

    async def _resolve_it(self, method: Any, name: Any, pid1: Any, pid2: Any) -> Any:
        """`global:resolve_it/4`, which the smaller node calls over rpc at the node of the pid
        registered here: run the method (the three of global's own only). A peer names both
        pids, so only a real conflict is acted on: one of them holds the name in this node's
        table, and a pid of this node it kills or notifies is that one, never another."""
        entry = self.names.get(group_key(name)) if _is_pid(pid1) and _is_pid(pid2) else None
        me = self.node.name
        if (entry is None or entry[1] not in (pid1, pid2)
                or any(p.node is me and p != entry[1] for p in (pid1, pid2))):
            log.info("global: resolve_it for %s refused: no such conflict here", inspect(name)[:100])
            return NONE
        return resolve_locally(self.node, method, name, pid1, pid2)


def resolve_locally(node: "Node", method: Any, name: Any, pid1: Pid, pid2: Pid) -> Any:
    if type(method) is ExportFun and method.module is GLOBAL and method.arity == 3:
        lo, hi = (pid1, pid2) if pid1.node.name < pid2.node.name else (pid2, pid1)
        if method.function is RANDOM_EXIT_NAME:
            log.info("global: Name conflict terminating %s", inspect((name, hi)))
            node.send_exit(node._system_pid(), hi, KILL)
            return lo
        if method.function is RANDOM_NOTIFY_NAME:
            node.route(None, hi, (GLOBAL_NAME_CONFLICT, name))
            return lo
        if method.function is NOTIFY_ALL_NAME:
            node.route(None, pid1, (GLOBAL_NAME_CONFLICT, name, pid2))
            node.route(None, pid2, (GLOBAL_NAME_CONFLICT, name, pid1))
            return NONE
    log.info("global: resolve method %s for %s cannot run on this node: the name is dropped",
             inspect(method)[:100], inspect(name)[:100])
    return NONE


class _GroupProcess(Process):
    """`global_group`: what other nodes' global_group send it ({disconnect_node, Node}: that
    node leaves us out of its group, so our global leaves it out too)."""

    def __init__(self, node: "Node", pid: Pid, server: GlobalServer) -> None:
        super().__init__(node, pid)
        self.server = server

    def _deliver(self, m: Any) -> None:
        if (type(m) is tuple and len(m) == 2 and m[0] == Atom("disconnect_node") and type(m[1]) is Atom
                and self.server.groups.configured):
            self.server._deliver(("group_nodedown", m[1]))
        else:
            log.debug("global_group: ignored %s", inspect(m)[:200])


class _Timer:
    __slots__ = ("handle", "token")

    def __init__(self, handle: asyncio.TimerHandle, token: object) -> None:
        self.handle, self.token = handle, token

    def cancel(self) -> None:
        self.handle.cancel()


# -- helpers run as processes -----------------------------------------------------------------

async def _group_check(proc: Process, server: GlobalServer, node: Atom) -> None:
    # the check is for this connection (global_group's connection_id): a result that comes
    # after a reconnect is not taken for the new connection, which has a check of its own
    connection = proc.node.peers.get(node)
    ok = await server.groups.check(proc, node)
    if proc.node.peers.get(node) is not connection:
        return
    if ok:
        server._deliver(("group_nodeup", node))
    else:
        server.group_disconnect(node)


def _node_list(value: Any) -> bool:
    """A list of nodes as global sends them: atoms, or {Node, Vsn} from vsn 7 on."""
    return type(value) is list and all(
        type(n) is Atom or (type(n) is tuple and len(n) == 2 and type(n[0]) is Atom) for n in value)


def _pairs(value: Any) -> list[tuple]:
    """new_nodes' extra info ([{vsn, V}, {lock, LockId}]): its 2-tuples."""
    return [t for t in value if type(t) is tuple and len(t) == 2] if type(value) is list else []


async def _guarded(proc: Process, server: GlobalServer, body: Callable[..., Any]) -> None:
    try:
        await body(proc, server)
    except Exception as e:  # an exit (the node stopping) is no crash: it is not caught here
        from ..errors import Exit
        if isinstance(e, Exit):
            raise
        server.crashed(body.__name__.strip("_"), e)


async def _sync_other(proc: Process, server: GlobalServer, node: Atom) -> None:
    """sync_other: connect to a node the other partition knows, then say we are in sync."""
    try:
        await proc.node.connect(node)
    except ConnectionError:
        log.warning("'global' at %s failed to connect to %s", proc.node.name.name, node.name)
        server._deliver(("extra_nodedown", node))
        return
    proc.send((SERVER, node), (GEN_CAST, (IN_SYNC, proc.node.name, True)))


async def _resolver(proc: Process, server: GlobalServer, node: Atom, tag: Any) -> None:
    def is_resolve(m: Any) -> bool:
        return type(m) is tuple and len(m) == 3 and m[0] == "resolve" and m[2] is node
    _, names, _ = await proc.receive(is_resolve)
    ops: list = []
    res: list = []
    me = proc.node.name
    for item in names:
        if type(item) is not tuple or len(item) != 3 or not _is_pid(item[1]):
            continue
        name, pid, method = item
        entry = server.names.get(group_key(name))
        if entry is None:
            ops.append((INSERT, (name, pid, method)))
            continue
        _, pid2, method2, _ = entry
        if pid2 == pid or not me.name < node.name:
            continue  # the same, or the other node resolves it
        chosen = await _resolve_at(proc, pid2.node, method2, name, pid, pid2)
        if chosen == pid:
            ops.append((INSERT, (name, pid, method)))
        elif chosen == pid2:
            res.append((INSERT, (name, pid2, method2)))
        else:
            ops.append((DELETE, name))
            res.append((DELETE, name))
    server._deliver(("exchange_ops", node, tag, ops, res))


async def _resolve_at(proc: Process, at: Atom, method: Any, name: Any, pid: Pid, pid2: Pid) -> Any:
    if at is proc.node.name:
        return resolve_locally(proc.node, method, name, pid, pid2)
    from . import rpc
    try:
        return await rpc.call(proc, at, GLOBAL, RESOLVE_IT, [method, name, pid, pid2], timeout=None)
    except Exception as e:
        log.info("global: badrpc %s when conflicting name %s was found", e, inspect(name)[:80])
        return pid


# -- multi_call ---------------------------------------------------------------------------------

async def multi_call(proc: Process, nodes: Iterable[Atom], request: Any) -> tuple[list, list]:
    """gen_server:multi_call(Nodes, global_name_server, Request), no timeout: replies, and the
    nodes that went down (or have no server) instead."""
    waiting: dict[Reference, Atom] = {}
    for n in dict.fromkeys(nodes):
        ref = proc.monitor((SERVER, n))
        waiting[ref] = n
        proc.send((SERVER, n), (GEN_CALL, (proc.pid, ref), request))
    replies, bad = [], []

    def match(m: Any) -> bool:
        return type(m) is tuple and ((len(m) == 2 and m[0] in waiting)
                                     or (len(m) == 5 and m[0] is DOWN_TAG and m[1] in waiting))
    while waiting:
        m = await proc.receive(match)
        n = waiting.pop(m[1] if m[0] is DOWN_TAG else m[0])
        if m[0] is DOWN_TAG:
            bad.append(n)
        else:
            proc.demonitor(m[0], flush=True)
            replies.append((n, m[1]))
    return replies, bad


async def set_lock_on_nodes(proc: Process, server: GlobalServer, lock_id: tuple, nodes: list[Atom]) -> bool:
    if not nodes:
        return True
    if len(nodes) > 1 and proc.node.name in nodes and server.can_set_lock(lock_id) is False:
        return False
    replies, bad = await multi_call(proc, nodes, (SET_LOCK, lock_id))
    log.debug("set_lock %s on %s: %s, down %s", inspect(lock_id), nodes, replies, bad)
    if all(r is True for _, r in replies):
        return True
    if len(replies) > 1:
        await multi_call(proc, [n for n, r in replies if r is True], (DEL_LOCK, lock_id))
    return False


async def random_sleep(times: int) -> None:
    tmax = 8.0 if times > 5 else (1 << times) / 8
    await asyncio.sleep(random.uniform(0, tmax))


async def set_lock(proc: Process, server: GlobalServer, lock_id: tuple, nodes: list[Atom],
                   retries: float = float("inf")) -> bool:
    times = 1
    while True:
        if await set_lock_on_nodes(proc, server, lock_id, nodes):
            return True
        if retries <= 0:
            return False
        await random_sleep(times)
        retries -= 1
        times += 1


async def del_lock(proc: Process, lock_id: tuple, nodes: list[Atom]) -> None:
    await multi_call(proc, nodes, (DEL_LOCK, lock_id))


async def delete_global_lock(proc: Process, lock_id: tuple, nodes: list[Atom]) -> None:
    if not nodes:
        return
    boss = the_boss(nodes)
    await del_lock(proc, lock_id, [n for n in nodes if n is not boss])
    await del_lock(proc, lock_id, [boss])


# -- the registrar --------------------------------------------------------------------------------

async def trans_all_known(proc: Process, server: GlobalServer, fun: Callable[[list[Atom]], Any]) -> Any:
    lock_id = (GLOBAL, proc.pid)
    me = proc.node.name
    times = 0
    while True:
        known = server.get_known()
        nodes = [me] + known
        boss = the_boss(nodes)
        if await set_lock_on_nodes(proc, server, lock_id, [boss]):
            if await set_lock_on_nodes(proc, server, lock_id, nodes) and not (set(server.get_known()) - set(known)):
                break
            await del_lock(proc, lock_id, [boss])
        await random_sleep(times)
        times += 1
    try:
        return await fun(nodes)
    finally:
        await delete_global_lock(proc, lock_id, nodes)


async def _registrar(proc: Process, server: GlobalServer) -> None:
    while True:
        m = await proc.receive()
        if type(m) is tuple and len(m) == 3 and m[0] == "trans_all_known":
            _, fun, reply = m
            try:
                result = await trans_all_known(proc, server, fun)
            except Exception as e:
                if not reply.done():
                    reply.set_exception(e)
            except BaseException:  # killed (global restarts): the caller is told, not left waiting
                if not reply.done():
                    reply.set_exception(RuntimeError("global restarted before the registration was done"))
                raise
            else:
                if not reply.done():
                    reply.set_result(result)


# -- the locker ---------------------------------------------------------------------------------

class Him:
    __slots__ = ("node", "locker", "vsn", "my_tag", "his_tag")

    def __init__(self, node: Atom, locker: Pid, vsn: int, my_tag: Any, his_tag: Any) -> None:
        self.node, self.locker, self.vsn, self.my_tag, self.his_tag = node, locker, vsn, my_tag, his_tag


class LockerState:
    def __init__(self, me: Atom) -> None:
        self.me = me
        self.others: list[Him] = []
        self.known: list[Atom] = []
        self.boss = me
        self.just_synced = False

    def update(self, m: tuple) -> None:
        if m[0] == "add_to_known":
            self.known = list(m[1]) + self.known
        else:
            if m[1] in self.known:
                self.known.remove(m[1])
        self.boss = the_boss([self.me] + self.known)

    def find(self, node: Atom) -> Him | None:
        return next((h for h in self.others if h.node is node), None)

    def remove(self, node: Atom, tag: Any) -> None:
        self.others = [h for h in self.others if not (h.node is node and h.my_tag == tag)]


async def _locker(proc: Process, server: GlobalServer) -> None:
    s = LockerState(proc.node.name)
    s.update(("add_to_known", server.get_known()))
    while True:
        if proc.mailbox:
            await _locker_message(proc, server, s, proc.mailbox.popleft())
            continue
        # global's timeouts: >0 so that another node of the partition gets a chance at the lock
        if not s.others:
            timeout = None
        elif s.just_synced:
            timeout = 0.0
        elif not s.known:
            timeout = 0.2
        else:
            timeout = min(1.0 + 0.1 * len(s.known), 3.0)
        s.just_synced = False
        try:
            m = await proc.receive(timeout=timeout) if timeout != 0.0 else None
        except TimeoutError:
            m = None
        if m is not None:
            await _locker_message(proc, server, s, m)
        elif not server.is_global_lock_set():
            await _select_node(proc, server, s)


def _flush_known(proc: Process, s: LockerState) -> None:
    """update_locker_known/1: take the add/remove messages waiting."""
    keep = []
    for m in list(proc.mailbox):
        if type(m) is tuple and len(m) == 2 and m[0] in ("add_to_known", "remove_from_known"):
            s.update(m)
        else:
            keep.append(m)
    proc.mailbox.clear()
    proc.mailbox.extend(keep)


def _lock_id(proc: Process, his_locker: Pid) -> tuple:
    return (GLOBAL, sorted([proc.pid, his_locker], key=pid_order))


async def _lock_nodes_safely(proc: Process, server: GlobalServer, s: LockerState, lock_id: tuple,
                             extra: list[Atom]) -> list[Atom] | None:
    """Lock the boss, then this node (and extra), then the rest of the known nodes, as
    global.erl does; the nodes locked, or None (and no lock left) when one refused."""
    me = proc.node.name
    first = [s.boss]
    if not (first == [me] or server.can_set_lock(lock_id) is not False):
        return None
    if not await set_lock(proc, server, lock_id, first, 0):
        return None
    _flush_known(proc, s)
    second = [n for n in [me] + extra if n not in first]
    if not await set_lock(proc, server, lock_id, second, 0):
        await del_lock(proc, lock_id, first)
        return None
    rest = [n for n in s.known if n not in first]
    if not await set_lock(proc, server, lock_id, rest, 0):
        await del_lock(proc, lock_id, first + second)
        return None
    # The boss is in this list even when it left the known list meanwhile (global.erl deletes
    # on the known list only, which can leave the lock on a boss that came back)
    return list(dict.fromkeys(first + second + rest))


def _send_lock_set(proc: Process, s: LockerState, is_set: bool, his_locker: Pid, vsn: int, his_tag: Any) -> None:
    message = ((LOCK_SET, proc.pid, is_set, list(s.known)) if vsn < VERIFY_CONNECT_VSN
               else (LOCK_SET, proc.pid, is_set, list(s.known), his_tag))
    proc.send((SERVER, his_locker.node), (GEN_CAST, message))


async def _locker_message(proc: Process, server: GlobalServer, s: LockerState, m: Any) -> None:
    if log.isEnabledFor(logging.DEBUG):
        log.debug("locker <- %s", inspect(m)[:400])
    if type(m) is not tuple or not m:
        return
    tag = m[0]
    if tag == "his_the_locker":
        _, his_locker, (vsn, _), his_tag, my_tag = m
        s.others.insert(0, Him(his_locker.node, his_locker, vsn, my_tag, his_tag))
    elif tag == "cancel":
        _, node, ctag, fun = m
        if ctag is not None:
            s.remove(node, ctag)
    elif tag in ("add_to_known", "remove_from_known"):
        s.update(m)
    elif tag is LOCK_SET:
        if len(m) not in (4, 5) or not _is_pid(m[1]):  # any node can send to the locker's pid
            log.warning("global locker: unexpected message %s", inspect(m)[:200])
            return
        pid, is_set = m[1], m[2]
        if is_set is not True:
            return
        him = s.find(pid.node)
        if him is None or (len(m) == 5 and m[4] != him.my_tag):
            _send_lock_set(proc, s, False, pid, 5, 0)
            return
        lock_id = _lock_id(proc, pid)
        locked = await _lock_nodes_safely(proc, server, s, lock_id, [])
        ok = locked is not None
        _send_lock_set(proc, s, ok, pid, him.vsn, him.his_tag)
        if locked is not None:
            server._deliver((GEN_CAST, (LOCK_IS_SET, him.node, him.my_tag, lock_id)))
            await _wait_cancel_lock(proc, him.node, lock_id, him.my_tag,
                                    _locked_and_known(locked, [proc.node.name] + s.known))
            s.just_synced = True
            s.remove(him.node, him.my_tag)
        else:
            s.just_synced = False


async def _select_node(proc: Process, server: GlobalServer, s: LockerState) -> None:
    local_host = proc.node.name.name.split("@", 1)[-1]
    s.others = [h for h in s.others if h.node not in s.known]
    if not s.others:
        return
    local = [h for h in s.others if h.node.name.split("@", 1)[-1] == local_host]
    him = random.choice(local or s.others)
    lock_id = _lock_id(proc, him.locker)
    locked = await _lock_nodes_safely(proc, server, s, lock_id, [him.node])
    if locked is None:
        return
    known1 = _locked_and_known(locked, [proc.node.name, him.node] + s.known)
    _send_lock_set(proc, s, True, him.locker, him.vsn, him.his_tag)
    node, my_tag = him.node, him.my_tag

    def answer(m: Any) -> bool:
        if type(m) is not tuple or not m:
            return False
        if m[0] is LOCK_SET and len(m) in (4, 5) and _is_pid(m[1]) and m[1].node is node:
            return True
        return m[0] == "cancel" and m[1] is node and m[2] == my_tag
    while True:
        m = await proc.receive(answer)
        if m[0] == "cancel":
            if m[3] is not None:
                m[3]()
            await delete_global_lock(proc, lock_id, known1)
            s.remove(node, my_tag)
            return
        if len(m) == 5 and m[4] != my_tag:
            continue  # an old session's answer
        if m[2] is True:
            server._deliver((GEN_CAST, (LOCK_IS_SET, node, my_tag, lock_id)))
            await _wait_cancel_lock(proc, node, lock_id, my_tag, known1)
            s.just_synced = True
            s.others = [h for h in s.others if h is not him]
            return
        await delete_global_lock(proc, lock_id, known1)
        return


def _locked_and_known(locked: list[Atom], known: list[Atom]) -> list[Atom]:
    """Where the session's lock is deleted: global.erl's list (this node, him, the known
    nodes), and every node locked that has left it since."""
    return known + [n for n in locked if n not in known]


async def _wait_cancel_lock(proc: Process, node: Atom, lock_id: tuple, my_tag: Any, known: list[Atom]) -> None:
    def cancel(m: Any) -> bool:
        return type(m) is tuple and len(m) == 4 and m[0] == "cancel" and m[1] is node and m[2] == my_tag
    m = await proc.receive(cancel)
    if m[3] is not None:
        m[3]()
    await delete_global_lock(proc, lock_id, known)


# -- the Python API --------------------------------------------------------------------------------

def server_of(node: "Node") -> GlobalServer | None:
    server = node.whereis(SERVER)
    return server if isinstance(server, GlobalServer) else None


async def _via_registrar(node: "Node", fun: Callable[[list[Atom]], Any]) -> Any:
    server = server_of(node)
    if server is None or not server.alive or server.registrar is None or not server.registrar.alive:
        raise RuntimeError("global is not running on this node")
    reply: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
    server.registrar._deliver(("trans_all_known", fun, reply))
    return await reply


async def register_name(node: "Node", name: Any, pid: Pid, method: Any = DEFAULT_METHOD) -> bool:
    server = server_of(node)
    assert server is not None
    registrar = server.registrar

    async def fun(nodes: list[Atom]) -> bool:
        if server.where(name) is not None or pid in server.pid_names:
            return False
        await multi_call(registrar, nodes, (REGISTER, name, pid, method))
        return True
    return await _via_registrar(node, fun)


async def re_register_name(node: "Node", name: Any, pid: Pid, method: Any = DEFAULT_METHOD) -> bool:
    server = server_of(node)
    assert server is not None

    async def fun(nodes: list[Atom]) -> bool:
        await multi_call(server.registrar, nodes, (REGISTER, name, pid, method))
        return True
    return await _via_registrar(node, fun)


async def unregister_name(node: "Node", name: Any) -> None:
    server = server_of(node)
    assert server is not None
    if server.where(name) is None:
        return

    async def fun(nodes: list[Atom]) -> None:
        await multi_call(server.registrar, nodes, (UNREGISTER, name))
    await _via_registrar(node, fun)


async def sync(node: "Node") -> None:
    server = server_of(node)
    assert server is not None
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    visible = [n for n in node.nodes() if server._visible(n) and server.groups.participant(n)]
    server.start_sync(set(visible) - set(server.synced), lambda: done.done() or done.set_result(None))
    await done


async def trans(proc: Process, lock_id: tuple, fun: Callable[[], Any], nodes: list[Atom] | None = None,
                retries: float = float("inf")) -> Any:
    """global:trans/4 for the calling process `proc` (which holds the lock)."""
    server = server_of(proc.node)
    assert server is not None
    if nodes is None:
        nodes = [proc.node.name] + [n for n in proc.node.nodes() if server._visible(n)]
    if not await set_lock(proc, server, lock_id, nodes, retries):
        return Atom("aborted")
    try:
        result = fun()
        if asyncio.iscoroutine(result):
            result = await result
        return result
    finally:
        await del_lock(proc, lock_id, nodes)
