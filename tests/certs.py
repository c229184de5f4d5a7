"""Test certificates, made by the tests with the `openssl` tool, and optfiles that use them.

    from certs import pki                 # the session fixture: a Pki in a temporary folder

    pki.optfile(server={...}, client={...})   # an -ssl_dist_optfile, Erlang terms

Two CAs: `ca` signs the cluster's certificates, `other_ca` a rogue's. Every leaf certificate
names each host a test dials (as inet_tls_dist's clients check the host part of the node
name): localhost, this host's short name, the test hosts' names (tests/hosts.py: hosta.test,
hosta, ...), and their IP addresses.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterator

import pytest

HOST = socket.gethostname().split(".")[0]
TEST_HOSTS = ("hosta", "hostb", "hostc")  # tests/hosts.py names: hosta.test, 10.213.0.11, ...
OPENSSL = shutil.which("openssl")


def _sans() -> str:
    names = ["localhost", HOST, socket.gethostname()]
    for short in TEST_HOSTS:
        names += [short, f"{short}.test"]
    ips = ["127.0.0.1", "::1"] + [f"10.213.0.{11 + i}" for i in range(len(TEST_HOSTS))] \
        + [f"fd00:213::{11 + i}" for i in range(len(TEST_HOSTS))]
    return ",".join([f"DNS:{n}" for n in dict.fromkeys(names)] + [f"IP:{ip}" for ip in ips])


class Atom(str):
    """An atom in an optfile (a plain str is written as an Erlang string)."""


def erl(value: Any) -> str:
    """Python -> Erlang term text, for optfiles."""
    if isinstance(value, Atom):
        return f"'{value}'"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, (str, Path)):
        return '"' + str(value).replace("\\", "\\\\").replace('"', '\\"') + '"'
    if isinstance(value, tuple):
        return "{" + ", ".join(erl(v) for v in value) + "}"
    if isinstance(value, dict):
        return "[" + ", ".join(f"{{{k}, {erl(v)}}}" for k, v in value.items()) + "]"
    if isinstance(value, list):
        return "[" + ", ".join(erl(v) for v in value) + "]"
    raise TypeError(value)


@dataclass
class Pki:
    dir: Path

    def __post_init__(self) -> None:
        self._files = 0

    def _run(self, *args: str) -> None:
        result = subprocess.run([OPENSSL or "openssl", *args], cwd=self.dir, capture_output=True, text=True)
        assert result.returncode == 0, f"openssl {' '.join(args)}:\n{result.stderr}"

    def make_ca(self, name: str) -> None:
        self._run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.pem", "-days", "30", "-subj", f"/CN=pykv test {name}",
                  "-addext", "basicConstraints=critical,CA:TRUE",
                  "-addext", "keyUsage=critical,keyCertSign,cRLSign")

    def make_leaf(self, name: str, ca: str, sans: str) -> None:
        self._run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes",
                  "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}")
        (self.dir / f"{name}.ext").write_text(
            f"subjectAltName={sans}\nbasicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=serverAuth,clientAuth\n")
        self._run("x509", "-req", "-in", f"{name}.csr", "-CA", f"{ca}.pem", "-CAkey", f"{ca}.key",
                  "-CAcreateserial", "-out", f"{name}.pem", "-days", "30", "-extfile", f"{name}.ext")

    def cert(self, name: str) -> str:
        return str(self.dir / f"{name}.pem")

    def key(self, name: str) -> str:
        return str(self.dir / f"{name}.key")

    def side(self, leaf: str | None = "node", ca: str = "ca", *, verify: bool = True,
             **extra: Any) -> dict[str, Any]:
        """One side's options: `leaf`'s certificate and key, `ca` as the cacertfile."""
        opts: dict[str, Any] = {}
        if leaf is not None:
            opts.update(certfile=self.cert(leaf), keyfile=self.key(leaf))
        opts["cacertfile"] = self.cert(ca)
        opts["verify"] = Atom("verify_peer" if verify else "verify_none")
        opts.update(extra)
        return opts

    def optfile(self, server: dict[str, Any] | None = None, client: dict[str, Any] | None = None,
                text: str | None = None) -> str:
        """An optfile (mutual TLS with the cluster's CA unless told otherwise)."""
        self._files += 1
        path = self.dir / f"opt{self._files}.conf"
        if text is None:
            server = self.side(fail_if_no_peer_cert=True) if server is None else server
            client = self.side() if client is None else client
            text = f"[{{server, {erl(server)}}},\n {{client, {erl(client)}}}].\n"
        path.write_text(text)
        return str(path)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pki]:
    if OPENSSL is None:
        pytest.skip("the `openssl` tool is not installed: it makes the TLS tests' certificates")
    made = Pki(tmp_path_factory.mktemp("pki"))
    made.make_ca("ca")
    made.make_ca("other_ca")
    made.make_leaf("node", "ca", _sans())
    made.make_leaf("rogue", "other_ca", _sans())          # the right names, another CA
    made.make_leaf("wrong_host", "ca", "DNS:nothere.invalid")  # the right CA, no name of ours
    yield made
