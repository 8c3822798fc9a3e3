"""Searching large request bodies in windows.

One `bytes.find` or `bytes.count` over megabytes holds the interpreter lock, and so every
other request of the process, for milliseconds on end (10 ms for 9 MB here). Searching a
window at a time lets the lock change hands in between.
"""

from __future__ import annotations

WINDOW = 1 << 20


# In image data a needle's first byte is often rare (a multipart delimiter starts with
# "-"): hopping from one of them to the next runs at memchr's speed, five times
# `bytes.find`'s on a 10 MB body of TIFFs. Past this many hops in a window (a body full
# of dashes) the window is left to `bytes.find`.
MAX_HOPS = 64


def find(data: bytes, needle: bytes, start: int = 0) -> int:
    """`data.find(needle, start)`, a window at a time."""
    while start < len(data):
        stop = min(len(data), start + WINDOW + len(needle))
        found = _find_in_window(data, needle, start, stop)
        if found >= 0 or stop == len(data):
            return found
        start = stop - len(needle) + 1  # a match may straddle two windows
    return -1


def _find_in_window(data: bytes, needle: bytes, start: int, stop: int) -> int:
    """The first `needle` at or after `start` if one begins in the window (it may run past
    `stop`), else -1 (one that straddles `stop` is the next window's)."""
    at = data.find(needle[:1], start, stop)
    for _ in range(MAX_HOPS):
        if at < 0 or data.startswith(needle, at):
            return at
        at = data.find(needle[:1], at + 1, stop)
    return data.find(needle, at, stop) if at >= 0 else -1


def find_all(data: bytes, needle: bytes, limit: int) -> list[int]:
    """Where `needle` starts in `data`, left to right, at most `limit` + 1 of them (one more
    than the caller allows, so that it can tell there were too many)."""
    positions: list[int] = []
    start = 0
    while len(positions) <= limit and (found := find(data, needle, start)) >= 0:
        positions.append(found)
        start = found + len(needle)
    return positions


def count(data: bytes, byte: bytes) -> int:
    """How many times the single byte `byte` occurs in `data`."""
    return sum(data.count(byte, start, start + WINDOW) for start in range(0, len(data), WINDOW))


def windows(start: int, end: int) -> list[tuple[int, int]]:
    """[start, end) cut into windows, at least one (empty if start == end)."""
    return [(at, min(end, at + WINDOW)) for at in range(start, end, WINDOW)] or [(start, end)]
