"""`:global` names from Python, as a hidden node can use them: through a visible BEAM node.

pykv connects hidden, so it is no member of `global`'s cluster: no BEAM `global_name_server`
talks to it, it holds no copy of the name table, and it takes no part in global's locks. As
erl_interface's `ei_global_register`/`ei_global_whereis`/`ei_global_names` do (they send
`{call, global, F, Args, user}` to a BEAM node's rex), every operation here is an rpc into
`global` on a visible BEAM node (erpc, as pykv's rpc.call does with any BEAM node):

- `register_name` is `global:register_name_external(Name, Pid)` (global.erl, OTP 25-29): under
  global's cluster lock, every node of that node's cluster records the name and monitors the
  pid, and the node that ran it also links to it. The name goes when the process exits (the
  monitors fire) or when pykv's node goes down (every node that monitors it sees the
  connection go: each node connects to pykv to monitor). Conflicts are resolved as for any
  registration (`random_exit_name/3`: the loser is killed).
- `whereis_name`, `registered_names`, `unregister_name` are global's own functions; `send`
  looks the name up and sends from the Python process, as `global:send/2` does from its caller.
- `gen_server.call(node, (Atom("global"), name), ...)` and `(Atom("via"), registry, name)`
  resolve the name first, as gen:call does (`resolve` below).

The node asked is `at` if given, else the first connected peer (by name) that published
itself in the handshake (a visible BEAM node: hidden BEAM nodes, C nodes, Jinterface and pykv
nodes are not in global's cluster). With no such peer the call raises NoGlobalNode.
On a visible node that runs global itself (otp/global_server.py), `at` not given, every
operation is done there instead, as on any member of the cluster: names registered from
Python then carry global's default resolve method and belong to no BEAM node.
"""

from __future__ import annotations

import asyncio
import inspect as pyinspect
from typing import TYPE_CHECKING, Any

from ..dist import flags as F
from ..errors import Exit, NoProc
from ..process import Process
from ..term import Atom, Pid, TermError, encode, inspect
from . import global_server, rpc
from .global_server import server_of

if TYPE_CHECKING:
    from ..node import Node

GLOBAL, VIA = Atom("global"), Atom("via")
YES, UNDEFINED, BADARG = Atom("yes"), Atom("undefined"), Atom("badarg")
TIMEOUT = 15.0  # a registration waits for global's lock on every node of the cluster


class NoGlobalNode(ConnectionError):
    """No visible BEAM node is connected to run `global` for us."""


def visible_nodes(node: "Node") -> list[Atom]:
    """Connected peers that published themselves (`DFLAG_PUBLISHED`): visible BEAM nodes."""
    return sorted((name for name, peer in node.peers.items()
                   if peer.conn is not None and peer.conn.handshake.peer_flags & F.PUBLISHED),
                  key=lambda name: name.name)


async def _at(node: "Node", at: str | Atom | None) -> Atom:
    if at is not None:
        target = Atom(at) if isinstance(at, str) else at
        await node.connect(target)
        return target
    visible = visible_nodes(node)
    if not visible:
        raise NoGlobalNode("no visible BEAM node is connected: :global runs there (pykv is a hidden node)")
    return visible[0]


def _term(name: Any) -> Any:
    try:
        encode(name)
    except TermError as e:
        raise TypeError(f"a global name must be an Erlang term: {e}") from None
    return name


async def register_name(node: "Node", name: Any, pid: Process | Pid, *, at: str | Atom | None = None,
                        timeout: float = TIMEOUT) -> bool:
    """`global:register_name/2` for `pid` (a process of this node, usually): True for `yes`,
    False for `no` (the name is taken)."""
    target = pid.pid if isinstance(pid, Process) else pid
    if type(target) is not Pid:
        raise TypeError(f"expected a process or a pid, not {pid!r}")
    args = [_term(name), target]  # checked before anything is sent
    if at is None and server_of(node) is not None:
        return await asyncio.wait_for(global_server.register_name(node, args[0], target), timeout)
    reply = await rpc.call(node, await _at(node, at), "global", "register_name_external", args, timeout)
    return reply is YES


async def unregister_name(node: "Node", name: Any, *, at: str | Atom | None = None,
                          timeout: float = TIMEOUT) -> None:
    """`global:unregister_name/1`."""
    args = [_term(name)]
    if at is None and server_of(node) is not None:
        return await asyncio.wait_for(global_server.unregister_name(node, args[0]), timeout)
    await rpc.call(node, await _at(node, at), "global", "unregister_name_external", args, timeout)


async def whereis_name(node: "Node", name: Any, *, at: str | Atom | None = None,
                       timeout: float = 5.0) -> Pid | None:
    """`global:whereis_name/1`: the pid, or None for `undefined`."""
    args = [_term(name)]
    if at is None and (local := server_of(node)) is not None:
        return local.where(args[0])
    reply = await rpc.call(node, await _at(node, at), "global", "whereis_name", args, timeout)
    return reply if type(reply) is Pid else None


async def registered_names(node: "Node", *, at: str | Atom | None = None, timeout: float = 5.0) -> list[Any]:
    """`global:registered_names/0`."""
    if at is None and (local := server_of(node)) is not None:
        return local.registered_names()
    return list(await rpc.call(node, await _at(node, at), "global", "registered_names", [], timeout))


async def send(via: "Process | Node", name: Any, message: Any, *, at: str | Atom | None = None) -> Pid:
    """`global:send/2`: the message goes to the name's pid (returned); raises Exit
    `{badarg, {Name, Msg}}`, as global:send exits, if the name is not registered."""
    node = via.node if isinstance(via, Process) else via
    pid = await whereis_name(node, name, at=at)
    if pid is None:
        raise Exit((BADARG, (name, message)), f"no global name {inspect(name)[:200]}")
    if isinstance(via, Process):
        via.send(pid, message)
    else:
        await node.send(pid, message)
    return pid


async def resolve(node: "Node", server: tuple) -> Pid:
    """The pid behind `{global, Name}` or `{via, Registry, Name}` (gen:call's `where`);
    NoProc if nobody has the name. A via registry is a Python object with a (plain or async)
    `whereis_name(name)`, or the atom `global`."""
    if len(server) == 2 and server[0] is GLOBAL:
        pid: Any = await whereis_name(node, server[1])
    elif len(server) == 3 and server[0] is VIA:
        registry, name = server[1], server[2]
        if registry is GLOBAL:
            pid = await whereis_name(node, name)
        elif callable(getattr(registry, "whereis_name", None)):
            pid = registry.whereis_name(name)
            if pyinspect.isawaitable(pid):
                pid = await pid
        else:
            raise TypeError(f"a via registry must have whereis_name(name) (a BEAM module runs only "
                            f"on the BEAM), not {registry!r}")
    else:
        raise TypeError(f"not a {{global, Name}} or {{via, Module, Name}}: {server!r}")
    if type(pid) is not Pid:
        raise NoProc(server)
    return pid


_background: set[asyncio.Task[Any]] = set()


def cast_later(node: "Node", sender: Pid | None, server: tuple, message: Any) -> None:
    """gen_server:cast to `{global, Name}` / `{via, ...}`: resolved, then sent; a name nobody
    has drops the cast, as gen_server:cast's `catch` does."""
    async def cast() -> None:
        try:
            pid = await resolve(node, server)
        except Exception:
            return
        node.route(sender, pid, message)

    task = asyncio.get_running_loop().create_task(cast())
    _background.add(task)
    task.add_done_callback(_background.discard)
