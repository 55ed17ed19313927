"""How fast the balancer moves traffic after the skew changes, pure: from samples of each standby's
committed transactions (pg_stat_database.xact_commit, read on the standbys themselves) to the
slow standby's share of standby reads over time, and the seconds until that share crossed a bound.

Nothing here reads a clock or touches a server; the caller passes (seconds, counters) samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Sample:
    at_s: float  # seconds since the phase began
    slow: int  # xact_commit of the standby that is (or was) slow
    other: int  # xact_commit of the other standby


@dataclass(frozen=True)
class SharePoint:
    at_s: float  # end of the window
    slow_share: float  # slow / (slow + other) over the window; NaN-free: 0.0 when nothing ran


def shares(samples: Sequence[Sample], window_s: float) -> list[SharePoint]:
    """The slow standby's share of standby transactions over a trailing window ending at each sample."""
    points = []
    start = 0
    for end, sample in enumerate(samples):
        while start < end and sample.at_s - samples[start].at_s > window_s:
            start += 1
        if start == end:
            continue
        slow = sample.slow - samples[start].slow
        other = sample.other - samples[start].other
        total = slow + other
        points.append(SharePoint(sample.at_s, slow / total if total > 0 else 0.0))
    return points


def seconds_until(
    points: Sequence[SharePoint],
    after_s: float,
    *,
    at_least: float | None = None,
    at_most: float | None = None,
    window_s: float = 0.0,
    hold: int = 1,
) -> float | None:
    """Seconds from ``after_s`` to the end of the first window that lies wholly after it (it starts
    ``window_s`` before its end) and whose share is at least ``at_least`` (or at most ``at_most``),
    as are the ``hold - 1`` windows after it; None when that never happens. The figure includes one
    window's length, so it errs on the slow side; ``hold`` keeps one lucky window from counting."""

    def meets(point: SharePoint) -> bool:
        return (at_least is not None and point.slow_share >= at_least) or (
            at_most is not None and point.slow_share <= at_most
        )

    for index, point in enumerate(points):
        if point.at_s - window_s <= after_s:
            continue
        following = points[index : index + hold]
        if len(following) == hold and all(meets(p) for p in following):
            return point.at_s - after_s
    return None
