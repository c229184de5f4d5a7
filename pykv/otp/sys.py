"""The `:sys` protocol, as every Python GenServer and supervisor answers it (OTP stdlib
sys.erl and gen_server.erl's system callbacks; the shapes were checked against OTP 25, 27, 29).

A request arrives as `{:system, From, Request}` (a `gen:call` with the label `system`):
`get_state`, `{replace_state, Fun}`, `get_status`, `suspend`, `resume`, `{terminate, Reason}`,
`{change_code, ...}`, `{debug, ...}` (trace, log, statistics). What a Python server cannot do
gets OTP's own error replies: `{:error, {:unknown_system_msg, Request}}`, `unknown_debug`.

One difference between generations is on the wire: sys.erl up to OTP 25 takes any reply to
`get_state`/`replace_state` but `{:error, _}` as the state itself, while OTP 26 and later
expect `{:ok, State}` (each fails on the other's: a real OTP 25 server crashes an OTP 27
caller's `:sys.get_state` with a case_clause). No distribution flag tells them apart, so the
first such request from a node asks it `:erlang.system_info(:otp_release)` and the answer is
kept for that connection.
"""

from __future__ import annotations

import logging
import time
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Awaitable

from ..atoms import ERROR, OK
from ..term import Atom, BitBinary, ExportFun, Fun, ImproperList, Pid, Port, Reference, inspect

if TYPE_CHECKING:
    from ..node import Node
    from .gen_server import GenServer

log = logging.getLogger("pykv.sys")

SYSTEM = Atom("system")
GET_STATE, REPLACE_STATE, GET_STATUS = Atom("get_state"), Atom("replace_state"), Atom("get_status")
SUSPEND, RESUME, TERMINATE = Atom("suspend"), Atom("resume"), Atom("terminate")
CHANGE_CODE, DEBUG = Atom("change_code"), Atom("debug")
RUNNING, SUSPENDED = Atom("running"), Atom("suspended")
TRACE, LOG, STATISTICS, NO_DEBUG = Atom("trace"), Atom("log"), Atom("statistics"), Atom("no_debug")
LOG_TO_FILE, INSTALL, REMOVE = Atom("log_to_file"), Atom("install"), Atom("remove")
GET, PRINT = Atom("get"), Atom("print")
IN, OUT, NOREPLY_EVENT = Atom("in"), Atom("out"), Atom("noreply")
STATUS, MODULE, GEN_SERVER = Atom("status"), Atom("module"), Atom("gen_server")
HEADER, DATA = Atom("header"), Atom("data")
CALLBACK_FAILED, NOTSUP = Atom("callback_failed"), Atom("notsup")
GEN_CALL, GEN_CAST = Atom("$gen_call"), Atom("$gen_cast")

DEFAULT_LOG_SIZE = 10  # sys.erl's nlog_new/0
MAX_REPR = 64 * 1024   # a Python repr shown as a binary is cut to this many bytes


def charlist(text: str) -> list[int]:
    return list(text.encode())


# -- what a state looks like as a term ---------------------------------------------------------

_TERMS = (Atom, int, float, bytes, str, bool, type(None), Pid, Reference, Port, ExportFun, Fun, BitBinary)


def as_term(value: Any, depth: int = 0) -> Any:
    """`value` as an Erlang term: terms as they are (lists, tuples, maps walked), anything
    else as its Python repr in a binary, so a state with a socket or a set still shows."""
    if isinstance(value, _TERMS):
        return value
    if depth > 100:
        return _repr(value)
    if isinstance(value, list) or type(value).__name__ == "FrozenList":
        return [as_term(item, depth + 1) for item in value]
    if isinstance(value, tuple) and not hasattr(value, "_fields"):
        return tuple(as_term(item, depth + 1) for item in value)
    if isinstance(value, dict):
        return {as_term(k, depth + 1): as_term(v, depth + 1) for k, v in value.items()}
    if isinstance(value, ImproperList):
        return ImproperList([as_term(i, depth + 1) for i in value.items], as_term(value.tail, depth + 1))
    return _repr(value)


def _repr(value: Any) -> bytes:
    try:
        text = repr(value)
    except Exception as e:  # a broken __repr__ must not break :sys.get_state
        text = f"<{type(value).__name__} (repr failed: {e!r})>"
    data = text.encode(errors="replace")
    return data if len(data) <= MAX_REPR else data[:MAX_REPR] + b"..."


