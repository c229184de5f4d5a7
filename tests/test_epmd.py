"""epmd: request/response bytes, the client, and the embedded server (no BEAM needed).

Layouts: OTP erts/doc "Distribution Protocol", "EPMD Protocol"; what erl_epmd sends was
seen on the wire (wire-notes, "epmd"). The last tests cross-check against the real `epmd`
program when it is installed.
"""

from __future__ import annotations

import asyncio
import shutil
import struct
import subprocess

import pytest

from conftest import free_port, run, unique
from pykv.dist import epmd
from pykv.dist.epmd import (
    EmbeddedEpmd, EpmdError, NodeInfo, alive2_request, names, parse_alive2_request,
    parse_port2_response, port2_response, port_please, register,
)

EPMD = shutil.which("epmd")


# -- bytes -------------------------------------------------------------------------------------

def test_alive2_request_bytes_as_erl_epmd_sends_them():
    sent = alive2_request(NodeInfo("foo", 0x1234, epmd.NODE_TYPE_NORMAL))
    body = bytes([120]) + b"\x12\x34" + bytes([77, 0]) + b"\x00\x06\x00\x05" + b"\x00\x03foo" + b"\x00\x00"
    assert sent == struct.pack(">H", len(body)) + body
    hidden = alive2_request(NodeInfo("foo", 0x1234))
    assert hidden[5] == 72                     # hidden by default, as C nodes register


def test_alive2_request_round_trip():
    info = NodeInfo("näme", 40000, epmd.NODE_TYPE_HIDDEN, 0, 6, 5, b"xtra")
    assert parse_alive2_request(alive2_request(info)[2:]) == info


@pytest.mark.parametrize("body", [
    b"x",                                                   # too short for the header
    bytes([120]) + b"\x12\x34" + bytes([77, 0]) + b"\x00\x06\x00\x05" + b"\x00\x09foo",   # name cut
    bytes([120]) + b"\x12\x34" + bytes([77, 0]) + b"\x00\x06\x00\x05" + b"\x00\x02\xff\xfe\x00\x00",
    bytes([120]) + b"\x12\x34" + bytes([77, 0]) + b"\x00\x06\x00\x05" + b"\x00\x00\x00\x00",  # no name
    bytes([120]) + b"\x12\x34" + bytes([77, 0]) + b"\x00\x06\x00\x05" + b"\x00\x03foo",      # no extra
])
def test_malformed_alive2_request(body):
    with pytest.raises(EpmdError):
        parse_alive2_request(body)


def test_port2_response_bytes_and_round_trip():
    info = NodeInfo("bar", 0xABCD, epmd.NODE_TYPE_NORMAL, 0, 6, 5, b"")
    data = port2_response(info)
    assert data == bytes([119, 0]) + b"\xab\xcd" + bytes([77, 0]) + b"\x00\x06\x00\x05\x00\x03bar\x00\x00"
    assert parse_port2_response(data) == info
    assert port2_response(None) == bytes([119, 1])
    assert parse_port2_response(bytes([119, 1])) is None


@pytest.mark.parametrize("data", [b"", b"w", bytes([118, 0]), bytes([119, 0, 1]),
                                  bytes([119, 0]) + b"\xab\xcd" + bytes([77, 0]) + b"\x00\x06\x00\x05\x00\x09bar"])
def test_malformed_port2_response(data):
    with pytest.raises(EpmdError):
        parse_port2_response(data)


def test_split_node_name():
    assert epmd.split_node_name("foo@host.example") == ("foo", "host.example")
    for bad in ("foo", "@host", "foo@", ""):
        with pytest.raises(ValueError):
            epmd.split_node_name(bad)


# -- the embedded server, through our client -----------------------------------------------

async def _raw(port: int, request: bytes) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(request)
    writer.write_eof()  # a truncated request then ends instead of waiting for the rest
    try:
        return await asyncio.wait_for(reader.read(), 5)
    finally:
        writer.close()


def test_embedded_epmd_register_lookup_names_unregister():
    async def main():
        server = EmbeddedEpmd()
        await server.start(port=0)
        port = server.port
        try:
            reg = await register(NodeInfo("alpha", 4001, epmd.NODE_TYPE_NORMAL), port=port)
            assert 0 < reg.creation < 2**32
            reg2 = await register(NodeInfo("beta", 4002), port=port)
            assert reg2.creation not in (0, reg.creation)   # each registration its own creation

            found = await port_please("alpha", "127.0.0.1", port)
            assert found == NodeInfo("alpha", 4001, epmd.NODE_TYPE_NORMAL, 0, 6, 5, b"")
            assert await port_please("nobody", "127.0.0.1", port) is None
            assert sorted(await names(port=port)) == [("alpha", 4001), ("beta", 4002)]
            raw = await _raw(port, struct.pack(">HB", 1, epmd.NAMES_REQ))
            assert struct.unpack_from(">I", raw)[0] == port      # NAMES starts with epmd's port

            with pytest.raises(EpmdError, match="already running"):
                await register(NodeInfo("alpha", 4003), port=port)

            reg.close()                           # closing the socket unregisters
            for _ in range(100):
                if await port_please("alpha", "127.0.0.1", port) is None:
                    break
                await asyncio.sleep(0.02)
            assert await port_please("alpha", "127.0.0.1", port) is None
            assert await names(port=port) == [("beta", 4002)]
            reg3 = await register(NodeInfo("alpha", 4004), port=port)   # the name is free again
            assert (await port_please("alpha", "127.0.0.1", port)).port == 4004
            reg2.close()
            reg3.close()
        finally:
            server.close()
    run(main())


