"""Read-only introspection: the `erlang` functions a BEAM user reaches for first, answered
from this node's real state, so that `:rpc.call(:"foo@host", :erlang, :registered, [])` or
`:rpc.call(node(pid), :erlang, :process_info, [pid])` work as against any node.

Served (module `erlang`): processes/0, registered/0, nodes/0,1, whereis/1,
is_process_alive/1, process_info/1,2, system_info/1, memory/0,1, statistics/1. Shapes are
the BEAM's (OTP erts/doc "erlang" module): `process_info(Pid, Item)` is `{Item, Value}`,
`undefined` for a dead process, and a non-local pid, an unknown item or a wrong argument
type fail with `badarg` and the stacktrace the BEAM gives, `[{erlang, F, Args,
[{error_info, #{module => erl_erts_errors}}]}]`, so the caller's shell explains the error
as it would for a BEAM node. Nothing here changes state or runs code: the functions read
tables. `install(node)` adds them to the node's export table; `python -m pykv` does that
unless told `--no-introspection`.
"""

from __future__ import annotations

import asyncio
import os
import struct
import sys
import time
from typing import TYPE_CHECKING, Any, Callable

from ..dist import flags as F
from ..errors import ErlangError
from ..process import Process, current_process
from ..term import Atom, Pid

if TYPE_CHECKING:
    from ..node import Node

ERLANG = Atom("erlang")
BADARG = Atom("badarg")
UNDEFINED = Atom("undefined")
PROCESS = Atom("process")
_ERROR_INFO = [(Atom("error_info"), {Atom("module"): Atom("erl_erts_errors")})]


class BadArg(ErlangError):
    """`error:badarg` raised by erlang:F(Args), with the BEAM's one-frame stacktrace."""

    def __init__(self, function: str, args: list[Any]) -> None:
        super().__init__(BADARG)
        self.mfa = (ERLANG, Atom(function), args)
        self.location = _ERROR_INFO


def speaks_as() -> str:
    """The OTP release whose distribution pykv speaks: the newest whose mandatory
    capabilities pykv offers (OTP 26 made V4_NC and UNLINK_ID mandatory; OTP 28 added
    ALTACT_SIG)."""
    altact = getattr(F, "ALTACT_SIG", 0)
    if altact and F.OURS & altact:
        return "28"
    if F.OURS & (F.V4_NC | F.UNLINK_ID) == F.V4_NC | F.UNLINK_ID:
        return "26"
    return "25"


def _charlist(text: str) -> list[int]:
    return list(text.encode())


