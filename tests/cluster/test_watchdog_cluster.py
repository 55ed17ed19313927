"""The watchdog cluster in network namespaces (issue 6 "Proof"): DESIGN §4's invariants under faults.

Three pgbalancer nodes (n1-n3), PostgreSQL (primary + 2 standbys, one address each) and a client,
each in its own namespace on one bridge (tests/cluster/conftest.py). State is read through each
node's REST API and data through SQL, never from logs; a sampler checks every 50 ms over the whole
module that no two namespaces hold the VIP at once. The scenarios run in file order on one cluster
and each leaves it whole again (every node running and connected), except that failovers move the
primary on: two scenarios fail over, once each.
"""

from __future__ import annotations

import contextlib
import itertools
import time
from collections.abc import Callable, Iterator
from functools import partial

import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.netcluster import VIP
from tests.cluster.conftest import NEEDS_ROOT, NEEDS_TOOLS, SampledCluster
from tests.hoststeal import read_cpu_times, steal_report

# One rerun (README.md, "Tests"): real Raft with the production timings, on a host that may steal
# CPU from the VM. watchdog_election_timeout stays at its default on purpose, decided per scenario:
# the scenarios share one cluster (so one setting), and every scenario but the last has a bound
# that the timings set and that it exists to prove for the shipped ones (SIGKILL to a query through
# the VIP < 5 s, a partitioned leader dropping the VIP within 10 s, leases lost and regained within
# 15 s, one failover after a majority's votes within 30 s); the last (the sampler) has a bound of
# its own 50 ms period that no Raft timing touches, so changing them would not help it either.
# Every scenario heals what it broke in a finally block and starts from cluster.wait_stable(), so
# a rerun on the module's one cluster starts from a whole cluster. A failed attempt reports the
# host's steal time over it (tests/conftest.py).
pytestmark = [NEEDS_ROOT, NEEDS_TOOLS, pytest.mark.slow, pytest.mark.flaky(reruns=1)]

HEALTH_ROUNDS = 3.5  # seconds of health checks (period 1 s, retries) that must not fail over


class FailedAfterFailover(AssertionError):
    """A failover scenario failed once its failover was under way. Not rerun: the module's PostgreSQL
    has one primary and two standbys and its two failover scenarios spend one standby each, so a
    rerun would leave a later scenario without a standby to fail over to (seen when forced)."""


@contextlib.contextmanager
def _rerun_only_before(spent: list[object], what: str) -> Iterator[None]:
    """Any failure once ``spent`` is non-empty becomes :class:`FailedAfterFailover` (not rerun)."""
    try:
        yield
    except Exception as exc:
        if spent:
            raise FailedAfterFailover(f"failed after {what}: {exc}") from exc
        raise


def _no_two_holders(cluster: SampledCluster) -> None:
    overlaps = cluster.sampler.overlaps
    assert not overlaps, f"two VIP holders at once: {overlaps[:5]}"


def _query_works(cluster: SampledCluster, sql: str = "SELECT 1") -> bool:
    try:
        cluster.query(sql, timeout=2)
    except (psycopg.Error, TimeoutError):  # TimeoutError: a SYN lost while the VIP moved, retransmitted late
        return False
    return True


