"""OTP's `pg` (process groups, OTP 23+) on pykv: Python processes join groups that BEAM
nodes see with `:pg.get_members/2`, and Python sees the BEAM's members.

A scope is a process registered under the scope's name on every node that runs it; scopes of
the same name find each other and exchange their nodes' local members (OTP's
lib/kernel/src/pg.erl, whose messages these are; read from OTP 25, 27 and 29):

    {discover, Scope}  |  {discover, Scope, Version}    "who are you?" (the 3-tuple: OTP 29)
    {'$gen_cast', {sync, Scope, [{Group, [Pid]}]}}      the answer: all of the sender's members
    {join, Scope, Group, Pid | [Pid]}                   members joined since
    {leave, Scope, Pid | [Pid], [Group]}                members left (one per group listed)

and each scope monitors the others. A BEAM scope answers a discover from any node but sends
one only to the nodes of `nodes()`, the visible ones, at its start and at each nodeup: it
never discovers pykv, which connects hidden. So this scope discovers the other side itself,
at its start and at every nodeup (reconnects too), and again while a connected node shows no
scope of its name (it may start later, or restart). It discovers only peers that negotiated
DFLAG_SPAWN (BEAM and pykv nodes): erl_call and Jinterface take the first message that
arrives for the answer they await. It speaks pg's version 0, which OTP 23-29 all speak
(OTP 29's data_publisher translates for version-0 peers).

A BEAM scope's catch-all clauses raise, and OTP 25's `leave` handler raises for a group its
view of the sender lacks: what this scope sends is built from its own state only, from
arguments checked at the API (local pids, groups that are Erlang terms), and joins and leaves
go only to scopes that have had this scope's sync since they learnt of it, so that every
leave names memberships the receiver knows. What arrives from other scopes is checked, and a
malformed message is logged and dropped (never raised: one peer cannot crash this scope).

    scope = pg.start(node)                       # the default scope, :pg
    pg.join(node, "room", proc)                  # :pg.join(:pg, "room", pid) on the BEAM side
    pg.get_members(node, "room")                 # local and remote members
    ref, members = pg.monitor(proc, "room")      # then (ref, :join | :leave, "room", [pids])

The calls are synchronous and run on the node's event loop thread, like the scope itself.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter, deque
from typing import TYPE_CHECKING, Any, Iterable

from ..atoms import DOWN_TAG, GEN_CALL, GEN_CAST, NOCONNECTION, NORMAL, SHUTDOWN
from ..errors import NoProc, exit_reason
from ..exports import module_atom
from ..net_kernel import NODEDOWN, NODEUP, monitor_nodes
from ..process import Process
from ..term import Atom, FrozenList, ImproperList, Pid, Reference, TermError, encode, freeze, inspect

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.pg")

DEFAULT_SCOPE = Atom("pg")
DISCOVER, SYNC, JOIN, LEAVE = Atom("discover"), Atom("sync"), Atom("join"), Atom("leave")
MONITOR, DEMONITOR = "monitor", "demonitor"

# Bounds on what other scopes can make this one hold (they are sent, not enforced, by peers).
MAX_PEER_MEMBERSHIPS = 1_000_000   # memberships one other scope may announce
MAX_PEERS = 4096                   # other scopes tracked at once
RESTARTS, RESTART_PERIOD = 3, 5.0  # a crashed scope is restarted, as Supervisor's defaults allow
FIRST_RETRY = 1.0                  # rediscovery backoff starts here (seconds), doubling


# -- the identity of a group ---------------------------------------------------------------------

def group_key(group: Any) -> bytes:
    """Erlang's identity of a group term, as bytes: its external format, so that the Python
    values that are one Erlang term are one group (`"a"` and `b"a"` are the same binary, `1`
    and `1.0` two terms, `True` the atom `true`) and a list or map can be a group. Maps are
    taken with their keys in a fixed order. Raises TypeError for a value that is no term."""
    try:
        return encode(group) if not _has_map(group) else b"\0" + _ordered(group)
    except TermError as e:
        raise TypeError(f"a group must be an Erlang term: {e}") from None


def _has_map(term: Any) -> bool:
    if isinstance(term, dict):
        return True
    if isinstance(term, (tuple, list)):
        return any(_has_map(item) for item in term)
    if isinstance(term, ImproperList):
        return _has_map(term.items) or _has_map(term.tail)
    return False


def _ordered(term: Any) -> bytes:
    """An injective encoding in which a map's entries are sorted (length-prefixed parts)."""
    if isinstance(term, dict):
        entries = sorted(_part(_ordered(k)) + _part(_ordered(v)) for k, v in term.items())
        return b"M" + _part(b"".join(entries))
    if isinstance(term, ImproperList):
        return b"I" + _part(b"".join(_part(_ordered(item)) for item in term.items)) + _part(_ordered(term.tail))
    if isinstance(term, (tuple, list)):
        tag = b"L" if isinstance(term, (list, FrozenList)) else b"T"  # FrozenList: a list on the wire
        return tag + _part(b"".join(_part(_ordered(item)) for item in term))
    return b"E" + _part(encode(term))


