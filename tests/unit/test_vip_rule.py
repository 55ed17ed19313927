"""The VIP ownership rule (pgbalancer.vip.rule): unit cases and the at-most-one-holder property."""

from __future__ import annotations

import random
from dataclasses import dataclass, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.vip.rule import (
    FOLLOWER,
    Leadership,
    VipAction,
    VipState,
    VipTiming,
    completed,
    decide,
    next_wakeup,
)

TIMING = VipTiming(acquire_delay=1.0, announce_count=3, announce_interval=0.5, refresh_period=10.0)
LEADER = Leadership(leader=True, term=5, quorum=True)
CLEAN = VipState(uncertain=False)


def test_the_first_look_releases_a_vip_left_over_from_an_earlier_run() -> None:
    decision = decide(VipState(), FOLLOWER, 0.0, TIMING)
    assert decision.actions == (VipAction.RELEASE,)
    assert not decision.state.uncertain
    assert decide(decision.state, FOLLOWER, 0.1, TIMING).actions == ()


def test_a_new_leader_acquires_only_after_the_full_delay_then_announces() -> None:
    state = decide(CLEAN, LEADER, 10.0, TIMING).state
    assert not state.holding
    assert decide(state, LEADER, 10.99, TIMING).actions == ()
    assert next_wakeup(state, TIMING) == 11.0
    decision = decide(state, LEADER, 11.0, TIMING)
    assert decision.actions == (VipAction.ACQUIRE, VipAction.ANNOUNCE)
    state = decision.state
    assert state.holding
    assert decide(state, LEADER, 11.2, TIMING).actions == ()
    assert decide(state, LEADER, 11.5, TIMING).actions == (VipAction.ANNOUNCE,)
    state = decide(state, LEADER, 11.5, TIMING).state
    state = decide(state, LEADER, 12.0, TIMING).state
    assert state.announced == 3
    assert next_wakeup(state, TIMING) == 22.0  # then one refresh per refresh_period
    assert decide(state, LEADER, 21.9, TIMING).actions == ()
    assert decide(state, LEADER, 22.0, TIMING).actions == (VipAction.ANNOUNCE,)


def _holding_at(now: float) -> VipState:
    state = decide(CLEAN, LEADER, now - TIMING.acquire_delay, TIMING).state
    state = decide(state, LEADER, now, TIMING).state
    assert state.holding
    return state


def test_losing_leadership_quorum_or_term_releases_at_once() -> None:
    held = _holding_at(5.0)
    for seen in (
        FOLLOWER,
        Leadership(leader=True, term=5, quorum=False),
        Leadership(leader=False, term=5, quorum=True),
        Leadership(leader=True, term=6, quorum=True),
    ):
        decision = decide(held, seen, 5.01, TIMING)
        assert decision.actions == (VipAction.RELEASE,), seen
        assert not decision.state.holding


def test_leadership_regained_in_a_new_term_waits_the_full_delay_again() -> None:
    held = _holding_at(5.0)
    state = decide(held, Leadership(leader=True, term=6, quorum=True), 6.0, TIMING).state
    state = decide(state, Leadership(leader=True, term=6, quorum=True), 6.05, TIMING).state
    assert decide(state, Leadership(leader=True, term=6, quorum=True), 7.0, TIMING).actions == ()
    assert VipAction.ACQUIRE in decide(state, Leadership(True, 6, True), 7.05, TIMING).actions


def test_a_quorum_blip_restarts_the_wait() -> None:
    state = decide(CLEAN, LEADER, 0.0, TIMING).state
    state = decide(state, Leadership(leader=True, term=5, quorum=False), 0.9, TIMING).state
    state = decide(state, LEADER, 0.95, TIMING).state
    assert decide(state, LEADER, 1.5, TIMING).actions == ()
    assert decide(state, LEADER, 1.95, TIMING).actions[0] is VipAction.ACQUIRE


def test_a_failed_acquire_is_released_then_retried_after_the_pause() -> None:
    state = decide(CLEAN, LEADER, 0.0, TIMING).state
    state = decide(state, LEADER, 1.0, TIMING).state
    state = completed(state, VipAction.ACQUIRE, False, 1.0, TIMING)
    assert not state.holding and state.uncertain
    assert decide(state, LEADER, 1.5, TIMING).actions == ()
    assert next_wakeup(state, TIMING) == 2.0
    decision = decide(state, LEADER, 2.0, TIMING)
    assert decision.actions == (VipAction.RELEASE,)
    # still the same leadership, whose delay has long passed: acquire again at the next look
    assert decide(decision.state, LEADER, 2.05, TIMING).actions[0] is VipAction.ACQUIRE


