"""The distribution handshake from bytes alone (sans-I/O `pykv.dist.handshake`).

Message layouts: OTP erts/doc "Distribution Protocol" (v6, OTP 23+; v5 names from older
initiators) and wire-notes ("Handshake"). Golden digests were computed by a real BEAM:
`erlang:md5([Cookie | integer_to_list(Challenge)])`, as dist_util:gen_digest/2 does.
"""

from __future__ import annotations

import struct
from types import SimpleNamespace

import pytest

from conftest import run
from pykv import Atom, Node, Pid
from pykv.node import Peer
from pykv.dist import flags as F
from pykv.dist.handshake import (
    Completed, Handshake, HandshakeError, PeerAlive, PeerNamed, Role, digest,
)

A = "alpha@host"   # the initiator
B = "beta@host"    # the acceptor
COOKIE = "SECRETCOOKIE"


def frame(payload: bytes) -> bytes:
    """A handshake message with its 2-byte length."""
    return struct.pack(">H", len(payload)) + payload


def frames(data: bytes) -> list[bytes]:
    """Split 2-byte-length-framed handshake output into its messages (all must be whole)."""
    out = []
    while data:
        (length,) = struct.unpack_from(">H", data)
        assert len(data) >= 2 + length, f"partial message in {data!r}"
        out.append(data[2:2 + length])
        data = data[2 + length:]
    return out


def initiator(**kw) -> Handshake:
    args = dict(name=A, cookie=COOKIE, creation=0x11223344, peer_name=B, challenge=0x0BADF00D)
    args.update(kw)
    return Handshake(Role.INITIATOR, **args)


def acceptor(**kw) -> Handshake:
    args = dict(name=B, cookie=COOKIE, creation=0x55667788, challenge=0x7EEDBEEF)
    args.update(kw)
    return Handshake(Role.ACCEPTOR, **args)


def name_message(name: str = A, flags: int = F.OURS, creation: int = 0x11223344) -> bytes:
    raw = name.encode()
    return b"N" + struct.pack(">QIH", flags, creation, len(raw)) + raw


def challenge_message(name: str = B, flags: int = F.OURS, challenge: int = 0x7EEDBEEF,
                      creation: int = 0x55667788) -> bytes:
    raw = name.encode()
    return b"N" + struct.pack(">QIIH", flags, challenge, creation, len(raw)) + raw


def pump(init: Handshake, acc: Handshake, status: str = "ok") -> dict[str, list[object]]:
    """Run both state machines against each other until both are done."""
    events: dict[str, list[object]] = {"init": [], "acc": []}
    init.start()
    for _ in range(20):
        out = init.data_to_send()
        if out:
            for ev in acc.receive_data(out):
                events["acc"].append(ev)
                if isinstance(ev, PeerNamed):
                    acc.send_status(status)
        out = acc.data_to_send()
        if out:
            for ev in init.receive_data(out):
                events["init"].append(ev)
                if isinstance(ev, PeerAlive):
                    init.answer_alive(True)
        if init.done and acc.done:
            return events
    raise AssertionError(f"handshake did not complete: {events}")


# -- the happy path --------------------------------------------------------------------------

def test_full_handshake_between_initiator_and_acceptor():
    init, acc = initiator(), acceptor()
    events = pump(init, acc)
    named = [e for e in events["acc"] if isinstance(e, PeerNamed)]
    assert named == [PeerNamed(A, F.OURS, 0x11223344)]
    assert events["init"] == [Completed(B, F.OURS, 0x55667788)]
    assert events["acc"][-1] == Completed(A, F.OURS, 0x11223344)
    assert init.done and acc.done
    assert init.data_to_send() == b"" and acc.data_to_send() == b""


def test_name_message_bytes_are_v6():
    init = initiator(name="foo@host", creation=0x01020304)
    init.start()
    sent = init.data_to_send()
    assert sent == (b"\x00\x17N" + struct.pack(">Q", F.OURS) + b"\x01\x02\x03\x04"
                    + b"\x00\x08foo@host")


def test_our_flags_cover_the_otp25_and_otp26_mandatory_sets():
    otp25_mandatory = 0x1070F94           # wire-notes, from dist.hrl
    otp26_additions = F.V4_NC | F.UNLINK_ID
    assert F.OURS & otp25_mandatory == otp25_mandatory
    assert F.OURS & otp26_additions == otp26_additions
    for wanted in (F.DIST_MONITOR, F.DIST_MONITOR_NAME, F.SPAWN, F.ALIAS, F.EXIT_PAYLOAD,
                   F.SEND_SENDER, F.HANDSHAKE_23, F.BIG_CREATION):
        assert F.OURS & wanted, F.describe(wanted)
    assert not F.OURS & F.PUBLISHED       # hidden by default, as C nodes are
    assert F.OURS & F.FRAGMENTS           # with it, the distribution header (dist/framing.py)


