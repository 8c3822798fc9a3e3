"""glibc's allocator, set for a server that receives multi-megabyte bodies.

Where the allocator is not glibc's (musl, or a preloaded jemalloc) all of this does
nothing: the thresholds and the trim are glibc calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging

logger = logging.getLogger("digits.allocator")

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None

# M_MMAP_THRESHOLD: blocks at least this large are mapped on their own and handed back
# when freed. Left alone, glibc raises the threshold after the first large free, and the
# multi-megabyte bodies of later requests stay in the heap: +100 MB per server process
# after 30 s of hostile uploads, against +27 MB with the threshold fixed (measured).
MMAP_THRESHOLD = 256 * 1024
# M_TRIM_THRESHOLD: free memory at the top of the heap beyond this goes back to the system
# at once. Fixing the mmap threshold leaves it at 128 KB, so the heap shrank and regrew (a
# page fault per 4 KB) for every socket chunk of an upload. What it keeps after a burst of
# uploads is handed back by `trim_soon`.
TRIM_THRESHOLD = 32 * 1024 * 1024

# After a body this large is answered, the heap is trimmed within TRIM_DELAY_S: its socket
# chunks (each under the mmap threshold) leave free pages all over the heap, which the
# trim threshold alone would keep for good (`make soak`'s memory ratio: 1.16 without).
LARGE_BODY_BYTES = 1024 * 1024
TRIM_DELAY_S = 1.0


def tune() -> None:
    """Set the two thresholds above (once per process, before serving)."""
    with contextlib.suppress(AttributeError):
        _LIBC.mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
        _LIBC.mallopt(-1, TRIM_THRESHOLD)  # -1: M_TRIM_THRESHOLD


def trim() -> None:
    """Hand every free page of every heap back to the system."""
    with contextlib.suppress(AttributeError):
        _LIBC.malloc_trim(0)


class Trimmer:
    """Trims the heap once, TRIM_DELAY_S after being asked, however often it is asked in
    between: at most once a second under a stream of large uploads, and soon after the
    last one."""

    def __init__(self) -> None:
        self.pending: asyncio.TimerHandle | None = None

    def trim_soon(self) -> None:
        if self.pending is None:
            self.pending = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        self.pending = None
        trim()
