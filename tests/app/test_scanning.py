"""Windowed search finds what one search finds, including across window edges."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

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


@settings(max_examples=500, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])  # patched per input
@given(data=st.lists(st.sampled_from([b"-", b"--", b"-a", b"ab", b"x", b"\0", b"-ab"]),
                     max_size=200).map(b"".join),
       needle=st.sampled_from([b"-ab", b"--a", b"-", b"ab-", b"--ab--"]),
       start=st.integers(0, 50), window=st.integers(1, 40), hops=st.integers(0, 5))
def test_find_finds_what_bytes_find_finds(monkeypatch, data, needle, start, window, hops):
    # Small windows and few hops, so that every edge and the fallback are crossed.
    with monkeypatch.context() as patch:
        patch.setattr(scanning, "WINDOW", window)
        patch.setattr(scanning, "MAX_HOPS", hops)
        assert scanning.find(data, needle, start) == data.find(needle, start)