def test_acceptor_status_and_challenge_bytes():
    acc = acceptor()
    [named] = acc.receive_data(frame(name_message()))
    assert named == PeerNamed(A, F.OURS, 0x11223344)
    assert acc.data_to_send() == b""           # nothing until the status is decided
    acc.send_status("ok")
    status, challenge = frames(acc.data_to_send())
    assert status == b"sok"
    assert challenge == (b"N" + struct.pack(">Q", F.OURS) + struct.pack(">I", 0x7EEDBEEF)
                         + struct.pack(">I", 0x55667788) + b"\x00\x09beta@host")


def test_digest_matches_the_beam():
    # erlang:md5(["SECRETCOOKIE" | integer_to_list(3735928559)]) on OTP 25
    assert digest(0xDEADBEEF, "SECRETCOOKIE") == bytes.fromhex("FDDA8529AB3D17578C6D4C2F82ED0C32")
    assert digest(1, "abc") == bytes.fromhex("23734CD52AD4A4FB877D8A1E26E5DF5F")


def test_challenge_reply_and_ack_bytes():
    init = initiator(challenge=0x01020304)
    init.start()
    init.data_to_send()
    assert init.receive_data(frame(b"sok") + frame(challenge_message(challenge=0xDEADBEEF))) == []
    [reply] = frames(init.data_to_send())
    assert reply == b"r" + b"\x01\x02\x03\x04" + bytes.fromhex("FDDA8529AB3D17578C6D4C2F82ED0C32")

    acc = acceptor(challenge=0xDEADBEEF)
    acc.receive_data(frame(name_message()))
    acc.send_status("ok")
    acc.data_to_send()
    [done] = acc.receive_data(frame(reply))
    assert done == Completed(A, F.OURS, 0x11223344)
    [ack] = frames(acc.data_to_send())
    assert ack == b"a" + digest(0x01020304, COOKIE)


def test_flags_in_force_are_ours_and_theirs():
    theirs = F.OURS & ~(F.SPAWN | F.ALIAS | F.DIST_MONITOR_NAME)
    init, acc = initiator(flags=theirs), acceptor()
    events = pump(init, acc)
    assert events["init"][-1].flags == theirs
    assert events["acc"][-1].flags == theirs
    assert not events["acc"][-1].flags & F.SPAWN


def test_input_split_into_single_bytes_and_leftover_frames():
    init, acc = initiator(), acceptor()
    init.start()
    events = []
    for byte in init.data_to_send():
        events += acc.receive_data(bytes([byte]))
    assert [type(e) for e in events] == [PeerNamed]
    acc.send_status("ok")
    for byte in acc.data_to_send():
        assert init.receive_data(bytes([byte])) == []
    reply = init.data_to_send()
    first_frame = b"\x00\x00\x00\x00" + b"\x00\x00\x00\x05p\x83j\x83j"  # a tick, then a frame
    [done] = acc.receive_data(reply + first_frame)
    assert isinstance(done, Completed)
    assert acc.leftover() == first_frame
    assert acc.leftover() == b""


# -- cookies -------------------------------------------------------------------------------

def test_wrong_cookie_is_refused_by_the_acceptor():
    init, acc = initiator(cookie="mine"), acceptor(cookie="theirs")
    init.start()
    acc.receive_data(init.data_to_send())
    acc.send_status("ok")
    init.receive_data(acc.data_to_send())
    with pytest.raises(HandshakeError, match="wrong cookie"):
        acc.receive_data(init.data_to_send())
    assert acc.data_to_send() == b""       # no ack: nothing that proves our cookie
    assert not acc.done


def test_wrong_cookie_is_refused_by_the_initiator():
    # An acceptor that does not know the cookie cannot produce the right ack.
    init = initiator(cookie="mine")
    init.start()
    init.data_to_send()
    init.receive_data(frame(b"sok") + frame(challenge_message()))
    reply = frames(init.data_to_send())[0]
    (their_challenge,) = struct.unpack_from(">I", reply, 1)
    assert init.receive_data(b"") == []
    with pytest.raises(HandshakeError, match="cookies differ"):
        init.receive_data(frame(b"a" + digest(their_challenge, "theirs")))
    assert not init.done


