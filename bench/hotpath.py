"""`python -m bench.hotpath`: foo's own CPU cost per request, without the network.

The cluster benchmark (`python -m bench`) measures round trips, where wake-ups and a noisy
machine weigh as much as pykv's code. This one feeds the frames a BEAM client sends (their
shapes as observed on the wire) straight into a started node's connection, whose transport
only collects what the node writes back, and reports µs of CPU per request: the figure that
profiling work on the hot path should move.

    python -m bench.hotpath                 # erpc, call, task, create and send, N requests each
    python -m bench.hotpath --profile task  # the same under cProfile, top functions
    python -m bench.hotpath --framing pass-through   # frames as to erl_call (no header)
    python -m bench.hotpath --framing atom-cache     # requests with atom cache refs
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import time
from typing import Any, Callable

from pykv.dist import control as C
from pykv.dist import flags as F
from pykv.dist.connection import Connection
from pykv.dist.framing import NO_PAYLOAD, Framing
from pykv.dist.handshake import Role
from pykv.kv import start_kv
from pykv.loop import loop_factory
from pykv.node import Node, Peer
from pykv.term import Atom, ImproperList, Pid, Reference

from .atom_cache_frames import AtomCacheFrames

ALIAS = Atom("alias")
CLIENT = Atom("client@bench")
# The flags in force between the client and foo; they choose the frames' form (framing.py).
FRAMINGS = {
    "header": F.OURS,                                         # a BEAM peer: 131, 68 headers
    "pass-through": F.OURS & ~(F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE),  # 112 frames
    "atom-cache": F.OURS | F.DIST_HDR_ATOM_CACHE,             # requests with atom cache refs
}
flags_in_force = FRAMINGS["header"]
client_framing = Framing(flags_in_force)
atom_cache_frames: AtomCacheFrames | None = None


def encode_frame(control: Any, payload: Any = NO_PAYLOAD) -> bytes:
    """A frame the client sends, in the framing in force."""
    if atom_cache_frames is not None:
        return atom_cache_frames.message(control, payload)
    return bytes(client_framing.message(control, payload))  # type: ignore[arg-type]


class CollectingTransport:
    """Stands in for the socket: keeps the frames the node writes."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(bytes(data))

    def is_closing(self) -> bool:
        return False

    def can_write_eof(self) -> bool:
        return False

    def close(self) -> None:
        pass

    abort = close

    def pause_reading(self) -> None:
        pass

    resume_reading = pause_reading

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default

    def frames(self) -> list[tuple[Any, Any]]:
        """The frames written so far, decoded, and forget them."""
        found = []
        decode_frame = client_framing.decode
        for chunk in self.out:
            pos = 0
            while pos < len(chunk):
                length = int.from_bytes(chunk[pos:pos + 4], "big")
                if length:
                    found.append(decode_frame(memoryview(chunk)[pos + 4:pos + 4 + length]))
                pos += 4 + length
        self.out.clear()
        return found


def feed(conn: Connection, data: bytes) -> None:
    """`data` into the connection as the event loop gives it (asyncio.BufferedProtocol): copied
    into the memory get_buffer offers, as the kernel's recv would."""
    view, pos = memoryview(data), 0
    while pos < len(view):
        buf = conn.get_buffer(-1)
        n = min(len(buf), len(view) - pos)
        buf[:n] = view[pos:pos + n]
        conn.buffer_updated(n)
        pos += n


def pid(n: int) -> Pid:
    return Pid(CLIENT, n, 0, 1)


def ref(n: int) -> Reference:
    return Reference(CLIENT, 1, (n, 7, 9))


async def attach(node: Node) -> tuple[Connection, CollectingTransport]:
    """A connection from CLIENT that has passed its handshake."""
    conn = Connection(node, Role.ACCEPTOR)
    transport = CollectingTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.up = True
    conn.flags = flags_in_force
    peer = node.peers[CLIENT] = Peer(CLIENT)
    peer.connected(conn, node.flags)
    conn.peer = peer
    return conn, transport


def erpc_request() -> list[bytes]:
    """`:erpc.call(foo, :erlang, :node, [])`: one SPAWN_REQUEST (wire-notes, erpc)."""
    caller, req = pid(102), ref(41035)
    control = (C.SPAWN_REQUEST, req, caller, pid(71),
               (Atom("erpc"), Atom("execute_call"), 4), [Atom("monitor")])
    return [encode_frame(control, [ref(41034), Atom("erlang"), Atom("node"), []])]


async def run_create(conn: Connection, transport: CollectingTransport, n: int) -> None:
    """`:erpc.call(foo, KV.Registry, :create, [KV.Registry, name])` with a new name each
    time: a bucket process per request, as bench section 8 creates 100,000 (the frame is
    encoded in the loop: about 2 µs of the figure)."""
    caller, req = pid(102), ref(41035)
    registry = Atom("Elixir.KV.Registry")
    control = (C.SPAWN_REQUEST, req, caller, pid(71), (Atom("erpc"), Atom("execute_call"), 4),
               [Atom("monitor")])
    for i in range(n):
        feed(conn, encode_frame(control, [ref(i), registry, Atom("create"), [registry, b"b%d" % i]]))
        await asyncio.sleep(0)
        await asyncio.sleep(0)
        transport.out.clear()


