"""The failover planner: decisions from snapshots, refusals that change nothing, and its invariants."""

from __future__ import annotations

import re
from dataclasses import replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.ha.planner import (
    BackendFailed,
    FollowPrimary,
    HaOperationError,
    HaPolicy,
    Observations,
    Plan,
    Probe,
    ProbeOutcome,
    Promote,
    Reprobe,
    ServerFacts,
    after_promotion,
    caught_up,
    check_promotable,
    choose_failover_target,
    plan_attach,
    plan_detach,
    plan_manual_promote,
    plan_rejoin,
    plan_round,
    plan_suspicion,
    plan_switchover,
)
from pgbalancer.ha.view import BackendRole, BackendStatus, ClusterView, initial_view

SYSID = 7001
HOST = "db"
POLICY = HaPolicy()


def address(node_id: int) -> str:
    return f"{HOST}:{5000 + node_id}"


def cluster(count: int = 3) -> ClusterView:
    return initial_view(tuple((i, HOST, 5000 + i, 1.0) for i in range(count)))


def primary_facts(lsn: int = 1000, timeline: int = 1, sysid: int = SYSID) -> ServerFacts:
    return ServerFacts(in_recovery=False, wal_lsn=lsn, timeline=timeline, system_identifier=sysid)


def standby_facts(
    replay: int = 1000,
    receive: int | None = None,
    *,
    timeline: int = 1,
    sysid: int = SYSID,
    streaming_from: str | None = None,
    following: str | None = address(0),
) -> ServerFacts:
    return ServerFacts(
        in_recovery=True,
        wal_lsn=replay,
        receive_lsn=receive if receive is not None else replay,
        timeline=timeline,
        system_identifier=sysid,
        lag_seconds=0.0,
        streaming_from=streaming_from,
        following=following,
    )


def ok(node_id: int, facts: ServerFacts, at: float = 10.0) -> Probe:
    return Probe(node_id, at, ProbeOutcome.OK, facts)


def down(node_id: int, at: float = 10.0) -> Probe:
    return Probe(node_id, at, ProbeOutcome.DOWN, error="connection refused")


def alive(node_id: int) -> Probe:
    return Probe(node_id, 10.0, ProbeOutcome.ALIVE, error="53300 too many connections")


def observe(*probes: Probe, last: dict[int, ServerFacts] | None = None) -> Observations:
    found = {p.node_id: p for p in probes}
    facts = dict(last or {})
    facts.update({p.node_id: p.facts for p in probes if p.facts is not None})
    return Observations(probes=found, last_facts=facts)


def healthy(primary_lsn: int = 1000) -> Observations:
    return observe(
        ok(0, primary_facts(primary_lsn)),
        ok(1, standby_facts(900, streaming_from=address(0))),
        ok(2, standby_facts(950, streaming_from=address(0))),
    )


def settled() -> ClusterView:
    """Three nodes after one healthy round: 0 primary, 1 and 2 streaming standbys."""
    return plan_round(cluster(), healthy(), 1.0, POLICY).view


def statuses(view: ClusterView) -> dict[int, BackendStatus]:
    return {s.node_id: s.status for s in view}


def promotes(plan: Plan) -> list[Promote]:
    return [a for a in plan.actions if isinstance(a, Promote)]


# --------------------------------------------------------------------------- rounds


def test_a_healthy_round_learns_roles_and_lag_and_changes_nothing_else() -> None:
    plan = plan_round(cluster(), healthy(), 1.0, POLICY)
    view = plan.view
    assert (view.primary_id, view.epoch) == (0, 0)
    assert [s.role for s in view] == [BackendRole.PRIMARY, BackendRole.STANDBY, BackendRole.STANDBY]
    assert [s.lag_bytes for s in view] == [0, 100, 50]
    assert all(s.status is BackendStatus.UP for s in view)
    assert plan.actions == () and plan.notes == ()


