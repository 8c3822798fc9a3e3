"""Searching large request bodies in windows.

One `bytes.find` or `bytes.count` over megabytes holds the interpreter lock, and so every
other request of the process, for milliseconds on end (10 ms for 9 MB here). Searching a
window at a time lets the lock change hands in between.
"""

from __future__ import annotations

WINDOW = 1 << 20


def find(data: bytes, needle: bytes, start: int = 0) -> int:
    """`data.find(needle, start)`, a window at a time."""
    while start < len(data):
        stop = min(len(data), start + WINDOW + len(needle))
        found = data.find(needle, start, stop)
        if found >= 0 or stop == len(data):
            return found
        start = stop - len(needle) + 1  # a match may straddle two windows
    return -1


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
