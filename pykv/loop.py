"""The event loop a node runs on (uvloop when installed, else asyncio's), and the BEAM's
trick of busy waiting: after traffic, keep polling for a short while before sleeping (the
BEAM's schedulers do this by default, `+sbwt`), so a request arriving just after the last
one is seen without the cost of waking a sleeping process (~50-100 µs on a VM)."""

from __future__ import annotations

import asyncio
import os
import time
from typing import Callable

LoopFactory = Callable[[], asyncio.AbstractEventLoop]
_yield_cpu: Callable[[], None] = getattr(os, "sched_yield", lambda: None)  # not on Windows


class BusyWait:
    """Keeps the loop polling without sleeping for `spin` seconds after the last `poke()`.

    While a callback is pending, both asyncio and uvloop poll with a zero timeout, so a
    callback that re-queues itself is a poll loop on any loop. Each pass yields the CPU
    (sched_yield) so that on a busy machine the spinning steals nothing from runnable
    processes, the BEAM nodes this one talks to among them."""

    __slots__ = ("spin", "_deadline", "_active", "_loop")

    def __init__(self, spin: float) -> None:
        self.spin = spin
        self._deadline = 0.0
        self._active = False
        self._loop: asyncio.AbstractEventLoop | None = None

    def poke(self) -> None:
        self._deadline = time.perf_counter() + self.spin
        if not self._active:
            self._active = True
            self._loop = asyncio.get_running_loop()
            self._loop.call_soon(self._pass)

    def _pass(self) -> None:
        if time.perf_counter() < self._deadline:
            _yield_cpu()
            self._loop.call_soon(self._pass)  # type: ignore[union-attr]
        else:
            self._active = False


def loop_factory(choice: str = "auto") -> LoopFactory | None:
    """`auto`: uvloop if installed, else asyncio. None means asyncio's default loop."""
    if choice in ("auto", "uvloop"):
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise SystemExit("--loop uvloop: uvloop is not installed (pip install 'pykv[fast]')") from None
        else:
            return uvloop.new_event_loop
    return None