def _part(data: bytes) -> bytes:
    return len(data).to_bytes(8, "big") + data


# -- the scope's state: events in, effects out (no I/O) -----------------------------------------

class View:
    """One group as this node sees it: pg's ETS row `{Group, AllMembers, LocalMembers}`."""

    __slots__ = ("term", "members", "local")

    def __init__(self, term: Any) -> None:
        self.term = term
        self.members: list[Pid] = []
        self.local: list[Pid] = []


class PeerScope:
    """Another node's scope of the same name, as this one knows it."""

    __slots__ = ("groups", "synced", "size")

    def __init__(self, synced: bool) -> None:
        self.groups: dict[bytes, list[Pid]] = {}  # its local members, as it announced them
        # It has had our sync since it learnt of us, so it holds our members: joins and
        # leaves may follow. Before that a leave could name a group it does not know.
        self.synced = synced
        self.size = 0


class ScopeState:
    """A scope's membership and what it must send, as pg.erl keeps them. Each method is one
    event; what it causes is appended to `effects`: ("send", dest, message) and
    ("monitor" | "demonitor", pid, None), for the process around it to carry out, in order."""

    def __init__(self, me: Pid, name: Atom) -> None:
        self.me = me
        self.name = name
        self.groups: dict[bytes, View] = {}
        self.local: dict[Pid, list[bytes]] = {}     # local member -> its groups (a process
        self.peers: dict[Pid, PeerScope] = {}       # may join one group more than once)
        self.scope_watchers: dict[Reference, Pid] = {}
        self.group_watchers: dict[bytes, dict[Reference, Pid]] = {}
        self.watched: dict[Reference, bytes | None] = {}  # watcher ref -> group key (None: scope)
        self.effects: deque[tuple[str, Any, Any]] = deque()

    # -- reading ---------------------------------------------------------------------------

    def members(self, key: bytes) -> list[Pid]:
        view = self.groups.get(key)
        return list(view.members) if view is not None else []

    def local_members(self, key: bytes) -> list[Pid]:
        view = self.groups.get(key)
        return list(view.local) if view is not None else []

    def knows_node(self, node: Atom) -> bool:
        return any(peer.node is node for peer in self.peers)

    def local_groups(self) -> list[tuple[Any, list[Pid]]]:
        """What a sync carries: each group with local members, once, with those members."""
        return [(view.term, list(view.local)) for view in self.groups.values() if view.local]

    # -- local members ---------------------------------------------------------------------

    def join(self, group: Any, key: bytes, pids: list[Pid]) -> None:
        view = self._view(key, group)
        for pid in pids:
            groups = self.local.get(pid)
            if groups is None:
                self.local[pid] = [key]
                self.effects.append((MONITOR, pid, None))
            else:
                groups.append(key)
        view.members.extend(pids)
        view.local.extend(pids)
        self._notify(JOIN, key, view.term, pids)
        self._broadcast((JOIN, self.me, view.term, list(pids)))

    def leave(self, key: bytes, pids: list[Pid]) -> bool:
        """False (pg's `not_joined`) when none of `pids` was a member."""
        left = []
        for pid in pids:
            groups = self.local.get(pid)
            if groups is not None and key in groups:
                groups.remove(key)
                left.append(pid)
                if not groups:
                    del self.local[pid]
                    self.effects.append((DEMONITOR, pid, None))
        if not left:
            return False
        term = self.groups[key].term
        self._remove(key, left, local=True)
        self._notify(LEAVE, key, term, left)
        self._broadcast((LEAVE, self.me, left, [term]))
        return True

    def member_down(self, pid: Pid) -> None:
        """A local member exited: it leaves every group it was in (once per join)."""
        keys = self.local.pop(pid, None)
        if not keys:
            return
        terms = []
        for key in keys:
            term = self.groups[key].term
            terms.append(term)
            self._remove(key, [pid], local=True)
            self._notify(LEAVE, key, term, [pid])
        self._broadcast((LEAVE, self.me, [pid], terms))

    # -- other scopes ----------------------------------------------------------------------

    def discover(self, peer: Pid) -> None:
        """A scope asks who we are: our sync answers, and we ask back if it is new to us."""
        known = self.peers.get(peer)
        if known is None and len(self.peers) >= MAX_PEERS:
            log.warning("pg scope %s: already %d other scopes; ignoring %r", self.name.name, MAX_PEERS, peer)
            return
        self.effects.append(("send", peer, (GEN_CAST, (SYNC, self.me, self.local_groups()))))
        if known is None:
            self.peers[peer] = PeerScope(synced=True)
            self.effects.append((MONITOR, peer, None))
            self.effects.append(("send", peer, (DISCOVER, self.me)))
        else:
            known.synced = True

    def sync(self, peer: Pid, groups: list[tuple[Any, list[Pid]]]) -> None:
        """A scope tells all its members: they replace what we knew of it."""
        new: dict[bytes, tuple[Any, list[Pid]]] = {}
        for term, pids in groups:
            key = group_key(term)
            if key in new:                       # one group twice: a malformed sync, merged
                new[key][1].extend(pids)
            else:
                new[key] = (term, list(pids))
        size = sum(len(pids) for _, pids in new.values())
        if size > MAX_PEER_MEMBERSHIPS:
            log.warning("pg scope %s: %r announced %d memberships (more than %d): ignored",
                        self.name.name, peer, size, MAX_PEER_MEMBERSHIPS)
            return
        known = self.peers.get(peer)
        if known is None:
            if len(self.peers) >= MAX_PEERS:
                log.warning("pg scope %s: already %d other scopes; ignoring %r", self.name.name, MAX_PEERS, peer)
                return
            known = self.peers[peer] = PeerScope(synced=False)
            self.effects.append((MONITOR, peer, None))
        if not known.synced:
            # it may never ask (it knew us already): tell it ours too, so that joins and
            # leaves can follow at once (a sync replaces, so a second one does no harm)
            self.effects.append(("send", peer, (GEN_CAST, (SYNC, self.me, self.local_groups()))))
            known.synced = True
        old = known.groups
        for key in [key for key in old if key not in new]:
            self._remote_remove(known, key, list(old[key]))
        for key, (term, pids) in new.items():
            before = Counter(old.get(key, ()))
            after = Counter(pids)
            gone = list((before - after).elements())
            if gone:
                self._remote_remove(known, key, gone)
            came = list((after - before).elements())
            if came:
                self._remote_add(known, key, term, came)

    def remote_join(self, peer: Pid, group: Any, pids: list[Pid]) -> None:
        known = self.peers.get(peer)
        if known is None or not pids:  # not (or no longer) in our overlay: as pg, ignored
            return
        if known.size + len(pids) > MAX_PEER_MEMBERSHIPS:
            log.warning("pg scope %s: %r would hold more than %d memberships: join ignored",
                        self.name.name, peer, MAX_PEER_MEMBERSHIPS)
            return
        self._remote_add(known, group_key(group), group, pids)

    def remote_leave(self, peer: Pid, pids: list[Pid], groups: list[Any]) -> None:
        known = self.peers.get(peer)
        if known is None:
            return
        for key in [group_key(group) for group in groups]:  # all checked before any change
            have = known.groups.get(key)
            if have is not None:
                remaining, left = list(have), []
                for pid in pids:  # only what it announced, as many times as it did
                    if pid in remaining:
                        remaining.remove(pid)
                        left.append(pid)
                if left:
                    self._remote_remove(known, key, left)

    def scope_down(self, peer: Pid) -> None:
        """Another scope exited, or its node went down: its members are gone."""
        known = self.peers.pop(peer, None)
        if known is not None:
            for key, pids in list(known.groups.items()):
                self._remote_remove(known, key, list(pids))

    # -- watchers (pg:monitor_scope/1, pg:monitor/2, OTP 25.1+) ----------------------------

    def monitor_scope(self, watcher: Pid, ref: Reference) -> dict[Any, list[Pid]]:
        self.scope_watchers[ref] = watcher
        self.watched[ref] = None
        return {freeze(view.term): list(view.members) for view in self.groups.values()}

    def monitor_group(self, watcher: Pid, ref: Reference, key: bytes) -> list[Pid]:
        self.group_watchers.setdefault(key, {})[ref] = watcher
        self.watched[ref] = key
        return self.members(key)

    def demonitor(self, ref: Reference) -> bool:
        if ref not in self.watched:
            return False
        key = self.watched.pop(ref)
        if key is None:
            del self.scope_watchers[ref]
        else:
            watchers = self.group_watchers[key]
            del watchers[ref]
            if not watchers:
                del self.group_watchers[key]
        return True

    # -- helpers ---------------------------------------------------------------------------

    def _view(self, key: bytes, term: Any) -> View:
        view = self.groups.get(key)
        if view is None:
            view = self.groups[key] = View(term)
        return view

    def _remove(self, key: bytes, pids: list[Pid], local: bool) -> None:
        view = self.groups[key]
        for pid in pids:
            view.members.remove(pid)
            if local:
                view.local.remove(pid)
        if not view.members:
            del self.groups[key]

    def _remote_add(self, known: PeerScope, key: bytes, term: Any, pids: list[Pid]) -> None:
        known.groups.setdefault(key, []).extend(pids)
        known.size += len(pids)
        view = self._view(key, term)
        view.members.extend(pids)
        self._notify(JOIN, key, view.term, pids)

    def _remote_remove(self, known: PeerScope, key: bytes, pids: list[Pid]) -> None:
        have = known.groups[key]
        for pid in pids:
            have.remove(pid)
        if not have:
            del known.groups[key]
        known.size -= len(pids)
        term = self.groups[key].term
        self._remove(key, pids, local=False)
        self._notify(LEAVE, key, term, pids)

    def _notify(self, action: Atom, key: bytes, term: Any, pids: list[Pid]) -> None:
        for ref, watcher in self.scope_watchers.items():
            self.effects.append(("send", watcher, (ref, action, term, list(pids))))
        for ref, watcher in self.group_watchers.get(key, {}).items():
            self.effects.append(("send", watcher, (ref, action, term, list(pids))))

    def _broadcast(self, message: tuple) -> None:
        for peer, known in self.peers.items():
            if known.synced:
                self.effects.append(("send", peer, message))


