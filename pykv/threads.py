"""The worker threads that run blocking exports: a pool of their own, with a bound.

Not the event loop's default executor: name lookups (`getaddrinfo`, hence every outgoing
connection) wait in that one, and calls that never return must not starve them. Past the
bound, a new call fails at once with `system_limit`, the BEAM's error for an exhausted
resource (as `spawn` gives when the process table is full), and a log line says why.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from .errors import ErlangError
from .logs import RateLimit
from .term import Atom

log = logging.getLogger("pykv.threads")

SYSTEM_LIMIT = Atom("system_limit")
DEFAULT_THREADS = 16
DEFAULT_QUEUE = 1024   # calls waiting for a thread, beyond those running
_warnings = RateLimit(burst=3, window=10.0)


def default_threads() -> int:
    return int(os.environ.get("PYKV_THREADS", DEFAULT_THREADS))


class PoolFull(ErlangError):
    """`erlang:error(system_limit)`: every thread busy and the queue full."""

    def __init__(self) -> None:
        super().__init__(SYSTEM_LIMIT)


class BlockingPool:
    """`threads` threads; at most `queue` more calls wait for one. A call whose caller gave
    up (a cancelled task) still holds its thread until the function returns: Python cannot
    stop a thread, so it counts until then."""

    def __init__(self, threads: int = DEFAULT_THREADS, queue: int = DEFAULT_QUEUE) -> None:
        if threads < 1 or queue < 0:
            raise ValueError(f"a blocking pool needs at least one thread and a queue >= 0 "
                             f"(got {threads} threads, queue {queue})")
        self.threads = threads
        self.queue = queue
        self.in_use = 0  # submitted, not yet returned (running or waiting for a thread)
        self._executor: ThreadPoolExecutor | None = None

    async def run(self, fn: Callable[..., Any], *args: Any) -> Any:
        """`fn(*args)` in a worker thread, in a copy of the caller's context (so it runs as
        the calling process: `current_process()` works there)."""
        if self.in_use >= self.threads + self.queue:
            _warnings.log(log, logging.WARNING, "full",
                          "blocking pool full (%d threads busy, %d calls waiting): refusing "
                          "a call to %s with system_limit; raise --threads if that is expected",
                          self.threads, self.queue, getattr(fn, "__qualname__", fn))
            raise PoolFull()
        if self._executor is None:
            self._executor = ThreadPoolExecutor(self.threads, thread_name_prefix="pykv-blocking")
        loop = asyncio.get_running_loop()
        context = contextvars.copy_context()
        future = self._executor.submit(context.run, fn, *args)
        self.in_use += 1
        # counted down on the loop's thread when the function returns, not when the caller
        # stops waiting
        future.add_done_callback(lambda _: self._returned_from_thread(loop))
        return await asyncio.wrap_future(future, loop=loop)

    def _returned_from_thread(self, loop: asyncio.AbstractEventLoop) -> None:
        try:
            loop.call_soon_threadsafe(self._returned)
        except RuntimeError:
            pass  # the loop is closed: nobody counts any more

    def _returned(self) -> None:
        self.in_use -= 1

    def shutdown(self) -> None:
        """Stop taking calls; threads still running finish on their own (they are not
        joined: the node must be able to stop while one is stuck)."""
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)
            self._executor = None
