"""Unit tests of routing_skew's recovery figures: shares over a trailing window, time to a bound.

Run with `.venv/bin/pytest bench/skew/test_recovery.py -q`.
"""

from __future__ import annotations

from skew.recovery import Sample, SharePoint, seconds_until, shares


def test_share_is_over_the_trailing_window() -> None:
    samples = [Sample(0.0, 0, 0), Sample(1.0, 10, 90), Sample(2.0, 60, 140), Sample(3.0, 110, 190)]
    points = shares(samples, window_s=1.0)
    assert points == [SharePoint(1.0, 0.1), SharePoint(2.0, 0.5), SharePoint(3.0, 0.5)]
    wide = shares(samples, window_s=2.0)
    assert wide[-1] == SharePoint(3.0, 100 / 200)


def test_an_idle_window_has_share_zero() -> None:
    assert shares([Sample(0.0, 5, 5), Sample(1.0, 5, 5)], window_s=2.0) == [SharePoint(1.0, 0.0)]


def test_seconds_until_counts_only_windows_ending_after_the_change() -> None:
    points = [SharePoint(9.0, 0.5), SharePoint(10.0, 0.1), SharePoint(12.0, 0.2), SharePoint(14.5, 0.45)]
    assert seconds_until(points, 10.0, at_least=0.4) == 4.5
    assert seconds_until(points, 10.0, at_most=0.2) == 2.0
    assert seconds_until(points, 10.0, at_least=0.9) is None


def test_the_window_must_lie_after_the_change_and_the_share_must_hold() -> None:
    points = [SharePoint(t / 2, share) for t, share in enumerate([0.1] * 20 + [0.5, 0.1, 0.5, 0.5, 0.5, 0.5])]
    # the change at 9.5 s: the 0.5 at 10.0 s is lucky (the next is 0.1); from 11.0 s it holds
    assert seconds_until(points, 9.5, at_least=0.4) == 0.5
    assert seconds_until(points, 9.5, at_least=0.4, hold=3) == 1.5
    assert seconds_until(points, 9.5, at_least=0.4, window_s=0.5) == 1.5  # 10.0 s straddles the change
    assert seconds_until(points, 9.5, at_least=0.9, hold=2) is None
