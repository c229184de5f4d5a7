"""Log lines about what peers send: untrusted text cut short, repeated warnings rate-limited.

A peer controls node names in a handshake, the lines it sends the line server and the terms
it sends; none of that may make a log line long, and a peer that repeats the same fault
(say, a handshake with a bad name every millisecond) gets a few lines, then a count.
"""

from __future__ import annotations

import logging
import time
from typing import Any, Hashable

CUT = 120  # characters of untrusted text a log line shows


def cut(text: Any, limit: int = CUT) -> str:
    """`text` (str, bytes or anything else, as its str) cut to `limit` characters, with a
    marker that says how much was left out; bytes are shown as Python literals."""
    shown = repr(text) if isinstance(text, (bytes, bytearray, memoryview)) else str(text)
    if isinstance(text, memoryview):
        shown = repr(bytes(text[:limit + 1]))
    if len(shown) <= limit:
        return shown
    return f"{shown[:limit]}... ({len(shown) - limit} more characters)"


class RateLimit:
    """At most `burst` lines per key in each `window` seconds; the lines held back are
    counted and reported with the next line that goes out for that key."""

    def __init__(self, burst: int = 5, window: float = 60.0, max_keys: int = 10_000) -> None:
        self.burst = burst
        self.window = window
        self.max_keys = max_keys  # the keys themselves come from peers: bounded too
        self._seen: dict[Hashable, list[float | int]] = {}  # key -> [window start, sent, held]

    def log(self, logger: logging.Logger, level: int, key: Hashable, msg: str, *args: Any) -> None:
        now = time.monotonic()
        entry = self._seen.get(key)
        if entry is None or now - entry[0] >= self.window:
            held = int(entry[2]) if entry is not None else 0
            if len(self._seen) >= self.max_keys:
                self._forget(now)
            entry = self._seen[key] = [now, 0, 0]
            if held:
                msg += f" ({held} similar lines held back in the last {self.window:.0f} s)"
        if entry[1] >= self.burst:
            entry[2] += 1
            return
        entry[1] += 1
        if entry[1] == self.burst:
            msg += f" (further similar lines held back for up to {self.window:.0f} s)"
        logger.log(level, msg, *args)

    def _forget(self, now: float) -> None:
        stale = [k for k, e in self._seen.items() if now - e[0] >= self.window]
        for k in stale:
            del self._seen[k]
        if len(self._seen) >= self.max_keys:
            self._seen.clear()


# One limiter for everything peers can make the node say.
peer_warnings = RateLimit()
