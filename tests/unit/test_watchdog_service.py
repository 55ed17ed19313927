"""WatchdogService over the in-memory store: settle/commit, adoption, leases, status and membership."""

from __future__ import annotations

import pytest
import trio

from consensus import MemoryCluster
from consensus.raft import RaftClusterStore, RaftTimings
from pgbalancer.config import Config, parse_config_text
from pgbalancer.ha.planner import HaOperationError, Probe, ProbeOutcome, ServerFacts
from pgbalancer.health.controller import HaController
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.watchdog import WatchdogService

MEMBERS = ("127.0.0.1:9001", "127.0.0.1:9002", "127.0.0.1:9003")


def config(port: int, extra: str = "") -> Config:
    return parse_config_text(
        "backend_hostname0 = db0\nbackend_hostname1 = db1\nbackend_hostname2 = db2\nauth_type = trust\n"
        f"watchdog_nodes = '{','.join(MEMBERS)}'\nwatchdog_port = {port}\nwatchdog_secret = s\n"
        "watchdog_lease = 1\n" + extra
    )


def service(cluster: MemoryCluster, member: str, extra: str = "") -> WatchdogService:
    cfg = config(int(member.rsplit(":", 1)[1]), extra)
    proxy = ProxyServer(cfg, {}, None)
    ha = HaController(cfg, proxy)
    return WatchdogService(cfg, proxy, cluster.store(member), ha)


async def test_only_the_leader_commits_and_every_node_adopts_the_committed_epoch() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, b, _c = (service(cluster, m) for m in MEMBERS)
    cluster.elect(MEMBERS[0])
    for node in (a, b):
        node.store.add_state_listener(node._on_state)
    assert a.may_execute() and not b.may_execute() and a.ha.acts and not b.ha.acts
    # A follower's own idea of a new primary is not adopted: it keeps the committed one.
    moved = b.proxy.cluster_view.with_primary(2)
    assert (await b.settle(moved)).primary_id == 2  # nothing committed yet: local view stands
    first = await a.settle(a.proxy.cluster_view)
    assert cluster.state.initialized and first.primary_id == 0
    assert (await b.settle(moved)).primary_id == 0
    # The leader's failover is committed once and adopted by the follower between rounds.
    failover = a.proxy.cluster_view.with_primary(1)
    assert (await a.settle(failover)).epoch == 1
    assert (b.proxy.cluster_view.primary_id, b.proxy.cluster_view.epoch) == (1, 1)
    # A second decision planned from the old epoch is refused: still epoch 1, primary 1.
    stale = a.proxy.cluster_view.with_primary(2, new_epoch=False)
    assert (await a.settle(stale)).primary_id == 1 and cluster.state.epoch == 1


class RecordedEvents:
    def __init__(self) -> None:
        self.leaders: list[tuple[str | None, int | None]] = []
        self.config_versions: list[int] = []

    def publish_watchdog_leader(self, leader: str | None, term: int | None) -> bool:
        self.leaders.append((leader, term))
        return True

    def publish_watchdog_vip(
        self, holder: str | None, vip: str, interface: str, *, event_id: str | None = None
    ) -> bool:
        return True

    def publish_config_version(self, version: int) -> bool:
        self.config_versions.append(version)
        return True


async def test_every_leader_change_is_published_and_wakes_the_new_leader_s_checks() -> None:
    cluster = MemoryCluster(MEMBERS)
    a = service(cluster, MEMBERS[0])
    events = RecordedEvents()
    a.events = events
    async with trio.open_nursery() as nursery:
        await nursery.start(a.run)
        cluster.elect(MEMBERS[1])
        assert not a.ha._wake.is_set()
        cluster.elect(MEMBERS[0])
        assert a.ha._wake.is_set()  # becoming leader asks for a health round at once
        cluster.elect(None)
        nursery.cancel_scope.cancel()
    assert events.leaders == [(MEMBERS[1], 1), (MEMBERS[0], 2), (None, 3)]


