"""KV.Bucket: one process per bucket.

Contract (shared with elixir_peer's KV.Bucket): calls `{:get, key}` -> value | nil,
`{:put, key, value}` -> :ok, `{:delete, key}` -> old value | nil; cast `{:subscribe, pid}`,
after which the subscriber receives `{:put, key, value}` and `{:delete, key}` on every change.
"""

from __future__ import annotations

from typing import Any

from ..atoms import DOWN_TAG, OK
from ..otp.gen_server import GenServer, call, cast
from ..process import current_process
from ..term import Atom, Pid, freeze, inspect

GET, PUT, DELETE, SUBSCRIBE = Atom("get"), Atom("put"), Atom("delete"), Atom("subscribe")


class Bucket(GenServer):
    beam_module = "KV.Bucket"
    restart = "temporary"  # as `use GenServer, restart: :temporary`: the registry forgets it

    def init(self) -> None:
        self.data: dict[Any, Any] = {}
        self.subscribers: dict[Pid, Any] = {}

    def handle_call(self, request: Any, from_: Any) -> Any:
        if type(request) is tuple:
            op = request[0]
            # any term is a key, as in an Elixir map: lists and maps are frozen to be hashable
            if op is GET and len(request) == 2:
                return self.data.get(freeze(request[1]))
            if op is PUT and len(request) == 3:
                self.data[freeze(request[1])] = request[2]
                self._notify(request)
                return OK
            if op is DELETE and len(request) == 2:
                old = self.data.pop(freeze(request[1]), None)
                self._notify(request)
                return old
        return super().handle_call(request, from_)

    def handle_cast(self, request: Any) -> None:
        # other casts are ignored, as elixir_peer's bucket does
        if type(request) is tuple and len(request) == 2 and request[0] is SUBSCRIBE and type(request[1]) is Pid:
            pid = request[1]
            if pid not in self.subscribers:
                self.subscribers[pid] = self.monitor(pid)

    def handle_info(self, message: Any) -> None:
        # other messages are ignored, as elixir_peer's bucket does
        if type(message) is tuple and len(message) == 5 and message[0] is DOWN_TAG:
            self.subscribers.pop(message[3], None)

    def _notify(self, event: tuple[Any, ...]) -> None:
        for pid in self.subscribers:
            self.send(pid, event)

    def __repr__(self) -> str:
        return f"<Bucket {self.pid!r} {len(self.data)} keys>"


# Exported as KV.Bucket.get/2, put/3, delete/2, subscribe/2: they work on any bucket pid,
# Python or BEAM, local or remote.

async def get(bucket: Any, key: Any) -> Any:
    return await call(current_process(), bucket, (GET, key))


async def put(bucket: Any, key: Any, value: Any) -> Any:
    return await call(current_process(), bucket, (PUT, key, value))


async def delete(bucket: Any, key: Any) -> Any:
    return await call(current_process(), bucket, (DELETE, key))


async def subscribe(bucket: Any, pid: Any) -> Any:
    if type(pid) is not Pid:
        raise ValueError(f"subscribe needs a pid, got {inspect(pid)}")
    proc = current_process()
    cast(proc, bucket, (SUBSCRIBE, pid))
    # a call after the cast is handled after it: on return the subscription is in place
    await call(proc, bucket, (GET, None))
    return OK


def start_link(opts: Any = ()) -> Any:
    """Exported as KV.Bucket.start_link/1, so that a BEAM node can start a bucket under the
    Python KV.BucketSupervisor (`DynamicSupervisor.start_child({KV.BucketSupervisor, foo},
    KV.Bucket)`): the bucket is linked to the calling process, its supervisor."""
    name = None
    if type(opts) is list:
        for item in opts:
            if type(item) is tuple and len(item) == 2 and item[0] is Atom("name") and type(item[1]) is Atom:
                name = item[1]
    parent = current_process()
    bucket = Bucket.start(parent.node, name=name, link=parent)
    return (OK, bucket.pid)
