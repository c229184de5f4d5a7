"""What the control messages a peer sends do on this node (OTP erts/emulator/beam/dist.c,
erts_net_message; shapes in erts/doc "Distribution Protocol" and wire-notes). Node.dispatch
looks the operation up in HANDLERS; a handler raising ValueError, TypeError, IndexError or
AttributeError has met a malformed message, and that connection is closed. What goes out
is the peer's to write (dist/peer.py, dist/capabilities.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable

from .atoms import DOWN_TAG, NOPROC, PROCESS
from .dist import control as C
from .dist.capabilities import ALTACT_ALIAS, ALTACT_EXIT, ALTACT_NAME, ALTACT_PRIO, ALTACT_TOKEN
from .dist.connection import _NO_PAYLOAD
from .dist.peer import Peer
from .process import Process
from .term import Atom, Pid, Reference

if TYPE_CHECKING:
    from .node import Node

Handler = Callable[["Node", Peer, tuple, Any], None]


def local_process(node: "Node", pid: Any) -> Process | None:
    """The live local process a pid names (None if gone, or an old incarnation's); a
    non-pid is a malformed control message."""
    if type(pid) is not Pid:
        raise ValueError("expected a pid")
    return node.processes.get(pid) if pid.node is node.name else None


def carried(payload: Any) -> Any:
    """The message (or exit reason) that must follow this kind of control message."""
    if payload is _NO_PAYLOAD:
        raise ValueError("the message that must follow it is missing")
    return payload


def on_send(node: "Node", peer: Peer, control: tuple, message: Any) -> None:
    proc = local_process(node, control[2])  # {2|22, _, To} and the _TT forms {12|23, _, To, Token}
    message = carried(message)
    if proc is not None:
        proc._deliver(message)


def on_reg_send(node: "Node", peer: Peer, control: tuple, message: Any) -> None:
    name = control[3]
    message = carried(message)
    proc = node.registered.get(name)
    if proc is not None:
        proc._deliver(message)


def on_alias_send(node: "Node", peer: Peer, control: tuple, message: Any) -> None:
    node.deliver_to_alias(control[2], carried(message), False)


def on_altact_sig_send(node: "Node", peer: Peer, control: tuple, payload: Any) -> None:
    """OTP 28's op 37: {37, Flags, From, To[, Token]} ++ message or exit reason. Flags may
    grow (only the low byte means anything yet) and so may the tuple (dist.c)."""
    flags, sender, to = control[1], control[2], control[3]
    if type(flags) is not int or flags < 0 or type(sender) is not Pid:
        raise ValueError("flags must be a non-negative integer and the sender a pid")
    if flags & ALTACT_TOKEN and len(control) < 5:
        raise ValueError("the token flag is set but there is no token")
    payload = carried(payload)
    priority = bool(flags & ALTACT_PRIO)
    if flags & ALTACT_ALIAS:
        if type(to) is not Reference or flags & ALTACT_NAME:
            raise ValueError("an alias signal needs a reference, and no name flag")
        if flags & ALTACT_EXIT:
            node.exit_through_alias(sender, to, payload, priority)
        else:
            node.deliver_to_alias(to, payload, priority)
        return
    if flags & ALTACT_NAME:
        if type(to) is not Atom:
            raise ValueError("a name signal needs an atom")
        proc = node.registered.get(to)
    else:
        proc = local_process(node, to)
    # priority counts only through a priority alias: to a pid or name it is ordinary
    if proc is None:
        return
    if flags & ALTACT_EXIT:
        proc.exit_signal(sender, payload, from_link=False)
    else:
        proc._deliver(payload)


def on_link(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, remote, local = control
    proc = local_process(node, local)
    if proc is None or not proc.alive:
        peer.link_exit(local, remote, NOPROC)
        return
    proc.links.add(remote)
    peer.links.add((local, remote))


def on_unlink_id(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, uid, remote, local = control
    peer.unlink_ack(uid, local, remote)  # before any other signal to remote
    if (local, remote) not in peer.unlinking:
        peer.links.discard((local, remote))
        proc = local_process(node, local)
        if proc is not None:
            proc.links.discard(remote)


def on_unlink_id_ack(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, uid, remote, local = control
    if peer.unlinking.get((local, remote)) == uid:
        del peer.unlinking[(local, remote)]


def on_unlink_old(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, remote, local = control
    peer.links.discard((local, remote))
    proc = local_process(node, local)
    if proc is not None:
        proc.links.discard(remote)


def on_exit(node: "Node", peer: Peer, control: tuple, payload: Any) -> None:
    remote, local = control[1], control[2]
    reason = payload if payload is not _NO_PAYLOAD else control[-1]
    if (local, remote) in peer.unlinking:
        return  # we unlinked first: the link is gone for us
    peer.links.discard((local, remote))
    proc = local_process(node, local)
    if proc is not None and remote in proc.links:
        proc.links.discard(remote)
        proc.exit_signal(remote, reason, from_link=True)


def on_exit2(node: "Node", peer: Peer, control: tuple, payload: Any) -> None:
    remote, local = control[1], control[2]
    reason = payload if payload is not _NO_PAYLOAD else control[-1]
    proc = local_process(node, local)
    if proc is not None:
        proc.exit_signal(remote, reason, from_link=False)


def on_monitor(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, watcher, target, ref = control
    proc = node.registered.get(target) if type(target) is Atom else local_process(node, target)
    if proc is None or not proc.alive:
        # answer at once, or a GenServer.call waits out its whole timeout (wire-notes)
        peer.monitor_exit(target, watcher, ref, NOPROC)
        return
    proc.monitored_by[ref] = (watcher, target)
    peer.monitors_in[ref] = proc.pid


def on_demonitor(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, _watcher, target, ref = control
    local = peer.monitors_in.pop(ref, None)
    if local is not None:
        proc = node.processes.get(local)
        if proc is not None:
            proc.monitored_by.pop(ref, None)


def on_monitor_exit(node: "Node", peer: Peer, control: tuple, payload: Any) -> None:
    subject, local, ref = control[1], control[2], control[3]
    reason = payload if payload is not _NO_PAYLOAD else control[4]
    proc = node.processes.get(local) if type(local) is Pid else None
    if peer.monitors_out.pop(ref, None) is None or proc is None:
        return
    target = proc.monitors.pop(ref, None)
    if target is None:
        return
    obj = target if isinstance(target, (Pid, tuple)) else subject
    proc._deliver((DOWN_TAG, ref, PROCESS, obj, reason))


def on_group_leader(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    _, leader, local = control
    proc = local_process(node, local)
    if proc is not None:
        proc.group_leader = leader


def on_spawn_request(node: "Node", peer: Peer, control: tuple, args: Any) -> None:
    if node.spawn_request_handler is not None:
        node.spawn_request_handler(node, peer, control, args)
        return
    peer.spawn_reply(control[1], control[2], 0, Atom("notsup"))


def on_spawn_reply(node: "Node", peer: Peer, control: tuple, _: Any) -> None:
    # {31, ReqId, To, Flags, Result}: delivered to the requester as a message, like
    # erlang:spawn_request/5 does; the rpc client in otp/ waits for it.
    _, req_id, to, flags, result = control[:5]
    if req_id in peer.spawn_ignored:
        peer.spawn_ignored.discard(req_id)
        return
    proc = local_process(node, to)
    if proc is not None:
        if flags & C.SPAWN_FLAG_LINK and type(result) is Pid:
            proc.links.add(result)
            peer.links.add((to, result))
        if flags & C.SPAWN_FLAG_MONITOR and type(result) is Pid:
            proc.monitors[req_id] = result
            peer.monitors_out[req_id] = proc
        proc._deliver((Atom("spawn_reply"), req_id, flags, result))


HANDLERS: dict[int, Handler] = {
    C.SEND: on_send, C.SEND_TT: on_send, C.SEND_SENDER: on_send, C.SEND_SENDER_TT: on_send,
    C.REG_SEND: on_reg_send, C.REG_SEND_TT: on_reg_send,
    C.ALIAS_SEND: on_alias_send, C.ALIAS_SEND_TT: on_alias_send,
    C.ALTACT_SIG_SEND: on_altact_sig_send,
    C.LINK: on_link, C.UNLINK: on_unlink_old, C.UNLINK_ID: on_unlink_id, C.UNLINK_ID_ACK: on_unlink_id_ack,
    C.EXIT: on_exit, C.EXIT_TT: on_exit, C.PAYLOAD_EXIT: on_exit, C.PAYLOAD_EXIT_TT: on_exit,
    C.EXIT2: on_exit2, C.EXIT2_TT: on_exit2, C.PAYLOAD_EXIT2: on_exit2, C.PAYLOAD_EXIT2_TT: on_exit2,
    C.MONITOR_P: on_monitor, C.DEMONITOR_P: on_demonitor,
    C.MONITOR_P_EXIT: on_monitor_exit, C.PAYLOAD_MONITOR_P_EXIT: on_monitor_exit,
    C.GROUP_LEADER: on_group_leader,
    C.SPAWN_REQUEST: on_spawn_request, C.SPAWN_REQUEST_TT: on_spawn_request,
    C.SPAWN_REPLY: on_spawn_reply, C.SPAWN_REPLY_TT: on_spawn_reply,
}
