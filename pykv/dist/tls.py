"""TLS for node connections: erl's `-ssl_dist_optfile FILE` read into ssl.SSLContexts.

The file is the one BEAM nodes of the cluster read (OTP's "Using SSL for Erlang
Distribution"): one Erlang term, `[{server, Options}, {client, Options}]`. The options
pykv knows, as OTP's ssl reads them:

  certfile, keyfile (default: the certfile), password, cacertfile   PEM files
  verify            verify_peer | verify_none (server default verify_none; client default
                    verify_peer, as OTP 26+: the server's certificate must chain to the
                    cacertfile and name the host part of the node name being dialled)
  fail_if_no_peer_cert  (server) true: a client without a certificate is refused
  versions          ['tlsv1.2', 'tlsv1.3'] or either one (default: both; OTP 25 and 27
                    default to tlsv1.2 alone, and negotiation settles on it with them)
  ciphers           an OpenSSL cipher string, "ECDHE-ECDSA-AES256-GCM-SHA384:..." (TLS 1.2)
  server_name_indication  (client) the host name to send and check, or `disable`
  secure_renegotiate true, reuse_sessions, hibernate_after   accepted and ignored: OpenSSL
                    always renegotiates securely, and the other two tune OTP's processes

Any other option (verify_fun, depth, crl_check, ...) is an error that names it: pykv would
not do what it asks. erl's `-ssl_dist_opt server_certfile F ...` flags are not read.
"""

from __future__ import annotations

import logging
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..term import Atom
from .consult import ConsultError, consult

log = logging.getLogger("pykv.dist")


class OptfileError(ValueError):
    """An optfile pykv cannot use: the message names the file, the side and the option."""


_VERSIONS = {"tlsv1.2": ssl.TLSVersion.TLSv1_2, "tlsv1.3": ssl.TLSVersion.TLSv1_3}
_IGNORED = {"secure_renegotiate", "reuse_sessions", "hibernate_after", "erl_dist"}
_COMMON = {"certfile", "keyfile", "password", "cacertfile", "verify", "versions", "ciphers"}
_KNOWN = {"server": _COMMON | {"fail_if_no_peer_cert"} | _IGNORED,
          "client": _COMMON | {"server_name_indication"} | _IGNORED}
_WHY_NOT = {
    "depth": "Python's ssl cannot bound the chain length",
    "verify_fun": "a fun cannot be read from a file by pykv; verification is verify_peer's",
    "ktls": "pykv does its TLS in user space",
}


@dataclass(frozen=True)
class DistTls:
    """What an optfile asks: a context for connections this node accepts, one for those it
    dials, and what the client checks the server's certificate against."""

    server: ssl.SSLContext
    client: ssl.SSLContext
    server_name: str | None = None   # server_name_indication: None = the dialled host
    check_hostname: bool = True      # the client checks the server's name (verify_peer)
    source: str = ""

    def server_hostname(self, host: str) -> str:
        """The name the client sends (SNI) and checks: as inet_tls_dist, the host part of the
        node name dialled, unless the optfile names another; '' when checking is off."""
        if self.server_name is not None:
            return self.server_name
        return host if self.check_hostname else ""


def load_optfile(path: "str | Path") -> DistTls:
    """The contexts the optfile at `path` asks for; OptfileError says why not."""
    try:
        terms = consult(path)
    except ConsultError as e:
        raise OptfileError(f"--ssl-dist-optfile {e}") from None
    except OSError as e:
        raise OptfileError(f"--ssl-dist-optfile {path}: {e.strerror or e}") from None
    return dist_tls(terms, str(path))


def dist_tls(terms: list[Any], source: str = "<optfile>") -> DistTls:
    """DistTls from the terms of an optfile (`[[{server, [...]}, {client, [...]}]]`)."""
    if len(terms) != 1 or not isinstance(terms[0], list):
        raise OptfileError(f"{source}: expected one term, a list: [{{server, [...]}}, {{client, [...]}}].")
    sides: dict[str, list[Any]] = {}
    for item in terms[0]:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Atom)
                and item[0].name in ("server", "client") and isinstance(item[1], list)):
            raise OptfileError(f"{source}: expected {{server, [Options]}} or {{client, [Options]}}, "
                               f"got {_term(item)}")
        if item[0].name in sides:
            raise OptfileError(f"{source}: {item[0].name} options given twice")
        sides[item[0].name] = item[1]
    if "server" not in sides:
        raise OptfileError(f"{source}: no {{server, [...]}} options: a node needs a certfile to accept connections")
    server_opts = _options(sides["server"], "server", source)
    client_opts = _options(sides.get("client", []), "client", source)
    server = _context("server", server_opts, source)
    client = _context("client", client_opts, source)
    verify = _atom(client_opts, "verify", "verify_peer", ("verify_peer", "verify_none"), "client", source)
    sni = client_opts.get("server_name_indication")
    server_name: str | None = None
    if sni is not None:
        if sni == Atom("disable"):
            client.check_hostname = False
            server_name = ""
        elif isinstance(sni, str) and sni:
            server_name = sni
        else:
            raise OptfileError(f"{source}: client option server_name_indication: a host name "
                               f"(\"host.example\") or disable, not {_term(sni)}")
    return DistTls(server, client, server_name, verify == "verify_peer" and server_name != "", source)