# -- checking what other scopes send -------------------------------------------------------------

def _pid_list(value: Any) -> list[Pid] | None:
    """`Pid | [Pid]` as pg sends it, or None if it is neither."""
    if type(value) is Pid:
        return [value]
    if type(value) is list and all(type(pid) is Pid for pid in value):
        return value
    return None


def _sync_groups(value: Any) -> list[tuple[Any, list[Pid]]] | None:
    if type(value) is not list:
        return None
    for entry in value:
        if type(entry) is not tuple or len(entry) != 2 or _pid_list(entry[1]) is None or type(entry[1]) is not list:
            return None
    return value


# -- the scope process ---------------------------------------------------------------------------

class Scope(Process):
    """The scope process, registered under the scope's name: it carries out what its state
    decides (sends without connecting, as pg's `[noconnect]`; monitors), discovers other
    scopes, and restarts itself after a crash (with fresh state, as OTP's would)."""

    def __init__(self, node: "Node", pid: Pid, name: Atom, rediscover: float | None,
                 restarts: list[float] | None = None) -> None:
        super().__init__(node, pid)
        self.state = ScopeState(pid, name)
        self.rediscover = rediscover
        self._monitored: dict[Pid, Reference] = {}   # members and other scopes
        self._flushing = False
        self._retries: dict[Atom, asyncio.TimerHandle] = {}
        self._restarts = restarts if restarts is not None else []

    @classmethod
    def start(cls, node: "Node", name: Atom, rediscover: float | None = 30.0,
              restarts: list[float] | None = None) -> "Scope":
        scope = cls(node, node.make_pid(), name, rediscover, restarts)
        node.add_process(scope, name)
        monitor_nodes(scope)
        for other in node.nodes():
            scope._nodeup(other)
        return scope

    def __repr__(self) -> str:
        return f"<pg scope {self.state.name.name} {self.pid!r}{'' if self.alive else ' dead'}>"

    # -- the API (see the module functions) ------------------------------------------------

    def join(self, group: Any, pids: Any) -> None:
        """`pg:join/3`: local processes join `group` (a process may join more than once)."""
        key = group_key(group)
        pids = self._local_pids(pids)
        if pids:  # pg would create an empty group: nothing to tell anyone
            self._run(self.state.join, group, key, pids)

    def leave(self, group: Any, pids: Any) -> bool:
        """`pg:leave/3`: one membership less for each; False (`not_joined`) if none was in."""
        key = group_key(group)
        return bool(self._run(self.state.leave, key, self._local_pids(pids)))

    def get_members(self, group: Any) -> list[Pid]:
        return self.state.members(group_key(group))

    def get_local_members(self, group: Any) -> list[Pid]:
        return self.state.local_members(group_key(group))

    def which_groups(self) -> list[Any]:
        return [view.term for view in self.state.groups.values()]

    def which_local_groups(self) -> list[Any]:
        return [view.term for view in self.state.groups.values() if view.local]

    def monitor_group(self, watcher: Process, group: Any) -> tuple[Reference, list[Pid]]:
        key = group_key(group)
        ref = self._watch(watcher)
        if not watcher.alive:  # its DOWN came already: nothing to keep (as pg, once it came)
            return ref, self.state.members(key)
        return ref, self.state.monitor_group(watcher.pid, ref, key)

    def monitor_scope(self, watcher: Process) -> tuple[Reference, dict[Any, list[Pid]]]:
        ref = self._watch(watcher)
        if not watcher.alive:
            return ref, {freeze(view.term): list(view.members) for view in self.state.groups.values()}
        return ref, self.state.monitor_scope(watcher.pid, ref)

    def demonitor_ref(self, watcher: Process, ref: Reference) -> bool:
        if not self.state.demonitor(ref):
            return False
        self.demonitor(ref)
        watcher._drop_messages(lambda m: type(m) is tuple and len(m) == 4 and m[0] == ref
                               and m[1] in (JOIN, LEAVE))
        return True

    def stop(self) -> None:
        self.exit(NORMAL)

    def _watch(self, watcher: Process) -> Reference:
        if not isinstance(watcher, Process) or watcher.node is not self.node:
            raise TypeError(f"a watcher must be a process of this node, not {watcher!r}")
        self._check_alive()
        return self.monitor(watcher.pid)  # the ref names the subscription, as pg's

    def _local_pids(self, pids: Any) -> list[Pid]:
        """Processes or pids of this node (pg's ensure_local: `{nolocal, Bad}` otherwise)."""
        items = [pids] if isinstance(pids, (Process, Pid)) else None
        if items is None and isinstance(pids, Iterable) and not isinstance(pids, (str, bytes, dict)):
            items = list(pids)
        if items is None:
            raise TypeError(f"expected a process, a pid or a list of them, not {pids!r}")
        out = []
        for item in items:
            pid = item.pid if isinstance(item, Process) else item
            if type(pid) is not Pid or pid.node is not self.node.name:
                raise ValueError(f"{{nolocal, {inspect(pid) if type(pid) is Pid else repr(pid)}}}: "
                                 "only processes of this node can join or leave")
            out.append(pid)
        return out

    def _check_alive(self) -> None:
        if not self.alive:
            raise NoProc(self.state.name)

    def _run(self, event: Any, *args: Any) -> Any:
        self._check_alive()
        try:
            result = event(*args)
            self._flush()
        except Exception as e:
            self._crash(e)
            raise
        return result

    # -- messages ---------------------------------------------------------------------------

    def _deliver(self, message: Any) -> None:
        if not self.alive:
            return
        try:
            try:
                self._handle(message)
            except TypeError:  # a group that is no term (group_key, before any change): not
                self._unexpected(message)  # a message a scope sends; dropped, never a crash
            self._flush()
        except Exception as e:
            self._crash(e)

    def _handle(self, message: Any) -> None:
        state = self.state
        if type(message) is not tuple or not message:
            return self._unexpected(message)
        tag, size = message[0], len(message)
        if tag is JOIN and size == 4 and type(message[1]) is Pid:
            pids = _pid_list(message[3])
            if pids is not None:
                return state.remote_join(message[1], message[2], pids)
        elif tag is LEAVE and size == 4 and type(message[1]) is Pid:
            pids = _pid_list(message[2])
            if pids is not None and type(message[3]) is list:
                return state.remote_leave(message[1], pids, message[3])
        elif tag is GEN_CAST and size == 2:
            request = message[1]
            if type(request) is tuple and len(request) == 3 and request[0] is SYNC and type(request[1]) is Pid:
                groups = _sync_groups(request[2])
                if groups is not None:
                    self._known(request[1])
                    return state.sync(request[1], groups)
        elif tag is DISCOVER and size in (2, 3) and type(message[1]) is Pid:
            peer = message[1]
            if peer.node is not self.node.name and self._connected(peer.node):
                self._known(peer)
                return state.discover(peer)
            return None
        elif tag is DOWN_TAG and size == 5:
            return self._down(message[1], message[3], message[4])
        elif tag is NODEUP and size == 2:
            return self._nodeup(message[1])
        elif tag is NODEDOWN and size == 2:
            timer = self._retries.pop(message[1], None)
            if timer is not None:
                timer.cancel()
            return None
        elif tag is GEN_CALL:
            # pg's API calls its own node's scope only; a remote call is not pg's (OTP's
            # scope would raise badarg): no answer, as from a process that ignores it
            log.warning("pg scope %s: ignored a call from %s", state.name.name, inspect(message[1])[:100])
            return None
        return self._unexpected(message)

    def _unexpected(self, message: Any) -> None:
        log.warning("pg scope %s: ignored a malformed or unknown message %s", self.state.name.name,
                    inspect(message)[:200])

    def _down(self, ref: Reference, pid: Any, reason: Any) -> None:
        if type(pid) is Pid and self._monitored.get(pid) == ref:
            del self._monitored[pid]
            if pid.node is self.node.name:
                self.state.member_down(pid)
            else:
                self.state.scope_down(pid)
                if reason is not NOCONNECTION:  # it restarts, perhaps: look for the next one
                    self._retry_later(pid.node, FIRST_RETRY)
        elif ref in self.state.watched:
            self.state.demonitor(ref)

    # -- carrying out what the state decided ------------------------------------------------

    def _flush(self) -> None:
        if self._flushing:  # an event raised while effects are carried out: its own effects
            return          # queue behind the pending ones, and are carried out in order
        self._flushing = True
        try:
            effects = self.state.effects
            while effects:
                kind, target, message = effects.popleft()
                if kind == "send":
                    if target.node is not self.node.name:
                        if self._connected(target.node):
                            self.send(target, message)  # else: pg's [noconnect], dropped
                    else:
                        try:  # a watcher: a send cannot fail, whatever its code does
                            self.send(target, message)
                        except Exception:
                            log.exception("pg scope %s: a watcher failed on a notification", self.state.name.name)
                elif kind == MONITOR:
                    self._monitor(target)
                else:
                    ref = self._monitored.pop(target, None)
                    if ref is not None:
                        self.demonitor(ref)
        finally:
            self._flushing = False

    def _monitor(self, pid: Pid) -> None:
        if pid.node is self.node.name:
            if pid in self.node.processes:
                self._monitored[pid] = self.monitor(pid)
            else:  # already gone: it leaves at once, as after pg's DOWN noproc
                self.state.member_down(pid)
        elif self._connected(pid.node):
            self._monitored[pid] = self.monitor(pid)
        else:
            self.state.scope_down(pid)

    def _connected(self, node: Atom) -> bool:
        peer = self.node.peers.get(node)
        return peer is not None and peer.conn is not None

    # -- discovering other scopes ------------------------------------------------------------

    def _nodeup(self, node: Atom) -> None:
        peer = self.node.peers.get(node)
        if peer is None or peer.conn is None or peer.caps is None or not peer.caps.spawn:
            return  # a C node or Jinterface: no scope there, and a stray message confuses it
        self._discover(node)
        self._retry_later(node, FIRST_RETRY)

    def _discover(self, node: Atom) -> None:
        self.send((self.state.name, node), (DISCOVER, self.pid))

    def _retry_later(self, node: Atom, delay: float) -> None:
        if self.rediscover is None or not self.alive:
            return
        timer = self._retries.pop(node, None)
        if timer is not None:
            timer.cancel()
        self._retries[node] = asyncio.get_running_loop().call_later(delay, self._retry, node, delay)

    def _retry(self, node: Atom, delay: float) -> None:
        self._retries.pop(node, None)
        if self.alive and self._connected(node) and not self.state.knows_node(node):
            self._discover(node)
            self._retry_later(node, min(delay * 2, self.rediscover or delay))

    def _known(self, peer: Pid) -> None:
        timer = self._retries.pop(peer.node, None)
        if timer is not None:
            timer.cancel()

    # -- crashes and exits ------------------------------------------------------------------

    def _crash(self, error: BaseException) -> None:
        log.error("pg scope %s crashed", self.state.name.name, exc_info=error)
        self.state.effects.clear()
        self.exit(exit_reason(error))

    def _terminate(self, reason: Any) -> None:
        if not self.alive:
            return
        for timer in self._retries.values():
            timer.cancel()
        self._retries.clear()
        super()._terminate(reason)
        if reason is NORMAL or reason is SHUTDOWN or (type(reason) is tuple and reason[:1] == (SHUTDOWN,)):
            return
        now = time.monotonic()
        recent = [t for t in self._restarts if now - t < RESTART_PERIOD] + [now]
        if len(recent) > RESTARTS:
            log.error("pg scope %s: %d crashes within %.0f s; not restarted", self.state.name.name,
                      len(recent), RESTART_PERIOD)
            return
        if self.node.whereis(self.state.name) is None:
            log.info("pg scope %s: restarting (its members are gone, as in OTP)", self.state.name.name)
            Scope.start(self.node, self.state.name, self.rediscover, recent)