def test_embedded_epmd_old_alive2_gets_a_16_bit_creation():
    async def main():
        server = EmbeddedEpmd()
        await server.start(port=0)
        try:
            req = alive2_request(NodeInfo("old", 4100, highest=5, lowest=5))
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(req)
            head = await asyncio.wait_for(reader.readexactly(4), 5)
            assert head[0] == epmd.ALIVE2_RESP and head[1] == 0
            assert (await port_please("old", "127.0.0.1", server.port)).port == 4100
            writer.close()
        finally:
            server.close()
    run(main())


def test_embedded_epmd_survives_garbage_clients():
    async def main():
        server = EmbeddedEpmd()
        await server.start(port=0)
        port = server.port
        try:
            reg = await register(NodeInfo("steady", 4200), port=port)
            assert await _raw(port, struct.pack(">HB", 1, 99)) == b""           # unknown request
            assert await _raw(port, b"\x00\x10abc") == b""                       # truncated
            assert await _raw(port, b"\x00\x00") == b""                          # empty request
            bad_alive = struct.pack(">H", 3) + bytes([120, 0, 1])
            assert await _raw(port, bad_alive) == b""                            # malformed ALIVE2
            assert (await port_please("steady", "127.0.0.1", port)).port == 4200
            reg.close()
        finally:
            server.close()
    run(main())


def test_node_starts_an_embedded_epmd_when_none_runs():
    from pykv import Node

    async def main():
        port = free_port()
        async with Node(unique("emb"), "c", epmd_port=port) as node:
            assert node._embedded_epmd is not None
            info = await port_please(node.name.name.split("@")[0], "127.0.0.1", port)
            assert info is not None and info.port == node.dist_port
            assert node.creation != 0
            # a second node on this machine registers with the first one's epmd
            async with Node(unique("emb"), "c", epmd_port=port) as second:
                assert second._embedded_epmd is None
                assert len(await names(port=port)) == 2
                assert await node.ping(second.name) is True     # via the embedded epmd
        with pytest.raises(OSError):                            # gone with its node
            await port_please("x", "127.0.0.1", port)
    run(main())


def test_listen_addresses_as_epmd_takes_them():
    assert epmd.listen_addresses("") == ["0.0.0.0", "::"]                    # every address
    assert epmd.listen_addresses("10.1.2.3, fd00::1") == ["127.0.0.1", "::1", "10.1.2.3", "fd00::1"]
    assert epmd.listen_addresses("127.0.0.1 10.1.2.3") == ["127.0.0.1", "::1", "10.1.2.3"]
    with pytest.raises(EpmdError, match="cannot parse IP address 'hosta'"):
        epmd.listen_addresses("hosta")


def test_local_peer_rule():
    assert epmd.is_local_peer("127.0.0.1", "127.0.0.1")
    assert epmd.is_local_peer("127.0.1.1", "127.0.0.1")          # 127/8
    assert epmd.is_local_peer("::1", "::1")
    assert epmd.is_local_peer("10.1.2.3", "10.1.2.3")            # the host's own address
    assert not epmd.is_local_peer("10.1.2.4", "10.1.2.3")
    assert not epmd.is_local_peer("fd00::2", "fd00::1")


def test_embedded_epmd_serves_both_families_on_one_port_and_ends_a_registration_on_garbage():
    async def main():
        server = EmbeddedEpmd()
        await server.start(["127.0.0.1", "::1"], port=0)
        try:
            assert server.addresses == ["127.0.0.1", "::1"]
            reg = await register(NodeInfo("v6", 4500), host="::1", port=server.port)
            assert (await port_please("v6", "127.0.0.1", server.port)).port == 4500
            reg._writer.write(b"x")               # more than expected on the ALIVE socket
            for _ in range(100):
                if await port_please("v6", "::1", server.port) is None:
                    break
                await asyncio.sleep(0.02)
            assert await port_please("v6", "::1", server.port) is None
            assert await _raw(server.port, struct.pack(">H", 2000) + b"x" * 2000) == b""   # too long
        finally:
            server.close()
    run(main())


# -- cross-checks with the real epmd program -------------------------------------------------

@pytest.mark.skipif(EPMD is None, reason="the epmd program is not installed")
def test_real_epmd_client_lists_our_embedded_epmd():
    async def main():
        server = EmbeddedEpmd()
        await server.start(port=0)
        try:
            reg = await register(NodeInfo("listed", 4321), port=server.port)
            proc = await asyncio.create_subprocess_exec(
                EPMD, "-port", str(server.port), "-names",
                stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
            out, err = await asyncio.wait_for(proc.communicate(), 10)
            assert f"epmd: up and running on port {server.port}" in out.decode(), (out, err)
            assert "name listed at port 4321" in out.decode()
            reg.close()
        finally:
            server.close()
    run(main())


@pytest.mark.skipif(EPMD is None, reason="the epmd program is not installed")
def test_our_client_with_the_real_epmd():
    # the session fixture keeps a real epmd on the default port
    subprocess.run([EPMD, "-daemon"], check=False)

    async def main():
        alive = unique("realreg")
        reg = await register(NodeInfo(alive, 4444, epmd.NODE_TYPE_HIDDEN))
        try:
            assert 0 < reg.creation < 2**32
            info = await port_please(alive, "127.0.0.1")
            assert info == NodeInfo(alive, 4444, epmd.NODE_TYPE_HIDDEN, 0, 6, 5, b"")
            assert (alive, 4444) in await names()
        finally:
            reg.close()
        for _ in range(100):
            if await port_please(alive, "127.0.0.1") is None:
                break
            await asyncio.sleep(0.02)
        assert await port_please(alive, "127.0.0.1") is None
    run(main())