async def test_a_reload_commits_the_next_config_version_and_every_node_announces_it(
    caplog: pytest.LogCaptureFixture,
) -> None:
    cluster = MemoryCluster(MEMBERS)
    nodes = [service(cluster, member) for member in MEMBERS]
    recorded = [RecordedEvents() for _ in nodes]
    for node, events in zip(nodes, recorded, strict=True):
        node.events = events
    cluster.elect(MEMBERS[0])
    async with trio.open_nursery() as nursery:
        for node in nodes:
            await nursery.start(node.run)
        nodes[1].config_changed()  # a follower's reload: its write goes through the leader
        with trio.fail_after(5):
            await nodes[2].store.wait_applied(lambda state: state.config_version == 1)
        nodes[0].config_changed()  # racing reloads (the same file on every node) may share one version
        nodes[2].config_changed()
        await trio.testing.wait_all_tasks_blocked()
        assert cluster.state.config_version == 2
        nodes[0].config_changed()
        with trio.fail_after(5):
            await nodes[1].store.wait_applied(lambda state: state.config_version == 3)
        cluster.isolate(MEMBERS[2])  # no quorum on its side: logged, nothing committed, nothing raised
        nodes[2].config_changed()
        await trio.testing.wait_all_tasks_blocked()
        nursery.cancel_scope.cancel()
    assert cluster.state.config_version == 3
    assert "could not commit config_version 4" in caplog.text and "reload again" in caplog.text
    assert [events.config_versions for events in recorded] == [[1, 2, 3]] * 3


async def test_votes_follow_probes_and_count_for_the_planner() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, b, _c = (service(cluster, m) for m in MEMBERS)
    cluster.elect(MEMBERS[0])
    down = {0: Probe(0, 1.0, ProbeOutcome.DOWN, error="refused")}
    await a.cast_votes(down)
    await b.cast_votes(down)
    assert a.vote_counts() == ({0: 2, 1: 0, 2: 0}, 2)
    await b.cast_votes({0: Probe(0, 2.0, ProbeOutcome.ALIVE)})
    assert a.vote_counts()[0] == {0: 1, 1: 0, 2: 0}
    # Without consensus, the leader's own probe decides (Pgpool-II's failover_require_consensus = off).
    loose = service(MemoryCluster(MEMBERS), MEMBERS[0], "failover_require_consensus = off\n")
    assert loose.vote_counts() == (None, 1)


async def test_a_leader_that_never_saw_the_primary_learns_its_system_identifier() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, b, _c = (service(cluster, m) for m in MEMBERS)
    cluster.elect(MEMBERS[0])
    assert 0 not in a.ha._observations({}, None).last_facts
    facts = ServerFacts(in_recovery=False, wal_lsn=1, timeline=1, system_identifier=42)
    await b.cast_votes({0: Probe(0, 1.0, ProbeOutcome.OK, facts)})
    assert a.ha._observations({}, None).last_facts[0].system_identifier == 42


async def test_a_cut_off_node_refuses_writes_after_its_lease(autojump_clock: trio.testing.MockClock) -> None:
    cluster = MemoryCluster(MEMBERS, lease=1.0)
    b = service(cluster, MEMBERS[1])
    strict = service(cluster, MEMBERS[2], "partition_read_policy = refuse\n")
    cluster.elect(MEMBERS[0])
    async with trio.open_nursery() as nursery:
        await nursery.start(b.store.run)
        await nursery.start(strict.store.run)
        await trio.sleep(0.5)
        cluster.isolate(MEMBERS[1])
        cluster.isolate(MEMBERS[2])
        assert b.proxy.partition_gate is not None and b.proxy.partition_gate(True) is None  # within lease
        await trio.sleep(1.2)
        refusal = b.proxy.partition_gate(True)
        assert refusal is not None and "lost contact with its watchdog quorum" in refusal
        assert b.proxy.partition_gate(False) is None  # partition_read_policy = stale
        assert strict.partition_gate(False) is not None
        cluster.heal(MEMBERS[1])
        await trio.sleep(0.1)
        assert b.proxy.partition_gate(True) is None
        nursery.cancel_scope.cancel()


