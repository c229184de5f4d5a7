"""One other node, while connected or connecting: its connection, what its flags allow, and
the links and monitors that cross to it.

Every signal to a peer goes through `Peer.signal(write, *args)`: `write` is a Capabilities
method (or a function of a Capabilities, for the OTP layers' own choices) and is asked once
the peer's flags are known, at once when connected, else when the connection comes up. So
what a peer gets depends only on what it negotiated (capabilities.py), whenever it was sent.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any, Callable

from ..errors import exit_reason
from ..term import Atom, Pid, Reference, TermError, encode
from .capabilities import OURS, Capabilities, Signal

if TYPE_CHECKING:
    from .connection import Connection
    from ..process import Process

log = logging.getLogger("pykv.node")

Writer = Callable[..., "Signal | None"]


class Peer:
    """Everything this node knows about one other node while connected (or connecting)."""

    def __init__(self, name: Atom) -> None:
        self.name = name
        self.conn: Connection | None = None
        self.attempt: Connection | None = None     # the handshake that may become `conn`
        self.caps: Capabilities | None = None      # known once connected
        # signals sent while connecting, written once the connection (and its flags) is up
        self.pending: list[tuple[Writer, tuple[Any, ...]]] = []
        self.up: asyncio.Future[None] = asyncio.get_event_loop().create_future()
        self.links: set[tuple[Pid, Pid]] = set()   # (local, remote)
        self.unlinking: dict[tuple[Pid, Pid], int] = {}
        self.monitors_out: dict[Reference, Process] = {}  # local watchers of remote targets
        self.monitors_in: dict[Reference, Pid] = {}       # local targets of remote watchers
        # spawn requests whose SPAWN_REPLY nobody awaits (erpc casts, calls that timed out):
        # the reply is dropped, as the BEAM's runtime does for `{reply, no}`
        self.spawn_ignored: set[Reference] = set()
        self.awaiting_theirs = False  # our dial lost a simultaneous connect: theirs is coming
        self.dialling = False         # a _connect is under way (epmd, TCP, handshake)

    def __repr__(self) -> str:
        return f"<Peer {self.name.name} {'up' if self.conn is not None else 'connecting'}>"

    # -- writing signals ---------------------------------------------------------------------

    def signal(self, write: Writer, *args: Any) -> None:
        """Send what `write(capabilities, *args)` returns (nothing if None). A term that cannot
        be encoded raises TermError here, in the sender, connected or not."""
        conn = self.conn
        if conn is not None:
            out = write(self.caps, *args)
            if out is not None:
                conn.send(*out)
            return
        out = write(OURS, *args)
        if out is not None:
            for term in out:
                encode(term)
        self.pending.append((write, args))

    def connected(self, conn: "Connection", flags: int) -> None:
        """The connection is up with these flags in force: write what waited for it."""
        self.conn = conn
        self.caps = Capabilities(flags)
        pending, self.pending = self.pending, []
        for write, args in pending:
            out = write(self.caps, *args)
            if out is not None:
                try:
                    conn.send(*out)
                except TermError as e:  # checked when queued: not expected, and not fatal to the rest
                    log.error("a signal queued for %s cannot be encoded (%s): dropped", self.name.name, e)

    def message(self, sender: Pid, to: Pid | Atom | Reference, msg: Any, priority: bool = False) -> None:
        self.signal(Capabilities.message, sender, to, msg, priority)

    def link(self, local: Pid, remote: Pid) -> None:
        self.signal(Capabilities.link, local, remote)

    def unlink(self, uid: int, local: Pid, remote: Pid) -> None:
        self.signal(Capabilities.unlink, uid, local, remote)

    def unlink_ack(self, uid: int, local: Pid, remote: Pid) -> None:
        self.signal(Capabilities.unlink_ack, uid, local, remote)

    def monitor(self, watcher: Pid, target: Pid | Atom, ref: Reference) -> None:
        self.signal(Capabilities.monitor, watcher, target, ref)

    def demonitor(self, watcher: Pid, target: Pid | Atom, ref: Reference) -> None:
        self.signal(Capabilities.demonitor, watcher, target, ref)

    def spawn_request(self, req_id: Reference, sender: Pid, leader: Pid, mfa: tuple, opts: list,
                      args: list) -> None:
        self.signal(Capabilities.spawn_request, req_id, sender, leader, mfa, opts, args)

    def spawn_reply(self, req_id: Reference, to: Pid, flags: int, result: Any) -> None:
        self.signal(Capabilities.spawn_reply, req_id, to, flags, result)

    # Exit and DOWN signals must not be lost, nor the connection, for a Python reason that is
    # no Erlang term: it becomes an ArgumentError reason.

    def link_exit(self, sender: Pid, to: Pid, reason: Any) -> None:
        self._with_reason(Capabilities.link_exit, (sender, to), reason)

    def exit2(self, sender: Pid, to: Pid | Reference, reason: Any, priority: bool = False) -> None:
        self._with_reason(Capabilities.exit2, (sender, to), reason, priority)

    def monitor_exit(self, subject: Pid | Atom, watcher: Pid, ref: Reference, reason: Any) -> None:
        self._with_reason(Capabilities.monitor_exit, (subject, watcher, ref), reason)

    def _with_reason(self, write: Writer, head: tuple[Any, ...], reason: Any, *tail: Any) -> None:
        try:
            self.signal(write, *head, reason, *tail)
        except TermError as e:
            log.error("exit reason %r is not an Erlang term (%s): sending an ArgumentError instead", reason, e)
            self.signal(write, *head, exit_reason(TypeError(f"exit reason is not an Erlang term: {e}")), *tail)