def test_a_corrupted_ack_is_refused():
    init, acc = initiator(), acceptor()
    init.start()
    acc.receive_data(init.data_to_send())
    acc.send_status("ok")
    init.receive_data(acc.data_to_send())
    acc.receive_data(init.data_to_send())
    ack = bytearray(acc.data_to_send())
    ack[-1] ^= 0x01
    with pytest.raises(HandshakeError):
        init.receive_data(bytes(ack))


def test_an_echoed_challenge_is_refused():
    # A peer that replays our own challenge back (a reflection attack) is refused.
    acc = acceptor(challenge=1234)
    acc.receive_data(frame(name_message()))
    acc.send_status("ok")
    acc.data_to_send()
    with pytest.raises(HandshakeError, match="echoed"):
        acc.receive_data(frame(b"r" + struct.pack(">I", 1234) + digest(1234, COOKIE)))


# -- capability flags ------------------------------------------------------------------------

@pytest.mark.parametrize("missing", F.describe(F.MANDATORY))
def test_missing_mandatory_flag_gets_not_allowed(missing):
    flag = getattr(F, missing)
    acc = acceptor()
    with pytest.raises(HandshakeError, match=missing):
        acc.receive_data(frame(name_message(flags=F.OURS & ~flag)))
    assert frames(acc.data_to_send()) == [b"snot_allowed"]


def test_otp25_only_peer_is_refused():
    # OTP 25's mandatory set without OTP 26's V4_NC and UNLINK_ID: we need them too.
    acc = acceptor()
    with pytest.raises(HandshakeError, match="V4_NC"):
        acc.receive_data(frame(name_message(flags=0x1070F94 | F.DIST_MONITOR)))
    assert frames(acc.data_to_send()) == [b"snot_allowed"]


def test_initiator_aborts_when_the_acceptor_lacks_mandatory_flags():
    init = initiator()
    init.start()
    init.data_to_send()
    with pytest.raises(HandshakeError, match="UNLINK_ID"):
        init.receive_data(frame(b"sok") + frame(challenge_message(flags=F.OURS & ~F.UNLINK_ID)))
    assert init.data_to_send() == b""       # no status: the initiator just closes


def test_initiator_refused_with_not_allowed():
    init = initiator()
    init.start()
    with pytest.raises(HandshakeError, match="not_allowed"):
        init.receive_data(frame(b"snot_allowed"))


# -- statuses --------------------------------------------------------------------------------

def test_initiator_told_nok_gives_up():
    init = initiator()
    init.start()
    assert not init.lost_simultaneous
    with pytest.raises(HandshakeError, match="nok"):
        init.receive_data(frame(b"snok"))
    assert init.lost_simultaneous              # the node then waits for the peer's connection


def test_initiator_told_ok_simultaneous_proceeds():
    events = pump(initiator(), acceptor(), status="ok_simultaneous")
    assert isinstance(events["init"][-1], Completed)
    assert isinstance(events["acc"][-1], Completed)


def test_alive_answered_true_continues_the_handshake():
    init, acc = initiator(), acceptor()
    events = pump(init, acc, status="alive")
    assert PeerAlive() in events["init"]
    assert isinstance(events["init"][-1], Completed)
    assert isinstance(events["acc"][-1], Completed)


def test_alive_answered_false_ends_it():
    init, acc = initiator(), acceptor()
    init.start()
    acc.receive_data(init.data_to_send())
    acc.send_status("alive")
    assert init.receive_data(acc.data_to_send()) == [PeerAlive()]
    with pytest.raises(HandshakeError):
        init.answer_alive(False)
    assert frames(init.data_to_send()) == [b"sfalse"]
    with pytest.raises(HandshakeError, match="withdrew"):
        acc.receive_data(frame(b"sfalse"))


def test_unknown_status_is_refused():
    init = initiator()
    init.start()
    with pytest.raises(HandshakeError, match="unknown status"):
        init.receive_data(frame(b"sbogus"))


# -- v5 names from older initiators -----------------------------------------------------------

def v5_name(flags: int, name: str = A) -> bytes:
    return b"n" + struct.pack(">HI", 5, flags & 0xFFFFFFFF) + name.encode()


