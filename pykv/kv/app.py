"""Starting the KV app on a node: what `python -m pykv` runs."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from ..otp.task_supervisor import TaskSupervisor
from . import bucket, registry
from .registry import Registry
from .router import Router
from .server import serve
from .table import Route, everything_to

if TYPE_CHECKING:
    from ..node import Node


async def start_kv(node: "Node", table: list[Route] | None = None, *, port: int | None = 4040,
                   route_timeout: float = 5.0) -> tuple[Router, asyncio.base_events.Server | None]:
    """Register KV.Registry and KV.RouterTasks, export the KV API, start the line server
    (unless port is None) on the node's listen_host. Returns the router and the server."""
    router = Router(table or everything_to(node.name), route_timeout)
    Registry.start(node, name="Elixir.KV.Registry")
    TaskSupervisor.start(node, name="KV.RouterTasks")
    export = node.exports.add
    export("KV.Router", "route", router.route)
    export("KV.Router", "table", router.table_term, blocking=False)
    export("KV.Registry", "create", registry.create)
    export("KV.Registry", "lookup", registry.lookup)
    export("KV.Bucket", "get", bucket.get)
    export("KV.Bucket", "put", bucket.put)
    export("KV.Bucket", "delete", bucket.delete)
    export("KV.Bucket", "subscribe", bucket.subscribe)
    server = await serve(node, router, port, node.listen_host) if port is not None else None
    return router, server