def test_dead_primary_promotes_the_standby_holding_the_most_wal() -> None:
    # Standby 1 replayed less but flushed more: a synchronous commit it acknowledged lives only there.
    probes = observe(
        down(0),
        ok(1, standby_facts(replay=900, receive=1000)),
        ok(2, standby_facts(replay=950, receive=950)),
        last={0: primary_facts()},
    )
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert promotes(plan) == [Promote(1, 0, "primary 0 confirmed down")]
    assert statuses(plan.view)[0] is BackendStatus.DOWN
    assert plan.view.primary_id == 0, "the view changes primary only once the promotion worked"


def test_a_tie_in_wal_promotes_the_lowest_node_id() -> None:
    probes = observe(down(0), ok(2, standby_facts(950)), ok(1, standby_facts(950)), last={0: primary_facts()})
    assert choose_failover_target(plan_round(settled(), probes, 2.0, POLICY).view, probes) == (1, "")


def test_no_failover_while_a_standby_still_streams_from_the_primary() -> None:
    probes = observe(
        down(0),
        ok(1, standby_facts(990, streaming_from=address(0))),
        ok(2, standby_facts(950)),
        last={0: primary_facts()},
    )
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert promotes(plan) == []
    assert any("still streams" in note for note in plan.notes)


def test_no_failover_when_the_primary_was_never_seen() -> None:
    probes = observe(down(0), ok(1, standby_facts(900)), ok(2, standby_facts(950)))
    plan = plan_round(cluster(), probes, 1.0, POLICY)
    assert promotes(plan) == []
    assert any("never answered" in note for note in plan.notes)


def test_a_primary_that_answers_but_cannot_be_queried_is_not_failed_over() -> None:
    probes = observe(
        alive(0), ok(1, standby_facts(900)), ok(2, standby_facts(950)), last={0: primary_facts()}
    )
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert promotes(plan) == [] and statuses(plan.view)[0] is BackendStatus.UP


def test_after_promotion_the_new_primary_takes_writes_in_a_new_epoch_and_the_rest_follow() -> None:
    view = plan_round(
        settled(),
        observe(down(0), ok(1, standby_facts(900)), ok(2, standby_facts(950)), last={0: primary_facts()}),
        2.0,
        POLICY,
    ).view
    plan = after_promotion(view, Promote(2, 0, "test"))
    assert (plan.view.primary_id, plan.view.epoch) == (2, view.epoch + 1)
    assert plan.view.primary is not None and plan.view.primary.node_id == 2
    assert statuses(plan.view) == {0: BackendStatus.DOWN, 1: BackendStatus.UP, 2: BackendStatus.UP}
    assert plan.actions == (FollowPrimary(1, 2, 0),)


def promoted_view() -> ClusterView:
    """Node 0 failed, node 1 was promoted to timeline 2, node 2 follows it."""
    view = plan_round(
        settled(),
        observe(down(0), ok(1, standby_facts(990)), ok(2, standby_facts(950)), last={0: primary_facts()}),
        2.0,
        POLICY,
    ).view
    return after_promotion(view, Promote(1, 0, "test")).view


def after_failover_probes(old_primary: Probe) -> Observations:
    return observe(
        old_primary,
        ok(1, primary_facts(2000, timeline=2)),
        ok(2, standby_facts(2000, timeline=2, streaming_from=address(1), following=address(1))),
    )


def test_probes_begun_before_a_promotion_are_ignored() -> None:
    """A round probing while a switchover promoted node 1 saw it still in recovery, and node 0 writable."""
    view = promoted_view()
    stale = observe(ok(0, primary_facts()), ok(1, standby_facts(990)), ok(2, standby_facts(950)))
    plan = plan_round(view, replace(stale, epoch=view.epoch - 1), 3.0, POLICY)
    assert plan.view == view and plan.actions == ()
    assert plan_round(view, replace(stale, epoch=view.epoch), 3.0, POLICY).view.primary_id == 0