def test_v5_name_with_handshake_23_completes_via_complement():
    acc = acceptor()
    [named] = acc.receive_data(frame(v5_name(F.OURS)))
    assert named.name == A
    assert named.flags == F.OURS & 0xFFFFFFFF  # the high half comes in the complement
    acc.send_status("ok")
    status, challenge = frames(acc.data_to_send())
    assert status == b"sok"
    assert challenge[:1] == b"N"               # a HANDSHAKE_23 initiator reads the new form
    (our_challenge,) = struct.unpack_from(">I", challenge, 9)
    complement = b"c" + struct.pack(">II", F.OURS >> 32, 0xCAFE)
    assert acc.receive_data(frame(complement)) == []
    [done] = acc.receive_data(frame(b"r" + struct.pack(">I", 42) + digest(our_challenge, COOKIE)))
    assert done == Completed(A, F.OURS, 0xCAFE)
    assert frames(acc.data_to_send()) == [b"a" + digest(42, COOKIE)]


def test_v5_name_without_handshake_23_is_not_allowed():
    acc = acceptor()
    with pytest.raises(HandshakeError, match="HANDSHAKE_23"):
        acc.receive_data(frame(v5_name(F.OURS & ~F.HANDSHAKE_23)))
    assert frames(acc.data_to_send()) == [b"snot_allowed"]


def test_v5_complement_without_the_high_mandatory_flags_is_refused():
    acc = acceptor()
    acc.receive_data(frame(v5_name(F.OURS)))
    acc.send_status("ok")
    acc.data_to_send()
    with pytest.raises(HandshakeError, match="V4_NC"):
        acc.receive_data(frame(b"c" + struct.pack(">II", 0, 1)))  # no V4_NC, no SPAWN...
    assert acc.data_to_send() == b""           # the status was already sent: just close


# -- garbage -------------------------------------------------------------------------------

@pytest.mark.parametrize("message, why", [
    (b"", "empty"),
    (b"N\x00\x01", "truncated"),
    (b"N" + struct.pack(">QIH", F.OURS, 1, 40) + b"short@host", "truncated node name"),
    (b"N" + struct.pack(">QIH", F.OURS, 1, 6) + b"nohost", "invalid node name"),
    (b"N" + struct.pack(">QIH", F.OURS, 1, 5) + b"@host", "invalid node name"),
    (b"n\x00", "truncated"),
    (b"GET / HTTP/1.1\r\n", "unexpected"),
    (b"a" + bytes(16), "unexpected"),          # an ack before anything else
    (b"r" + bytes(20), "unexpected"),
])
def test_acceptor_rejects_garbage(message, why):
    acc = acceptor()
    with pytest.raises(HandshakeError, match=why):
        acc.receive_data(frame(message))
    assert not acc.done


@pytest.mark.parametrize("messages, why", [
    ([b"s"], "unknown status"),
    ([b"sok", b"N\x00"], "truncated"),
    ([b"sok", challenge_message(name="mallory@host")], "dialled beta@host but 'mallory@host'"),
    ([b"sok", challenge_message()[:-3]], "dialled"),   # name shorter than its length says
    ([b"sok", b"x" * 30], "unexpected"),
    ([b"sok", challenge_message(), b"a" + bytes(15)], "unexpected"),   # short ack
    ([b"N" + bytes(20)], "unexpected"),                                # no status first
])
def test_initiator_rejects_garbage(messages, why):
    init = initiator()
    init.start()
    init.data_to_send()
    with pytest.raises(HandshakeError, match=why):
        for m in messages:
            init.receive_data(frame(m))


def test_acceptor_reply_of_wrong_length_is_refused():
    acc = acceptor()
    acc.receive_data(frame(name_message()))
    acc.send_status("ok")
    acc.data_to_send()
    with pytest.raises(HandshakeError):
        acc.receive_data(frame(b"r" + struct.pack(">I", 5) + digest(0x7EEDBEEF, COOKIE)[:15]))


def test_calls_out_of_turn_are_refused():
    with pytest.raises(ValueError):
        Handshake(Role.INITIATOR, name=A, cookie=COOKIE, creation=1)   # whom does it dial?
    acc = acceptor()
    with pytest.raises(HandshakeError):
        acc.send_status("ok")                  # no name received yet
    init = initiator()
    init.start()
    with pytest.raises(HandshakeError):
        init.start()
    with pytest.raises(HandshakeError):
        init.answer_alive(True)                # no alive status received


# -- simultaneous connects: who answers what (Node.handshake_status) -------------------------

