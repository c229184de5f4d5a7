"""KV.Registry: bucket names to bucket pids; a bucket that dies is forgotten.

Calls: `{:create, name}` -> bucket pid (idempotent), `{:lookup, name}` -> `{:ok, pid}` | `:error`.
"""

from __future__ import annotations

from typing import Any

from ..atoms import DOWN_TAG, ERROR, OK
from ..errors import NoProc
from ..exports import module_atom
from ..otp.dynamic_supervisor import DynamicSupervisor
from ..otp.gen_server import GenServer, call
from ..process import current_process
from ..term import Atom, Pid, Reference, freeze
from .bucket import Bucket

CREATE, LOOKUP = Atom("create"), Atom("lookup")
BUCKET = Bucket.child_spec()  # the same spec for every bucket: temporary, as the guide's


class Registry(GenServer):
    """Buckets are started under `bucket_supervisor` (a DynamicSupervisor found by name each
    time, as elixir_peer's registry calls it by name), or unsupervised when it is None."""

    beam_module = "KV.Registry"

    def init(self, bucket_supervisor: str | Atom | None = "KV.BucketSupervisor") -> None:
        self.names: dict[Any, Pid] = {}
        self.refs: dict[Reference, Any] = {}
        self.bucket_supervisor = module_atom(bucket_supervisor) if bucket_supervisor is not None else None

    def lookup(self, name: Any) -> Any:
        pid = self.names.get(freeze(name))
        return (OK, pid) if pid is not None else ERROR

    def create(self, name: Any) -> Pid:
        name = freeze(name)  # any term names a bucket, a charlist too
        pid = self.names.get(name)
        if pid is None:
            pid = self.names[name] = self._start_bucket()
            self.refs[self.monitor(pid)] = name
        return pid

    def _start_bucket(self) -> Pid:
        if self.bucket_supervisor is None:
            return Bucket.start(self.node).pid
        sup = self.node.whereis(self.bucket_supervisor)
        if not isinstance(sup, DynamicSupervisor):
            raise NoProc(self.bucket_supervisor)  # as DynamicSupervisor.start_child to nobody
        pid = sup.start_child_nowait(BUCKET)
        assert pid is not None
        return pid

    def handle_call(self, request: Any, from_: Any) -> Any:
        if type(request) is tuple and len(request) == 2:
            if request[0] is CREATE:
                return self.create(request[1])
            if request[0] is LOOKUP:
                return self.lookup(request[1])
        return super().handle_call(request, from_)

    def handle_info(self, message: Any) -> None:
        if type(message) is tuple and len(message) == 5 and message[0] is DOWN_TAG:
            name = self.refs.pop(message[1], None)
            if name is not None and self.names.get(name) == message[3]:
                del self.names[name]


# Exported as KV.Registry.create/2 and lookup/2, as the guide's API: `server` is the
# registry's name (or pid, or {name, node}).

async def create(server: Any, name: Any) -> Any:
    local = _local(server)
    if local is not None:  # no need for a message round trip to a process in this node
        return local.create(name)
    return await call(current_process(), server, (CREATE, name))


async def lookup(server: Any, name: Any) -> Any:
    local = _local(server)
    if local is not None:
        return local.lookup(name)
    return await call(current_process(), server, (LOOKUP, name))


def _local(server: Any) -> Registry | None:
    node = current_process().node
    proc = node.whereis(server) if isinstance(server, Atom) else node.processes.get(server) if isinstance(server, Pid) else None
    return proc if isinstance(proc, Registry) and proc.alive else None