# -- debug options ([dbg_opt()] in sys.erl) --------------------------------------------------------

class Debug:
    """A server's debug options: trace (events printed), log (the last N events), statistics."""

    __slots__ = ("trace", "log", "stats")

    def __init__(self) -> None:
        self.trace = False
        self.log: deque[Any] | None = None
        self.stats: list[Any] | None = None  # [start_time, messages_in, messages_out]

    def active(self) -> bool:
        return self.trace or self.log is not None or self.stats is not None

    def event(self, server: "GenServer", event: tuple[Any, ...]) -> None:
        if self.stats is not None:
            if event[0] is IN:
                self.stats[1] += 1
            elif event[0] is OUT:
                self.stats[2] += 1
        if self.log is not None:
            self.log.append(event)
        if self.trace:
            log.info("%s", format_event(server, event))

    def as_term(self) -> list[Any]:
        """The Debug item of `:sys.get_status` (opaque in sys.erl; here the same keys)."""
        items: list[Any] = []
        if self.trace:
            items.append((TRACE, True))
        if self.log is not None:
            items.append((LOG, (self.log.maxlen, list(self.log))))
        if self.stats is not None:
            items.append((STATISTICS, (self.stats[0], (Atom("reductions"), 0), self.stats[1], self.stats[2])))
        return items

    def events(self) -> list[Any]:
        return list(self.log) if self.log is not None else []


def _localtime() -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    t = time.localtime()
    return ((t.tm_year, t.tm_mon, t.tm_mday), (t.tm_hour, t.tm_min, t.tm_sec))


def format_event(server: "GenServer", event: tuple[Any, ...]) -> str:
    """As gen_server's print_event, with Elixir's inspect: `*DBG* KV.Registry got call ...`."""
    name = inspect(server.name or server.pid)
    kind = event[0]
    if kind is IN:
        message = event[1]
        if type(message) is tuple and len(message) == 3 and message[0] is GEN_CALL:
            return f"*DBG* {name} got call {_cut(message[2])} from {inspect(message[1][0])}"
        if type(message) is tuple and len(message) == 2 and message[0] is GEN_CAST:
            return f"*DBG* {name} got cast {_cut(message[1])}"
        return f"*DBG* {name} got {_cut(message)}"
    if kind is OUT:
        return f"*DBG* {name} sent {_cut(event[1])} to {inspect(event[2][0])}, new state {_cut(event[3])}"
    if kind is NOREPLY_EVENT:
        return f"*DBG* {name} new state {_cut(event[1])}"
    return f"*DBG* {name} dbg {_cut(event)}"


def _cut(term: Any, limit: int = 500) -> str:
    text = inspect(term)
    return text if len(text) <= limit else text[:limit] + "..."


def _debug_command(server: "GenServer", what: Any) -> Any:
    """sys.erl's debug_cmd: the reply to `{debug, What}`."""
    debug = server._debug or Debug()
    reply: Any = OK
    if type(what) is tuple and len(what) == 2:
        option, flag = what
        if option is TRACE and flag in (True, False):
            debug.trace = flag
        elif option is LOG:
            if flag is True or (type(flag) is tuple and len(flag) == 2 and flag[0] is True
                                and type(flag[1]) is int and flag[1] >= 1):
                size = DEFAULT_LOG_SIZE if flag is True else flag[1]
                debug.log = deque(debug.log or (), maxlen=size)
            elif flag is False:
                debug.log = None
            elif flag is GET:
                reply = (OK, debug.events())
            elif flag is PRINT:
                for event in debug.events():
                    log.info("%s", format_event(server, event))
            else:
                reply = Atom("unknown_debug")
        elif option is STATISTICS:
            if flag is True:
                debug.stats = [_localtime(), 0, 0]
            elif flag is False:
                debug.stats = None
            elif flag is GET:
                stats = debug.stats
                reply = (OK, Atom("no_statistics") if stats is None else [
                    (Atom("start_time"), stats[0]), (Atom("current_time"), _localtime()),
                    (Atom("reductions"), 0),  # Python counts no reductions
                    (Atom("messages_in"), stats[1]), (Atom("messages_out"), stats[2])])
            else:
                reply = Atom("unknown_debug")
        elif option is LOG_TO_FILE:
            # never a file named by a remote caller: as sys answers when it cannot open one
            reply = OK if flag is False else (ERROR, Atom("open_file"))
        elif option in (INSTALL, REMOVE):
            reply = (ERROR, NOTSUP)  # debug funs are BEAM code: Python cannot run them
        else:
            reply = Atom("unknown_debug")
    elif what is NO_DEBUG:
        debug = Debug()
    else:
        reply = Atom("unknown_debug")
    server._debug = debug if debug.active() else None
    return reply