def line_server_context(certfile: str, keyfile: str | None = None, cacertfile: str | None = None,
                        verify: str = "verify_none") -> ssl.SSLContext:
    """The line server's context (its --line-tls-* flags): verify_peer asks every client for
    a certificate from the cacertfile's CA, and refuses those without one."""
    opts: dict[str, Any] = {"certfile": certfile, "verify": Atom(verify)}
    if keyfile:
        opts["keyfile"] = keyfile
    if cacertfile:
        opts["cacertfile"] = cacertfile
    if verify == "verify_peer":
        opts["fail_if_no_peer_cert"] = Atom("true")
    return _context("server", opts, "--line-tls-*")


def _options(items: list[Any], side: str, source: str) -> dict[str, Any]:
    opts: dict[str, Any] = {}
    for item in items:
        if not (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], Atom)):
            raise OptfileError(f"{source}: {side} options are {{Name, Value}} pairs, got {_term(item)}")
        name = item[0].name
        if name not in _KNOWN[side]:
            why = _WHY_NOT.get(name)
            where = "server-only" if name == "fail_if_no_peer_cert" else (
                "client-only" if name == "server_name_indication" else "")
            raise OptfileError(
                f"{source}: {side} option {name} is not supported by pykv"
                + (f" ({why})" if why else f" (it is {where})" if where else "")
                + f"; it knows {', '.join(sorted(_KNOWN[side] - {'erl_dist'}))}")
        if name in opts:
            raise OptfileError(f"{source}: {side} option {name} given twice")
        opts[name] = item[1]
    return opts


def _context(side: str, opts: dict[str, Any], source: str) -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if side == "server" else ssl.PROTOCOL_TLS_CLIENT)
    where = f"{source}: {side}"
    certfile = _path(opts, "certfile", where)
    keyfile = _path(opts, "keyfile", where)
    cacertfile = _path(opts, "cacertfile", where)
    password = opts.get("password")
    if password is not None and not isinstance(password, str):
        raise OptfileError(f"{where} option password: a string, not {_term(password)}")
    if side == "server" and certfile is None:
        raise OptfileError(f"{where} options need a certfile (the node's certificate)")
    if keyfile is not None and certfile is None:
        raise OptfileError(f"{where} option keyfile without a certfile")
    if certfile is not None:
        try:
            ctx.load_cert_chain(certfile, keyfile, password or None)
        except (ssl.SSLError, OSError) as e:
            raise OptfileError(f"{where} certfile {certfile}" + (f" / keyfile {keyfile}" if keyfile else "")
                               + f": {_ssl_why(e)}") from None
    if cacertfile is not None:
        try:
            ctx.load_verify_locations(cafile=cacertfile)
        except (ssl.SSLError, OSError) as e:
            raise OptfileError(f"{where} cacertfile {cacertfile}: {_ssl_why(e)}") from None
    verify = _atom(opts, "verify", "verify_none" if side == "server" else "verify_peer",
                   ("verify_peer", "verify_none"), side, source)
    fail = _atom(opts, "fail_if_no_peer_cert", "false", ("true", "false"), side, source) == "true"
    if verify == "verify_peer" and cacertfile is None:
        default = " (the client's default, as OTP 26+)" if side == "client" and "verify" not in opts else ""
        raise OptfileError(f"{where}: verify_peer{default} needs a cacertfile, the CA that signs the "
                           "peers' certificates (or {verify, verify_none})")
    if fail and verify != "verify_peer":
        raise OptfileError(f"{where}: fail_if_no_peer_cert true needs {{verify, verify_peer}}")
    if side == "client":
        ctx.check_hostname = verify == "verify_peer"
        ctx.verify_mode = ssl.CERT_REQUIRED if verify == "verify_peer" else ssl.CERT_NONE
    else:
        ctx.verify_mode = (ssl.CERT_REQUIRED if fail else ssl.CERT_OPTIONAL) if verify == "verify_peer" \
            else ssl.CERT_NONE
    low, high = _versions(opts.get("versions"), where)
    ctx.minimum_version, ctx.maximum_version = low, high
    ciphers = opts.get("ciphers")
    if ciphers is not None:
        if not isinstance(ciphers, str):
            raise OptfileError(f"{where} option ciphers: pykv takes an OpenSSL cipher string "
                               f"(\"ECDHE-ECDSA-AES256-GCM-SHA384:...\"), not {_term(ciphers)}")
        try:
            ctx.set_ciphers(ciphers)
        except ssl.SSLError:
            raise OptfileError(f"{where} option ciphers: OpenSSL knows none of {ciphers!r}") from None
    for name in ("secure_renegotiate",):
        if name in opts and opts[name] != Atom("true"):
            raise OptfileError(f"{where} option {name}: only true (OpenSSL always renegotiates securely)")
    return ctx


