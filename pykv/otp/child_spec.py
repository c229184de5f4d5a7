"""Child specifications, in the vocabulary Elixir users know (`Supervisor` module docs):
`id`, `start`, `restart` (permanent | transient | temporary), `shutdown` (milliseconds |
brutal_kill | infinity), `type` (worker | supervisor), `modules`.

A Python child's `start` is a callable given the supervisor process; it returns the started
Process (or its pid, `(:ok, pid)`, `(:ok, pid, info)`, or None for `:ignore`), or an awaitable
of one. A child from a BEAM caller (`Supervisor.start_child/2`) has an MFA `start`, which
runs only if the node exports that function (see `start_mfa`).

The term forms (`as_term`, `record`, `offender`) follow OTP's supervisor.erl: what
`:supervisor.get_childspec/2` returns, the `#child{}` record in errors and in `:sys` state,
and the `offender` list of supervisor reports.
"""

from __future__ import annotations

import inspect as pyinspect
import asyncio
from typing import Any, Callable, Iterable

from ..atoms import DOWN_TAG, ERROR, EXIT_TAG, KILL, KILLED, NOPROC, NORMAL, OK, SHUTDOWN
from ..errors import Exit, exit_reason
from ..exports import UndefinedFunction, module_atom
from ..process import Process
from ..term import Atom, Pid
from .apply import apply_mfa

PERMANENT, TRANSIENT, TEMPORARY = Atom("permanent"), Atom("transient"), Atom("temporary")
WORKER, SUPERVISOR = Atom("worker"), Atom("supervisor")
BRUTAL_KILL, INFINITY = Atom("brutal_kill"), Atom("infinity")
DYNAMIC, UNDEFINED, IGNORE = Atom("dynamic"), Atom("undefined"), Atom("ignore")
START_LINK = Atom("start_link")
EXIT_ATOM = Atom("EXIT")

_RESTARTS = {PERMANENT, TRANSIENT, TEMPORARY}
_TYPES = {WORKER, SUPERVISOR}


class StartError(Exit):
    """A process (or a supervisor's child) failed to start; `reason` is the BEAM reason,
    as `{:error, reason}` from a start_link."""


