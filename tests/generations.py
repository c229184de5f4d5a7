"""The BEAM generations installed beside each other, and each one's non-BEAM peers.

OTP 25 is the system's (Debian 12: /usr/lib/erlang, Jinterface in /usr/share/java); newer
ones are unpacked by scripts/install-otp.sh into $PYKV_OTP_PREFIX/otpNN (default /opt).
Tests marked `generations` run against every one of them whatever is first on PATH (so
scripts/test.sh runs them once). A generation that is missing skips with one reason line,
except in CI, where the tests must find everything scripts/test.sh installs.
"""

from __future__ import annotations

import glob
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from pykv import Node
from pykv.dist.connection import Connection

GENERATIONS = os.environ.get("PYKV_GENERATIONS", "25 27 29").split()
PREFIX = Path(os.environ.get("PYKV_OTP_PREFIX", "/opt"))
SYSTEM_ROOT = Path("/usr/lib/erlang")


@dataclass(frozen=True)
class Generation:
    otp: str
    erl: Path
    erl_call: Path | None
    jar: Path | None

    def __str__(self) -> str:
        return f"OTP {self.otp}"


def _release(erl: Path) -> str | None:
    try:
        return subprocess.run([str(erl), "-noshell", "-eval",
                               'io:format("~s", [erlang:system_info(otp_release)]), halt().'],
                              capture_output=True, text=True, timeout=60).stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


def _find(otp: str) -> Generation | str:
    """The generation, or why it is not there."""
    prefix = PREFIX / f"otp{otp}"
    if (prefix / "bin" / "erl").exists():
        erl = prefix / "bin" / "erl"
        erl_call = prefix / "bin" / "erl_call"
        jar = prefix / "share" / "java" / "OtpErlang.jar"
    else:
        system_erl = SYSTEM_ROOT / "bin" / "erl"
        if not system_erl.exists() or _release(system_erl) != otp:
            return f"OTP {otp} is not installed (no {prefix}/bin/erl, and the system's is not OTP {otp})"
        erl = system_erl
        calls = sorted(glob.glob(str(SYSTEM_ROOT / "lib" / "erl_interface-*" / "bin" / "erl_call")))
        erl_call = Path(calls[-1]) if calls else SYSTEM_ROOT / "bin" / "erl_call"
        jar = Path("/usr/share/java/OtpErlang.jar")
    if _release(erl) != otp:
        return f"{erl} does not run as OTP {otp}"
    return Generation(otp, erl, erl_call if erl_call.exists() else None, jar if jar.exists() else None)


_found: dict[str, Generation | str] = {}


def generation(otp: str, need: str = "erl") -> Generation:
    """The installed generation `otp` with what a test needs ("erl", "erl_call", "jinterface"),
    or a skip (a failure in CI) saying what is missing."""
    if otp not in _found:
        _found[otp] = _find(otp)
    found = _found[otp]
    missing = found if isinstance(found, str) else None
    if missing is None and need == "erl_call" and found.erl_call is None:
        missing = f"OTP {otp} has no erl_call (erl_interface)"
    if missing is None and need == "jinterface":
        if found.jar is None:
            missing = f"OTP {otp} has no Jinterface (OtpErlang.jar; Debian's erlang-jinterface)"
        elif not (shutil.which("javac") and shutil.which("java")):
            missing = "no JDK (javac, java) for the Jinterface peer"
    if missing is not None:
        if os.environ.get("CI"):
            pytest.fail(f"CI must have it: {missing} (scripts/test.sh installs it)")
        pytest.skip(missing)
    assert isinstance(found, Generation)
    return found




@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every control message pykv writes in the test, by peer node name."""
    out: dict[str, list[Any]] = {}
    original = Connection.send

    def recording(self: Connection, control: Any, *payload: Any) -> None:
        out.setdefault(self.peer_name, []).append(control)
        original(self, control, *payload)

    monkeypatch.setattr(Connection, "send", recording)
    return out


@pytest.fixture
def received(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[Any]]:
    """Every control message pykv receives in the test, by peer node name."""
    out: dict[str, list[Any]] = {}
    original = Node.dispatch

    def recording(self: Node, conn: Connection, control: Any, payload: Any) -> None:
        out.setdefault(conn.peer_name, []).append(control)
        original(self, conn, control, payload)

    monkeypatch.setattr(Node, "dispatch", recording)
    return out
