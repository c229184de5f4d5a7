"""rpc and erpc, both ways.

Into Python: OTP 23+ callers (`:rpc.call`, `:erpc.call`, `Node.spawn`) send SPAWN_REQUEST
`{29, ReqId, From, GroupLeader, {M, F, Arity}, Opts} ++ Args`; for erpc the result travels
only in the exit reason: `{Ref, return, V}`, `{Ref, throw, T}`, `{Ref, exit, R}`,
`{Ref, error, R, Stack}` or `{Ref, error, {erpc, R}}` (OTP lib/kernel/src/erpc.erl;
wire-notes "rpc and erpc"). The `rex` server answers what still goes there.
Out of Python: `await call(via, node, m, f, a)` with erpc's semantics (raises on failure).
A peer without DFLAG_SPAWN (Jinterface, C nodes) gets no spawn request: the call goes to its
`rex` as `{call, M, F, A, GroupLeader}` (a gen_server call; casts a `{cast, ...}` gen_server
cast), as OTP 23/24's rpc did for nodes without erpc (OTP 25+'s rpc:call says
`{badrpc, notsup}` instead; dist/capabilities.py has the rule).
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING, Any

from ..atoms import DOWN_TAG, ERROR, EXIT_TAG, GEN_CAST, LINK, MONITOR, NOCONNECTION, NORMAL
from ..dist import control as C
from ..dist.capabilities import Capabilities, Signal
from ..errors import EXIT, THROW, ErlangError, Exit, NoConnection, Throw, Timeout, classify
from ..exports import module_atom
from ..process import Process
from ..term import Atom, Pid, TermError, encode, inspect
from .apply import apply_mfa, apply_now, is_closure_call
from . import gen_server
from .gen_server import NOREPLY, GenServer
from .io import LocalGroupLeader

if TYPE_CHECKING:
    from ..node import Node, Peer

log = logging.getLogger("pykv.rpc")

ERPC = Atom("erpc")
EXECUTE_CALL = Atom("execute_call")
EXECUTE_CAST = Atom("execute_cast")
RETURN = Atom("return")
NOTSUP = Atom("notsup")
BADRPC = Atom("badrpc")
SPAWN_REPLY = Atom("spawn_reply")
REX = Atom("rex")
CALL, CAST = Atom("call"), Atom("cast")
FEATURES_REQUEST, FEATURES_REPLY = Atom("features_request"), Atom("features_reply")


def install(node: "Node") -> None:
    """Serve rpc/erpc/spawn on `node`."""
    node.spawn_request_handler = handle_spawn_request
    Rex.start(node, name="rex")


# -- serving -----------------------------------------------------------------------------------

def handle_spawn_request(node: "Node", peer: "Peer", control: tuple, args: Any) -> None:
    _, req_id, caller, leader, mfa, opts = control[:6]
    module, function, _arity = mfa
    opts = opts if type(opts) is list else []
    link = LINK in opts
    monitor = MONITOR in opts or any(type(o) is tuple and o[:1] == (MONITOR,) for o in opts)
    proc = node.process()
    proc.group_leader = leader
    flags = 0
    if link:
        flags |= C.SPAWN_FLAG_LINK
        proc.links.add(caller)
        peer.links.add((proc.pid, caller))
    if monitor:
        flags |= C.SPAWN_FLAG_MONITOR
        proc.monitored_by[req_id] = (caller, proc.pid)
        peer.monitors_in[req_id] = proc.pid
    if (module, function) == (ERPC, EXECUTE_CALL) and type(args) is list and len(args) == 4:
        body: Any = _execute_call
    elif (module, function) == (ERPC, EXECUTE_CAST) and type(args) is list and len(args) == 3:
        body = _execute_cast
    elif is_closure_call(module, function, args):
        # the caller's fn cannot run here: refuse the spawn itself, as a node without the
        # feature would (`Node.spawn/2` then returns a pid that exits with :notsup)
        proc.links.clear()
        peer.links.discard((proc.pid, caller))
        proc.monitored_by.clear()
        peer.monitors_in.pop(req_id, None)
        node.processes.pop(proc.pid, None)
        peer.spawn_reply(req_id, caller, 0, NOTSUP)
        return
    else:
        body = _spawned
        args = [module, function, args]
    peer.spawn_reply(req_id, caller, flags, proc.pid)
    if body is _execute_call:
        answer = _execute_call_now(proc, *args)
        if answer is not None:  # done already: no task needed (the common, quick case)
            proc.exit(answer)
            return
    proc._start(body, tuple(args))


def _execute_call_now(proc: Process, ref: Any, module: Any, function: Any, args: Any) -> Any:
    """erpc's answer (its exit reason) if the call can be settled at once, else None."""
    if is_closure_call(module, function, args):
        return (ref, ERROR, (ERPC, NOTSUP))
    if type(module) is not Atom or type(function) is not Atom or type(args) is not list:
        return (ref, ERROR, (ERPC, Atom("badarg")))
    try:
        done, result = apply_now(proc, module, function, args)
        if done:
            check_term(result)
    except Exception as e:
        return _erpc_failure(ref, e)
    return (ref, RETURN, result) if done else None


