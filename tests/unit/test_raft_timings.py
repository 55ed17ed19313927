"""RaftTimings.for_election_timeout: the Raft timings derived from watchdog_election_timeout.

Pure: builds dataclasses, starts no Raft member. The invariants are the ones consensus/raft.py's
comments and docs/watchdog.md state; the VIP rule's floor is pgbalancer/vip/manager.py's.
"""

import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.raft import RaftTimings
from pgbalancer.config import WATCHDOG_ELECTION_TIMEOUT_MAX, WATCHDOG_ELECTION_TIMEOUT_MIN
from pgbalancer.vip.manager import ACQUIRE_MARGIN, DEFAULT_POLL_INTERVAL


def test_the_default_election_timeout_gives_exactly_todays_timings() -> None:
    assert RaftTimings.for_election_timeout(0.3) == RaftTimings()


@given(st.floats(min_value=WATCHDOG_ELECTION_TIMEOUT_MIN, max_value=WATCHDOG_ELECTION_TIMEOUT_MAX))
def test_every_configurable_election_timeout_keeps_the_invariants(t: float) -> None:
    timings = RaftTimings.for_election_timeout(t)
    assert timings.raft_min_timeout == pytest.approx(t)
    assert timings.raft_max_timeout == pytest.approx(2 * t)
    # a healthy leader's heartbeats arrive well within a follower's shortest election timeout
    assert 0 < timings.auto_tick_period <= timings.append_entries_period * 2
    assert timings.append_entries_period * 3 <= timings.raft_min_timeout
    # a cut-off leader steps down only after any follower could have started an election
    assert timings.leader_fallback_timeout > timings.raft_max_timeout
    # ...and before a new leader takes the VIP (the VIP rule, docs/vip.md)
    acquire_delay = timings.leader_fallback_timeout + timings.vip_margin
    assert acquire_delay > timings.leader_fallback_timeout
    assert timings.vip_margin >= DEFAULT_POLL_INTERVAL + ACQUIRE_MARGIN
    # a connection is dropped only after several missed heartbeats, and after the fallback
    assert timings.connection_timeout > timings.leader_fallback_timeout
    assert timings.connection_timeout > 10 * timings.append_entries_period
    assert 0 < timings.connection_retry < timings.connection_timeout
    # a write waits at least today's 3 s, and long enough for an election plus a commit
    assert timings.write_timeout >= 3.0
    assert timings.write_timeout > timings.raft_max_timeout + timings.leader_fallback_timeout


@given(st.floats(min_value=0.01, max_value=100), st.floats(min_value=1.01, max_value=10))
def test_timings_grow_with_the_election_timeout(t: float, factor: float) -> None:
    small, large = RaftTimings.for_election_timeout(t), RaftTimings.for_election_timeout(t * factor)
    for name in ("raft_min_timeout", "raft_max_timeout", "append_entries_period", "leader_fallback_timeout"):
        assert getattr(large, name) > getattr(small, name), name
    for name in ("vip_margin", "connection_timeout", "connection_retry", "write_timeout"):
        assert getattr(large, name) >= getattr(small, name), name


@pytest.mark.parametrize("bad", [0.0, -1.0, math.nan, math.inf])
def test_a_meaningless_election_timeout_is_refused(bad: float) -> None:
    with pytest.raises(ValueError, match="election timeout must be a positive number"):
        RaftTimings.for_election_timeout(bad)