def _versions(value: Any, where: str) -> tuple[ssl.TLSVersion, ssl.TLSVersion]:
    if value is None:
        return ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3
    if not isinstance(value, list) or not value or not all(isinstance(v, Atom) for v in value):
        raise OptfileError(f"{where} option versions: a list such as ['tlsv1.2', 'tlsv1.3'], not {_term(value)}")
    chosen = []
    for v in value:
        if v.name not in _VERSIONS:
            raise OptfileError(f"{where} option versions: {v.name} is not supported by pykv "
                               f"(it speaks {', '.join(_VERSIONS)})")
        chosen.append(_VERSIONS[v.name])
    return min(chosen), max(chosen)


def _path(opts: dict[str, Any], name: str, where: str) -> str | None:
    value = opts.get(name)
    if value is None:
        return None
    if isinstance(value, bytes):
        value = value.decode()
    if not isinstance(value, str) or not value:
        raise OptfileError(f"{where} option {name}: a file name (\"/path/to/file.pem\"), not {_term(value)}")
    return value


def _atom(opts: dict[str, Any], name: str, default: str, allowed: tuple[str, ...], side: str, source: str) -> str:
    value = opts.get(name)
    if value is None:
        return default
    if not isinstance(value, Atom) or value.name not in allowed:
        raise OptfileError(f"{source}: {side} option {name}: {' or '.join(allowed)}, not {_term(value)}")
    return value.name


def _term(value: Any) -> str:
    from ..term import inspect
    text = inspect(value)
    return text if len(text) <= 80 else text[:80] + "..."


def _ssl_why(error: BaseException) -> str:
    if isinstance(error, ssl.SSLError):
        return error.reason or str(error)
    if isinstance(error, OSError):
        return error.strerror or str(error)
    return str(error)


# -- why a handshake failed, in a few words ---------------------------------------------------

_ALERTS = {
    "TLSV1_ALERT_UNKNOWN_CA": "it does not trust our certificate (unknown CA)",
    "SSLV3_ALERT_BAD_CERTIFICATE": "it refused our certificate (bad certificate)",
    "SSLV3_ALERT_CERTIFICATE_UNKNOWN": "it refused our certificate (certificate unknown)",
    "SSLV3_ALERT_CERTIFICATE_EXPIRED": "it refused our certificate (expired)",
    "TLSV13_ALERT_CERTIFICATE_REQUIRED": "it requires a certificate, and we have none (no client certfile)",
    "SSLV3_ALERT_HANDSHAKE_FAILURE": "it refused the handshake (no cipher or certificate in common?)",
    "PEER_DID_NOT_RETURN_A_CERTIFICATE": "it sent no certificate, and fail_if_no_peer_cert is true",
    "TLSV1_ALERT_PROTOCOL_VERSION": "no TLS version in common (its alert: protocol version)",
    "UNSUPPORTED_PROTOCOL": "no TLS version in common (it offered only versions we do not accept)",
    "NO_PROTOCOLS_AVAILABLE": "no TLS version in common",
    "WRONG_VERSION_NUMBER": "it does not speak TLS, or no version we accept (a node without "
                            "-proto_dist inet_tls?)",
    "HTTP_REQUEST": "it does not speak TLS (a plaintext request)",
    "NO_SHARED_CIPHER": "no cipher in common",
}


def why_failed(error: BaseException) -> str:
    """A TLS handshake's failure, as a log line says it."""
    if isinstance(error, ssl.SSLCertVerificationError):
        message = error.verify_message or error.reason or str(error)
        code = error.verify_code
        if code in (2, 19, 20, 21):  # no issuer known, self-signed in chain, ...
            return f"its certificate is not from a CA in our cacertfile ({message})"
        if "Hostname mismatch" in message or code == 62:
            return f"its certificate does not name the host dialled ({message})"
        return f"its certificate failed verification ({message})"
    if isinstance(error, ssl.SSLError):
        reason = error.reason or ""
        return _ALERTS.get(reason, reason.lower().replace("_", " ") or str(error))
    if isinstance(error, TimeoutError) or "taking longer than" in str(error):  # asyncio's and uvloop's
        return "the TLS handshake timed out (net_setuptime)"
    if isinstance(error, ConnectionError):
        return "the peer closed the connection during the TLS handshake"
    return str(error) or type(error).__name__
