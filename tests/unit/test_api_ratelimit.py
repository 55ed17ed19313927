"""The per-source-address limit on failed API logins (time is passed in)."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.api.ratelimit import LoginRateLimiter


def test_the_limit_blocks_until_the_oldest_failure_leaves_the_window() -> None:
    limiter = LoginRateLimiter(limit=3, window=60)
    for moment in (0.0, 10.0, 20.0):
        assert limiter.retry_after("10.0.0.1", moment) == 0
        limiter.record_failure("10.0.0.1", moment)
    assert limiter.retry_after("10.0.0.1", 30.0) == 30.0  # the failure at 0 leaves at 60
    assert limiter.retry_after("10.0.0.1", 59.5) == 0.5
    assert limiter.retry_after("10.0.0.1", 60.0) == 0


def test_sources_are_counted_apart() -> None:
    limiter = LoginRateLimiter(limit=1, window=60)
    limiter.record_failure("10.0.0.1", 0)
    assert limiter.retry_after("10.0.0.1", 1) > 0
    assert limiter.retry_after("10.0.0.2", 1) == 0


def test_zero_means_unlimited() -> None:
    limiter = LoginRateLimiter(limit=0)
    for moment in range(100):
        limiter.record_failure("10.0.0.1", moment / 10)
    assert limiter.retry_after("10.0.0.1", 10) == 0
    assert limiter.tracked_sources() == 0


def test_memory_is_bounded_and_forgets_the_stalest_source() -> None:
    limiter = LoginRateLimiter(limit=1, window=60, max_sources=3)
    for index in range(5):
        limiter.record_failure(f"10.0.0.{index}", index)
    assert limiter.tracked_sources() == 3
    assert limiter.retry_after("10.0.0.0", 5) == 0  # forgotten
    assert limiter.retry_after("10.0.0.4", 5) > 0


def test_expired_sources_are_dropped() -> None:
    limiter = LoginRateLimiter(limit=2, window=10)
    limiter.record_failure("10.0.0.1", 0)
    assert limiter.retry_after("10.0.0.1", 11) == 0
    assert limiter.tracked_sources() == 0


@settings(max_examples=200, deadline=None)
@given(
    limit=st.integers(1, 5),
    gaps=st.lists(st.floats(0, 30, allow_nan=False), min_size=1, max_size=40),
)
def test_never_more_than_limit_password_checks_fail_in_any_window(limit: int, gaps: list[float]) -> None:
    """A client that retries whenever it is allowed never gets more than ``limit`` failures per window."""
    window = 60.0
    limiter = LoginRateLimiter(limit=limit, window=window)
    now, failures = 0.0, []
    for gap in gaps:
        now += gap
        if limiter.retry_after("src", now) == 0:
            limiter.record_failure("src", now)
            failures.append(now)
    for index, start in enumerate(failures):
        assert sum(1 for moment in failures[index:] if moment < start + window) <= limit