class Introspection:
    """The functions, bound to one node."""

    def __init__(self, node: "Node") -> None:
        self.node = node
        self.started = time.monotonic()
        self._last_wall = self.started
        self._last_cpu = time.process_time()

    # -- processes and names -------------------------------------------------------------------

    def processes(self) -> list[Pid]:
        return [pid for pid, proc in self.node.processes.items() if proc.alive]

    def registered(self) -> list[Atom]:
        return list(self.node.registered)

    def whereis(self, name: Any) -> Any:
        if type(name) is not Atom:
            raise BadArg("whereis", [name])
        proc = self.node.registered.get(name)
        return proc.pid if proc is not None and proc.alive else UNDEFINED

    def is_process_alive(self, pid: Any) -> bool:
        return self._local(pid, "is_process_alive", [pid]) is not None

    def _local(self, pid: Any, function: str, args: list[Any]) -> Process | None:
        """The live local process `pid`, None if it is dead; badarg for anything but a
        local pid, as the BEAM."""
        if type(pid) is not Pid or pid.node is not self.node.name:
            raise BadArg(function, args)
        proc = self.node.processes.get(pid)
        return proc if proc is not None and proc.alive else None

    # -- process_info ----------------------------------------------------------------------------

    def process_info_1(self, pid: Any) -> Any:
        proc = self._local(pid, "process_info", [pid])
        if proc is None:
            return UNDEFINED
        items = [item for item in DEFAULT_ITEMS if item is not REGISTERED_NAME or proc.name is not None]
        return [(item, ITEMS[item](self, proc)) for item in items]

    def process_info_2(self, pid: Any, spec: Any) -> Any:
        args = [pid, spec]
        if type(spec) is Atom:
            if spec not in ITEMS:
                raise BadArg("process_info", args)
            proc = self._local(pid, "process_info", args)
            if proc is None:
                return UNDEFINED
            if spec is REGISTERED_NAME and proc.name is None:
                return []  # the BEAM's answer for a single item, not {registered_name, []}
            return (spec, ITEMS[spec](self, proc))
        if type(spec) is not list or any(type(i) is not Atom or i not in ITEMS for i in spec):
            raise BadArg("process_info", args)
        proc = self._local(pid, "process_info", args)
        if proc is None:
            return UNDEFINED
        return [(item, ITEMS[item](self, proc)) for item in spec]

    def _status(self, proc: Process) -> Atom:
        try:
            running = current_process() is proc
        except LookupError:
            running = False
        return RUNNING if running else WAITING

    def _monitors(self, proc: Process) -> list[Any]:
        out: list[Any] = []
        for target in proc.monitors.values():
            if type(target) is Atom:  # a local name: the BEAM shows {Name, node()}
                target = (target, self.node.name)
            out.append((PROCESS, target))
        return out

    def _group_leader(self, proc: Process) -> Pid:
        if proc.group_leader is not None:
            return proc.group_leader
        leader = self.node.registered.get(Atom("pykv_group_leader"))
        return leader.pid if leader is not None else proc.pid

    # -- the system ------------------------------------------------------------------------------

    def nodes_0(self) -> list[Atom]:
        return self._nodes(VISIBLE, [])

    def nodes_1(self, kinds: Any) -> list[Atom]:
        return self._nodes(kinds, [kinds])

    def _nodes(self, kinds: Any, args: list[Any]) -> list[Atom]:
        wanted = kinds if type(kinds) is list else [kinds]
        if not wanted and type(kinds) is list:
            wanted = [VISIBLE]  # nodes([]) is nodes(visible)
        if any(kind not in NODE_KINDS for kind in wanted):
            raise BadArg("nodes", args)
        found: list[Atom] = []
        if THIS in wanted or KNOWN in wanted:
            found.append(self.node.name)
        for name, peer in self.node.peers.items():
            conn = peer.conn
            if conn is None:
                continue
            visible = bool(conn.flags & F.PUBLISHED) and not self.node.hidden
            if (CONNECTED in wanted or KNOWN in wanted or (VISIBLE in wanted and visible)
                    or (HIDDEN in wanted and not visible)):
                found.append(name)
        return found

    def system_info(self, item: Any) -> Any:
        answer = SYSTEM_INFO.get(item) if type(item) is Atom else None
        if answer is None:
            raise BadArg("system_info", [item])
        return answer(self)

    def _system_version(self) -> list[int]:
        from ..term import codec
        loop = type(asyncio.get_running_loop()).__module__.split(".")[0]  # asyncio, uvloop
        return _charlist(f"pykv {_version()} on Python {sys.version.split()[0]} "
                         f"({loop} loop, {codec.IMPLEMENTATION} codec), "
                         f"speaking as Erlang/OTP {speaks_as()}\n")

    def memory_0(self) -> list[tuple[Atom, int]]:
        return [(TOTAL, _rss())]

    def memory_1(self, item: Any) -> int:
        if item is not TOTAL:
            raise BadArg("memory", [item])
        return _rss()

    def statistics(self, item: Any) -> Any:
        if item is WALL_CLOCK:
            now = time.monotonic()
            since_last, self._last_wall = now - self._last_wall, now
            return (int((now - self.started) * 1000), int(since_last * 1000))
        if item is RUNTIME:
            cpu = time.process_time()
            since_last, self._last_cpu = cpu - self._last_cpu, cpu
            return (int(cpu * 1000), int(since_last * 1000))
        raise BadArg("statistics", [item])


def _version() -> str:
    try:
        from importlib.metadata import version
        return version("pykv")
    except Exception:
        return "unknown"