# -- serving a request ---------------------------------------------------------------------------

def is_system_message(message: Any) -> bool:
    return type(message) is tuple and len(message) == 3 and message[0] is SYSTEM


def handle(server: "GenServer", from_: Any, request: Any) -> Awaitable[Any] | None:
    """Answer one `:sys` request; returns an awaitable when the answer needs waiting for
    (terminating with an async terminate, or asking an unknown caller its OTP release)."""
    reply = server.node.reply
    if request is GET_STATE:
        try:
            state = server.system_get_state()
        except Exception as e:
            reply(from_, _callback_failed("system_get_state", e), server.pid)
            return None
        return _reply_state(server, from_, state)
    if type(request) is tuple and len(request) == 2 and request[0] is REPLACE_STATE:
        return _replace_state(server, from_, request[1])
    if request is GET_STATUS:
        reply(from_, status(server), server.pid)
    elif request is SUSPEND:
        server._suspended = True
        reply(from_, OK, server.pid)
    elif request is RESUME:
        server._suspended = False
        reply(from_, OK, server.pid)
    elif type(request) is tuple and len(request) == 2 and request[0] is TERMINATE:
        reply(from_, OK, server.pid)  # sys answers before the server terminates
        return server._stop(request[1])
    elif type(request) is tuple and len(request) == 2 and request[0] is DEBUG:
        reply(from_, _debug_command(server, request[1]), server.pid)
    elif type(request) is tuple and len(request) == 4 and request[0] is CHANGE_CODE and server._suspended:
        reply(from_, OK, server.pid)  # no code to load: the state stays, as code_change/3's default
    else:
        reply(from_, (ERROR, (Atom("unknown_system_msg"), request)), server.pid)
    return None


def _callback_failed(callback: str, error: Exception) -> Any:
    from ..errors import classify
    kind, reason, _stack = classify(error)
    return (ERROR, (CALLBACK_FAILED, (GEN_SERVER, Atom(callback)), (kind, reason)))


def _replace_state(server: "GenServer", from_: Any, fun: Any) -> Awaitable[Any] | None:
    """`{replace_state, Fun}`: BEAM code cannot run here, so only `&Mod.fun/1` of a function
    the node exports can replace a state; a closure fails as a callback that raised."""
    node = server.node
    if not (isinstance(fun, ExportFun) and fun.arity == 1
            and node.exports.lookup(fun.module, fun.function, 1) is not None):
        node.reply(from_, (ERROR, (CALLBACK_FAILED, (GEN_SERVER, Atom("system_replace_state")),
                                   (ERROR, NOTSUP))), server.pid)
        return None

    async def apply_fun() -> None:
        try:
            new_state = await node.exports.apply(fun.module, fun.function, [server.system_get_state()])
            server.system_replace_state(new_state)
            state = server.system_get_state()
        except Exception as e:
            node.reply(from_, _callback_failed("system_replace_state", e), server.pid)
            return
        pending = _reply_state(server, from_, state)
        if pending is not None:
            await pending
    return apply_fun()


# OTP releases of peers, per connection (a node that reconnects may run another release)
_releases: "weakref.WeakKeyDictionary[Any, int]" = weakref.WeakKeyDictionary()


def _reply_state(server: "GenServer", from_: Any, state: Any) -> Awaitable[Any] | None:
    node = server.node
    caller = from_[0] if type(from_) is tuple and len(from_) == 2 else None
    if type(caller) is not Pid or caller.node is node.name:
        node.reply(from_, (OK, state), server.pid)
        return None
    peer = node.peers.get(caller.node)
    release = _releases.get(peer) if peer is not None else None
    if release is not None:
        node.reply(from_, (OK, state) if release >= 26 else state, server.pid)
        return None

    async def ask_then_reply() -> None:
        known = await otp_release(node, caller.node)
        node.reply(from_, (OK, state) if known >= 26 else state, server.pid)
    return ask_then_reply()