class ChildSpec:
    """One child of a supervisor.

        ChildSpec("worker1", lambda sup: Worker.start(sup.node, link=sup), restart="transient")

    Usually made by a class: `Registry.child_spec(name="KV.Registry")`. Strings are taken
    as atoms (`"KV.Registry"` is the alias `:"Elixir.KV.Registry"`, `"temporary"` is
    `:temporary`); `shutdown` is in milliseconds, as in Elixir. `mfa` is how a Python start
    shows to BEAM tools (`get_childspec`, reports): `{Module, :start_link, args}`."""

    __slots__ = ("id", "start", "restart", "shutdown", "type", "modules", "significant", "mfa")

    def __init__(self, id: Any, start: Callable[["Process"], Any] | tuple[Any, Any, list[Any]], *,
                 restart: str | Atom = PERMANENT, shutdown: int | str | Atom | None = None,
                 type: str | Atom = WORKER, modules: list[Any] | str | Atom | None = None,
                 mfa: tuple[Any, Any, Any] | None = None, significant: bool = False) -> None:
        self.id = module_atom(id) if isinstance(id, str) else id
        self.restart = _atom(restart)
        if self.restart not in _RESTARTS:
            raise ValueError(f"restart must be permanent, transient or temporary, not {restart!r}")
        self.type = _atom(type)
        if self.type not in _TYPES:
            raise ValueError(f"type must be worker or supervisor, not {type!r}")
        if shutdown is None:
            shutdown = 5000 if self.type is WORKER else INFINITY
        shutdown = _atom(shutdown) if isinstance(shutdown, str) else shutdown
        if not (shutdown in (BRUTAL_KILL, INFINITY) or (type_is_int(shutdown) and shutdown >= 0)):
            raise ValueError(f"shutdown must be milliseconds, brutal_kill or infinity, not {shutdown!r}")
        self.shutdown = shutdown
        if callable(start):
            self.start: Any = start
            self.mfa = mfa if mfa is not None else (UNDEFINED, START_LINK, [])
        else:
            if not (isinstance(start, tuple) and len(start) == 3 and isinstance(start[0], Atom)
                    and isinstance(start[1], Atom) and isinstance(start[2], list)):
                raise ValueError(f"start must be a callable or {{module, function, args}}, not {start!r}")
            self.start = start
            self.mfa = start
        if modules is None:
            modules = [self.mfa[0]]
        elif isinstance(modules, (str, Atom)):
            modules = DYNAMIC if _atom_or_module(modules) is DYNAMIC else [_atom_or_module(modules)]
        else:
            modules = [_atom_or_module(m) for m in modules]
        self.modules = modules
        self.significant = significant

    def __repr__(self) -> str:
        from ..term import inspect
        return f"<ChildSpec {inspect(self.id)} {self.restart.name} {self.type.name}>"

    def replace(self, **changes: Any) -> "ChildSpec":
        """A copy with some fields changed, as Elixir's `Supervisor.child_spec(spec, overrides)`."""
        fields = {name: getattr(self, name) for name in self.__slots__}
        fields.update(changes)
        return ChildSpec(fields.pop("id"), fields.pop("start"), **fields)

    # -- term forms (OTP supervisor.erl) ---------------------------------------------------------

    def as_term(self) -> dict[Atom, Any]:
        """`:supervisor.get_childspec/2`'s map (child_to_spec)."""
        return {Atom("id"): self.id, Atom("start"): self.mfa, Atom("restart"): self.restart,
                Atom("significant"): self.significant, Atom("shutdown"): self.shutdown,
                Atom("type"): self.type, Atom("modules"): self.modules}

    def record(self, pid: Any) -> tuple[Any, ...]:
        """The `#child{}` record: `{child, Pid, Id, MFArgs, Restart, Significant, Shutdown,
        Type, Modules}` (OTP 25 to 29), as it appears in start_child errors and :sys state."""
        return (Atom("child"), pid, self.id, self.mfa, self.restart, self.significant,
                self.shutdown, self.type, self.modules)

    def offender(self, pid: Any, id: Any = None, mfa: Any = None) -> list[tuple[Atom, Any]]:
        """The `offender` of a supervisor report (extract_child)."""
        return [(Atom("pid"), pid), (Atom("id"), self.id if id is None else id),
                (Atom("mfargs"), self.mfa if mfa is None else mfa), (Atom("restart_type"), self.restart),
                (Atom("significant"), self.significant), (Atom("shutdown"), self.shutdown),
                (Atom("child_type"), self.type)]


def type_is_int(value: Any) -> bool:
    return type(value) is int


def _atom(value: str | Atom) -> Atom:
    return Atom(value) if isinstance(value, str) else value


def _atom_or_module(value: str | Atom) -> Atom:
    return module_atom(value) if isinstance(value, str) else value


# -- child specs from BEAM callers ------------------------------------------------------------

def from_term(spec: Any) -> ChildSpec:
    """A child spec sent by a BEAM caller: the map Elixir's `Supervisor.child_spec/2` makes,
    or the old 6-tuple `{Id, {M, F, A}, Restart, Shutdown, Type, Modules}`. Raises ValueError
    with OTP's reason term (`{:invalid_child_spec, spec}`, `{:invalid_mfa, mfa}`...) in args[0]."""
    if type(spec) is tuple and len(spec) == 6:
        spec = {Atom("id"): spec[0], Atom("start"): spec[1], Atom("restart"): spec[2],
                Atom("shutdown"): spec[3], Atom("type"): spec[4], Atom("modules"): spec[5]}
    if type(spec) is not dict:
        raise ValueError((Atom("invalid_child_spec"), spec))
    if Atom("id") not in spec:
        raise ValueError(Atom("missing_id"))
    if Atom("start") not in spec:
        raise ValueError(Atom("missing_start"))
    return _checked(spec)


