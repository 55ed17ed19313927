"""The replicated state machine (consensus.state): votes, compare-and-set views, epochs, invalidations."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from consensus.state import (
    INVALIDATION_LOG_LENGTH,
    BackendRecord,
    CastVote,
    ClusterState,
    Command,
    CommandError,
    CommitView,
    ForgetMember,
    Invalidate,
    RecordSystemId,
    SetConfigVersion,
    SetVipHolder,
    UpdateBackends,
    apply_command,
    decode_command,
    encode_command,
    majority,
)

MEMBERS = ("a:1", "b:1", "c:1")
B0 = BackendRecord(0, "h:5432", "primary", "up", 1.0)
B1 = BackendRecord(1, "h:5433", "standby", "up", 1.0)


def run(*commands: Command, state: ClusterState | None = None) -> ClusterState:
    state = state or ClusterState()
    for command in commands:
        state, _ = apply_command(state, command)
    return state


def test_majority() -> None:
    assert [majority(n) for n in (1, 2, 3, 4, 5)] == [1, 2, 2, 3, 3]


def test_votes_are_per_member_and_idempotent() -> None:
    state = run(CastVote("a:1", 0, True), CastVote("a:1", 0, True), CastVote("b:1", 0, True))
    assert state.down_votes(0, MEMBERS) == 2
    state = run(CastVote("a:1", 0, False), state=state)
    assert state.voters(0) == frozenset({"b:1"})
    assert state.down_votes(0, ("a:1", "c:1")) == 0  # votes of non-members do not count
    assert run(CastVote("b:1", 0, False), state=state).votes == {}


def test_first_view_initializes_and_later_views_compare_and_set() -> None:
    state, accepted = apply_command(ClusterState(), CommitView(0, 0, 0, (B0, B1)))
    assert accepted and state.initialized and state.primary_id == 0 and state.epoch == 0
    moved, accepted = apply_command(state, CommitView(0, 1, 1, (B1,)))
    assert accepted and moved.epoch == 1 and moved.primary_id == 1
    # A second leader that planned from epoch 0 too is refused: one failover, not two.
    again, accepted = apply_command(moved, CommitView(0, 1, 0, ()))
    assert not accepted and again is moved
    # A new primary without a new epoch is refused.
    assert apply_command(moved, CommitView(1, 1, 0, ()))[1] is False


def test_a_new_epoch_clears_votes_and_the_same_epoch_keeps_them() -> None:
    state = run(CommitView(0, 0, 0, (B0,)), CastVote("a:1", 0, True))
    assert run(CommitView(0, 0, 0, (B0,)), state=state).voters(0) == {"a:1"}
    assert run(CommitView(0, 1, 1, ()), state=state).votes == {}


def test_invalidations_count_up_and_the_log_is_bounded() -> None:
    state, generation = apply_command(ClusterState(), Invalidate(frozenset({"t"})))
    assert generation == 1 and state.invalidations[0].tables == frozenset({"t"})
    state = run(*(Invalidate(None) for _ in range(INVALIDATION_LOG_LENGTH + 5)), state=state)
    assert state.generation == INVALIDATION_LOG_LENGTH + 6
    assert len(state.invalidations) == INVALIDATION_LOG_LENGTH
    assert state.invalidations_after(state.generation - 2) == state.invalidations[-2:]
    assert state.invalidations_after(0) is None  # beyond the log's reach


def test_forget_member_drops_its_votes_and_vip() -> None:
    state = run(CastVote("a:1", 0, True), CastVote("b:1", 0, True), SetVipHolder("a:1"), ForgetMember("a:1"))
    assert state.voters(0) == {"b:1"} and state.vip_holder is None


def test_the_first_system_identifier_recorded_stays() -> None:
    state, first = apply_command(ClusterState(), RecordSystemId(42))
    again, same = apply_command(state, RecordSystemId(42))
    other, differs = apply_command(state, RecordSystemId(7))
    assert (first, same, differs) == (True, True, False)
    assert state.system_identifier == again.system_identifier == other.system_identifier == 42


def test_config_version_never_falls_and_backends_merge() -> None:
    state = run(SetConfigVersion(3), SetConfigVersion(2), UpdateBackends((B0,)), UpdateBackends((B1,)))
    assert state.config_version == 3
    assert state.backends == (B0, B1)


backends = st.builds(
    BackendRecord,
    st.integers(0, 3),
    st.sampled_from(("h:1", "h:2")),
    st.sampled_from(("primary", "standby")),
    st.sampled_from(("up", "down")),
    st.floats(0, 2),
)
commands: st.SearchStrategy[Command] = st.one_of(
    st.builds(CastVote, st.sampled_from(MEMBERS), st.integers(0, 3), st.booleans()),
    st.builds(
        CommitView,
        st.integers(0, 4),
        st.integers(0, 5),
        st.none() | st.integers(0, 3),
        st.lists(backends, max_size=3).map(tuple),
    ),
    st.builds(UpdateBackends, st.lists(backends, max_size=3).map(tuple)),
    st.builds(Invalidate, st.none() | st.frozensets(st.sampled_from(("t", "u", "s.v")), max_size=2)),
    st.builds(SetConfigVersion, st.integers(0, 9)),
    st.builds(SetVipHolder, st.none() | st.sampled_from(MEMBERS)),
    st.builds(ForgetMember, st.sampled_from(MEMBERS)),
    st.builds(RecordSystemId, st.integers(0, 2**63)),
)


@given(st.lists(commands, max_size=40))
def test_epochs_only_rise_and_a_primary_change_always_brings_a_new_epoch(sequence: list[Command]) -> None:
    state = ClusterState()
    for command in sequence:
        new, _ = apply_command(state, command)
        assert new.epoch >= state.epoch
        assert new.generation >= state.generation
        if state.initialized and new.primary_id != state.primary_id:
            assert new.epoch > state.epoch
        state = new


@given(commands)
def test_commands_survive_their_wire_form(command: Command) -> None:
    assert decode_command(encode_command(command)) == command


@pytest.mark.parametrize(
    "raw", [(), ("vote",), ("nope", 1), [1], ("vote", "a", "0", True), ("view", 1, 2, "x", ())]
)
def test_malformed_commands_are_refused(raw: object) -> None:
    with pytest.raises(CommandError):
        decode_command(raw)
