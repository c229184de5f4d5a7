"""Memory for a large message that arrives piece by piece (a long frame, or fragments).

Appending to a bytearray copies it whenever it outgrows its allocation; for a 200 MB message
that is gigabytes of copying while the loop waits. A buffer here reserves address space once,
with an anonymous mmap: the system gives it pages only as they are written, so its memory
grows with what has arrived and each piece is copied once; growing past the reservation (a
sender with pieces larger than it announced) takes a reservation twice as large and one copy.
Short messages keep a bytearray, which is cheaper below a megabyte.
"""

from __future__ import annotations

import mmap
from typing import Any

MMAP_FROM = 1 << 20  # a message expected larger than this gets reserved address space
# The reservation of a message that was handled is kept for the next large message (one, of
# at most KEEP_UP_TO bytes, for the whole process): its pages are the process's already, so
# the next message is copied in without a page fault and a page cleared by the kernel every
# 4 KiB, which cost more than the copy itself (a third of a node's CPU while 16 MiB values
# arrive, perf). What it holds stays resident: at most KEEP_UP_TO bytes.
KEEP_UP_TO = 64 << 20
_kept: mmap.mmap | None = None


class Buffer:
    """Bytes appended up to `limit`; `view()` is a writable view of what was appended."""

    __slots__ = ("_mem", "_size", "limit")

    def __init__(self, expected: int, limit: int) -> None:
        self.limit = limit
        self._size = 0
        expected = min(expected, limit)
        self._mem: bytearray | mmap.mmap = (
            _reserve(expected) if expected > MMAP_FROM else bytearray())

    def __len__(self) -> int:
        return self._size

    def append(self, data: Any) -> None:
        """Add `data` (bytes-like); ValueError past `limit`."""
        size = self._size
        end = size + len(data)
        if end > self.limit:
            raise ValueError(f"grows past {self.limit} bytes")
        mem = self._mem
        if mem.__class__ is bytearray:
            if end <= MMAP_FROM:
                mem += data  # type: ignore[operator]
                self._size = end
                return
            # larger than expected: to reserved memory, with what came so far
            small = mem
            mem = self._mem = _reserve(min(self.limit, max(end, 2 * MMAP_FROM)))
            mem[:size] = small
        elif end > len(mem):
            mem = self._mem = _grown(mem, size, min(self.limit, max(end, 2 * len(mem))))  # type: ignore[arg-type]
        mem[size:end] = data
        self._size = end

    def view(self) -> memoryview:
        return memoryview(self._mem)[:self._size]

    def release(self) -> None:
        """The message was handled (its terms decoded, which copies what they hold): its
        memory may go to the next large message. The buffer is empty afterwards."""
        global _kept
        mem, self._mem, self._size = self._mem, bytearray(), 0
        if mem.__class__ is not bytearray and len(mem) <= KEEP_UP_TO and (_kept is None or len(_kept) < len(mem)):
            _kept = mem  # type: ignore[assignment]

    def spare(self, most: int) -> memoryview | None:
        """A writable view of the reserved memory right after what was appended, at most
        `most` bytes: for a reader to fill in place, then say how much with `grew`. None for
        a short buffer (a bytearray, which has no room reserved)."""
        mem = self._mem
        if mem.__class__ is bytearray:
            return None
        end = min(len(mem), self._size + most)
        return memoryview(mem)[self._size:end] if end > self._size else None

    def grew(self, n: int) -> None:
        """`n` bytes were written into the view `spare` gave."""
        self._size += n


def _reserve(size: int) -> mmap.mmap:
    global _kept
    if _kept is not None and len(_kept) >= size:
        mem, _kept = _kept, None
        return mem
    # private: a shared anonymous map would count as shared memory
    if hasattr(mmap, "MAP_PRIVATE"):
        return mmap.mmap(-1, max(size, 1), flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    return mmap.mmap(-1, max(size, 1))


def _grown(mem: mmap.mmap, used: int, size: int) -> mmap.mmap:
    # (not mmap.resize: on a shared anonymous map it leaves pages that fault with SIGBUS)
    bigger = _reserve(size)
    with memoryview(mem) as old:
        bigger[:used] = old[:used]
    return bigger
