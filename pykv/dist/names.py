"""Node names: short (`foo@host`) or long (`foo@host.domain`, `foo@10.1.2.3`), as OTP rules them.

A node runs with one kind of name and talks only to nodes of that kind. OTP's rules, read in
kernel's net_kernel.erl (create_hostpart: the node's own name) and inet_tcp_dist.erl
(splitnode: a node it dials), with the BEAM's own error texts:

- a short name's host has no dot: `erl -sname foo@a.b` fails "Can't set short node name!";
- a long name without a host takes the host name and the resolver's domain, and fails
  "Can't set long node name!" when there is no domain; with a host, any host is taken
  (`erl -name foo@vm` starts, though no long-name node can dial it);
- a long-name node dials only hosts with a dot or IP addresses of its protocol's family, a
  short-name node only hosts without a dot: anything else is refused before any traffic,
  with "** System running to use fully qualified hostnames **" (or NOT running) logged.

An acceptor does not check the kind (OTP 25, 27 and 29, observed): a BEAM node takes a
connection from a node of the other kind, which it could not have dialled itself.
"""

from __future__ import annotations

import ipaddress
import re
import socket

_ALIVE = re.compile(r"[0-9A-Za-z_\-]+")


class NodeNameError(ValueError):
    """A node name this node cannot take or cannot dial; str() is the BEAM's message."""


def split(node: str) -> tuple[str, str]:
    """`alive@host` -> (alive, host); the host may hold further `@`s, as OTP splits at the first."""
    alive, sep, host = node.partition("@")
    if not sep:
        raise NodeNameError(f"** Nodename {node!r} illegal, no '@' character **")
    if not alive or not host:
        raise NodeNameError(f"** Nodename {node!r} illegal **")
    return alive, host


def ip_literal(host: str, family: socket.AddressFamily | None = None) -> bool:
    """Is `host` an IP address (of `family`, when given)? IPv4 only in dotted quads, as
    inet:parse_ipv4strict_address takes them."""
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    if family is None:
        return True
    return (address.version == 6) == (family == socket.AF_INET6)


def is_long(host: str) -> bool:
    """The kind a host part asks for: long when it has a dot or is an IP address."""
    return "." in host or ip_literal(host)


def own_name(name: str, longnames: bool | None = None) -> tuple[str, bool]:
    """This node's full name and kind, from `foo` or `foo@host`, as `erl -sname`/`-name`
    make it. `longnames` None: from the host part (a dot or an IP address: long)."""
    alive, sep, host = name.partition("@")
    if not alive or (sep and not host):
        raise NodeNameError(f"** Nodename {name!r} illegal **")
    if not _ALIVE.fullmatch(alive):  # net_kernel:valid_name_head/1
        raise NodeNameError(f"Invalid node name!\nPlease check your configuration ({alive!r}: "
                            "letters, digits, _ and - only)")
    if longnames is None:
        longnames = bool(sep) and is_long(host)
    if sep:
        if not longnames and "." in host:
            raise NodeNameError("Can't set short node name!\nPlease check your configuration "
                                f"({host!r} has a dot: a long name is --name {name})")
        if any(c.isspace() or not c.isprintable() for c in host):
            raise NodeNameError("Invalid node name!\nPlease check your configuration")
        return name, longnames
    if not longnames:
        return f"{alive}@{socket.gethostname().split('.')[0]}", False
    hostname = socket.gethostname()
    fqdn = hostname if "." in hostname else socket.getfqdn()
    if not fqdn.startswith(hostname.split(".")[0] + "."):
        # net_kernel takes the host name and the resolver's domain ("localhost" is neither)
        raise NodeNameError("Can't set long node name!\nPlease check your configuration "
                            f"(this host has no domain: give one, --name {alive}@host.domain)")
    return f"{alive}@{fqdn}", True


def dialable(node: str, longnames: bool,
             family: socket.AddressFamily | None = socket.AF_INET) -> tuple[str, str]:
    """(alive, host) of a node this node may dial, else NodeNameError with the BEAM's text
    (inet_tcp_dist:splitnode/3: a long-name node takes a host without a dot only when it is
    an address of its own family; family None: of either)."""
    alive, host = split(node)
    if longnames and "." not in host and not ip_literal(host, family):
        raise NodeNameError("** System running to use fully qualified hostnames **\n"
                            f"** Hostname {host} is illegal **")
    if not longnames and "." in host:
        raise NodeNameError("** System NOT running to use fully qualified hostnames **\n"
                            f"** Hostname {host} is illegal **")
    return alive, host