def _checked(spec: dict[Any, Any]) -> ChildSpec:
    start = spec[Atom("start")]
    if not (type(start) is tuple and len(start) == 3 and type(start[0]) is Atom
            and type(start[1]) is Atom and type(start[2]) is list):
        raise ValueError((Atom("invalid_mfa"), start))
    restart = spec.get(Atom("restart"), PERMANENT)
    if restart not in _RESTARTS:
        raise ValueError((Atom("invalid_restart_type"), restart))
    type_ = spec.get(Atom("type"), WORKER)
    if type_ not in _TYPES:
        raise ValueError((Atom("invalid_child_type"), type_))
    shutdown = spec.get(Atom("shutdown"), 5000 if type_ is WORKER else INFINITY)
    if not (shutdown in (BRUTAL_KILL, INFINITY) or (type(shutdown) is int and shutdown >= 0)):
        raise ValueError((Atom("invalid_shutdown"), shutdown))
    modules = spec.get(Atom("modules"), [start[0]])
    if not (modules is DYNAMIC or (type(modules) is list and all(type(m) is Atom for m in modules))):
        raise ValueError((Atom("invalid_modules"), modules))
    significant = spec.get(Atom("significant"), False)
    if significant is not False:
        # auto_shutdown is never here: OTP refuses significant children then
        raise ValueError((Atom("bad_combination"), [(Atom("auto_shutdown"), Atom("never")), (Atom("significant"), True)]))
    return ChildSpec(spec[Atom("id")], start, restart=restart, shutdown=shutdown, type=type_, modules=modules)


# -- starting a child -------------------------------------------------------------------------

class StartFailed(Exception):
    """A child's start failed; `reason` is what OTP's do_start_child_i would return in
    `{error, Reason}` (an exception raised by the start is `{:EXIT, exit_reason}`)."""

    def __init__(self, reason: Any) -> None:
        super().__init__(reason)
        self.reason = reason


def _result_pid(result: Any) -> Pid | None:
    """The started child's pid from what a start returned; None for ignore."""
    if isinstance(result, Process):
        return result.pid
    if type(result) is Pid:
        return result
    if result is None or result is IGNORE:
        return None
    if type(result) is tuple and len(result) in (2, 3) and result[0] is OK and type(result[1]) is Pid:
        return result[1]
    if type(result) is tuple and len(result) == 2 and result[0] is ERROR:
        raise StartFailed(result[1])
    raise StartFailed(result)  # as do_start_child_i: `What -> {error, What}`


def _failure(error: BaseException, caught: bool) -> StartFailed:
    if isinstance(error, StartFailed):
        return error
    if isinstance(error, StartError):  # a start_link that returned {error, Reason}
        return StartFailed(error.reason)
    reason = exit_reason(error)  # type: ignore[arg-type]
    return StartFailed((EXIT_ATOM, reason) if caught else reason)


def start_now(sup: "Process", spec: ChildSpec, extra: list[Any] | None = None,
              caught: bool = True) -> Pid | None | Any:
    """Start `spec`'s child from `sup` (linked to it). Returns its pid, None for ignore, or an
    awaitable of either when the start is a coroutine (or an MFA export that needs awaiting).
    Raises StartFailed. `caught`: an exception from the start becomes `{:EXIT, reason}` (as
    supervisor.erl's `catch apply`), else the bare reason (DynamicSupervisor's)."""
    start = spec.start
    try:
        if callable(start):
            result = start(sup, *extra) if extra else start(sup)  # extra_arguments come after it
        else:
            return _start_mfa(sup, start, extra or [], caught)
        if pyinspect.isawaitable(result):
            return _finish(sup, result, caught)
        pid = _result_pid(result)
    except Exception as e:
        raise _failure(e, caught) from e
    if pid is not None:
        sup.link(pid)
    return pid


async def _finish(sup: "Process", pending: Any, caught: bool) -> Pid | None:
    try:
        pid = _result_pid(await pending)
    except Exception as e:
        raise _failure(e, caught) from e
    if pid is not None:
        sup.link(pid)
    return pid


async def _start_mfa(sup: "Process", mfa: tuple[Any, Any, list[Any]], extra: list[Any],
                     caught: bool) -> Pid | None:
    """A BEAM caller's `{M, F, A}` start: only an exported function can run (nothing is
    imported or evaluated); anything else fails with `undef`, as on a node without that
    module. The export runs as the supervisor (so `current_process()` is its parent) and
    returns `{:ok, pid}` (or a Process)."""
    module, function, args = mfa
    args = list(extra) + list(args)
    try:
        if sup.node.exports.lookup(module, function, len(args)) is None:
            raise UndefinedFunction(module, function, args)
        pid = _result_pid(await apply_mfa(sup, module, function, args))
    except Exception as e:
        raise _failure(e, caught) from e
    if pid is not None:
        sup.link(pid)
    return pid


# -- shutting children down ---------------------------------------------------------------------

