"""KV.Router: send a request to the node that owns a bucket, as the seed's KV.Router does.

The local node applies the (exported) function; another node gets
`Task.Supervisor.async({KV.RouterTasks, node}, KV.Router, :route, [...])`, awaited.
"""

from __future__ import annotations

from typing import Any

from ..otp.task_supervisor import async_
from ..process import current_process
from ..term import Atom, inspect
from .table import Route

ROUTER = Atom("Elixir.KV.Router")
ROUTE = Atom("route")
ROUTER_TASKS = Atom("Elixir.KV.RouterTasks")
RANGE = Atom("Elixir.Range")


class Router:
    def __init__(self, table: list[Route], timeout: float = 5.0) -> None:
        self.table = table
        self.timeout = timeout

    def entry(self, bucket: Any) -> Route:
        name = bucket.encode() if isinstance(bucket, str) else bucket
        if not isinstance(name, bytes):
            raise ValueError(f"errors were found at the given arguments:\n\n  * 1st argument: not a binary ({inspect(bucket)})")
        if not name:
            raise ValueError("errors were found at the given arguments:\n\n  * 1st argument: a zero-sized binary is not allowed")
        first = name[0]
        for route in self.table:
            if route.first <= first <= route.last:
                return route
        # the seed's message, so a BEAM caller's `assert_raise RuntimeError, ~r/could not find entry/` holds
        raise RuntimeError(f"could not find entry for {inspect(name)} in table "
                           f"[{', '.join(repr(r) for r in self.table)}]")

    async def route(self, bucket: Any, module: Any, function: Any, args: Any) -> Any:
        """Exported as KV.Router.route/4."""
        node = self.entry(bucket).node
        proc = current_process()
        if node is proc.node.name:
            return await proc.node.exports.apply(module, function, args)
        task = await async_(proc.node, (ROUTER_TASKS, node), ROUTER, ROUTE, [bucket, module, function, args])
        return await task.await_(self.timeout)

    def table_term(self) -> list[Any]:
        """Exported as KV.Router.table/0: `[{first..last, node}]` with Elixir Range structs."""
        return [({Atom("__struct__"): RANGE, Atom("first"): r.first, Atom("last"): r.last, Atom("step"): 1}, r.node)
                for r in self.table]