def test_an_old_primary_back_on_its_old_timeline_is_never_the_primary_again() -> None:
    """Pgpool-II issue #64: a restarted old primary is writable, and must still get nothing."""
    plan = plan_round(
        promoted_view(), after_failover_probes(ok(0, primary_facts(1500, timeline=1))), 3.0, POLICY
    )
    assert plan.view.primary_id == 1
    assert statuses(plan.view)[0] is BackendStatus.DOWN
    assert not any(isinstance(a, Promote) for a in plan.actions)


def test_a_node_promoted_behind_our_back_wins_by_timeline_and_the_old_one_is_fenced() -> None:
    probes = observe(
        ok(0, primary_facts(1000, timeline=1)),
        ok(1, primary_facts(1200, timeline=2)),
        ok(2, standby_facts(950, streaming_from=address(0))),
    )
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert (plan.view.primary_id, plan.view.epoch) == (1, 1)
    assert statuses(plan.view)[0] is BackendStatus.DOWN
    assert any("fenced" in note for note in plan.notes)


def test_two_new_primaries_on_the_same_timeline_are_ambiguous_and_get_no_writes() -> None:
    probes = observe(down(0), ok(1, primary_facts(timeline=2)), ok(2, primary_facts(timeline=2)))
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert plan.view.primary_id is None and plan.view.primary is None
    assert statuses(plan.view) == {0: BackendStatus.DOWN, 1: BackendStatus.DOWN, 2: BackendStatus.DOWN}


def test_wrong_startup_guess_is_corrected_from_what_the_nodes_say() -> None:
    probes = observe(
        ok(0, standby_facts(900, streaming_from=address(1))),
        ok(1, primary_facts(1000, timeline=3)),
        ok(2, standby_facts(950)),
    )
    plan = plan_round(cluster(), probes, 1.0, POLICY)
    assert (plan.view.primary_id, plan.view.epoch) == (1, 1)
    assert statuses(plan.view) == {0: BackendStatus.UP, 1: BackendStatus.UP, 2: BackendStatus.UP}


def test_a_primary_that_turned_standby_leaves_no_primary() -> None:
    probes = observe(ok(0, standby_facts(900)), ok(1, standby_facts(950)), ok(2, standby_facts(950)))
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert plan.view.primary_id is None


def test_a_backend_of_another_cluster_is_never_used_or_promoted() -> None:
    probes = observe(
        down(0), ok(1, standby_facts(5000, sysid=999)), ok(2, standby_facts(900)), last={0: primary_facts()}
    )
    plan = plan_round(settled(), probes, 2.0, POLICY)
    assert statuses(plan.view)[1] is BackendStatus.DOWN
    assert promotes(plan) == [Promote(2, 0, "primary 0 confirmed down")]


def test_a_restarted_primary_that_was_not_replaced_comes_back() -> None:
    down_view = plan_round(settled(), observe(down(0), ok(1, standby_facts(900, sysid=1))), 2.0, POLICY).view
    assert statuses(down_view)[0] is BackendStatus.DOWN and down_view.primary is None
    back = plan_round(down_view, healthy(), 3.0, POLICY)
    assert back.view.primary is not None and back.view.primary.node_id == 0
    assert back.view.epoch == down_view.epoch


STANDBY_CASES = [
    # (policy, lag of the returning standby, re-added?)
    (HaPolicy(), 10_000_000, True),
    (HaPolicy(auto_failback=False), 0, False),
    (HaPolicy(delay_threshold_bytes=1000), 1500, False),
    (HaPolicy(delay_threshold_bytes=1000), 500, True),
]


@pytest.mark.parametrize(("policy", "lag", "readded"), STANDBY_CASES)
def test_a_failed_standby_leaves_and_returns_per_policy(policy: HaPolicy, lag: int, readded: bool) -> None:
    gone = plan_round(
        settled(), observe(ok(0, primary_facts(1000)), down(1), ok(2, standby_facts(950))), 2.0, policy
    )
    assert statuses(gone.view)[1] is BackendStatus.DOWN
    assert BackendFailed(1, 0) in gone.actions
    returning = observe(
        ok(0, primary_facts(1000 + lag)),
        ok(1, standby_facts(1000, streaming_from=address(0))),
        ok(2, standby_facts(950)),
    )
    back = plan_round(gone.view, returning, 3.0, policy)
    assert (statuses(back.view)[1] is BackendStatus.UP) == readded
    assert back.view.primary_id == 0 and back.view.epoch == 0


