"""Quorum failover decisions: pgbalancer.watchdog.decide with the planner over the in-memory store."""

from __future__ import annotations

import trio
from hypothesis import given, settings
from hypothesis import strategies as st

from consensus import BackendRecord, ClusterState, MemoryCluster
from consensus.state import CastVote, CommitView, apply_command
from pgbalancer.ha.planner import (
    HaPolicy,
    Observations,
    Probe,
    ProbeOutcome,
    Promote,
    ServerFacts,
    plan_round,
)
from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView
from pgbalancer.watchdog.decide import (
    align_view,
    backend_records,
    needs_commit,
    partition_refusal,
    votes_to_cast,
)

MEMBERS = ("10.0.0.1:9000", "10.0.0.2:9000", "10.0.0.3:9000")
SYSID = 7


def view(primary: int | None = 0, epoch: int = 0) -> ClusterView:
    return ClusterView(
        (
            BackendState(0, "db0", 5432, role=BackendRole.PRIMARY),
            BackendState(1, "db1", 5432, role=BackendRole.STANDBY),
            BackendState(2, "db2", 5432, role=BackendRole.STANDBY),
        ),
        primary,
        epoch,
    )


def probe(node_id: int, outcome: ProbeOutcome, *, lsn: int = 100, recovery: bool = True) -> Probe:
    facts = (
        ServerFacts(in_recovery=recovery, wal_lsn=lsn, timeline=1, system_identifier=SYSID)
        if outcome is ProbeOutcome.OK
        else None
    )
    return Probe(node_id, 1.0, outcome, facts, "" if facts else "connection refused")


def test_votes_are_cast_only_where_they_change() -> None:
    state, _ = apply_command(ClusterState(), CastVote(MEMBERS[0], 1, True))
    probes = {0: probe(0, ProbeOutcome.DOWN), 1: probe(1, ProbeOutcome.OK), 2: probe(2, ProbeOutcome.ALIVE)}
    assert votes_to_cast(probes, state, MEMBERS[0]) == ((0, True), (1, False))
    assert votes_to_cast(probes, state, MEMBERS[1]) == ((0, True),)


def test_every_node_routes_by_the_committed_primary_and_epoch() -> None:
    local = view(primary=0, epoch=3)
    assert align_view(local, ClusterState()) is local  # nothing committed yet: local view stands
    records = (BackendRecord(1, "db1:5432", "primary", "up"),)
    committed, _ = apply_command(ClusterState(), CommitView(0, 4, 1, records))
    aligned = align_view(local, committed)
    assert (aligned.primary_id, aligned.epoch) == (1, 4)
    # The primary's status is the committed one, not this node's own probe's.
    down_here = local.with_backend(BackendState(1, "db1", 5432, status=BackendStatus.DOWN))
    assert align_view(down_here, committed).primary is not None


def test_the_leader_commits_only_changes() -> None:
    local = view()
    assert needs_commit(local, ClusterState())
    committed, _ = apply_command(ClusterState(), CommitView(0, 0, 0, backend_records(local)))
    assert not needs_commit(local, committed)
    assert needs_commit(local.with_primary(1), committed)
    quarantined = local.with_backend(BackendState(2, "db2", 5432, status=BackendStatus.QUARANTINED))
    assert needs_commit(quarantined, committed)


def test_partition_refusals_name_the_way_out() -> None:
    args = {"self_id": "n1:9000", "leader": "n2:9000"}
    assert partition_refusal(write=True, lease_valid=True, refuse_reads=True, **args) is None
    assert partition_refusal(write=False, lease_valid=False, refuse_reads=False, **args) is None
    message = partition_refusal(write=True, lease_valid=False, refuse_reads=False, **args)
    assert message is not None and "lost contact with its watchdog quorum and refuses writes" in message
    assert "another pgbalancer node or the virtual IP" in message
    refused = partition_refusal(
        write=False, lease_valid=False, refuse_reads=True, self_id="n1:9000", leader=None
    )
    assert refused is not None and "partition_read_policy = refuse" in refused


async def _votes(sequence: list[tuple[str, bool]]) -> MemoryCluster:
    """A fake cluster led by the first member, after ``sequence`` of (member, down) votes on backend 0."""
    cluster = MemoryCluster(MEMBERS)
    cluster.elect(MEMBERS[0])
    for voter, down in sequence:
        await cluster.store(voter).vote(0, down)
    return cluster


def _leader_plan(cluster: MemoryCluster) -> tuple[int, bool]:
    """The leader's round on a primary its own probe sees down, with the cluster's votes."""
    leader = cluster.store(MEMBERS[0])
    probes = {
        0: probe(0, ProbeOutcome.DOWN),
        1: probe(1, ProbeOutcome.OK, lsn=120),
        2: probe(2, ProbeOutcome.OK, lsn=110),
    }
    last = {0: ServerFacts(in_recovery=False, wal_lsn=130, timeline=1, system_identifier=SYSID)}
    obs = Observations(
        probes=probes,
        last_facts=last,
        down_votes={b: leader.down_votes(b) for b in (0, 1, 2)},
        quorum=leader.quorum_size(),
    )
    plan = plan_round(view(), obs, 2.0, HaPolicy())
    promotes = [a for a in plan.actions if isinstance(a, Promote)]
    assert len(promotes) <= 1 and all(p.node_id == 1 for p in promotes)
    return leader.down_votes(0), bool(promotes)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(MEMBERS), max_size=6))
def test_a_failover_happens_exactly_when_a_majority_voted_the_primary_down(voters: list[str]) -> None:
    cluster = trio.run(_votes, [(voter, True) for voter in voters])
    votes, promoted = _leader_plan(cluster)
    assert votes == len(set(voters))
    assert promoted == (votes >= 2), f"{votes} of 3 votes, promoted={promoted}"


@given(st.sampled_from(MEMBERS), st.lists(st.booleans(), max_size=20))
def test_no_sequence_of_votes_from_a_minority_ever_yields_a_failover(member: str, downs: list[bool]) -> None:
    # One member of three (the leader included) votes down and up any number of times.
    cluster = trio.run(_votes, [(member, down) for down in downs])
    votes, promoted = _leader_plan(cluster)
    assert votes <= 1 and not promoted
