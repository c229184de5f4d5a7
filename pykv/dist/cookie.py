"""The cookie, read as erl reads it (OTP lib/kernel/src/auth.erl): `$ERLANG_COOKIE` is
pykv's own override; otherwise `~/.erlang.cookie`, created with 20 random capital letters
and mode 0400 when missing. A cookie file that is not a regular file, that others can read
(mode & 0o077), or that holds anything but printable ASCII (then only trailing newlines and
spaces) stops the node from starting, as it stops erl."""

from __future__ import annotations

import os
import secrets
import stat
import string
from pathlib import Path


class CookieError(Exception):
    """The cookie file cannot be used; the message is erl's."""


def default_cookie(path: Path | None = None) -> str:
    cookie = os.environ.get("ERLANG_COOKIE")
    if cookie:
        return cookie
    path = path or Path.home() / ".erlang.cookie"
    try:
        info = path.stat()
    except FileNotFoundError:
        return _create(path)
    except OSError as e:
        raise CookieError(f"Error when reading {path}: {e.strerror}") from None
    if not stat.S_ISREG(info.st_mode):
        kind = "directory" if stat.S_ISDIR(info.st_mode) else "device" if (
            stat.S_ISCHR(info.st_mode) or stat.S_ISBLK(info.st_mode)) else "other"
        raise CookieError(f"Cookie file {path} is of type {kind}")
    if os.name == "posix" and info.st_mode & 0o077:
        raise CookieError(f"Cookie file {path} must be accessible by owner only "
                          f"(it is {stat.filemode(info.st_mode)}: chmod 400 {path})")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise CookieError(f"Error when reading {path}: {e.strerror}") from None
    return _parse(data, path)


def _parse(data: bytes, path: Path) -> str:
    # auth.erl's check_cookie: printable characters (space included) make the cookie; after
    # the first other character only newlines, carriage returns and spaces may follow
    end = 0
    while end < len(data) and 0x20 <= data[end] <= 0x7E:
        end += 1
    if data[end:].strip(b"\n\r "):
        raise CookieError(f"Bad characters in cookie file {path}")
    if end == 0:
        raise CookieError(f"Too short cookie string in {path}")
    return data[:end].decode("ascii")


def _create(path: Path) -> str:
    cookie = "".join(secrets.choice(string.ascii_uppercase) for _ in range(20))
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as f:
        f.write(cookie)
    return cookie
