"""The framing layer without sockets: the distribution header and its atom cache, fragments
in and out, and a connection's order of frames out (pykv/dist/framing.py, atom_cache.py,
fragments.py, connection.py).

Recorded frames (tests/data/dist_frames_*.json) are what real BEAM nodes (OTP 25 and 29) sent
to a node that offered FRAGMENTS, or FRAGMENTS and DIST_HDR_ATOM_CACHE: messages to a
registered name `sink` (:hello; a tuple with a new atom and a 400-byte one, so long atoms;
true/false/nil; two 150,000-byte binaries from two processes, three fragments each; :bye).
"""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import struct
import zlib
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from conftest import run
from pykv.dist import flags as F
from pykv.dist.atom_cache import AtomCache, BadHeader
from pykv.dist.connection import Connection
from pykv.dist.fragments import FRAGMENT_SIZE, OutgoingSequence
from pykv.dist.framing import NO_PAYLOAD, FrameError, Framing, encode_frame, sender_of
from pykv.dist.handshake import Role
from pykv.term import Atom, Pid, Reference, encode

DATA = Path(__file__).parent / "data"
LONG_ATOM = Atom("ä" * 200)  # 400 bytes of UTF-8: the header's LongAtoms flag
SINK = Atom("sink")
HEADER_FLAGS = F.OURS | F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE
PASS_THROUGH_FLAGS = F.OURS & ~(F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE)


def recorded(name: str) -> tuple[dict[str, Any], list[bytes]]:
    """A recording: its description and its frames (bodies, without the length)."""
    info = json.loads((DATA / f"dist_frames_{name}.json").read_text())
    blob = zlib.decompress(base64.b64decode(info["frames_zlib_b64"]))
    frames, pos = [], 0
    while pos < len(blob):
        (length,) = struct.unpack_from(">I", blob, pos)
        frames.append(blob[pos + 4:pos + 4 + length])
        pos += 4 + length
    return info, frames


def decode_all(framing: Framing, frames: list[bytes]) -> list[tuple[Any, Any]]:
    out = []
    for frame in frames:
        message = framing.decode(memoryview(frame))
        if message is not None:
            out.append(message)
    return out


RECORDINGS = ["atom_cache_otp25", "atom_cache_otp29", "fragments_otp25"]


@pytest.mark.parametrize("name", RECORDINGS)
def test_recorded_beam_frames_decode(name: str, codec_implementation: str) -> None:
    info, frames = recorded(name)
    assert frames[3][:2] == b"\x83\x45" and frames[4][:2] == b"\x83\x46"  # fragments indeed
    if "atom_cache" in name:
        assert frames[0][2] > 0  # the header carries atom cache refs
    messages = decode_all(Framing(F.OURS | int(info["flags"], 16)), frames)
    payloads = [payload for _, payload in messages]
    assert payloads == [
        Atom("hello"),
        (Atom("hello"), Atom("world"), Atom("hello"), LONG_ATOM),
        (True, False, None, Atom("hello")),
        (Atom("big"), b"y" * 150_000),
        (Atom("big2"), b"x" * 150_000),
        Atom("bye"),
    ]
    for control, _ in messages:
        assert control[0] == 6 and control[2:] == (Atom(""), SINK)
        assert control[1].node == Atom(info["peer"])  # a pid whose node is an atom cache ref


def test_fragments_of_two_senders_interleaved_with_whole_frames() -> None:
    _, frames = recorded("atom_cache_otp25")
    head, big, big2, tail = frames[:3], frames[3:6], frames[6:9], frames[9:]
    # the headers must be read in the order the peer wrote them (each may set cache slots);
    # fragments of different sequences and whole frames may come between the others
    order = head + [big[0], big2[0], big[1], big2[1], big2[2], big[2]] + tail
    payloads = [p for _, p in decode_all(Framing(HEADER_FLAGS), order)]
    assert payloads[3:5] == [(Atom("big2"), b"x" * 150_000), (Atom("big"), b"y" * 150_000)]
    assert payloads[5] == Atom("bye")