# -- the module API, as pg's ---------------------------------------------------------------------

def _name(scope: str | Atom) -> Atom:
    if not isinstance(scope, (str, Atom)):
        raise TypeError(f"a scope is named by an atom, not {scope!r}")
    return module_atom(scope)


def start(node: "Node", scope: str | Atom = DEFAULT_SCOPE, *, rediscover: float | None = 30.0) -> Scope:
    """`pg:start/1`: run the scope `scope` on `node` (the one running already, if any).
    `rediscover`: while a connected node shows no scope of this name, ask it again, at
    intervals doubling from 1 s up to this many seconds (None: only at nodeup)."""
    name = _name(scope)
    running = node.whereis(name)
    if isinstance(running, Scope):
        return running
    if running is not None:
        raise ValueError(f"{inspect(name)} is registered to another process")
    return Scope.start(node, name, rediscover)


def scope_of(node: "Node", scope: str | Atom = DEFAULT_SCOPE) -> Scope | None:
    running = node.whereis(_name(scope))
    return running if isinstance(running, Scope) else None


def _running(node: "Node", scope: str | Atom) -> Scope:
    running = scope_of(node, scope)
    if running is None:
        raise NoProc(_name(scope))
    return running


def join(node: "Node", group: Any, pids: Any, *, scope: str | Atom = DEFAULT_SCOPE) -> None:
    """`pg:join(Scope, Group, PidOrPids)`: processes of this node join `group`."""
    _running(node, scope).join(group, pids)


