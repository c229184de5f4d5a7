"""What a connection's negotiated flags let us send: one table, and the code that follows it.

A BEAM node chooses every control message by the flags the peer negotiated, and a peer that
lacks a flag gets what the BEAM gives it (OTP erts/emulator/beam/dist.c: erts_dsig_send_msg,
erts_dsig_send_exit2, erts_dsig_send_monitor, can_send_seqtrace_token; bif.c remote_send;
lib/stdlib/src/io.erl bc_req). `TABLE` says, per choice, which flag decides it and what a
peer without it gets; `Capabilities(flags)` writes each signal accordingly (sans-I/O: terms
in, `(control, payload)` out, or None where the BEAM sends nothing). Peers queue signals
while connecting and ask a Capabilities once the flags are known (pykv/dist/peer.py).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ..term import Atom, Pid, Reference
from . import control as C
from . import flags as F

EMPTY = Atom("")

# A signal as Connection.send takes it: (control,) or (control, payload).
Signal = tuple[Any, ...]


@dataclass(frozen=True)
class Row:
    choice: str
    flag: str          # the flag(s) that decide it (names as in flags.py)
    with_flag: str
    without_flag: str  # what a peer that lacks the flag gets


TABLE: tuple[Row, ...] = (
    Row("message to a pid", "SEND_SENDER",
        "SEND_SENDER {22, From, To} ++ Msg",
        "SEND {2, '', To} ++ Msg"),
    Row("message to an alias", "ALTACT_SIG, ALIAS",
        "ALTACT_SIG_SEND {37, 4, From, Alias} ++ Msg (ALTACT_SIG); else ALIAS_SEND {33, From, Alias} ++ Msg",
        "nothing: the message is dropped, as the peer can hold no alias (dist.c remote_send)"),
    Row("priority message (to an alias, a pid or a name)", "ALTACT_SIG",
        "{37, 1 | 4 (alias) | 8 (name), From, To} ++ Msg",
        "the same message without priority: ALIAS_SEND, SEND(_SENDER) or REG_SEND"),
    Row("exit signal (exit/2) to a pid", "EXIT_PAYLOAD",
        "PAYLOAD_EXIT2 {26, From, To} ++ Reason (a priority one: {37, 16 | 1, From, To} with ALTACT_SIG)",
        "EXIT2 {8, From, To, Reason}"),
    Row("exit signal to an alias (OTP 28 exit_signal/2,3)", "ALTACT_SIG",
        "{37, 16 | 4 [| 1], From, Alias} ++ Reason",
        "nothing: dropped, as erts_dsig_send_exit2 does"),
    Row("link exit", "EXIT_PAYLOAD",
        "PAYLOAD_EXIT {24, From, To} ++ Reason",
        "EXIT {3, From, To, Reason}"),
    Row("monitor and demonitor of a remote pid or name", "DIST_MONITOR, DIST_MONITOR_NAME",
        "MONITOR_P {19, Watcher, PidOrName, Ref}, DEMONITOR_P {20, ...}",
        "nothing (the BEAM needs both flags): the monitor stays local and fires only on nodedown, "
        "with reason noconnection"),
    Row("DOWN to a remote watcher", "DIST_MONITOR, DIST_MONITOR_NAME; EXIT_PAYLOAD",
        "PAYLOAD_MONITOR_P_EXIT {28, Subject, Watcher, Ref} ++ Reason",
        "MONITOR_P_EXIT {21, Subject, Watcher, Ref, Reason} without EXIT_PAYLOAD; nothing without "
        "the monitor flags"),
    Row("spawn request (rpc.call, rpc.cast)", "SPAWN",
        "SPAWN_REQUEST {29, ReqId, From, GroupLeader, {erpc, execute_call, 4}, [monitor]} ++ Args",
        "no spawn request: rpc.call and rpc.cast go to the peer's rex ({'$gen_call', From, {call, M, F, "
        "A, GL}}, {'$gen_cast', {cast, M, F, A, GL}}), as OTP 23/24's rpc did"),
    Row("unlink", "UNLINK_ID",
        "UNLINK_ID {35, Id, From, To}, answered UNLINK_ID_ACK {36, Id, From, To}",
        "refused in the handshake (not_allowed): the flag is mandatory, as in OTP 26+"),
    Row("sequential trace tokens", "BIG_SEQTRACE_LABELS",
        "pykv sends no trace token (it takes no part in seq_trace: a token arriving in a *_TT op or "
        "op 37 is dropped with it, so a trace ends at pykv)",
        "the same: there is no token to leave out"),
    Row("io request to a remote group leader", "UNICODE_IO",
        "{io_request, From, ReplyAs, {put_chars, unicode, Chars}}: pykv sends only formatted text, "
        "which io.erl passes to any group leader unchanged",
        "the same: the flag changes only io.erl's format/write requests (bc_req), never sent by pykv"),
    Row("frame form", "FRAGMENTS, DIST_HDR_ATOM_CACHE",
        "131, 68 and a distribution header, then the terms without their version byte "
        "(dist/framing.py; atom-cache refs are read, never written)",
        "112 (pass through), then each term with its version byte 131, as erl_call and "
        "Jinterface expect"),
    Row("a message longer than 64 KiB", "FRAGMENTS",
        "fragments of 64 KiB (131, 69 then 131, 70), other senders' signals passing between them "
        "(dist/fragments.py)",
        "one whole frame, as the BEAM sends a peer without the flag"),
    Row("native record (RECORD_EXT)", "NATIVE_RECORDS",
        "RECORD_EXT (tag 67), byte for byte as decoded",
        "nothing: sending a Record raises TermError (codec.RecordNotNegotiated) in the sender, "
        "the connection stays; OTP 29 sends RECORD_EXT to such peers anyway, and an OTP 27 "
        "peer then closes the connection as corrupt"),
    Row("term encodings", "EXTENDED_REFERENCES, EXTENDED_PIDS_PORTS, FUN_TAGS, NEW_FUN_TAGS, "
        "EXPORT_PTR_TAG, BIT_BINARIES, NEW_FLOATS, UTF8_ATOMS, MAP_TAG, BIG_CREATION, V4_NC",
        "pids, refs, ports, floats, funs, bitstrings, maps and UTF-8 atoms in their current forms",
        "refused in the handshake (not_allowed): all are mandatory, as in OTP 25/26. (SMALL_ATOM_TAGS "
        "concerns Latin-1 atom tags only, which pykv never writes.)"),
)

# op 37 flag bits (dist.h ERTS_DOP_ALTACT_SIG_FLG_*)
ALTACT_PRIO = 1
ALTACT_TOKEN = 2
ALTACT_ALIAS = 4
ALTACT_NAME = 8
ALTACT_EXIT = 16


class Capabilities:
    """The signals one connection's flags allow. Methods return the signal to hand to
    `Connection.send` (a 1- or 2-tuple), or None where the BEAM would send nothing."""

    __slots__ = ("flags", "send_sender", "alias", "altact", "monitors", "exit_payload",
                 "spawn", "unicode_io")

    def __init__(self, flags: int) -> None:
        self.flags = flags
        self.send_sender = bool(flags & F.SEND_SENDER)
        self.alias = bool(flags & F.ALIAS)
        self.altact = bool(flags & F.ALTACT_SIG)
        # dist.c sends MONITOR_P, DEMONITOR_P and MONITOR_P_EXIT only with both flags
        self.monitors = flags & (F.DIST_MONITOR | F.DIST_MONITOR_NAME) == F.DIST_MONITOR | F.DIST_MONITOR_NAME
        self.exit_payload = bool(flags & F.EXIT_PAYLOAD)
        self.spawn = bool(flags & F.SPAWN)
        self.unicode_io = bool(flags & F.UNICODE_IO)

    def __repr__(self) -> str:
        return f"<Capabilities {' '.join(F.describe(self.flags))}>"

    # -- messages ----------------------------------------------------------------------------

    def message(self, sender: Pid, to: Any, msg: Any, priority: bool = False) -> Signal | None:
        """A message to a remote pid, registered name (an atom) or alias."""
        kind = type(to)
        if kind is Pid and not priority:  # the hot path
            if self.send_sender:
                return (C.SEND_SENDER, sender, to), msg
            return (C.SEND, EMPTY, to), msg
        if kind is Reference:
            if self.altact:
                return (C.ALTACT_SIG_SEND, ALTACT_ALIAS | ALTACT_PRIO if priority else ALTACT_ALIAS,
                        sender, to), msg
            if self.alias:
                return (C.ALIAS_SEND, sender, to), msg
            return None
        if priority and self.altact:
            return (C.ALTACT_SIG_SEND, ALTACT_PRIO | ALTACT_NAME if kind is Atom else ALTACT_PRIO,
                    sender, to), msg
        if kind is Atom:
            return (C.REG_SEND, sender, EMPTY, to), msg
        return self.message(sender, to, msg)  # a priority message to a pid, without op 37

    # -- exits ---------------------------------------------------------------------------------

    def link_exit(self, sender: Pid, to: Pid, reason: Any) -> Signal:
        if self.exit_payload:
            return (C.PAYLOAD_EXIT, sender, to), reason
        return ((C.EXIT, sender, to, reason),)

    def exit2(self, sender: Pid, to: Pid | Reference, reason: Any, priority: bool = False) -> Signal | None:
        """exit/2 (exit_signal/2,3 in OTP 29) to a pid or, OTP 28+, an alias."""
        alias = type(to) is Reference
        if alias or priority:
            if self.altact:
                bits = ALTACT_EXIT | (ALTACT_ALIAS if alias else 0) | (ALTACT_PRIO if priority else 0)
                return (C.ALTACT_SIG_SEND, bits, sender, to), reason
            if alias:
                return None
        if self.exit_payload:
            return (C.PAYLOAD_EXIT2, sender, to), reason
        return ((C.EXIT2, sender, to, reason),)

    # -- links -------------------------------------------------------------------------------

    def link(self, local: Pid, remote: Pid) -> Signal:
        return ((C.LINK, local, remote),)

    def unlink(self, uid: int, local: Pid, remote: Pid) -> Signal:
        return ((C.UNLINK_ID, uid, local, remote),)  # UNLINK_ID is mandatory (flags.MANDATORY)

    def unlink_ack(self, uid: int, local: Pid, remote: Pid) -> Signal:
        return ((C.UNLINK_ID_ACK, uid, local, remote),)

    # -- monitors ----------------------------------------------------------------------------

    def monitor(self, watcher: Pid, target: Pid | Atom, ref: Reference) -> Signal | None:
        return ((C.MONITOR_P, watcher, target, ref),) if self.monitors else None

    def demonitor(self, watcher: Pid, target: Pid | Atom, ref: Reference) -> Signal | None:
        return ((C.DEMONITOR_P, watcher, target, ref),) if self.monitors else None

    def monitor_exit(self, subject: Pid | Atom, watcher: Pid, ref: Reference, reason: Any) -> Signal | None:
        if not self.monitors:
            return None
        if self.exit_payload:
            return (C.PAYLOAD_MONITOR_P_EXIT, subject, watcher, ref), reason
        return ((C.MONITOR_P_EXIT, subject, watcher, ref, reason),)

    # -- spawn -------------------------------------------------------------------------------

    def spawn_request(self, req_id: Reference, sender: Pid, leader: Pid, mfa: tuple, opts: list,
                      args: list) -> Signal | None:
        if not self.spawn:
            return None
        return (C.SPAWN_REQUEST, req_id, sender, leader, mfa, opts), args

    def spawn_reply(self, req_id: Reference, to: Pid, flags: int, result: Any) -> Signal:
        return ((C.SPAWN_REPLY, req_id, to, flags, result),)


# What a peer's signals are checked against while it is still connecting: our own flags, so
# a payload with no term form fails in the sender, at once (peer.py).
OURS = Capabilities(F.OURS)
