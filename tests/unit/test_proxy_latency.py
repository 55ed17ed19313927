"""Statement latency histograms: bucket placement, Prometheus cumulative form, merging."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.proxy.latency import LATENCY_BUCKETS, LatencyHistogram, merge

seconds = st.floats(min_value=0, max_value=100, allow_nan=False)


@pytest.mark.parametrize(
    ("observed", "le"),
    [
        (0.0, "0.0001"),
        (0.0001, "0.0001"),
        (0.00010001, "0.00025"),
        (0.003, "0.005"),
        (10.0, "10.0"),
        (11, "+Inf"),
    ],
)
def test_a_statement_lands_in_the_first_bucket_whose_bound_it_does_not_exceed(
    observed: float, le: str
) -> None:
    histogram = LatencyHistogram()
    histogram.observe(observed)
    first = next(bound for bound, count in histogram.cumulative() if count)
    assert first == le


@given(st.lists(st.tuples(seconds, st.integers(1, 50)), max_size=40))
def test_cumulative_buckets_rise_to_the_count_and_the_sum_adds_up(
    observations: list[tuple[float, int]],
) -> None:
    histogram = LatencyHistogram()
    for value, statements in observations:
        histogram.observe(value, statements)
    buckets = histogram.cumulative()
    counts = [count for _, count in buckets]
    assert counts == sorted(counts)
    assert buckets[-1] == ("+Inf", sum(n for _, n in observations)) == ("+Inf", histogram.count)
    assert histogram.sum_seconds == pytest.approx(sum(v * n for v, n in observations))
    assert [bound for bound, _ in buckets[:-1]] == [str(b) for b in LATENCY_BUCKETS]


@given(st.lists(st.lists(seconds, max_size=10), max_size=5))
def test_merging_is_the_same_as_observing_everything_in_one(groups: list[list[float]]) -> None:
    parts, whole = [], LatencyHistogram()
    for group in groups:
        part = LatencyHistogram()
        for value in group:
            part.observe(value)
            whole.observe(value)
        parts.append(part)
    merged = merge(parts)
    assert merged.counts == whole.counts
    assert merged.sum_seconds == pytest.approx(whole.sum_seconds)
    assert all(
        part.count == len(group) for part, group in zip(parts, groups, strict=True)
    )  # inputs untouched


def test_a_histogram_of_the_wrong_shape_is_refused() -> None:
    with pytest.raises(ValueError, match="buckets"):
        LatencyHistogram([1, 2, 3])