def call_request(node: Node) -> list[bytes]:
    """`GenServer.call({KV.Registry, foo}, {:lookup, "nope"})`: MONITOR, then REG_SEND."""
    caller, mref = pid(102), ref(5000)
    name = Atom("Elixir.KV.Registry")
    return [encode_frame((C.MONITOR_P, caller, name, mref)),
            encode_frame((C.REG_SEND, caller, Atom(""), name),
                         (Atom("$gen_call"), (caller, ImproperList([ALIAS], mref)),
                          (Atom("lookup"), b"nope")))]


async def run_task(conn: Connection, transport: CollectingTransport, n: int) -> None:
    """`Task.Supervisor.async({KV.RouterTasks, foo}, Kernel, :node, []) |> Task.await()`,
    the frames in the order a BEAM client sends them (start_task call, then demonitor,
    link, monitor and the owner's go-ahead to the task)."""
    caller, mref, tref = pid(102), ref(23319), ref(23320)
    sup = Atom("Elixir.KV.RouterTasks")
    start = [encode_frame((C.MONITOR_P, caller, sup, mref)),
             encode_frame((C.REG_SEND, caller, Atom(""), sup),
                          (Atom("$gen_call"), (caller, ImproperList([ALIAS], mref)),
                           (Atom("start_task"), [(CLIENT, caller, caller), Atom("monitor")],
                            Atom("temporary"), None)))]
    for _ in range(n):
        for frame in start:
            feed(conn, frame)
        await asyncio.sleep(0)
        reply = next(p for c, p in transport.frames() if c[0] in (C.ALIAS_SEND, C.ALTACT_SIG_SEND))
        task = reply[1][1]
        feed(conn, b"".join([
            encode_frame((C.DEMONITOR_P, caller, sup, mref)),
            encode_frame((C.LINK, caller, task)),
            encode_frame((C.MONITOR_P, caller, task, tref)),
            encode_frame((C.SEND_SENDER, caller, task),
                         (caller, tref, tref, [caller], (Atom("Elixir.Kernel"), Atom("node"), []))),
        ]))
        await asyncio.sleep(0)
        transport.out.clear()


async def run_send(conn: Connection, transport: CollectingTransport, n: int) -> None:
    """`send({KV.Registry, foo}, {:bench_message, i, "some payload"})` in a stream: REG_SEND
    frames, 100 to a read as they come off a busy socket (the registry ignores them)."""
    caller, name = pid(102), Atom("Elixir.KV.Registry")
    tag = Atom("bench_message")
    chunk = b"".join(encode_frame((C.REG_SEND, caller, Atom(""), name), (tag, i, b"some payload"))
                     for i in range(100))
    for _ in range(n // 100):
        feed(conn, chunk)
        await asyncio.sleep(0)
        transport.out.clear()


async def repeat(conn: Connection, transport: CollectingTransport, frames: list[bytes], n: int) -> None:
    for _ in range(n):
        for frame in frames:
            feed(conn, frame)
        await asyncio.sleep(0)
        transport.out.clear()


async def measure(which: str, n: int, profile: bool) -> None:
    async with Node("hotpath", cookie="hotpath") as node:
        await start_kv(node, port=None)
        conn, transport = await attach(node)
        work: dict[str, Callable[[int], Any]] = {
            "erpc": lambda k: repeat(conn, transport, erpc_request(), k),
            "call": lambda k: repeat(conn, transport, call_request(node), k),
            "task": lambda k: run_task(conn, transport, k),
            "send": lambda k: run_send(conn, transport, k),
            "create": lambda k: run_create(conn, transport, k),  # last: leaves its buckets
        }
        for name in (list(work) if which == "all" else [which]):
            await work[name](min(n, 2000))  # warm caches
            if name != "create" and len(node.processes) > 20:
                raise SystemExit(f"{name}: {len(node.processes)} processes left behind")
            profiler = cProfile.Profile() if profile else None
            if profiler:
                profiler.enable()
            cpu, wall = time.process_time(), time.perf_counter()
            await work[name](n)
            cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
            if profiler:
                profiler.disable()
                pstats.Stats(profiler).sort_stats("tottime").print_stats(30)
            print(f"{name:5} {cpu / n * 1e6:7.1f} µs CPU per request ({wall / n * 1e6:.1f} µs wall), n={n}")


def main() -> None:
    p = argparse.ArgumentParser(prog="python -m bench.hotpath", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("which", nargs="?", default="all", choices=("all", "erpc", "call", "task", "create", "send"))
    p.add_argument("-n", type=int, default=20_000, help="requests per measurement (20000)")
    p.add_argument("--profile", action="store_true", help="run under cProfile and print the top")
    p.add_argument("--loop", choices=("auto", "asyncio", "uvloop"), default="auto")
    p.add_argument("--framing", choices=tuple(FRAMINGS), default="header",
                   help="frames with the distribution header, as a BEAM peer (default), 112 frames, "
                        "or requests with atom cache refs, as a BEAM with DIST_HDR_ATOM_CACHE")
    args = p.parse_args()
    global flags_in_force, client_framing, atom_cache_frames
    flags_in_force = FRAMINGS[args.framing]
    client_framing = Framing(flags_in_force)
    atom_cache_frames = AtomCacheFrames() if args.framing == "atom-cache" else None
    with asyncio.Runner(loop_factory=loop_factory(args.loop)) as runner:
        runner.run(measure(args.which, args.n, args.profile))


if __name__ == "__main__":
    main()
