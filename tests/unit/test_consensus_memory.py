"""The in-memory ClusterStore fake behaves like the Raft store where the layers above depend on it."""

from __future__ import annotations

import pytest
import trio

from consensus import LeaderChange, MemoryCluster, NoQuorumError

MEMBERS = ("a:1", "b:1", "c:1")


async def test_writes_apply_on_every_reachable_member_and_listeners_hear_them() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, b, c = (cluster.store(m) for m in MEMBERS)
    seen: list[tuple[int, frozenset[str] | None]] = []
    b.add_invalidation_listener(lambda generation, tables: seen.append((generation, tables)))
    with pytest.raises(NoQuorumError):
        await a.vote(0, True)  # no leader yet
    cluster.elect("a:1")
    await a.vote(0, True)
    await c.vote(0, True)
    assert b.down_votes(0) == 2 and b.quorum_size() == 2
    assert await b.replicate_invalidation(frozenset({"t"})) == 1
    assert seen == [(1, frozenset({"t"}))] and a.applied_generation == 1


async def test_an_isolated_member_refuses_writes_catches_up_and_hears_leader_changes() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, _b, c = (cluster.store(m) for m in MEMBERS)
    changes: list[LeaderChange] = []
    c.add_leader_listener(changes.append)
    cluster.elect("a:1")
    cluster.isolate("c:1")
    assert changes == [LeaderChange("a:1", 1, False), LeaderChange(None, 1, False)]
    assert not c.has_quorum() and a.has_quorum() and a.is_leader
    with pytest.raises(NoQuorumError):
        await c.vote(1, True)
    assert await a.commit_view(0, 1, 1, ())
    assert c.state.epoch == 0
    cluster.heal("c:1")
    assert c.state.epoch == 1 and c.leader_id == "a:1"


async def test_lease_runs_out_after_losing_quorum(autojump_clock: trio.testing.MockClock) -> None:
    cluster = MemoryCluster(MEMBERS, lease=2.0)
    b = cluster.store("b:1")
    cluster.elect("a:1")
    async with trio.open_nursery() as nursery:
        await nursery.start(b.run)
        await trio.sleep(1)
        cluster.isolate("b:1")
        lost_at = trio.current_time()
        assert b.lease_valid(trio.current_time())
        while b.lease_valid(trio.current_time()):
            await trio.sleep(0.01)
        assert 1.9 <= trio.current_time() - lost_at <= 2.1
        nursery.cancel_scope.cancel()


async def test_membership_changes_move_the_quorum() -> None:
    cluster = MemoryCluster(MEMBERS)
    a = cluster.store("a:1")
    cluster.elect("a:1")
    await a.add_member("d:1")
    assert a.quorum_size() == 3
    await cluster.store("d:1").vote(0, True)
    await a.remove_member("d:1")
    assert a.quorum_size() == 2 and a.down_votes(0) == 0


def test_status_reports_only_what_a_member_can_know_of_its_peers() -> None:
    """Like the Raft store: a peer's role and term are known only for the leader; the leader alone
    shows its peers' (match) index."""
    cluster = MemoryCluster(MEMBERS)
    a, b, _c = (cluster.store(m) for m in MEMBERS)
    cluster.elect("a:1")
    seen = {m.id: (m.role, m.term, m.commit_index) for m in b.status(0.0).members}
    assert seen == {"a:1": ("leader", 1, None), "b:1": ("follower", 1, 0), "c:1": ("unknown", None, None)}
    led = {m.id: (m.role, m.term, m.commit_index) for m in a.status(0.0).members}
    assert led == {"a:1": ("leader", 1, 0), "b:1": ("unknown", None, 0), "c:1": ("unknown", None, 0)}
