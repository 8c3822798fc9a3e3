"""Windowed search finds what one search finds, including across window edges."""

from __future__ import annotations

import pytest

from app import scanning


@pytest.mark.parametrize("offset", [-3, -2, -1, 0, 1])
def test_matches_straddling_a_window_edge_are_found(offset):
    needle = b"--abc"
    data = b"x" * (scanning.WINDOW + offset) + needle + b"y" * 10 + needle
    assert scanning.find_all(data, needle, limit=10) == [scanning.WINDOW + offset,
                                                          scanning.WINDOW + offset + 15]


def test_the_search_stops_one_past_the_limit():
    assert len(scanning.find_all(b"ab" * 1000, b"ab", limit=5)) == 6
    assert scanning.find_all(b"", b"ab", limit=5) == []
    assert scanning.find_all(b"xxxx", b"ab", limit=5) == []