def _erpc_failure(ref: Any, error: Exception) -> Any:
    """The failure is the caller's answer, not ours to log."""
    kind, reason, stack = classify(error)
    return (ref, kind, reason, stack) if kind is ERROR else (ref, kind, reason)


async def _execute_call(proc: Process, ref: Any, module: Any, function: Any, args: Any) -> None:
    try:
        result = check_term(await apply_mfa(proc, module, function, args))
    except asyncio.CancelledError:
        raise
    except Exception as e:
        raise Exit(_erpc_failure(ref, e)) from None
    raise Exit((ref, RETURN, result))


def check_term(value: Any) -> Any:
    """The result travels inside an exit reason, which must not fail to encode later."""
    try:
        _check(value, 0)
    except TermError as e:
        raise TypeError(f"the result is not an Erlang term: {e}") from None
    return value


# Binaries always encode (up to BINARY_EXT's 32-bit length): a result that is one, or a small
# tuple or list holding some, is checked without encoding them. Encoding a 50 MB binary only
# to see that it encodes copied it once more than sending it does (a third of the time a
# 50 MB erpc reply took, py-spy).
_CHECKED_ITEMS = 8
_MAX_BINARY = 0xFFFFFFFF


def _check(value: Any, depth: int) -> None:
    kind = value.__class__
    if kind is bytes:
        if len(value) > _MAX_BINARY:
            raise TermError("binary longer than BINARY_EXT's 32-bit length")
    elif (kind is tuple or kind is list) and len(value) <= _CHECKED_ITEMS and depth < 2:
        for item in value:
            _check(item, depth + 1)
    else:
        encode(value)


async def _execute_cast(proc: Process, module: Any, function: Any, args: Any) -> None:
    try:
        await apply_mfa(proc, module, function, args)
    except Exception:
        log.exception("erpc cast %s.%s/%s failed", inspect(module), inspect(function), len(args))


async def _spawned(proc: Process, module: Any, function: Any, args: Any) -> None:
    await apply_mfa(proc, module, function, args)


class Rex(GenServer):
    """`rex`: rpc requests not sent as SPAWN_REQUEST (block_call, C-node style calls, casts)."""

    def handle_call(self, request: Any, from_: Any) -> Any:
        if type(request) is tuple and len(request) in (4, 5) and request[0] in (CALL, Atom("block_call")):
            self._run(request, lambda value: self.node.reply(from_, value, self.pid))
            return NOREPLY
        return (BADRPC, (EXIT_TAG, (Atom("unknown_rex_request"), request)))

    def handle_cast(self, request: Any) -> None:
        if type(request) is tuple and len(request) in (4, 5) and request[0] is CAST:
            self._run(request, lambda value: None)

    def handle_info(self, message: Any) -> None:
        # C-node style {From, {call, M, F, A, GL}} (erl_call, Jinterface), answered {rex, Reply}
        if type(message) is tuple and len(message) == 2 and type(message[0]) is Pid:
            sender, request = message
            if type(request) is tuple and len(request) in (4, 5) and request[0] is CALL:
                self._run(request, lambda value: self.send(sender, (REX, value)))
            elif request is FEATURES_REQUEST:  # OTP 23+ rpc asks what we serve (rpc.erl)
                self.send(sender, (FEATURES_REPLY, self.node.name, [ERPC]))

    def _run(self, request: tuple, answer: Any) -> None:
        module, function, args = request[1], request[2], request[3]
        leader = request[4] if len(request) == 5 and type(request[4]) is Pid else None

        async def worker(proc: Process) -> None:
            proc.group_leader = leader
            try:
                answer(await apply_mfa(proc, module, function, args))
            except Exception as e:
                kind, reason, stack = classify(e)
                answer((BADRPC, (EXIT_TAG, (reason, stack) if kind is ERROR else reason)))

        self.node.spawn(worker)


# -- calling out ---------------------------------------------------------------------------

class RemoteError(ErlangError):
    """A remote `error:Reason` (an Elixir exception is a struct in `reason`)."""

    def __init__(self, node: Any, reason: Any, stacktrace: Any) -> None:
        super().__init__(reason)
        self.node = node
        self.stacktrace = stacktrace

    def __str__(self) -> str:
        reason = self.reason
        if isinstance(reason, dict) and reason.get(Atom("__exception__")) is True:
            name = inspect(reason.get(Atom("__struct__")))
            message = reason.get(Atom("message"))
            text = message.decode("utf-8", "replace") if isinstance(message, bytes) else inspect(message)
            return f"({name}) {text} on {self.node}"
        return f"{inspect(reason)[:500]} on {self.node}"


class BadRpc(ErlangError):
    """A call that went to the `rex` of a peer without spawn support failed: `reason` is
    rpc's, from `{badrpc, Reason}` (e.g. `{'EXIT', {undef, [...]}}`)."""

    def __init__(self, node: Any, reason: Any) -> None:
        super().__init__(reason)
        self.node = node

    def __str__(self) -> str:
        return f"badrpc {inspect(self.reason)[:500]} from {inspect(self.node)}"