def test_a_standby_back_after_a_failover_is_pointed_at_the_new_primary() -> None:
    probes = observe(
        down(0),
        ok(1, primary_facts(2000, timeline=2)),
        ok(2, standby_facts(950, timeline=1, streaming_from=None, following=address(0))),
    )
    plan = plan_round(promoted_view(), probes, 4.0, POLICY)
    assert FollowPrimary(2, 1, None) in plan.actions


# --------------------------------------------------------------------------- suspicion


def test_a_suspected_standby_is_quarantined_and_reprobed() -> None:
    plan = plan_suspicion(settled(), [2], POLICY)
    assert statuses(plan.view)[2] is BackendStatus.QUARANTINED
    assert plan.actions == (Reprobe(frozenset({2}), "connection error"),)
    cleared = plan_round(plan.view, healthy(), 2.0, POLICY)
    assert statuses(cleared.view)[2] is BackendStatus.UP


def test_a_suspected_primary_keeps_taking_writes_while_it_is_reprobed() -> None:
    """One pg_terminate_backend costs nothing: writes have nowhere else to go anyway."""
    plan = plan_suspicion(settled(), [0], POLICY)
    assert plan.view.primary is not None and plan.view.primary.node_id == 0
    assert plan.actions == (Reprobe(frozenset({0}), "connection error"),)
    after = plan_round(plan.view, healthy(), 2.0, POLICY)
    assert after.view == plan_round(settled(), healthy(), 2.0, POLICY).view
    assert promotes(after) == []


def test_suspicions_are_ignored_when_failover_on_backend_error_is_off() -> None:
    view = settled()
    assert plan_suspicion(view, [0, 1], HaPolicy(confirm_suspicions=False)) == Plan(view)


def test_unknown_or_down_suspects_are_ignored() -> None:
    view = plan_detach(settled(), 2).view
    assert plan_suspicion(view, [2, 9], POLICY) == Plan(view)


def test_observe_only_adopts_a_new_primary_but_never_acts() -> None:
    observer = HaPolicy(executes=False)
    gone = plan_round(
        settled(), observe(down(0), ok(1, standby_facts(990)), ok(2, standby_facts(950))), 2.0, observer
    )
    assert gone.actions == () and gone.view.primary is None
    adopted = plan_round(gone.view, after_failover_probes(down(0)), 3.0, observer)
    assert adopted.view.primary_id == 1 and adopted.actions == ()


# --------------------------------------------------------------------------- operations


def test_attach_returns_a_detached_standby() -> None:
    view = plan_detach(settled(), 1).view
    assert view.backend(1).detached and statuses(view)[1] is BackendStatus.DOWN
    attached = plan_attach(view, healthy(), 1).view
    assert statuses(attached)[1] is BackendStatus.UP and not attached.backend(1).detached


def test_a_detached_standby_stays_out_whatever_the_probes_say() -> None:
    view = plan_detach(settled(), 1).view
    assert statuses(plan_round(view, healthy(), 2.0, POLICY).view)[1] is BackendStatus.DOWN