async def otp_release(node: "Node", peer_name: Atom) -> int:
    """The OTP release a peer runs (`:erlang.system_info(:otp_release)`), asked once per
    connection; 26 or later is assumed for a peer that cannot say (a C node, say)."""
    from . import rpc
    peer = node.peers.get(peer_name)
    if peer is not None and peer in _releases:
        return _releases[peer]
    try:
        text = await rpc.call(node, peer_name, "erlang", "system_info", [Atom("otp_release")], timeout=5.0)
        release = int(bytes(text).decode()) if isinstance(text, list) else int(text)
    except Exception as e:
        log.info("%s did not say its OTP release (%s): answering :sys as OTP 26 and later do",
                 peer_name.name, e)
        release = 26
    if peer is not None:
        _releases[peer] = release
    return release


# -- :sys.get_status -------------------------------------------------------------------------------

def status(server: "GenServer") -> tuple[Any, ...]:
    """`{status, Pid, {module, gen_server}, [PDict, SysState, Parent, Debug, Misc]}`, Misc as
    gen_server's format_status makes it (header, status data, then the server's own items)."""
    sys_state = SUSPENDED if server._suspended else RUNNING
    parent = server._parent if server._parent is not None else server.pid
    debug = server._debug
    name = server.name if server.name is not None else server.pid
    header_name = name.name if isinstance(name, Atom) else f"<0.{name.id}.{name.serial}>"
    misc = [
        (HEADER, charlist(f"Status for generic server {header_name}")),
        (DATA, [(charlist("Status"), sys_state), (charlist("Parent"), parent),
                (charlist("Logged events"), debug.events() if debug is not None else [])]),
        *server.format_status(),
    ]
    return (STATUS, server.pid, (MODULE, GEN_SERVER),
            [server.process_dictionary(), sys_state, parent, debug.as_term() if debug is not None else [], misc])


# -- the client: `:sys` requests to any server, Python or BEAM ---------------------------------------

async def _request(via: Any, server: Any, request: Any, timeout: float | None) -> Any:
    from .gen_server import call
    return await call(via, server, request, timeout, label=SYSTEM)


def _node_of(via: Any) -> "Node":
    return via.node if hasattr(via, "pid") else via


async def _state_reply(via: Any, server: Any, reply: Any) -> Any:
    """Unwrap a get_state/replace_state reply by the server node's release (see above)."""
    from ..errors import ErlangError
    from .gen_server import destination
    node = _node_of(via)
    target = destination(server)
    where = target[1] if isinstance(target, tuple) else target.node if isinstance(target, Pid) else node.name
    if type(reply) is tuple and len(reply) == 2 and reply[0] is ERROR:
        raise ErlangError(reply[1])
    if where is node.name or await otp_release(node, where) >= 26:
        if type(reply) is tuple and len(reply) == 2 and reply[0] is OK:
            return reply[1]
        raise ErlangError((Atom("case_clause"), reply))
    return reply


async def get_state(via: Any, server: Any, timeout: float | None = 5.0) -> Any:
    """`:sys.get_state/2`."""
    return await _state_reply(via, server, await _request(via, server, GET_STATE, timeout))


async def replace_state(via: Any, server: Any, fun: ExportFun, timeout: float | None = 5.0) -> Any:
    """`:sys.replace_state/3` with `&Mod.fun/1` (a function the server's node can run)."""
    return await _state_reply(via, server, await _request(via, server, (REPLACE_STATE, fun), timeout))


async def get_status(via: Any, server: Any, timeout: float | None = 5.0) -> Any:
    """`:sys.get_status/2`."""
    return await _request(via, server, GET_STATUS, timeout)


async def suspend(via: Any, server: Any, timeout: float | None = 5.0) -> Any:
    return await _request(via, server, SUSPEND, timeout)


async def resume(via: Any, server: Any, timeout: float | None = 5.0) -> Any:
    return await _request(via, server, RESUME, timeout)


async def statistics(via: Any, server: Any, flag: Any, timeout: float | None = 5.0) -> Any:
    """`:sys.statistics/3`: flag True, False or GET."""
    return await _request(via, server, (DEBUG, (STATISTICS, flag)), timeout)


async def trace(via: Any, server: Any, flag: bool, timeout: float | None = 5.0) -> Any:
    return await _request(via, server, (DEBUG, (TRACE, flag)), timeout)


async def log_events(via: Any, server: Any, flag: Any, timeout: float | None = 5.0) -> Any:
    """`:sys.log/3`: True, `(True, n)`, False, GET or PRINT."""
    return await _request(via, server, (DEBUG, (LOG, flag)), timeout)
