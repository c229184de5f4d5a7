"""`global_group`, as far as a visible pykv node needs it (OTP 25-29 lib/kernel/src/global_group.erl).

Without groups (the kernel's `global_groups` unset) nothing passes between global_group
processes. With groups configured, a BEAM node that sees a nodeup from a member of its own
group asks that node `global_group:get_own_nodes()` (an erpc) and lets its global sync with
the node only if the answer is its own group's node list; a node outside its group is
disconnected at once. This module answers that erpc from the Python node's own
configuration (`own_nodes`: the nodes of its group, itself included; None for no groups)
and does the same check towards BEAM nodes for the Python node's global
(otp/global_server.py): `member`, `participant`, `check(node)`.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Iterable

from ..process import Process
from ..term import Atom

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.global")


class GlobalGroups:
    def __init__(self, node: "Node", own_nodes: Iterable[str | Atom] | None) -> None:
        self.node = node
        if own_nodes is None:
            self.own: list[Atom] | None = None
        else:
            own = {Atom(n) if isinstance(n, str) else n for n in own_nodes} | {node.name}
            self.own = sorted(own, key=lambda a: a.name)
        node.exports.add("global_group", "get_own_nodes", self.get_own_nodes, 0, blocking=False)

    def get_own_nodes(self) -> list[Atom]:
        """`global_group:get_own_nodes/0`: the sorted nodes of our group ([] without groups)."""
        return list(self.own) if self.own is not None else []

    @property
    def configured(self) -> bool:
        return self.own is not None

    def member(self, node: Atom) -> bool:
        return self.own is not None and node in self.own

    def participant(self, node: Atom) -> bool:
        return self.own is None or node in self.own

    async def check(self, proc: Process, node: Atom) -> bool:
        """The nodeup check a BEAM global_group does: the node's own group is ours."""
        from . import rpc
        try:
            # bounded: a node that does not answer within a tick time is as good as down
            theirs = await rpc.call(proc, node, "global_group", "get_own_nodes", [],
                                    timeout=self.node.ticktime)
        except Exception as e:
            log.warning("global_group: %s did not say its group (%s): disconnecting it", node.name, e)
            return False
        if type(theirs) is list and sorted(theirs, key=lambda a: getattr(a, "name", "")) == self.own:
            return True
        log.warning("global_group: %s has another group configuration: disconnecting it", node.name)
        return False