BAD_OPERATIONS = [
    ("promote unknown id", lambda v, o: check_promotable(v, o, 7), "no backend 7 (configured: 0, 1, 2)"),
    ("promote the primary", lambda v, o: check_promotable(v, o, 0), "already the primary"),
    ("promote a down node", lambda v, o: check_promotable(v, o, 2), "backend 2 is down"),
    ("manual promote while the primary is up", lambda v, o: plan_manual_promote(v, o, 1), "use a switchover"),
    ("switchover to a node not streaming", lambda v, o: plan_switchover(v, o, 1), "not streaming"),
    ("attach an up node", lambda v, o: plan_attach(v, o, 1), "already attached"),
    ("attach unknown id", lambda v, o: plan_attach(v, o, -1), "no backend -1"),
    ("attach an unreachable node", lambda v, o: plan_attach(v, o, 2), "connection refused"),
    ("detach the primary", lambda v, o: plan_detach(v, 0), "is the primary"),
    ("rejoin the primary", lambda v, o: plan_rejoin(v, 0), "is the primary"),
    ("rejoin an up standby", lambda v, o: plan_rejoin(v, 1), "already an up standby"),
    ("rejoin unknown id", lambda v, o: plan_rejoin(v, 3), "no backend 3"),
]


@pytest.mark.parametrize(("case", "operation", "message"), BAD_OPERATIONS, ids=[c[0] for c in BAD_OPERATIONS])
def test_bad_operations_are_refused_with_a_clear_message(case: str, operation: object, message: str) -> None:
    probes = observe(ok(0, primary_facts()), ok(1, standby_facts(900)), down(2))
    view = plan_round(settled(), probes, 2.0, POLICY).view
    assert callable(operation)
    with pytest.raises(HaOperationError, match=re.escape(message)):
        operation(view, probes)  # views are immutable: a refusal has no new view to adopt


def test_attaching_an_old_primary_that_is_not_in_recovery_is_refused() -> None:
    view = promoted_view()
    with pytest.raises(HaOperationError, match="would make two primaries; rejoin it"):
        plan_attach(view, after_failover_probes(ok(0, primary_facts(1500))), 0)


def test_manual_promote_when_the_primary_is_down_warns_about_wal_only_others_hold() -> None:
    probes = observe(down(0), ok(1, standby_facts(900)), ok(2, standby_facts(950)), last={0: primary_facts()})
    view = plan_round(settled(), probes, 2.0, HaPolicy(executes=False)).view
    plan = plan_manual_promote(view, probes, 1)
    assert promotes(plan) == [Promote(1, 0, "operator promote")]
    assert any("backends [2] hold more WAL" in note for note in plan.notes)


def test_switchover_goes_from_the_primary_to_a_streaming_standby_once_it_caught_up() -> None:
    probes = observe(
        ok(0, primary_facts()), ok(1, standby_facts(900, streaming_from=address(0))), ok(2, standby_facts())
    )
    switch = plan_switchover(settled(), probes, 1)
    assert (switch.old_primary_id, switch.new_primary_id) == (0, 1)
    assert caught_up(standby_facts(900, receive=1000), 1000)
    assert not caught_up(standby_facts(900), 1000)


# --------------------------------------------------------------------------- properties

NODES = 4


@st.composite
def probe_for(draw: st.DrawFn, node_id: int) -> Probe:
    kinds = (
        ["down", "down", "primary", "alive"]
        if node_id == 0
        else ["down", "alive", "standby", "standby", "primary"]
    )
    kind = draw(st.sampled_from(kinds))
    if kind == "down":
        return down(node_id)
    if kind == "alive":
        return alive(node_id)
    sysid = draw(st.sampled_from([SYSID, SYSID, 99]))
    if kind == "primary":
        return ok(node_id, primary_facts(draw(st.integers(0, 5000)), draw(st.integers(1, 4)), sysid))
    replay = draw(st.integers(0, 5000))
    receive = draw(st.integers(replay, replay + 500))
    streaming = draw(st.sampled_from([None, None, address(0), address(1)]))
    return ok(node_id, standby_facts(replay, receive, sysid=sysid, streaming_from=streaming))


@st.composite
def rounds(draw: st.DrawFn) -> list[Observations]:
    count = draw(st.integers(1, 4))
    return [
        observe(*(draw(probe_for(node_id)) for node_id in range(NODES)), last={0: primary_facts()})
        for _ in range(count)
    ]


