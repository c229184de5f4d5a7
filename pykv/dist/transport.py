"""What carries node connections: erl's `-proto_dist` (inet_tcp, inet6_tcp), in one place.

The protocol's address family decides, as in kernel's inet_tcp_dist / inet6_tcp_dist and
erl_epmd.erl:
- the address a host name stands for: `inet:getaddr(Host, Family)`, the first one; the epmd
  of a node being dialled is asked at that same address, so with inet6_tcp epmd is reached
  over IPv6 too;
- where this node registers: the epmd on its own loopback, 127.0.0.1 or ::1;
- where it listens by default (every address of the family) and which IP literals a long
  node name may hold (names.py).

`DistProtocol.listen` and `.connect` are the only places node sockets are made. A carrier
with more to it (TLS: inet_tls, inet6_tls) is another DistProtocol that overrides them
(tls_transport.py; its contexts come from an optfile, so `proto_dist()` does not make it).
"""

from __future__ import annotations

import asyncio
import errno
import socket
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

from . import names

ProtocolFactory = Callable[[], asyncio.Protocol]


@dataclass(frozen=True)
class DistProtocol:
    name: str                      # as erl's -proto_dist names it
    family: socket.AddressFamily
    loopback: str                  # where this host's epmd takes registrations
    any_address: str               # where a node listens when no interface is given
    handshake_length: int = 2      # bytes of length before each handshake message (TLS: 4)

    async def resolve(self, host: str) -> str:
        """The address `host` stands for in this family (an IP literal of it is itself)."""
        if names.ip_literal(host, self.family):
            return host
        try:
            infos = await asyncio.get_running_loop().getaddrinfo(
                host, None, family=self.family, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise ConnectionError(f"cannot resolve {host} to an {self.family.name} address "
                                  f"({self.name}): {e.strerror}") from None
        return infos[0][4][0]

    async def listen(self, factory: ProtocolFactory, interface: str | None,
                     ports: tuple[int, int]) -> asyncio.base_events.Server:
        """Listen on `interface` (erl's `-kernel inet_dist_use_interface`; None: every address
        of the family) on the first free port from ports[0] to ports[1] (`inet_dist_listen_min`
        .. `inet_dist_listen_max`; (0, 0): any free port), as inet_tcp_dist tries them in turn."""
        loop = asyncio.get_running_loop()
        host = interface or self.any_address
        return await first_free_port(
            ports, host, lambda port: loop.create_server(factory, host, port, family=self.family))

    async def connect(self, factory: ProtocolFactory, address: str, port: int,
                      host: str | None = None) -> tuple[Any, Any]:
        """A connection to a node at `address` (resolved from `host`, the node name's host
        part) and `port` (from its epmd)."""
        return await asyncio.get_running_loop().create_connection(factory, address, port)

    def lost(self, error: BaseException | None) -> str | None:
        """What the carrier knows of why a connection closed (TLS: an alert), or None."""
        return None


INET_TCP = DistProtocol("inet_tcp", socket.AF_INET, "127.0.0.1", "0.0.0.0")
INET6_TCP = DistProtocol("inet6_tcp", socket.AF_INET6, "::1", "::")

PROTOCOLS: dict[str, DistProtocol] = {p.name: p for p in (INET_TCP, INET6_TCP)}


def proto_dist(choice: "str | DistProtocol") -> DistProtocol:
    """The carrier `choice` names (erl's -proto_dist value), or `choice` itself."""
    if isinstance(choice, DistProtocol):
        return choice
    try:
        return PROTOCOLS[choice]
    except KeyError:
        if choice in ("inet_tls", "inet6_tls"):
            raise ValueError(f"-proto_dist {choice} needs an optfile: pass "
                             f"pykv.dist.tls_transport.dist_protocol({choice!r}, OPTFILE)") from None
        raise ValueError(f"unknown -proto_dist {choice!r}: known are {', '.join(PROTOCOLS)}, "
                         "inet_tls and inet6_tls (with an optfile)") from None


async def first_free_port(ports: tuple[int, int], host: str,
                          attempt: Callable[[int], Awaitable[Any]]) -> Any:
    """attempt(port) for each port of the range in turn, until one is not in use."""
    low, high = ports
    for port in range(low, high + 1):
        try:
            return await attempt(port)
        except OSError as e:
            if e.errno != errno.EADDRINUSE or port == high:
                if low != high:
                    raise OSError(e.errno, f"no free port for node connections in {low}-{high} "
                                  f"on {host}: {e.strerror}") from None
                raise
    raise ValueError(f"an empty port range: {low}-{high}")


def port_range(text: "str | int | tuple[int, int]") -> tuple[int, int]:
    """`9100` or `9100-9105` (inet_dist_listen_min..max) as (min, max); 0 is any free port."""
    if isinstance(text, tuple):
        low, high = text
    elif isinstance(text, int):
        low = high = text
    else:
        first, sep, last = text.partition("-")
        try:
            low = int(first)
            high = int(last) if sep else low
        except ValueError:
            raise ValueError(f"bad port range {text!r}: expected PORT or MIN-MAX, e.g. 9100-9105") from None
    if not (0 <= low <= 65535 and 0 <= high <= 65535) or low > high or (low == 0) != (high == 0):
        raise ValueError(f"bad port range {low}-{high}: ports 1-65535, MIN <= MAX (0 alone: any port)")
    return low, high