def leave(node: "Node", group: Any, pids: Any, *, scope: str | Atom = DEFAULT_SCOPE) -> bool:
    """`pg:leave(Scope, Group, PidOrPids)`: True for `ok`, False for `not_joined`."""
    return _running(node, scope).leave(group, pids)


def get_members(node: "Node", group: Any, *, scope: str | Atom = DEFAULT_SCOPE) -> list[Pid]:
    """Every member of `group` this node knows, here and on other nodes ([] without the scope)."""
    running = scope_of(node, scope)
    return running.get_members(group) if running is not None else []


def get_local_members(node: "Node", group: Any, *, scope: str | Atom = DEFAULT_SCOPE) -> list[Pid]:
    running = scope_of(node, scope)
    return running.get_local_members(group) if running is not None else []


def which_groups(node: "Node", *, scope: str | Atom = DEFAULT_SCOPE) -> list[Any]:
    running = scope_of(node, scope)
    return running.which_groups() if running is not None else []


def which_local_groups(node: "Node", *, scope: str | Atom = DEFAULT_SCOPE) -> list[Any]:
    running = scope_of(node, scope)
    return running.which_local_groups() if running is not None else []


def monitor(proc: Process, group: Any, *, scope: str | Atom = DEFAULT_SCOPE) -> tuple[Reference, list[Pid]]:
    """`pg:monitor/2` (OTP 25.1+) for `proc`: the members now, and from now on `(ref, :join,
    group, pids)` and `(ref, :leave, group, pids)` in its mailbox, until `demonitor` or its exit."""
    return _running(proc.node, scope).monitor_group(proc, group)


def monitor_scope(proc: Process, *, scope: str | Atom = DEFAULT_SCOPE) -> tuple[Reference, dict[Any, list[Pid]]]:
    """`pg:monitor_scope/1`: every group (as a hashable term) with its members, and the same
    notifications as `monitor` for all of them."""
    return _running(proc.node, scope).monitor_scope(proc)


def demonitor(proc: Process, ref: Reference, *, scope: str | Atom = DEFAULT_SCOPE) -> bool:
    """`pg:demonitor/2`: stop, and drop the notifications already in `proc`'s mailbox."""
    return _running(proc.node, scope).demonitor_ref(proc, ref)