async def test_operations_on_a_follower_name_the_leader() -> None:
    cluster = MemoryCluster(MEMBERS)
    b = service(cluster, MEMBERS[1])
    cluster.elect(MEMBERS[0])
    with pytest.raises(HaOperationError, match=r"send it to the leader's node \(127.0.0.1:9001\)") as caught:
        await b.ha.detach(1)
    assert caught.value.kind == "unavailable"


async def test_info_has_the_contract_shape_and_membership_errors_map_to_kinds() -> None:
    cluster = MemoryCluster(MEMBERS)
    a = service(cluster, MEMBERS[0])
    cluster.elect(MEMBERS[0])
    info = a.info()
    assert {"enabled", "self_id", "leader", "term", "commit_index", "quorum", "nodes", "vip"} <= set(info)
    assert info["leader"] == MEMBERS[0] and info["vip"] == {
        "address": None,
        "interface": None,
        "holder": None,
    }
    nodes = info["nodes"]
    assert isinstance(nodes, list) and len(nodes) == 3
    assert set(nodes[0]) == {
        "id",
        "address",
        "role",
        "last_contact_s",
        "term",
        "commit_index",
        "holds_vip",
        "self",
    }
    assert (await a.add_member("127.0.0.1:9004"))["members"] == [*MEMBERS, "127.0.0.1:9004"]
    with pytest.raises(HaOperationError) as caught:
        await a.add_member("127.0.0.1:9004")
    assert caught.value.kind == "conflict"
    with pytest.raises(HaOperationError) as caught:
        await a.remove_member("127.0.0.1:9999")
    assert caught.value.kind == "not_found"


async def test_a_removal_whose_cleanup_failed_is_still_a_removal_with_a_note() -> None:
    """The store reports the member out but its votes not cleared: the answer is a success that
    carries the store's note, never a failure for a member that is already gone."""
    cluster = MemoryCluster(MEMBERS)
    a = service(cluster, MEMBERS[0])
    cluster.elect(MEMBERS[0])
    removed = await a.remove_member(MEMBERS[2])
    assert removed == {"removed": MEMBERS[2], "members": list(MEMBERS[:2])}  # all done: no notes

    store = cluster.store(MEMBERS[0])
    note = "127.0.0.1:9003 is no longer a member, but its recorded votes could not be cleared yet"

    async def removed_with_leftovers(address: str) -> str | None:
        cluster.member_ids = [m for m in cluster.member_ids if m != address]
        return note

    await a.add_member(MEMBERS[2])
    store.remove_member = removed_with_leftovers  # type: ignore[method-assign]
    body = await a.remove_member(MEMBERS[2])
    assert body == {"removed": MEMBERS[2], "members": list(MEMBERS[:2]), "notes": [note]}


async def test_a_member_added_again_starts_without_the_votes_it_left_behind() -> None:
    cluster = MemoryCluster(MEMBERS)
    a, _b, c = (cluster.store(m) for m in MEMBERS)
    cluster.elect(MEMBERS[0])
    await c.vote(1, True)
    cluster.member_ids = list(MEMBERS[:2])  # removed without its votes cleared (the note's case)
    assert a.state.voters(1) == {MEMBERS[2]} and a.down_votes(1) == 0  # a non-member's vote never counts
    await a.add_member(MEMBERS[2])
    assert a.state.voters(1) == frozenset() and a.down_votes(1) == 0


@pytest.mark.parametrize("timeout", [None, 0.3, 1.5])
def test_the_node_s_raft_member_uses_the_configured_election_timeout(timeout: float | None) -> None:
    # the real store: built, never started
    cfg = config(9001, "" if timeout is None else f"watchdog_election_timeout = {timeout}\n")
    proxy = ProxyServer(cfg, {}, None)
    built = WatchdogService.for_node(cfg, proxy, HaController(cfg, proxy), None)
    assert built is not None and isinstance(built.store, RaftClusterStore)
    assert built.store.timings == RaftTimings.for_election_timeout(0.3 if timeout is None else timeout)
    assert built.store.vip_acquire_delay == pytest.approx(
        built.store.timings.leader_fallback_timeout + max(0.3, cfg.watchdog_election_timeout)
    )