def test_simultaneous_connect_statuses():
    async def main():
        node = Node("mmm@host", "cookie")  # not started: only the peer table is used
        fake = lambda role: SimpleNamespace(role=role, peer=None)  # noqa: E731

        def incoming(name: str) -> tuple[str, SimpleNamespace]:
            conn = fake(Role.ACCEPTOR)
            return node.handshake_status(conn, PeerNamed(name, F.OURS, 1)), conn

        # nobody known: ok, and the peer now waits on this attempt
        status, conn = incoming("new@host")
        assert status == "ok"
        assert node.peers[Atom("new@host")].attempt is conn and conn.peer is node.peers[Atom("new@host")]

        # our own name: refused
        assert incoming("mmm@host")[0] == "not_allowed"

        # already connected: alive (the initiator may be a restarted incarnation)
        node.peers[Atom("new@host")].conn = object()
        assert incoming("new@host")[0] == "alive"

        # we are dialling a node whose name is smaller than ours: we keep ours (nok)
        small = node.peers.setdefault(Atom("aaa@host"), Peer(Atom("aaa@host")))
        ours = fake(Role.INITIATOR)
        ours.peer = small
        small.attempt = ours
        assert incoming("aaa@host")[0] == "nok"
        assert small.attempt is ours and ours.peer is small

        # ... and one whose name is greater: theirs wins (ok_simultaneous), ours is dropped
        big = node.peers.setdefault(Atom("zzz@host"), Peer(Atom("zzz@host")))
        ours = fake(Role.INITIATOR)
        ours.peer = big
        big.attempt = ours
        status, theirs = incoming("zzz@host")
        assert status == "ok_simultaneous"
        assert big.attempt is theirs and theirs.peer is big
        assert ours.peer is None              # its failure will not count as a nodedown

    run(main())


def _fake_conn(role: Role, peer=None, lost_simultaneous: bool = False) -> SimpleNamespace:
    conn = SimpleNamespace(role=role, peer=peer, transport=None, written=[],
                           handshake=SimpleNamespace(lost_simultaneous=lost_simultaneous))
    conn.send = lambda control, payload=None: conn.written.append(control)
    return conn


def test_a_dial_still_at_epmd_counts_as_pending():
    # OTP marks a connection pending before asking epmd; so must we, or both attempts lose
    async def main():
        node = Node("mmm@host", "cookie")
        for other, expected in (("aaa@host", "nok"), ("zzz@host", "ok_simultaneous")):
            peer = node.peers[Atom(other)] = Peer(Atom(other))
            peer.dialling = True                  # our _connect has not got a socket yet
            theirs = _fake_conn(Role.ACCEPTOR)
            assert node.handshake_status(theirs, PeerNamed(other, F.OURS, 1)) == expected
            assert (peer.attempt is theirs) == (expected == "ok_simultaneous")
    run(main())


def test_losing_a_simultaneous_connect_waits_for_the_peers_connection():
    async def main():
        node = Node("mmm@host", "cookie")
        name = Atom("zzz@host")
        peer = node.peers[name] = Peer(name)
        ours = _fake_conn(Role.INITIATOR, peer, lost_simultaneous=True)  # it was told `nok`
        peer.attempt = ours
        sender, target = Pid(Atom("mmm@host"), 1, 0, 1), Pid(name, 2, 0, 1)
        peer.link(sender, target)                                          # sent while connecting
        node.connection_lost(ours)
        assert node.peers.get(name) is peer and not peer.up.done()        # no nodedown
        assert len(peer.pending) == 1
        # their attempt arrives: accepted, and what was sent meanwhile goes out on it
        theirs = _fake_conn(Role.ACCEPTOR)
        assert node.handshake_status(theirs, PeerNamed(name.name, F.OURS, 1)) == "ok"
        node.connection_up(theirs, Completed(name.name, F.OURS, 1))
        assert theirs.written == [(1, sender, target)]
        assert peer.conn is theirs and peer.up.done() and peer.up.exception() is None

        # ... and if theirs never comes, the node is down after the setup time
        other = Atom("yyy@host")
        late = node.peers[other] = Peer(other)
        lost = _fake_conn(Role.INITIATOR, late, lost_simultaneous=True)
        late.attempt = lost
        node.connection_lost(lost)
        assert node.peers.get(other) is late
        node._theirs_overdue(late)                 # what the timer does after net_setuptime
        assert other not in node.peers and isinstance(late.up.exception(), ConnectionError)

        # a plain handshake failure (not `nok`) is a nodedown at once
        third = Atom("xxx@host")
        failed = node.peers[third] = Peer(third)
        attempt = _fake_conn(Role.INITIATOR, failed)
        failed.attempt = attempt
        node.connection_lost(attempt)
        assert third not in node.peers and failed.up.done()
    run(main())
