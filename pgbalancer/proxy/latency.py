"""Statement latency histograms: fixed buckets that the relays fill on the hot path.

One ``LatencyHistogram`` per pool (so per route: backend x database x user) counts statements by
how long they took, from the moment their request went to the server connection to the
ReadyForQuery that answered it (a client's wait for a server connection is counted elsewhere).
The buckets are fixed for the whole node, so histograms of different pools and of different
worker processes add up bucket by bucket (``merge``), and ``/metrics`` can export them as
Prometheus histograms. Recording is one ``bisect`` and two additions.

It must never: read a clock (the relay passes the elapsed time in), allocate per observation, or
do I/O. It is pure.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence
from typing import Final

# Upper bounds in seconds (Prometheus ``le``); a last, implicit bucket holds everything above.
# Dense below 10 ms, where a pooler's statements live, then coarse up to 10 s.
LATENCY_BUCKETS: Final[tuple[float, ...]] = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)


class LatencyHistogram:
    """Counts per bucket (the last one is +Inf) and the sum of the observed seconds."""

    __slots__ = ("counts", "sum_seconds")

    def __init__(self, counts: Sequence[int] | None = None, sum_seconds: float = 0.0) -> None:
        size = len(LATENCY_BUCKETS) + 1
        if counts is not None and len(counts) != size:
            raise ValueError(f"a latency histogram has {size} buckets, not {len(counts)}")
        self.counts: list[int] = list(counts) if counts is not None else [0] * size
        self.sum_seconds = sum_seconds

    def observe(self, seconds: float, statements: int = 1) -> None:
        """Record ``statements`` statements that each took ``seconds``."""
        self.counts[bisect_left(LATENCY_BUCKETS, seconds)] += statements
        self.sum_seconds += seconds * statements

    @property
    def count(self) -> int:
        return sum(self.counts)

    def cumulative(self) -> list[tuple[str, int]]:
        """Prometheus buckets: (``le`` as text, statements at or below it), ending with +Inf."""
        running, buckets = 0, []
        for bound, count in zip((*map(str, LATENCY_BUCKETS), "+Inf"), self.counts, strict=True):
            running += count
            buckets.append((bound, running))
        return buckets

    def add(self, other: LatencyHistogram) -> None:
        for index, count in enumerate(other.counts):
            self.counts[index] += count
        self.sum_seconds += other.sum_seconds

    def copy(self) -> LatencyHistogram:
        return LatencyHistogram(self.counts, self.sum_seconds)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, LatencyHistogram):
            return NotImplemented
        return self.counts == other.counts and self.sum_seconds == other.sum_seconds

    def __repr__(self) -> str:
        return f"LatencyHistogram(count={self.count}, sum_seconds={self.sum_seconds:.6f})"


def merge(histograms: Iterable[LatencyHistogram]) -> LatencyHistogram:
    """The bucket-by-bucket sum (of several pools, or of the same pool in several workers)."""
    total = LatencyHistogram()
    for histogram in histograms:
        total.add(histogram)
    return total
