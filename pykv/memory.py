"""How the process's C allocator keeps memory between large messages (glibc only).

Each large message is copied into memory the allocator has just taken from the system: a
decoded 16 MiB binary, the encoding of a reply. By default glibc gives freed memory at the top
of its heap back to the system once more than about 32 MiB are free there, and serves an
allocation above its threshold with a new mapping; the next message then pays a page fault and
a page cleared by the kernel every 4 KiB, which cost more than copying the bytes themselves
(30-38% of a node's CPU while 16 MiB values arrive and leave, perf). The BEAM's allocators keep
their carriers the same way. `keep_freed_memory()` raises both thresholds to fixed values, so
that what one large message freed serves the next: at most TRIM_ABOVE bytes of freed memory
stay resident. `python -m pykv` calls it at start; a program embedding pykv may too.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

MMAP_ABOVE = 64 << 20   # allocations larger than this get a mapping of their own
TRIM_ABOVE = 128 << 20  # freed memory at the heap's top past this is given back
_M_TRIM_THRESHOLD = -1
_M_MMAP_THRESHOLD = -3


def keep_freed_memory() -> bool:
    """Set glibc's trim and mmap thresholds (see the module); False where the C library is
    not glibc or refuses."""
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6")
        mallopt = libc.mallopt
    except (OSError, AttributeError):
        return False
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_ABOVE)) and bool(mallopt(_M_TRIM_THRESHOLD, TRIM_ABOVE))