def assert_invariants(before: ClusterView, plan: Plan, obs: Observations) -> None:
    view = plan.view
    writable_up = [
        s.node_id
        for s in view
        if s.is_up and (facts := obs.fresh(s.node_id)) is not None and not facts.in_recovery
    ]
    assert writable_up in ([], [view.primary_id]), (
        f"two writable targets: {writable_up}, primary {view.primary_id}"
    )
    if view.primary_id != before.primary_id:
        assert view.epoch == before.epoch + 1
    else:
        assert view.epoch == before.epoch
    for action in promotes(plan):
        chosen = obs.fresh(action.node_id)
        assert chosen is not None and chosen.in_recovery
        for state in view:
            other = obs.fresh(state.node_id)
            if state.is_up and other is not None and other.in_recovery and other.system_identifier == SYSID:
                assert other.wal_held <= chosen.wal_held, "a standby holding more WAL was passed over"


@settings(max_examples=300, deadline=None)
@given(rounds(), st.booleans())
def test_no_sequence_of_rounds_ever_plans_two_primaries(sequence: list[Observations], executes: bool) -> None:
    view = cluster(NODES)
    policy = HaPolicy(executes=executes)
    for now, obs in enumerate(sequence):
        plan = plan_round(view, obs, float(now), policy)
        assert_invariants(view, plan, obs)
        view = plan.view
        for action in promotes(plan):
            promoted = after_promotion(view, action).view
            assert promoted.primary_id == action.node_id and promoted.epoch == view.epoch + 1
            assert promoted.backend(action.old_primary_id or 0).status is BackendStatus.DOWN
            assert [s.node_id for s in promoted if s.is_up and s.role is BackendRole.PRIMARY] == [
                action.node_id
            ]
            view = promoted


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 5000), st.integers(0, 500), st.booleans()), min_size=1, max_size=5))
def test_failover_always_picks_the_standby_holding_the_most_wal(
    standbys: list[tuple[int, int, bool]],
) -> None:
    view = cluster(len(standbys) + 1)
    view = plan_round(view, observe(ok(0, primary_facts())), 1.0, POLICY).view
    probes = [down(0)]
    probes += [
        ok(i, standby_facts(replay, replay + extra)) if up else down(i)
        for i, (replay, extra, up) in enumerate(standbys, start=1)
    ]
    obs = observe(*probes, last={0: primary_facts()})
    plan = plan_round(view, obs, 2.0, POLICY)
    held = {i: replay + extra for i, (replay, extra, up) in enumerate(standbys, start=1) if up}
    if not held:
        assert promotes(plan) == []
        return
    best = max(held.values())
    assert promotes(plan) == [
        Promote(min(i for i, lsn in held.items() if lsn == best), 0, "primary 0 confirmed down")
    ]


OPERATIONS = st.sampled_from(["attach", "detach", "promote", "switchover", "rejoin"])


@settings(max_examples=300, deadline=None)
@given(rounds(), OPERATIONS, st.integers(-1, NODES + 1))
def test_an_operation_either_is_refused_or_keeps_one_primary(
    sequence: list[Observations], operation: str, node_id: int
) -> None:
    view = cluster(NODES)
    for obs in sequence:
        view = plan_round(view, obs, 1.0, POLICY).view
    obs = sequence[-1]
    try:
        if operation == "attach":
            result = plan_attach(view, obs, node_id).view
        elif operation == "detach":
            result = plan_detach(view, node_id).view
        elif operation == "promote":
            check_promotable(view, obs, node_id)
            result = after_promotion(view, Promote(node_id, view.primary_id, "p")).view
        elif operation == "switchover":
            plan_switchover(view, obs, node_id)
            result = view
        else:
            plan_rejoin(view, node_id)
            result = view
    except HaOperationError as exc:
        assert exc.message and exc.kind in ("not_found", "conflict", "unavailable")
        return
    assert view.has(node_id)
    up_writable = [s.node_id for s in result if s.is_up and (f := obs.fresh(s.node_id)) and not f.in_recovery]
    if operation != "promote":  # a promoted node is still a standby in these (older) facts
        assert up_writable in ([], [result.primary_id])
