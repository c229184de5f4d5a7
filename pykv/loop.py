"""The event loop a node runs on: uvloop when installed, or asyncio's, optionally with the
BEAM's trick of busy waiting: after each wake-up, poll for a short while before sleeping
(the BEAM's schedulers do this by default, `+sbwt`), so a request arriving just after the
last one is seen without the cost of a sleeping process being woken (~50-100 µs here)."""

from __future__ import annotations

import asyncio
import selectors
import time
from typing import Any, Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]


class BusyWaitSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    def __init__(self, spin: float) -> None:
        super().__init__()
        self.spin = spin

    def select(self, timeout: float | None = None) -> list[Any]:
        if timeout is not None and timeout <= 0:
            return super().select(0)
        deadline = time.perf_counter() + self.spin
        while True:
            ready = super().select(0)
            if ready or time.perf_counter() >= deadline:
                break
        if ready:
            return ready
        return super().select(None if timeout is None else max(0.0, timeout - self.spin))


def loop_factory(choice: str = "auto", busy_wait_us: int = 0) -> LoopFactory | None:
    """`auto`: uvloop if installed (unless busy waiting is asked for, which needs asyncio's
    selector), else asyncio. None means asyncio's default loop."""
    if choice == "uvloop" or (choice == "auto" and not busy_wait_us):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install 'pykv[fast]')") from None
        else:
            if busy_wait_us:
                raise SystemExit("--busy-wait needs --loop asyncio (uvloop has no selector to wrap)")
            return uvloop.new_event_loop
    if busy_wait_us:
        return lambda: asyncio.SelectorEventLoop(BusyWaitSelector(busy_wait_us / 1e6))
    return None