def test_a_failed_announcement_changes_nothing() -> None:
    held = _holding_at(3.0)
    assert completed(held, VipAction.ANNOUNCE, False, 3.0, TIMING) == held


def test_a_release_is_never_held_back_by_a_retry_pause() -> None:
    held = _holding_at(3.0)
    paused = replace(held, retry_at=100.0)
    assert decide(paused, FOLLOWER, 3.1, TIMING).actions == (VipAction.RELEASE,)


def test_timing_is_validated() -> None:
    with pytest.raises(ValueError):
        VipTiming(acquire_delay=-1.0)
    with pytest.raises(ValueError):
        VipTiming(acquire_delay=1.0, announce_count=0)


# --------------------------------------------------------------------------- the property
#
# A model of Raft leadership as pysyncobj gives it: terms follow each other; the leader of a term is
# cut off at some moment and believes itself leader (with quorum) for at most FALLBACK seconds after
# that; the next term's leader is elected no earlier than that moment. Every node looks at its own
# leadership at times of its own, at most POLL apart, and runs the rule. Under the documented
# assumption acquire_delay > FALLBACK + POLL, no two nodes ever hold the VIP at once, whatever the
# terms, gaps, belief lags, look times, quorum blips and failed acquires.

FALLBACK = 0.5
POLL = 0.1
SAFE = VipTiming(acquire_delay=FALLBACK + POLL + 0.05, announce_count=2, announce_interval=0.2)
NODES = 3


@dataclass(frozen=True)
class Term:
    leader: int
    start: float
    cutoff: float  # the leader loses the majority here
    belief_end: float  # ... and steps down here (cutoff <= belief_end <= cutoff + FALLBACK)


def _terms(draw: st.DrawFn) -> list[Term]:
    terms: list[Term] = []
    t = 0.0
    for _ in range(draw(st.integers(1, 6))):
        start = t + draw(st.floats(0.0, 2.0))
        cutoff = start + draw(st.floats(0.0, 3.0))
        belief_end = cutoff + draw(st.floats(0.0, FALLBACK))
        terms.append(Term(draw(st.integers(0, NODES - 1)), start, cutoff, belief_end))
        t = cutoff  # the next election needs the old leader cut off first
    return terms


@st.composite
def _scenario(draw: st.DrawFn) -> tuple[list[Term], list[tuple[float, int, bool, bool]]]:
    terms = _terms(draw)
    horizon = max(term.belief_end for term in terms) + 3.0
    # Look times and failures come from a seeded Random: drawing each one from hypothesis would make
    # thousands of draws per example (the terms, which matter most, are drawn and shrunk directly).
    rnd = random.Random(draw(st.integers(0, 2**32)))
    looks: list[tuple[float, int, bool, bool]] = []
    for node in range(NODES):
        t = rnd.uniform(0.0, POLL)
        while t < horizon:
            looks.append((t, node, rnd.random() < 0.8, rnd.random() < 0.1))
            t += rnd.uniform(0.001, POLL)
    looks.sort()
    return terms, looks


def _seen(terms: list[Term], node: int, t: float, blip: bool) -> Leadership:
    for index in reversed(range(len(terms))):
        term = terms[index]
        if term.leader == node and term.start <= t < term.belief_end:
            return Leadership(leader=True, term=index, quorum=not blip)
    return FOLLOWER


@settings(max_examples=300, deadline=None)
@given(_scenario())
def test_never_two_holders_when_the_delay_exceeds_fallback_plus_poll(
    scenario: tuple[list[Term], list[tuple[float, int, bool, bool]]],
) -> None:
    terms, looks = scenario
    states = [VipState() for _ in range(NODES)]
    holders: set[int] = set()
    acquisitions = 0
    for t, node, acquire_ok, blip in looks:
        decision = decide(states[node], _seen(terms, node, t, blip), t, SAFE)
        state = decision.state
        for action in decision.actions:
            ok = acquire_ok if action is VipAction.ACQUIRE else True
            if action is VipAction.ACQUIRE and ok:
                holders.add(node)
                acquisitions += 1
            elif action is VipAction.RELEASE:
                holders.discard(node)
            state = completed(state, action, ok, t, SAFE)
            if not ok:
                break
        states[node] = state
        assert len(holders) <= 1, f"two holders {holders} at t={t}"
