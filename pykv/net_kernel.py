"""The node's `net_kernel` process, as far as peers talk to it: `Node.ping/1` is a
`$gen_call` of `{is_auth, Node}` answered `yes` (wire-notes, "Node.ping").

It also serves `monitor_nodes/2` to local processes, as OTP's net_kernel does: a subscriber
gets `{nodeup, Node}` once a connection is up and `{nodedown, Node}` once it is gone. Every
connection counts (pykv's are all hidden), as `monitor_nodes(true, [{node_type, all}])`
would report them, in the two-element shape of `monitor_nodes(true)`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .atoms import DOWN_TAG, GEN_CALL
from .process import Process
from .term import Atom, Pid, Reference, inspect

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("pykv.node")

IS_AUTH = Atom("is_auth")
YES = Atom("yes")
NODEUP, NODEDOWN = Atom("nodeup"), Atom("nodedown")


class NetKernel(Process):
    @classmethod
    def start(cls, node: "Node") -> "NetKernel":
        proc = cls(node, node.make_pid())
        node.add_process(proc, "net_kernel")
        node.node_listeners.append(proc._node_event)
        return proc

    def __init__(self, node: "Node", pid: Pid) -> None:
        super().__init__(node, pid)
        # monitor_nodes subscribers: pid -> the monitor that drops them when they exit
        self.subscribers: dict[Pid, Reference] = {}

    def subscribe(self, proc: Process, flag: bool) -> None:
        if flag and proc.pid not in self.subscribers and proc.alive:
            self.subscribers[proc.pid] = self.monitor(proc.pid)
        elif not flag and proc.pid in self.subscribers:
            self.demonitor(self.subscribers.pop(proc.pid))

    def _node_event(self, node: Atom, up: bool) -> None:
        message = (NODEUP if up else NODEDOWN, node)
        for pid in list(self.subscribers):
            self.send(pid, message)

    def _deliver(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 3 and message[0] is GEN_CALL:
            _, from_, request = message
            if type(request) is tuple and len(request) == 2 and request[0] is IS_AUTH:
                self.node.reply(from_, YES, self.pid)
                return
        if type(message) is tuple and len(message) == 5 and message[0] is DOWN_TAG:
            pid = message[3]
            if self.subscribers.get(pid) == message[1]:
                del self.subscribers[pid]
            return
        log.debug("net_kernel: ignored %s", inspect(message)[:200])


def monitor_nodes(proc: Process, flag: bool = True) -> None:
    """`net_kernel:monitor_nodes(Flag)` for the local process `proc`: from now on (until
    `flag` is False or `proc` exits) it receives `(:nodeup, node)` and `(:nodedown, node)`."""
    kernel = proc.node.whereis("net_kernel")
    if not isinstance(kernel, NetKernel):
        raise RuntimeError("the node is not started")
    kernel.subscribe(proc, flag)