def test_our_fragments_are_the_beams_byte_for_byte() -> None:
    """Re-encoding what the BEAM sent gives its frames again, fragments included (but for the
    sequence id): the same 64 KiB cuts, the control message in the first one."""
    info, frames = recorded("fragments_otp25")
    framing = Framing(F.OURS)
    messages = decode_all(framing, frames)
    assert framing.message(*messages[0]) == struct.pack(">I", len(frames[0])) + frames[0]
    sequence = Framing(F.OURS).message(*messages[3])
    assert isinstance(sequence, OutgoingSequence)
    ours = []
    while not sequence.done:
        ours.append(sequence.next_fragment())
    theirs = [struct.pack(">I", len(f)) + f for f in frames[3:6]]
    assert [len(f) for f in ours] == [len(f) for f in theirs]

    def without_sequence_id(frame: bytes) -> bytes:
        return frame[:6] + frame[14:]

    assert [without_sequence_id(f) for f in ours] == [without_sequence_id(f) for f in theirs]
    assert [struct.unpack_from(">Q", f, 14)[0] for f in ours] == [3, 2, 1]  # FragmentId counts down


def test_what_we_send_decodes_in_every_framing(codec_implementation: str) -> None:
    pid = Pid(Atom("foo@host"), 7, 0, 1)
    big = b"z" * (3 * FRAGMENT_SIZE + 5)
    cases = [((2, Atom(""), pid), (Atom("msg"), 1)), ((1, pid, pid), NO_PAYLOAD),
             ((22, pid, pid), big), ((22, pid, pid), [big, big])]
    for flags in (PASS_THROUGH_FLAGS, F.OURS, HEADER_FLAGS, F.OURS & ~F.FRAGMENTS | F.DIST_HDR_ATOM_CACHE):
        sender, receiver = Framing(flags), Framing(flags)
        for control, payload in cases:
            out = sender.message(control, payload)
            if isinstance(out, OutgoingSequence):
                assert flags & F.FRAGMENTS
                frames = []
                while not out.done:
                    frames.append(out.next_fragment())
            else:
                frames = [bytes(out)]
                assert not flags & F.FRAGMENTS or len(out) < FRAGMENT_SIZE + 64
                start = b"p" if flags == PASS_THROUGH_FLAGS else b"\x83D\x00"
                assert out[4:4 + len(start)] == start
            got = decode_all(receiver, [f[4:] for f in frames])
            assert got == [(control, payload)], flags
        assert not receiver.reassembly or len(receiver.reassembly) == 0


