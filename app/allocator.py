"""glibc's allocator, set for a server that receives multi-megabyte bodies.

Where the allocator is not glibc's (musl, or a preloaded jemalloc) all of this does
nothing: the thresholds and the trim are glibc calls.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes

try:
    _LIBC = ctypes.CDLL("libc.so.6")
except OSError:
    _LIBC = None

# M_MMAP_THRESHOLD: blocks at least this large are mapped on their own and handed back
# when freed. A fresh mapping costs a page fault per 4 KB on first touch: copying a 10 MB
# body into one took 4.8 ms against 0.6 ms into heap pages already in use, and a 10 MB
# multipart body is copied three times. So bodies come from the heap (at most 10 MB,
# DIGITS_MAX_UPLOAD_BYTES), and what they leave there is handed back by `Trimmer`.
MMAP_THRESHOLD = 32 * 1024 * 1024
# M_ARENA_MAX: one heap for every thread. malloc_trim empties the free pages of every heap
# but never shrinks the top of a thread's own heap, so threads' heaps (the parsing and
# batching threads) kept up to TRIM_THRESHOLD each for good.
ARENAS = 1
# M_TRIM_THRESHOLD: free memory at the top of the heap beyond this goes back to the system
# at once. Lower, the heap shrank and regrew (a page fault per 4 KB) for every socket chunk
# of an upload.
TRIM_THRESHOLD = 32 * 1024 * 1024

# Once this many bytes of request bodies have been freed, the heap is trimmed within
# TRIM_DELAY_S: at most once a second under a stream of uploads, and soon after the last
# one (`make soak`'s memory ratio: 1.16 without the trim and these settings, 1.02 with).
TRIM_AFTER_BYTES = 4 * 1024 * 1024
TRIM_DELAY_S = 1.0


def tune() -> None:
    """Apply the settings above (once per process, before serving)."""
    with contextlib.suppress(AttributeError):
        _LIBC.mallopt(-8, ARENAS)  # -8: M_ARENA_MAX
        _LIBC.mallopt(-3, MMAP_THRESHOLD)  # -3: M_MMAP_THRESHOLD
        _LIBC.mallopt(-1, TRIM_THRESHOLD)  # -1: M_TRIM_THRESHOLD


def trim() -> None:
    """Hand every free page of every heap back to the system."""
    with contextlib.suppress(AttributeError):
        _LIBC.malloc_trim(0)


class Trimmer:
    """Trims the heap once, TRIM_DELAY_S after being asked, however often it is asked in
    between."""

    def __init__(self) -> None:
        self.pending: asyncio.TimerHandle | None = None

    def trim_soon(self) -> None:
        if self.pending is None:
            self.pending = asyncio.get_running_loop().call_later(TRIM_DELAY_S, self._trim)

    def _trim(self) -> None:
        self.pending = None
        trim()