async def call(via: "Process | Node", node: str | Atom, module: str | Atom, function: str | Atom,
               args: list[Any], timeout: float | None = 5.0) -> Any:
    """`:erpc.call(node, module, function, args, timeout)` from Python: returns the result,
    raises RemoteError (error), Throw, Exit (exit), NoConnection or Timeout; BadRpc from a
    peer without spawn support, whose rex answers instead."""
    if not isinstance(via, Process):
        proc = via.process()
        try:
            return await call(proc, node, module, function, args, timeout)
        finally:
            proc.exit(NORMAL)
    node = Atom(node) if isinstance(node, str) else node
    module = module_atom(module)
    function = Atom(function) if isinstance(function, str) else function
    leader = LocalGroupLeader.of(via.node).pid
    await via.node.connect(node)  # spawn request or rex: the peer's flags decide
    peer = via.node.peers.get(node)
    if peer is None or peer.caps is None:
        raise NoConnection(node)
    if not peer.caps.spawn:
        reply = await gen_server.call(via, (REX, node), (CALL, module, function, list(args), leader), timeout)
        if type(reply) is tuple and len(reply) == 2 and reply[0] is BADRPC:
            raise BadRpc(node, reply[1])
        return reply
    ref = via.node.make_ref()
    req_id = via.node.make_ref()
    peer.spawn_request(req_id, via.pid, leader, (ERPC, EXECUTE_CALL, 4), [MONITOR],
                       [ref, module, function, list(args)])
    # the node delivers SPAWN_REPLY as {spawn_reply, ReqId, Flags, Result}; the DOWN
    # (monitor ref = ReqId) carries the result. A lost connection also arrives as a DOWN.
    via.monitors[req_id] = (ERPC, node)
    peer.monitors_out[req_id] = via

    def ours(m: Any) -> bool:
        return type(m) is tuple and len(m) >= 4 and m[1] == req_id and m[0] in (SPAWN_REPLY, DOWN_TAG)

    try:
        while True:
            message = await via.receive(ours, timeout)
            if message[0] is SPAWN_REPLY:
                if type(message[3]) is not Pid:  # the spawn itself failed
                    via.monitors.pop(req_id, None)
                    peer.monitors_out.pop(req_id, None)
                    raise _spawn_error(node, message[3])
                continue
            return _erpc_result(node, ref, message[4])
    except TimeoutError:
        if type(via.monitors.get(req_id)) is Pid:  # spawned: demonitor that process
            via.node.demonitor(via, req_id)
        else:  # no SPAWN_REPLY yet: forget the request, and drop its reply when it comes
            via.monitors.pop(req_id, None)
            peer.monitors_out.pop(req_id, None)
            peer.spawn_ignored.add(req_id)
        raise Timeout(f"erpc call {inspect(module)}.{function.name}/{len(args)} on {node.name}") from None


def _spawn_error(node: Atom, reason: Any) -> Exception:
    if reason is NOCONNECTION:
        return NoConnection(node)
    return RemoteError(node, (ERPC, reason), [])


def _erpc_result(node: Atom, ref: Any, reason: Any) -> Any:
    if type(reason) is tuple and len(reason) >= 3 and reason[0] == ref:
        kind = reason[1]
        if kind is RETURN:
            return reason[2]
        if kind is THROW:
            raise Throw(reason[2])
        if kind is EXIT:
            raise Exit(reason[2])
        if kind is ERROR:
            raise RemoteError(node, reason[2], reason[3] if len(reason) == 4 else [])
    if reason is NOCONNECTION:
        raise NoConnection(node)
    raise Exit(reason, f"erpc process on {node.name} died: {inspect(reason)[:500]}")


def cast(via: "Process | Node", node: str | Atom, module: str | Atom, function: str | Atom,
         args: list[Any]) -> None:
    """`:erpc.cast/4`: run it there, expect nothing back (a peer without spawn support
    gets it as a cast to its rex)."""
    owner = via if isinstance(via, Process) else None
    n = via.node if isinstance(via, Process) else via
    node = Atom(node) if isinstance(node, str) else node
    sender = owner.pid if owner else n._system_pid()
    req_id = n.make_ref()
    peer = n.peer(node)
    peer.spawn_ignored.add(req_id)  # no spawn_reply message for the caller, as erpc:cast
    peer.signal(_cast_signal, req_id, sender, LocalGroupLeader.of(n).pid, module_atom(module),
                Atom(function) if isinstance(function, str) else function, list(args))


def _cast_signal(caps: Capabilities, req_id: Any, sender: Pid, leader: Pid, module: Atom,
                 function: Atom, args: list[Any]) -> Signal | None:
    if caps.spawn:
        return caps.spawn_request(req_id, sender, leader, (ERPC, EXECUTE_CAST, 3), [], [module, function, args])
    return caps.message(sender, REX, (GEN_CAST, (CAST, module, function, args, leader)))

