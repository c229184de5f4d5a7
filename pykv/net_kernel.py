"""The node's `net_kernel` process, as far as peers talk to it: `Node.ping/1` is a
`$gen_call` of `{is_auth, Node}` answered `yes` (wire-notes, "Node.ping")."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from .atoms import GEN_CALL
from .process import Process
from .term import Atom, inspect

if TYPE_CHECKING:
    from .node import Node

log = logging.getLogger("pykv.node")

IS_AUTH = Atom("is_auth")
YES = Atom("yes")


class NetKernel(Process):
    @classmethod
    def start(cls, node: "Node") -> "NetKernel":
        proc = cls(node, node.make_pid())
        node.add_process(proc, "net_kernel")
        return proc

    def _deliver(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 3 and message[0] is GEN_CALL:
            _, from_, request = message
            if type(request) is tuple and len(request) == 2 and request[0] is IS_AUTH:
                self.node.reply(from_, YES, self.pid)
                return
        log.debug("net_kernel: ignored %s", inspect(message)[:200])