def _stays(predicate: Callable[[], bool], seconds: float, message: str) -> None:
    """Check ``predicate`` again and again for ``seconds``: a negative (nothing happens) needs a window."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert predicate(), message
        time.sleep(0.2)


def _wait_lease(cluster: SampledCluster, name: str, *, valid: bool) -> None:
    what = "has its lease" if valid else "lost its lease"
    wait_for(lambda: cluster.info(name)["lease_valid"] == valid, timeout=15, message=f"{name} {what}")


def _write_through_vip(cluster: SampledCluster, note: str) -> int:
    """Insert a row through the VIP; how many rows with ``note`` the committed primary then has."""
    cluster.query("CREATE TABLE IF NOT EXISTS wd_probe (id serial PRIMARY KEY, note text)")
    cluster.query(f"INSERT INTO wd_probe (note) VALUES ('{note}')")
    # one holder (the VIP may be between two while leadership moves under load: wait for it to land)
    holder = wait_for(lambda: next(iter(h)) if len(h := cluster.vip_holders()) == 1 else "", timeout=15)
    primary = cluster.info(holder)["primary_id"]
    # straight on the primary: a read through pgbalancer may go to a standby that has not replayed it yet
    return int(cluster.pg_sql(f"SELECT count(*) FROM wd_probe WHERE note = '{note}'", node_index=primary))


def _consistent_view(cluster: SampledCluster) -> str:
    """The leader (else ""), if one read of every node and of the namespaces says it leads and alone
    holds the VIP."""
    views = {name: cluster.info(name) for name in cluster.nodes}
    leaders = {cluster.name_of(view["leader"]) for view in views.values()}
    if len(leaders) != 1 or None in leaders or not all(view["quorum"] for view in views.values()):
        return ""
    (leader,) = leaders
    assert leader is not None
    holders = [cluster.name_of(node["id"]) for node in views[leader]["nodes"] if node["holds_vip"]]
    named = {cluster.name_of(view["vip"]["holder"]) for view in views.values()}
    if holders != [leader] or named != {leader} or cluster.vip_holders() != {leader}:
        return ""
    # read the leader again: it still leads, in the same term, so all the reads describe one leadership
    again = cluster.info(leader)
    return (
        leader
        if cluster.name_of(again["leader"]) == leader and again["term"] == views[leader]["term"]
        else ""
    )


def test_a_leader_is_elected_holds_the_vip_alone_and_clients_query_through_it(
    cluster: SampledCluster,
) -> None:
    cluster.wait_stable(timeout=60)
    # Leadership may legitimately move under CPU load, so the claim is checked on one consistent
    # view, polled until there is one: every node names the same leader, that leader alone holds the
    # VIP (its own status and the namespaces' addresses agree), and the replicated state names it
    # as the holder on every node. A view that never becomes consistent fails the test.
    leader = wait_for(
        partial(_consistent_view, cluster), timeout=30, interval=0.1, message="one consistent leader+VIP view"
    )
    info = cluster.info(leader)
    assert info["vip"]["address"] == VIP and info["vip"]["interface"] == "eth0"
    assert _write_through_vip(cluster, "first leader") == 1
    _no_two_holders(cluster)


def test_sigkill_of_the_leader_moves_the_vip_and_new_connections_succeed(cluster: SampledCluster) -> None:
    """The bound here (5 s from SIGKILL to the first query through the VIP) is loose enough for a
    loaded CI machine, where one run may also include a lost SYN's retransmission; the issue's 2 s
    median is proven by bench/watchdog_failover over 10 runs (docs/benchmarks.md), not by this test."""
    old = cluster.wait_stable()
    others = [name for name in cluster.nodes if name != old]
    killed = time.monotonic()
    cluster.kill_node(old)
    try:
        wait_for(lambda: _query_works(cluster), timeout=20, interval=0.05, message="a query through the VIP")
        recovered = time.monotonic() - killed
        print(f"SIGKILL of {old} to the first query through the VIP: {recovered:.2f} s")
        new = cluster.wait_stable(names=others)
        assert new != old and cluster.vip_holders() == {new}
        assert recovered < 5, f"{recovered:.1f}s from SIGKILL to the first query (bench/watchdog_failover)"
        assert _write_through_vip(cluster, "after sigkill") == 1
    finally:  # also after a failure: the next scenario, or this one's rerun, needs all three nodes
        cluster.start_node(old)
    # it rejoins; it may force one more election (pysyncobj has no pre-vote), never a second holder
    cluster.wait_stable()
    _no_two_holders(cluster)


def test_a_leader_stopped_cleanly_gives_the_vip_up_before_it_exits(cluster: SampledCluster) -> None:
    old = cluster.wait_stable()
    try:
        cluster.stop_node(old)  # SIGTERM, and wait for the process to exit
        assert cluster.lab is not None and VIP not in cluster.lab.addresses(old)
        new = cluster.wait_stable(names=[name for name in cluster.nodes if name != old])
        assert new != old
    finally:  # also after a failure: the next scenario, or this one's rerun, needs all three nodes
        cluster.start_node(old)
    cluster.wait_stable()
    _no_two_holders(cluster)


def test_a_partitioned_leader_drops_the_vip_and_the_majority_takes_it_over(cluster: SampledCluster) -> None:
    old = cluster.wait_stable()
    others = [name for name in cluster.nodes if name != old]
    cluster.partition(old)
    try:
        wait_for(lambda: VIP not in cluster.lab.addresses(old), timeout=10, message=f"{old} dropped the VIP")  # type: ignore[union-attr]
        new = cluster.wait_stable(names=others)
        assert new != old
        wait_for(lambda: _query_works(cluster), timeout=10, message="a query through the VIP")
        assert _write_through_vip(cluster, "after leader partition") == 1
        assert not cluster.info(old)["quorum"]
    finally:
        cluster.heal(old)
    # pysyncobj has no pre-vote: the returning node's higher term may start one more election, which
    # anyone may win; what matters is that the cluster settles with one holder (and never had two)
    cluster.wait_stable()
    _no_two_holders(cluster)


@pytest.mark.flaky(reruns=1, rerun_except=FailedAfterFailover)
def test_a_partitioned_follower_loses_its_lease_the_rest_fail_over_and_it_catches_up(
    cluster: SampledCluster,
) -> None:
    leader = cluster.wait_stable()
    follower = next(name for name in cluster.nodes if name != leader)
    before = cluster.info(leader)
    old_primary = before["primary_id"]
    spent: list[object] = []  # the primary was stopped: this scenario's standby is spent
    with _rerun_only_before(spent, "stopping the primary"):
        cluster.partition(follower)
        try:
            _wait_lease(cluster, follower, valid=False)
            # the other two carry on: writes through the VIP, and a failover the follower cannot see
            assert _write_through_vip(cluster, "follower cut off") == 1
            assert cluster.pg is not None
            cluster.pg.stop_node(cluster.pg.nodes[old_primary], mode="immediate")
            spent.append(old_primary)
            wait_for(
                lambda: cluster.info(leader)["epoch"] > before["epoch"],
                timeout=30,
                message="the majority failed over",
            )
            after = cluster.info(leader)
            assert after["primary_id"] != old_primary
            wait_for(
                lambda: _query_works(cluster, "INSERT INTO wd_probe (note) VALUES ('new primary')"),
                timeout=20,
            )
            assert cluster.info(follower)["epoch"] == before["epoch"]
        finally:
            cluster.heal(follower)
        wait_for(
            lambda: (
                cluster.info(follower)["epoch"] == after["epoch"] and cluster.info(follower)["lease_valid"]
            ),
            timeout=15,
            message=f"{follower} caught up on epoch {after['epoch']}",
        )
        assert cluster.info(follower)["primary_id"] == after["primary_id"]
        cluster.wait_stable()
        _no_two_holders(cluster)


def test_a_follower_cut_off_from_its_peers_refuses_writes(
    cluster: SampledCluster,
) -> None:
    """A Raft partition only (PostgreSQL still reachable): the write would succeed, so its refusal is
    the lease at work (DESIGN §4 invariant 1), not a network error. (What it does with reads depends
    on partition_read_policy and on which standbys it sees up: the watchdog's own tests cover that.)"""
    leader = cluster.wait_stable()
    follower = next(name for name in cluster.nodes if name != leader)
    cluster.cut_peers(follower)
    try:
        _wait_lease(cluster, follower, valid=False)
        with pytest.raises(psycopg.Error, match="watchdog quorum") as refused:
            cluster.query("INSERT INTO wd_probe (note) VALUES ('cut off')", host="127.0.0.1", where=follower)
        assert refused.value.sqlstate == "25006"
        assert _write_through_vip(cluster, "follower without peers") == 1
    finally:
        cluster.cut_peers(follower, cut=False)
    _wait_lease(cluster, follower, valid=True)
    cluster.wait_stable()
    _no_two_holders(cluster)


def _sees_primary_down(cluster: SampledCluster, name: str, primary: int) -> bool:
    """Node ``name``'s own probes fail on the primary (GET /nodes on that node).

    A follower shows the committed status (still up: one node's probe does not take the primary
    away), but its health score, which only its own probes feed, collapses.
    """
    nodes = cluster.api(name, "/nodes")["nodes"]
    return any(
        node["node_id"] == primary and (node["status"] != "up" or node["health_score"] < 0.5)
        for node in nodes
    )


@pytest.mark.flaky(reruns=1, rerun_except=FailedAfterFailover)
def test_failover_needs_a_majority_of_nodes_to_see_the_primary_down(cluster: SampledCluster) -> None:
    leader = cluster.wait_stable()
    before = cluster.info(leader)
    primary, epoch = before["primary_id"], before["epoch"]
    nodes = cluster.api(leader, "/nodes")["nodes"]
    standby = next(n["node_id"] for n in nodes if n["role"] == "standby" and n["status"] == "up")
    # The fault: the primary's network is lost to the standby (its WAL receiver stops) and, one by one,
    # to the nodes (a blackhole route in the node's namespace). With the standby still streaming, the
    # planner would rightly refuse (the primary is alive), and this would test nothing about votes.
    conninfo = cluster.pg_sql("SHOW primary_conninfo", standby, "postgres")
    cluster.pg_sql("ALTER SYSTEM SET primary_conninfo = ''; SELECT pg_reload_conf()", standby, "postgres")
    spent: list[object] = []  # a majority of nodes lost the primary: the failover is under way
    # The followers lose the primary; the leader (and so the VIP's clients) still reaches it: a
    # leader cut off from the primary could not carry writes through the VIP, whatever the votes.
    first, second = sorted(name for name in cluster.nodes if name != leader)
    with _rerun_only_before(spent, "a majority lost the primary"):
        try:
            wait_for(
                lambda: (
                    cluster.pg_sql("SELECT count(*) FROM pg_stat_wal_receiver", standby, "postgres") == "0"
                ),
                timeout=15,
                message=f"standby {standby} stopped streaming",
            )
            cluster.cut_backend(first, primary)
            wait_for(
                lambda: _sees_primary_down(cluster, first, primary),
                timeout=15,
                message=f"{first} sees it down",
            )
            _stays(
                lambda: all(cluster.info(name)["epoch"] == epoch for name in cluster.nodes),
                HEALTH_ROUNDS,
                f"one node ({first}) seeing the primary down must not fail over",
            )
            wait_for(
                lambda: _query_works(cluster, "INSERT INTO wd_probe (note) VALUES ('one vote')"), timeout=30
            )
            cluster.cut_backend(second, primary)
            spent.append(second)
            wait_for(
                lambda: cluster.info(leader)["epoch"] > epoch,
                timeout=30,
                message="a majority saw it: failover",
            )
            after = cluster.info(leader)
            assert after["epoch"] == epoch + 1 and after["primary_id"] == standby
            wait_for(
                lambda: all(cluster.info(name)["epoch"] == epoch + 1 for name in cluster.nodes),
                timeout=10,
                message="every node applied the new epoch",
            )
            _stays(
                lambda: all(cluster.info(name)["epoch"] == epoch + 1 for name in cluster.nodes),
                HEALTH_ROUNDS,
                "the failover happened exactly once",
            )
            wait_for(
                lambda: _query_works(cluster, "INSERT INTO wd_probe (note) VALUES ('quorum')"), timeout=30
            )
            for name in cluster.nodes:
                assert cluster.info(name)["primary_id"] == standby
        finally:
            for name in (first, second):
                cluster.cut_backend(name, primary, cut=False)
            if not spent:  # no failover: the standby streams from the primary again, for a rerun
                quoted = conninfo.replace("'", "''")
                cluster.pg_sql(
                    f"ALTER SYSTEM SET primary_conninfo = '{quoted}'; SELECT pg_reload_conf()",
                    standby,
                    "postgres",
                )
        _no_two_holders(cluster)


# Not rerun: it judges the samples of the whole module, which a rerun would only read again.
@pytest.mark.flaky(reruns=0)
def test_never_two_vip_holders_over_the_whole_run(cluster: SampledCluster) -> None:
    samples = cluster.sampler.samples
    assert len(samples) > 100, "the sampler did not run"
    gaps = [b.at - a.at for a, b in itertools.pairwise(samples)]
    slow = sum(gap > 0.2 for gap in gaps)
    priority = "real-time" if cluster.sampler.real_time else "ordinary"
    print(
        f"{len(samples)} VIP samples ({priority} sampler process), longest gap {max(gaps):.3f} s, "
        f"{slow} over 0.2 s"
    )
    # Samples every 50 ms. With no gap of 1 s, any two-holder window of 1 s or more is certainly seen,
    # and shorter ones very likely (a window hides only if it falls wholly inside one of the rare
    # stalls, counted above); a stall of seconds could hide one entirely. The bound was 0.5 s until a
    # host under heavy steal time stalled the sampler thread for 0.59 s with nothing wrong, and a later
    # one for 2.4 s: the sampler then moved from a thread of this process into a SCHED_FIFO process
    # of its own (devtools/vipsampler.py), which no busy guest process or GIL holder can delay.
    steal = steal_report(cluster.cpu_at_start, read_cpu_times(), over="the module")
    print(steal)
    assert max(gaps) < 1.0, (
        f"the sampler stalled for {max(gaps):.2f}s: a two-holder window could hide ({steal})"
    )
    holders = {holder for sample in samples for holder in sample.holders}
    assert len(holders) >= 2, f"the VIP never moved: {holders}"
    _no_two_holders(cluster)
