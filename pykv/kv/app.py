"""Starting the KV app on a node: what `python -m pykv` runs. The guide's supervision tree:

    KV.Supervisor (one_for_all)
    ├── KV.BucketSupervisor (DynamicSupervisor; buckets are temporary children)
    ├── KV.Registry
    └── KV.RouterTasks (Task.Supervisor)

as elixir_peer's KV.Supervisor. The line server and the router find the registry and the
task supervisor by name on every request, so a restart is invisible to them once it is done.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from typing import TYPE_CHECKING, Any, ClassVar

from ..atoms import DOWN_TAG, SHUTDOWN
from ..otp.dynamic_supervisor import DynamicSupervisor
from ..otp.supervisor import Supervisor
from ..otp.task_supervisor import TaskSupervisor
from ..process import Process
from ..term import inspect
from . import bucket, registry
from .registry import Registry
from .router import Router
from .server import serve
from .table import Route, everything_to

if TYPE_CHECKING:
    from ..node import Node

log = logging.getLogger("pykv.kv")

SUPERVISOR_NAME = "KV.Supervisor"


class KVSupervisor(Supervisor):
    """elixir_peer's KV.Supervisor: the registry's names are only right while its buckets
    live, so the three restart together (one_for_all)."""

    beam_module: ClassVar[str] = "KV.Supervisor"

    def init(self) -> None:  # type: ignore[override]
        super().init([
            DynamicSupervisor.child_spec(name="KV.BucketSupervisor", strategy="one_for_one"),
            Registry.child_spec(name="KV.Registry"),
            TaskSupervisor.child_spec(name="KV.RouterTasks"),
        ], strategy="one_for_all")


class ApplicationMaster(Process):
    """Watches the app's top supervisor and says when the app is gone, as the BEAM's
    application master does for a temporary application (the node keeps running)."""

    app = "kv"
    ref: Any = None
    supervisor: Any = None
    stopping = False

    def _deliver(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 5 and message[0] is DOWN_TAG and message[1] == self.ref:
            reason = message[4]
            if reason is SHUTDOWN and self.stopping:
                log.info("Application %s exited: :stopped", self.app)
            elif reason is SHUTDOWN and not self.supervisor.gave_up:  # the node is stopping
                log.info("Application %s exited: :shutdown", self.app)
            else:
                log.error("Application %s exited: %s%s", self.app, inspect(reason)[:500],
                          " (too many restarts: the node keeps running without it)" if self.supervisor.gave_up else "")
            self.exit()


async def start_kv(node: "Node", table: list[Route] | None = None, *, port: int | None = 4040,
                   route_timeout: float = 5.0, tls: "ssl.SSLContext | None" = None,
                   ) -> tuple[Router, asyncio.base_events.Server | None]:
    """Start the KV tree (KV.Supervisor) and export the KV API, then the line server (unless
    port is None; over TLS with `tls`) on the node's listen_host. Returns the router and the
    server. `stop_kv` stops the tree."""
    router = Router(table or everything_to(node.name), route_timeout)
    supervisor = await KVSupervisor.start_link(node, name=SUPERVISOR_NAME)
    master = ApplicationMaster(node, node.make_pid())
    node.add_process(master)
    master.ref = master.monitor(supervisor.pid)
    master.supervisor = supervisor
    export = node.exports.add
    export("KV.Router", "route", router.route)
    export("KV.Router", "table", router.table_term, blocking=False)
    export("KV.Registry", "create", registry.create)
    export("KV.Registry", "lookup", registry.lookup)
    export("KV.Bucket", "get", bucket.get)
    export("KV.Bucket", "put", bucket.put)
    export("KV.Bucket", "delete", bucket.delete)
    export("KV.Bucket", "subscribe", bucket.subscribe)
    export("KV.Bucket", "start_link", bucket.start_link, blocking=False)
    server = await serve(node, router, port, node.listen_host, tls=tls) if port is not None else None
    return router, server


async def stop_kv(node: "Node", timeout: float | None = None) -> None:
    """Stop the KV tree as an application stop does: KV.Supervisor terminates its children in
    reverse start order (KV.RouterTasks, KV.Registry, KV.BucketSupervisor and its buckets),
    each within its shutdown time, then exits `:shutdown`. Raises Timeout after `timeout` s."""
    sup = node.whereis(SUPERVISOR_NAME)
    if sup is None:
        return
    for proc in list(node.processes.values()):
        if isinstance(proc, ApplicationMaster):
            proc.stopping = True
    await sup.stop(SHUTDOWN, timeout)  # type: ignore[attr-defined]