CHILD_PROCESS_UNLINKED = Atom("child_process_unlinked")


def _take_exit(sup: "Process", pid: Pid) -> Any:
    """The reason of `pid`'s exit signal waiting in `sup`'s mailbox (removed), or None."""
    mailbox = sup.mailbox
    for i, message in enumerate(mailbox):
        if type(message) is tuple and len(message) == 3 and message[0] is EXIT_TAG and message[1] == pid:
            del mailbox[i]
            sup._taken += 1
            return message[2]
    return None


def _expected(spec: ChildSpec, reason: Any) -> bool:
    """Did the child end as a shutdown should make it end? (supervisor.erl's shutdown/1)"""
    if reason is SHUTDOWN:
        return True
    if spec.shutdown is BRUTAL_KILL and reason is KILLED:
        return True
    if spec.restart is not PERMANENT and (reason is NORMAL or (
            type(reason) is tuple and len(reason) == 2 and reason[0] is SHUTDOWN)):
        return True
    return False


async def shutdown(sup: "Process", children: Iterable[tuple[Pid, ChildSpec]]) -> list[tuple[Pid, ChildSpec, Any]]:
    """Shut `children` down as a supervisor does: `:shutdown` (`:kill` for brutal_kill), then
    `:kill` for any still alive after its shutdown time. All are signalled first and waited
    for together (a static supervisor passes one at a time, in reverse start order). Returns
    those that ended with another reason than the shutdown asked for (OTP's shutdown_error).

    A local child that does not trap exits ends at once, so nothing is awaited for it: 300,000
    buckets stop in one pass, without a monitor or an exit message each."""
    node = sup.node
    here = node.name
    processes = node.processes
    errors: list[tuple[Pid, ChildSpec, Any]] = []
    waiting: dict[Any, tuple[Pid, ChildSpec]] = {}
    loop_time = None
    deadlines: dict[Any, float] = {}
    for pid, spec in children:
        signal = KILL if spec.shutdown is BRUTAL_KILL else SHUTDOWN
        if pid.node is here:
            proc = processes.get(pid)
            if proc is None or not proc.alive:  # ended already: its exit is in our mailbox
                reason = _take_exit(sup, pid)
                reason = CHILD_PROCESS_UNLINKED if reason is None else reason
                if not _expected(spec, reason):
                    errors.append((pid, spec, reason))
                continue
            # unlinked first, so that no exit message comes back: its reason is the
            # process's own exit_reason, or the DOWN of a monitor when it takes its time
            sup.links.discard(pid)
            proc.links.discard(sup.pid)
            proc.exit_signal(sup.pid, signal, from_link=False)
            if not proc.alive:
                if not _expected(spec, proc.exit_reason):
                    errors.append((pid, spec, proc.exit_reason))
                continue
            ref = sup.monitor(pid)
        else:
            ref = sup.monitor(pid)
            sup.unlink(pid)
            node.send_exit(sup.pid, pid, signal)
        waiting[ref] = (pid, spec)
        if type(spec.shutdown) is int and signal is SHUTDOWN:
            loop_time = loop_time if loop_time is not None else asyncio.get_running_loop().time()
            deadlines[ref] = loop_time + spec.shutdown / 1000
    if not waiting:
        return errors

    loop = asyncio.get_running_loop()

    def down(m: Any) -> bool:
        return type(m) is tuple and len(m) == 5 and m[0] is DOWN_TAG and m[1] in waiting

    while waiting:
        soonest = min(deadlines.values(), default=None)
        timeout = None if soonest is None else max(0.0, soonest - loop.time())
        try:
            message = await sup.receive(down, timeout)
        except TimeoutError:
            now = loop.time()
            for ref, deadline in list(deadlines.items()):
                if deadline <= now:  # past its shutdown time: brutal kill
                    del deadlines[ref]
                    node.send_exit(sup.pid, waiting[ref][0], KILL)
            continue
        pid, spec = waiting.pop(message[1])
        deadlines.pop(message[1], None)
        reason = message[4]
        if reason is NOPROC:  # it was gone before we asked: its exit may be in our mailbox
            reason = _take_exit(sup, pid) or CHILD_PROCESS_UNLINKED
        else:
            _take_exit(sup, pid)
        if not _expected(spec, reason):
            errors.append((pid, spec, reason))
    return errors