def _rss() -> int:
    """Bytes of memory the Python process holds now (resident set); the peak where the
    current figure cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        import resource  # Unix
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return peak if sys.platform == "darwin" else peak * 1024


def _frame_mfa(code: Any, module: str) -> tuple[Atom, Atom, int]:
    return (Atom(module), Atom(code.co_name), code.co_argcount)


def _coroutine_chain(proc: Process) -> list[Any]:
    """The coroutines a process's task is suspended in, outermost first (empty when the
    process runs no coroutine, as a GenServer between messages)."""
    task = proc._task
    if task is None or task.done():
        return []
    chain, coro = [], task.get_coro()
    while coro is not None and getattr(coro, "cr_frame", None) is not None:
        chain.append(coro)
        coro = getattr(coro, "cr_await", None)
    return chain


def _class_mfa(proc: Process) -> tuple[Atom, Atom, int]:
    cls = type(proc)
    return (Atom(cls.__module__), Atom(cls.__qualname__), 0)


def _current_function(self: Introspection, proc: Process) -> tuple[Atom, Atom, int]:
    """Where its coroutine waits now; for a process without one, its class."""
    chain = _coroutine_chain(proc)
    if not chain:
        return _class_mfa(proc)
    frame = chain[-1].cr_frame
    return _frame_mfa(frame.f_code, frame.f_globals.get("__name__", "python"))


def _initial_call(self: Introspection, proc: Process) -> tuple[Atom, Atom, int]:
    """The coroutine function the process was started with; for a process without one,
    its class."""
    chain = _coroutine_chain(proc)
    body = chain[1] if len(chain) > 1 else chain[0] if chain else None  # chain[0] is Process._run
    if body is None:
        return _class_mfa(proc)
    frame = body.cr_frame
    return _frame_mfa(frame.f_code, frame.f_globals.get("__name__", "python"))


REGISTERED_NAME, RUNNING, WAITING, TOTAL = Atom("registered_name"), Atom("running"), Atom("waiting"), Atom("total")
WALL_CLOCK, RUNTIME = Atom("wall_clock"), Atom("runtime")
VISIBLE, HIDDEN, CONNECTED, THIS, KNOWN = (Atom(k) for k in ("visible", "hidden", "connected", "this", "known"))
NODE_KINDS = frozenset((VISIBLE, HIDDEN, CONNECTED, THIS, KNOWN))

ITEMS: dict[Atom, Callable[[Introspection, Process], Any]] = {
    REGISTERED_NAME: lambda self, p: p.name if p.name is not None else [],  # [] in a list, as the BEAM
    Atom("current_function"): _current_function,
    Atom("initial_call"): _initial_call,
    Atom("status"): Introspection._status,
    Atom("message_queue_len"): lambda self, p: len(p.mailbox),
    Atom("messages"): lambda self, p: list(p.mailbox),
    Atom("links"): lambda self, p: list(p.links),
    Atom("monitors"): Introspection._monitors,
    Atom("monitored_by"): lambda self, p: [watcher for watcher, _ in p.monitored_by.values()],
    Atom("trap_exit"): lambda self, p: p.trap_exit,
    Atom("group_leader"): Introspection._group_leader,
    Atom("dictionary"): lambda self, p: [],        # Python processes have no process dictionary
    Atom("priority"): lambda self, p: Atom("normal"),
}
# process_info/1's items, in the BEAM's order (registered_name only for a registered process)
DEFAULT_ITEMS = [Atom(i) for i in ("registered_name", "current_function", "initial_call", "status",
                                   "message_queue_len", "links", "dictionary", "trap_exit",
                                   "priority", "group_leader")]

SYSTEM_INFO: dict[Atom, Callable[[Introspection], Any]] = {
    Atom("otp_release"): lambda self: _charlist(speaks_as()),
    Atom("system_version"): Introspection._system_version,
    Atom("machine"): lambda self: _charlist("pykv"),
    Atom("process_count"): lambda self: sum(1 for p in self.node.processes.values() if p.alive),
    Atom("atom_count"): lambda self: len(Atom._table),
    Atom("creation"): lambda self: self.node.creation,
    # one thread runs every process: the node's event loop
    Atom("schedulers"): lambda self: 1,
    Atom("schedulers_online"): lambda self: 1,
    Atom("logical_processors"): lambda self: os.cpu_count() or Atom("unknown"),
    Atom("logical_processors_online"): lambda self: (len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
                                                     else os.cpu_count() or Atom("unknown")),
    Atom("wordsize"): lambda self: struct.calcsize("P"),
}

# (erlang function, arity, Introspection method)
BUILT_INS = [
    ("processes", 0, "processes"), ("registered", 0, "registered"), ("nodes", 0, "nodes_0"),
    ("nodes", 1, "nodes_1"), ("whereis", 1, "whereis"), ("is_process_alive", 1, "is_process_alive"),
    ("process_info", 1, "process_info_1"), ("process_info", 2, "process_info_2"),
    ("system_info", 1, "system_info"), ("memory", 0, "memory_0"), ("memory", 1, "memory_1"),
    ("statistics", 1, "statistics"),
]


def install(node: "Node") -> Introspection:
    """Serve the built-ins on `node` (quick, read-only: they run at once on the node's loop)."""
    view = Introspection(node)
    for function, arity, method in BUILT_INS:
        node.exports.add(ERLANG, function, getattr(view, method), arity, blocking=False)
    return view