def test_large_binaries_leave_from_where_they_are(codec_implementation: str) -> None:
    """With FRAGMENTS, the fragments' data are views of the payload's large binaries (the C
    codec leaves them out of the encoding); the frames are those of the whole encoding cut in
    64 KiB pieces, byte for byte, whichever codec encoded them."""
    pid = Pid(Atom("foo@host"), 7, 0, 1)
    big = bytes(range(256)) * (5 * FRAGMENT_SIZE // 256) + b"tail"
    exact = b"e" * FRAGMENT_SIZE                         # as large as a fragment: left out too
    small = b"s" * (FRAGMENT_SIZE - 1)                   # copied into the encoding
    payload = (Atom("ok"), [big, small, exact, exact, {b"k": big}, b"text"], big)
    control = (22, pid, pid)
    out = Framing(F.OURS).message(control, payload)
    assert isinstance(out, OutgoingSequence)
    whole = b"\0\0\0\0\x83D\0" + encode(control)[1:] + encode(payload)[1:]  # as one frame
    frames, from_big = [], 0
    while not out.done:
        pieces = out.next_pieces()
        from_big += sum(len(p) for p in pieces[1:] if isinstance(p, memoryview) and p.obj is big)
        frames.append(b"".join(pieces))
    # the same cuts as the encoding in one piece: one fragment's data after another is it
    data = b"".join(f[22:] for f in frames)
    assert data == whole[6:] and len(frames) == 1 + -(-(len(whole) - 7 - FRAGMENT_SIZE) // FRAGMENT_SIZE)
    assert decode_all(Framing(F.OURS), [f[4:] for f in frames]) == [(control, payload)]
    if codec_implementation == "c":
        assert from_big == 3 * len(big)                  # none of it copied on the way
    else:
        assert from_big == 0


def test_parts_put_back_where_they_belong() -> None:
    """(framing._joined: a frame with parts that needs no fragments gets them back in place.)"""
    from pykv.dist.framing import _joined
    assert _joined(bytearray(b"abcd"), [(0, b"<"), (2, b"XY"), (2, b""), (4, b">")]) == b"<abXYcd>"


def test_a_large_binary_deeper_than_the_c_codec_goes(codec_implementation: str) -> None:
    """A payload nested past the C encoder's depth is encoded again by the deep walker, which
    copies its binaries: what the first attempt left out is not sent twice."""
    from pykv.term import FAST_DEPTH
    pid = Pid(Atom("foo@host"), 7, 0, 1)
    big = b"d" * (2 * FRAGMENT_SIZE)
    payload: Any = [big]
    for _ in range(FAST_DEPTH + 10):
        payload = [payload]
    payload = (big, payload)
    out = Framing(F.OURS).message((22, pid, pid), payload)
    assert isinstance(out, OutgoingSequence)
    frames = []
    while not out.done:
        frames.append(out.next_fragment())
    assert decode_all(Framing(F.OURS), [f[4:] for f in frames]) == [((22, pid, pid), payload)]


def test_a_long_control_message_stays_in_the_first_fragment() -> None:
    pid = Pid(Atom("foo@host"), 7, 0, 1)
    reason = b"r" * (FRAGMENT_SIZE + 1000)            # an old-style EXIT with a long reason
    control = (3, pid, pid, reason)
    out = Framing(F.OURS).message(control, b"p" * (2 * FRAGMENT_SIZE))
    assert isinstance(out, OutgoingSequence)
    first = out.next_fragment()
    assert len(first) > len(encode(control))         # the whole control message is in it
    rest = []
    while not out.done:
        rest.append(out.next_fragment())
    assert decode_all(Framing(F.OURS), [first[4:]] + [f[4:] for f in rest]) == [
        (control, b"p" * (2 * FRAGMENT_SIZE))]


# -- the atom cache ------------------------------------------------------------------------------

def header(*refs: tuple[int, bool, bytes], long_atoms: bool = False) -> bytes:
    """NumberOfAtomCacheRefs, Flags, AtomCacheRefs, as the BEAM writes them: (cache index,
    new entry?, atom text) per reference."""
    count = len(refs)
    nibbles = [(8 if new else 0) | (index >> 8) for index, new, _ in refs] + [int(long_atoms)]
    flags = bytearray(count // 2 + 1)
    for i, nibble in enumerate(nibbles):
        flags[i // 2] |= nibble << (4 * (i % 2))
    out = bytearray([count]) + flags
    for index, new, text in refs:
        out.append(index & 0xFF)
        if new:
            out += (struct.pack(">H", len(text)) if long_atoms else bytes([len(text)])) + text
    return bytes(out)


def test_atom_cache_entries_live_across_messages() -> None:
    cache = AtomCache()
    atoms, end = cache.read(header((5, True, b"alpha"), (2047, True, b"beta")) + b"rest", 0)
    assert atoms == (Atom("alpha"), Atom("beta")) and end == 1 + 2 + 2 * 1 + 6 + 5
    assert cache.read(header((2047, False, b""), (5, False, b"")), 0)[0] == (Atom("beta"), Atom("alpha"))
    # a slot takes a new atom: later references mean that one (also for a header seen before)
    again = header((5, False, b""))
    assert cache.read(again, 0)[0] == (Atom("alpha"),)
    cache.read(header((5, True, b"gamma")), 0)
    assert cache.read(again, 0)[0] == (Atom("gamma"),)
    long = "ö" * 255
    assert cache.read(header((300, True, long.encode()), long_atoms=True), 0)[0] == (Atom(long),)
    assert cache.read(b"\x00", 0) == ((), 1)


@pytest.mark.parametrize("bad, why", [
    (header((9, False, b"")), "no earlier message filled"),
    (header((9, True, b"abc"))[:-1], "ends within an atom's text"),
    (header((9, True, b"abc"))[:3], "ends within"),
    (b"\x03\x88", "ends within its flags"),
    (header((9, True, b"\xff\xfe")), "not UTF-8"),
    (header((9, True, ("a" * 256).encode()), long_atoms=True), "256 characters"),
], ids=["empty-slot", "short-text", "short-refs", "short-flags", "not-utf8", "too-long"])
def test_bad_atom_cache_headers(bad: bytes, why: str) -> None:
    with pytest.raises(BadHeader, match=why):
        AtomCache().read(bad, 0)
    frame = b"\x83D" + bad + (b"" if "ends" in why else encode((1, Atom("a"), Atom("b")))[1:])
    with pytest.raises(FrameError, match=why):
        Framing(HEADER_FLAGS).decode(memoryview(frame))


# -- frames a connection must refuse ---------------------------------------------------------------

def frag(kind: int, seq: int, frag_id: int, data: bytes) -> bytes:
    return bytes([131, kind]) + struct.pack(">QQ", seq, frag_id) + data


CONTROL = encode((6, Pid(Atom("a@h"), 1, 0, 1), Atom(""), SINK))[1:]


@pytest.mark.parametrize("frames, why", [
    ([frag(70, 5, 1, b"x")], "no first fragment"),
    ([frag(69, 5, 3, b"\x00" + CONTROL), frag(70, 5, 1, b"x")], "fragment 1 where 2 was due"),
    ([frag(69, 5, 3, b"\x00" + CONTROL), frag(69, 5, 2, b"\x00" + CONTROL)], "started again"),
    ([frag(69, 5, 0, b"\x00" + CONTROL)], "fragment id 0"),
    ([b"p" + encode((1, Atom("a"), Atom("b")))], "not a distribution header"),
    ([b"\x83D\x00" + encode((1, Atom("a"), Atom("b")))], "version byte after a distribution header"),
    ([b"\x83D\x00" + CONTROL + b"\x50\x00\x00\x00\x05xyz"], "compressed"),
    ([b"\x83D\x00" + CONTROL + encode(1)[1:] + b"\x00"], "stray bytes"),
    ([b"\x83\x47" + bytes(16)], "not a distribution header"),
], ids=["unknown-seq", "out-of-order", "restarted", "frag-id-0", "pass-through", "version-byte",
        "compressed", "stray", "unknown-kind"])
def test_frames_refused_with_the_header(frames: list[bytes], why: str) -> None:
    framing = Framing(F.OURS)
    with pytest.raises(FrameError, match=why):
        for frame in frames:
            framing.decode(memoryview(frame))


def test_frames_refused_without_the_header() -> None:
    framing = Framing(PASS_THROUGH_FLAGS)
    with pytest.raises(FrameError, match="does not start with 112"):
        framing.decode(memoryview(b"\x83D\x00" + CONTROL))
    compressed = b"\x83\x50" + struct.pack(">I", 5) + zlib.compress(encode(Atom("x"))[1:])
    with pytest.raises(FrameError, match="compressed"):
        framing.decode(memoryview(b"p" + encode((2, Atom(""), Pid(Atom("a@h"), 1, 0, 1))) + compressed))
    with pytest.raises(FrameError, match="compressed"):
        framing.decode(memoryview(b"p" + compressed))
    # fragments and headers only where negotiated: DIST_HDR_ATOM_CACHE alone has no fragments
    with pytest.raises(FrameError, match="not a distribution header"):
        Framing(PASS_THROUGH_FLAGS | F.DIST_HDR_ATOM_CACHE).decode(memoryview(frag(70, 5, 1, b"x")))


def test_sequence_id_0_is_a_whole_message_as_on_the_beam() -> None:
    message = Framing(F.OURS).decode(memoryview(frag(69, 0, 7, b"\x00" + CONTROL + encode(1)[1:])))
    assert message is not None and message[1] == 1


def test_reassembly_is_bounded_per_message_and_per_connection() -> None:
    piece = b"\x00" * 1000
    framing = Framing(F.OURS, max_message=5000, max_in_flight=12_000)
    framing.decode(memoryview(frag(69, 1, 9, b"\x00" + CONTROL)))
    for frag_id in range(8, 4, -1):
        framing.decode(memoryview(frag(70, 1, frag_id, piece)))
    with pytest.raises(FrameError, match="grows past 5000 bytes"):
        framing.decode(memoryview(frag(70, 1, 4, piece)))

    framing = Framing(F.OURS, max_message=5000, max_in_flight=12_000)
    for seq in range(1, 4):
        framing.decode(memoryview(frag(69, seq, 9, b"\x00" + CONTROL)))
        for frag_id in range(8, 5, -1):
            framing.decode(memoryview(frag(70, seq, frag_id, piece)))
    with pytest.raises(FrameError, match="more than 12000 bytes"):
        framing.decode(memoryview(frag(69, 4, 9, b"\x00" + CONTROL + piece * 2)))
    # a completed message gives back what it held
    framing = Framing(F.OURS, max_message=5000, max_in_flight=6000)
    payload = encode(b"x" * 3000)[1:]
    for _ in range(20):
        assert framing.decode(memoryview(frag(69, 7, 2, b"\x00" + CONTROL + payload[:1500]))) is None
        message = framing.decode(memoryview(frag(70, 7, 1, payload[1500:])))
        assert message is not None and message[1] == b"x" * 3000
    assert framing.reassembly is not None and framing.reassembly.in_flight == 0


def test_a_buffer_grows_with_what_arrives() -> None:
    from pykv.dist.buffers import MMAP_FROM, Buffer

    piece = bytes(range(256)) * 256  # 64 KiB
    for expected in (10, MMAP_FROM + 1, 3 * MMAP_FROM):  # a bytearray, then reserved memory
        buf = Buffer(expected, 8 * MMAP_FROM)
        for _ in range(40):                                 # more than announced: it grows
            buf.append(piece)
        assert len(buf) == 40 * len(piece) and buf.view() == piece * 40
        view = buf.view()
        view[0] = 7                                         # writable (the version-byte trick)
        assert buf.view()[0] == 7
        del view
        with pytest.raises(ValueError, match="grows past"):
            for _ in range(100):
                buf.append(piece)


def test_sender_of_names_the_sending_process() -> None:
    a, b = Pid(Atom("a@h"), 1, 0, 1), Pid(Atom("b@h"), 2, 0, 1)
    ref = Reference(Atom("a@h"), 1, (1, 2, 3))
    assert sender_of((22, a, b)) == a
    assert sender_of((6, a, Atom(""), SINK)) == a
    assert sender_of((29, ref, a, b, (Atom("m"), Atom("f"), 0), [])) == a
    assert sender_of((35, 1, a, b)) == a
    assert sender_of((31, ref, b, 0, a)) == a          # a spawn's reply speaks for the new process
    assert sender_of((2, Atom(""), b)) is None


# -- a connection's frames out ----------------------------------------------------------------------

class PausingTransport:
    """A transport whose buffer is full after every write (pause_writing), until resumed."""

    def __init__(self) -> None:
        self.writes: list[bytes] = []
        self.protocol: Connection | None = None
        self.aborted = False
        self.reading = True
        self.pauses = 0

    def pause_reading(self) -> None:
        self.reading = False
        self.pauses += 1

    def resume_reading(self) -> None:
        self.reading = True

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))
        if self.protocol is not None:
            self.protocol.pause_writing()

    def is_closing(self) -> bool:
        return self.aborted

    def abort(self) -> None:
        self.aborted = True

    close = abort

    def can_write_eof(self) -> bool:
        return True

    def write_eof(self) -> None:
        self.eof = True

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return default


def fake_connection(flags: int, seen: list | None = None) -> tuple[Connection, PausingTransport]:
    received = [] if seen is None else seen
    from pykv.dist.transport import INET_TCP
    node = SimpleNamespace(name=Atom("me@host"), cookie="c", creation=1, flags=F.OURS, busy_wait=None,
                           proto_dist=INET_TCP,
                           dispatch=lambda conn, control, payload: received.append((control, payload)))
    conn = Connection(node, Role.ACCEPTOR)  # type: ignore[arg-type]
    transport = PausingTransport()
    conn.transport = transport  # type: ignore[assignment]
    conn.flags = flags
    conn.up = True
    return conn, transport


def kinds(writes: list[bytes]) -> list[str]:
    """What each write was: "A3" for fragment 3 of a sequence, or the message's tag atom."""
    out = []
    for w in writes:
        body = memoryview(w)[4:]
        if body[1] in (69, 70):
            out.append(f"{'F' if body[1] == 69 else 'C'}{struct.unpack_from('>Q', body, 10)[0]}")
        else:
            message = Framing(F.OURS).decode(body)
            assert message is not None
            out.append(message[1][0].name)
    return out


def test_other_senders_pass_between_fragments_and_a_sender_keeps_its_order() -> None:
    async def main() -> None:
        conn, transport = fake_connection(F.OURS)
        transport.protocol = conn
        a, b = Pid(Atom("me@host"), 1, 0, 1), Pid(Atom("me@host"), 2, 0, 1)
        to = Pid(Atom("you@host"), 9, 0, 1)
        conn.send((22, a, to), (Atom("big"), b"x" * (3 * FRAGMENT_SIZE)))  # four fragments
        conn.send((22, a, to), (Atom("a_after"),))                          # waits behind them
        await asyncio.sleep(0)
        assert kinds(transport.writes) == ["F4"]                             # then the buffer is full
        conn.send((22, b, to), (Atom("b_small"),))
        await asyncio.sleep(0)
        assert kinds(transport.writes) == ["F4", "b_small"]                  # another sender passes
        for _ in range(4):
            conn.resume_writing()
            await asyncio.sleep(0)
        assert kinds(transport.writes) == ["F4", "b_small", "C3", "C2", "C1", "a_after"]
        assert not conn._lanes
    run(main())


def test_a_closing_connection_sends_what_waits_behind_fragments() -> None:
    async def main() -> None:
        conn, transport = fake_connection(F.OURS)
        transport.protocol = conn
        a, to = Pid(Atom("me@host"), 1, 0, 1), Pid(Atom("you@host"), 9, 0, 1)
        conn.send((22, a, to), (Atom("big"), b"x" * (2 * FRAGMENT_SIZE)))
        conn.send((24, a, to), (Atom("exit"),))
        conn.close()
        assert kinds(transport.writes) == ["F3", "C2", "C1", "exit"]
        assert transport.eof  # then our side is shut: the peer closes its own
    run(main())


def test_a_malformed_fragment_closes_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        seen: list = []
        conn, transport = fake_connection(F.OURS, seen)
        good = Framing(F.OURS).message((6, Pid(Atom("a@h"), 1, 0, 1), Atom(""), SINK), Atom("ok"))
        conn.data_received(bytes(good))
        assert seen and not transport.aborted
        bad = frag(70, 77, 1, b"x")
        conn.data_received(struct.pack(">I", len(bad)) + bad)
        assert transport.aborted
    caplog.set_level(logging.WARNING, logger="pykv")
    run(main())
    assert any("malformed frame" in r.getMessage() and "no first fragment" in r.getMessage()
               for r in caplog.records)


def test_a_peer_that_sends_much_takes_turns_with_the_others() -> None:
    async def main() -> None:
        seen: list = []
        conn, transport = fake_connection(F.OURS, seen)
        pid = Pid(Atom("me@host"), 3, 0, 1)
        sequence = Framing(F.OURS).message((2, Atom(""), pid), b"b" * (20 * FRAGMENT_SIZE))
        assert isinstance(sequence, OutgoingSequence)
        fragments = []
        while not sequence.done:
            fragments.append(sequence.next_fragment())
        conn.data_received(b"".join(fragments[:5]))           # more than READ_BYTES at once
        assert not transport.reading and transport.pauses == 1  # the others' turn
        await asyncio.sleep(0)
        assert transport.reading                                # and then this peer's again
        conn.data_received(b"".join(fragments[5:]))
        assert [p for _, p in seen] == [b"b" * (20 * FRAGMENT_SIZE)]
    run(main())


def _small_big_small(pid: Pid) -> tuple[bytes, bytearray]:
    """A 3 MB message in fragments between two small frames (and a tick): the 3 MB value and
    the whole stream, as a peer with fragments sends it."""
    big = b"".join(bytes([i % 251]) * 1000 for i in range(3000))  # 3 MB
    small = bytes(Framing(F.OURS).message((2, Atom(""), pid), Atom("s")))
    sequence = Framing(F.OURS).message((2, Atom(""), pid), big)
    assert isinstance(sequence, OutgoingSequence)
    stream = bytearray(small)
    while not sequence.done:
        stream += sequence.next_fragment()
    stream += b"\0\0\0\0" + small
    return big, stream


def test_a_large_message_arriving_in_pieces() -> None:
    async def main() -> None:
        seen: list = []
        conn, _ = fake_connection(F.OURS, seen)
        pid = Pid(Atom("me@host"), 3, 0, 1)
        big, stream = _small_big_small(pid)
        # byte by byte across the small frame, a length field and the first fragment's head
        for i in range(200):
            conn.data_received(bytes(stream[i:i + 1]))
        for size in (997, 4096, 70_000):
            rest = stream[200:]
            for i in range(0, len(rest), size):
                conn.data_received(bytes(rest[i:i + size]))
            assert [p for _, p in seen] == [Atom("s"), big, Atom("s")], size
            seen.clear()
            for i in range(200):
                conn.data_received(bytes(stream[i:i + 1]))

        # a whole large frame (a peer without FRAGMENTS) in its own buffer, then decoded in place
        conn, _ = fake_connection(PASS_THROUGH_FLAGS, seen)
        seen.clear()
        frame = encode_frame((2, Atom(""), pid), big) + encode_frame((2, Atom(""), pid), Atom("s"))
        for i in range(0, len(frame), 65536):
            conn.data_received(bytes(frame[i:i + 65536]))
        assert [p for _, p in seen] == [big, Atom("s")]
    run(main())


def read_as_the_loop_does(conn: Connection, stream: bytes | bytearray, most: int) -> list[bool]:
    """Feed `stream` as asyncio and uvloop do for a BufferedProtocol: each read fills at most
    `most` bytes of the memory get_buffer offers. Returns, per read, whether that memory was
    the frame's own (read in place) rather than the shared read buffer."""
    from pykv.dist import connection
    direct = []
    view, pos = memoryview(stream), 0
    while pos < len(view):
        buf = conn.get_buffer(-1)
        assert len(buf) > 0 and not buf.readonly
        direct.append(buf.obj is not connection._READ)
        n = min(len(buf), most, len(view) - pos)
        buf[:n] = view[pos:pos + n]
        conn.buffer_updated(n)
        pos += n
    return direct


def test_reads_into_offered_memory_large_frames_in_place() -> None:
    async def main() -> None:
        seen: list = []
        pid = Pid(Atom("me@host"), 3, 0, 1)
        big, fragmented = _small_big_small(pid)
        for most in (1, 3, 4096, 70_000, 1 << 22):
            conn, transport = fake_connection(F.OURS, seen)
            read_as_the_loop_does(conn, fragmented[:300] if most == 1 else fragmented, most)
            # byte by byte: the small frame, then the first fragment's head, still arriving
            want = [Atom("s")] if most == 1 else [Atom("s"), big, Atom("s")]
            assert [p for _, p in seen] == want, most
            seen.clear()
        # a peer without FRAGMENTS: a 3 MB frame read into its own memory, not the shared buffer
        conn, _ = fake_connection(PASS_THROUGH_FLAGS, seen)
        frame = encode_frame((2, Atom(""), pid), big) + encode_frame((2, Atom(""), pid), Atom("s"))
        direct = read_as_the_loop_does(conn, frame, 200_000)
        assert [p for _, p in seen] == [big, Atom("s")]
        assert direct[0] is False and any(direct)
        # and the same bytes through data_received, as a plain Protocol gets them
        seen.clear()
        conn, _ = fake_connection(PASS_THROUGH_FLAGS, seen)
        for i in range(0, len(frame), 65536):
            conn.data_received(bytes(frame[i:i + 65536]))
        assert [p for _, p in seen] == [big, Atom("s")]
    run(main())


def test_a_bad_frame_read_into_offered_memory_closes_that_connection(caplog: pytest.LogCaptureFixture) -> None:
    async def main() -> None:
        conn, transport = fake_connection(F.OURS, [])
        bad = frag(70, 77, 1, b"x")
        read_as_the_loop_does(conn, struct.pack(">I", len(bad)) + bad, 1 << 16)
        assert transport.aborted
    caplog.set_level(logging.WARNING, logger="pykv")
    run(main())
    assert any("no first fragment" in r.getMessage() for r in caplog.records)


def test_a_handled_large_message_leaves_its_memory_to_the_next() -> None:
    from pykv.dist import buffers
    first = buffers.Buffer(4 << 20, 4 << 20)
    first.append(b"a" * (3 << 20))
    mem = first._mem
    first.release()
    assert len(first) == 0 and first.view().tobytes() == b""
    second = buffers.Buffer(2 << 20, 2 << 20)   # smaller: the kept reservation serves it
    assert second._mem is mem and len(second) == 0
    second.append(b"b" * 10)
    assert second.view().tobytes() == b"b" * 10
    third = buffers.Buffer(2 << 20, 2 << 20)    # the kept one is in use: a new one
    assert third._mem is not mem
    huge = buffers.Buffer(buffers.KEEP_UP_TO + 1, buffers.KEEP_UP_TO + 1)
    huge_mem = huge._mem
    huge.release()                               # too large to keep resident
    assert buffers._kept is not huge_mem
