"""Three real pgbalancer processes forming a watchdog cluster (real pysyncobj) on loopback.

Every node is ``pgbalancer -f conf`` with its own Raft port, data dir and REST API, in front of real
PostgreSQL. Tests act by killing processes and PostgreSQL servers, and observe through the REST API
(GET /api/v1/watchdog/info, /readyz) and through SQL, never by reading logs. Network-namespace
partitions are tests/cluster/'s job.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import jsonschema_rs
import psycopg
import pytest

from pgbalancer.api.openapi import component_json_schema
from pgbalancer.devtools import free_tcp_port, free_tcp_ports, wait_for
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgClusterLike
from tests.integration.proxy_support import API_USERS, USERLIST, api_base_url, base_settings

# One rerun (README.md, "Tests"): these tests run real Raft with the production timings, and a
# host that steals CPU from the VM makes pysyncobj re-elect every few seconds. A failed attempt
# reports the host's steal time over it (tests/conftest.py).
pytestmark = [pytest.mark.slow, pytest.mark.flaky(reruns=1)]

USER = "app_scram"
PASSWORD = USERLIST[USER]
ADMIN = ("api_admin", API_USERS["api_admin"][0])
MakeCluster = Callable[..., LocalPgCluster]


class Trio:
    """Three watchdog nodes: settings per node, started and stopped by index, all stopped at the end."""

    def __init__(self, cluster: PgClusterLike, root: Path, **overrides: Setting) -> None:
        self.raft_ports = free_tcp_ports(3)
        members = ",".join(f"127.0.0.1:{port}" for port in self.raft_ports)
        self.settings: list[dict[str, Setting]] = []
        for index, raft_port in enumerate(self.raft_ports):
            workdir = root / f"node{index}"
            workdir.mkdir(parents=True)
            settings = base_settings(cluster, workdir)
            settings.update(
                pool_mode="transaction",
                health_check_period=1,
                health_check_max_retries=1,
                health_check_retry_delay=0.2,
                health_check_timeout=2,
                watchdog_nodes=members,
                watchdog_port=raft_port,
                watchdog_secret="integration-test-secret",
                watchdog_data_dir=str(workdir / "raft"),
                watchdog_lease=1,
            )
            settings.update(overrides)
            self.settings.append(settings)
        self.root = root
        self.nodes: list[BalancerProcess | None] = [None, None, None]

    def start(self, index: int) -> BalancerProcess:
        node = BalancerProcess.start(self.root / f"node{index}", self.settings[index])
        self.nodes[index] = node
        return node

    def kill(self, index: int) -> None:
        node = self.nodes[index]
        assert node is not None
        node.process.send_signal(signal.SIGKILL)
        node.process.wait(10)
        self.nodes[index] = None

    def live(self) -> list[BalancerProcess]:
        return [node for node in self.nodes if node is not None]

    def stop_all(self) -> None:
        for index, node in enumerate(self.nodes):
            if node is not None:
                node.stop()
                self.nodes[index] = None


@contextlib.contextmanager
def watchdog_nodes(cluster: PgClusterLike, root: Path, **overrides: Setting) -> Iterator[Trio]:
    group = Trio(cluster, root, **overrides)
    try:
        for index in range(3):
            group.start(index)
        yield group
    except BaseException:  # each node's own account (a node whose API stopped answering, say)
        for index, node in enumerate(group.nodes):
            if node is not None:
                exited = node.process.poll()
                print(f"--- node {index} (exit status {exited}) log tail ---\n{node.log_tail(60)}")
        raise
    finally:
        group.stop_all()


# Every /watchdog/info body a test sees (elections, lost quorum, membership changes) must match the
# spec's WatchdogInfo exactly: the schema fuzzing never runs against a node with a watchdog.
WATCHDOG_INFO = jsonschema_rs.Draft4Validator(component_json_schema("WatchdogInfo"))


def info(node: BalancerProcess) -> dict[str, Any]:
    response = httpx.get(f"{api_base_url(node)}/api/v1/watchdog/info", auth=ADMIN, timeout=5)
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    WATCHDOG_INFO.validate(body)
    return body


T = TypeVar("T")


def agreed_term(nodes: list[BalancerProcess]) -> tuple[str, int] | None:
    """(leader, term) every node names, if they all name the same leader in one term, have quorum,
    and the leader is one of ``nodes`` (survivors still naming a killed leader have not agreed yet)."""
    seen = [info(node) for node in nodes]
    leaders = {body["leader"] for body in seen}
    terms = {body["term"] for body in seen}
    if len(leaders) != 1 or len(terms) != 1 or not all(body["quorum"] for body in seen):
        return None
    leader = leaders.pop()
    if leader not in {body["self_id"] for body in seen}:
        return None
    return str(leader), int(terms.pop())


def agreed_leader(nodes: list[BalancerProcess]) -> str | None:
    """The leader every node names, if they all name the same one (one of ``nodes``) and have quorum."""
    agreed = agreed_term(nodes)
    return None if agreed is None else agreed[0]


def wait_leader(nodes: list[BalancerProcess], timeout: float = 20) -> str:
    return wait_term(nodes, timeout)[0]


def wait_term(nodes: list[BalancerProcess], timeout: float = 20) -> tuple[str, int]:
    agreed = wait_for(
        lambda: agreed_term(nodes),
        timeout=timeout,
        message="one leader known to all",
        retry_on=(httpx.HTTPError,),
    )
    assert agreed is not None
    return agreed


def under_one_leader(
    nodes: list[BalancerProcess], action: Callable[[], T], timeout: float = 30
) -> tuple[str, T]:
    """Run ``action`` while one leader leads throughout: ``nodes`` agree on the same (leader, term) just
    before and just after it; the leader and what ``action`` returned, for the caller to check one
    against the other. Leadership may legitimately move under CPU load (a starved tick thread misses
    heartbeats); then ``action`` runs again, until ``timeout``."""
    deadline = time.monotonic() + timeout
    changes: list[tuple[tuple[str, int], tuple[str, int]]] = []
    while time.monotonic() < deadline:
        before = wait_term(nodes, timeout=max(deadline - time.monotonic(), 1))
        result = action()
        after = wait_term(nodes, timeout=max(deadline - time.monotonic(), 1))
        if before == after:
            return before[0], result
        changes.append((before, after))
    raise TimeoutError(f"the watchdog leader changed during every attempt for {timeout}s: {changes}")


def index_of(group: Trio, member: str) -> int:
    return group.raft_ports.index(int(member.rsplit(":", 1)[1]))


def connect(node: BalancerProcess) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(node.dsn(USER, APP_DB, PASSWORD, connect_timeout="10"), autocommit=True)


def write_port(node: BalancerProcess) -> int:
    """Run a write through ``node``; the port of the PostgreSQL server that took it."""
    with connect(node) as conn:  # txid_current() needs a writable server: it fails on a standby
        row = conn.execute("SELECT inet_server_port() FROM txid_current()").fetchone()
    assert row is not None
    return int(str(row[0]))


def quorate_write_port(node: BalancerProcess, timeout: float = 15) -> int:
    """:func:`write_port`, retried while ``node`` refuses writes for want of a watchdog quorum (25006).

    Leadership may move under CPU load (a tick thread starved of the GIL misses heartbeats), and an
    election that outlasts the 1 s lease legitimately refuses writes for its duration; where the test
    checks where writes land, not the lease, it waits that out instead of failing on it."""
    port: int = wait_for(
        lambda: write_port(node),
        timeout=timeout,
        message="a write through a node with a watchdog quorum",
        retry_on=(psycopg.errors.ReadOnlySqlTransaction,),
    )
    return port


def readyz(node: BalancerProcess) -> tuple[int, dict[str, Any]]:
    response = httpx.get(f"{api_base_url(node)}/api/v1/readyz", timeout=10)
    body: dict[str, Any] = response.json()
    return response.status_code, body


def membership_change(
    method: str, url: str, done_already: int, timeout: float = 30, **kwargs: Any
) -> httpx.Response:
    """A watchdog membership change (POST/DELETE /api/v1/watchdog/members) made as an operator would.

    A 503 is the API's "no leader with a majority answered, retry": under CPU starvation an election
    can outlast a write's 3 s, and with the never-started fourth member every election needs all
    three live nodes. Retried until ``timeout``. ``done_already`` (409 for an add, 404 for a removal)
    is accepted only after a 503 that did not say "it was not applied": that attempt may have
    committed after its answer. Anything else fails the test; the caller asserts the end state."""
    deadline = time.monotonic() + timeout
    maybe_applied: list[str] = []
    while True:
        response = httpx.request(method, url, auth=ADMIN, timeout=10, **kwargs)
        if response.status_code == 200:
            return response
        if response.status_code == done_already and maybe_applied:
            print(f"{method} {url}: {done_already} after an unconfirmed attempt ({maybe_applied[-1]})")
            return response
        assert response.status_code == 503, response.text
        assert time.monotonic() < deadline, f"still 503 after {timeout}s: {response.text}"
        if "it was not applied" not in response.text:
            maybe_applied.append(response.text)
        print(f"{method} {url}: 503, retried: {response.text}")


# --------------------------------------------------------------------------- election, lease, restart


def test_leader_election_reelection_lease_and_restart(pg_cluster: PgClusterLike, tmp_path: Path) -> None:
    # Reads go to the standbys only (weight 0 on the primary), so a cut-off node's reads can be seen.
    with watchdog_nodes(pg_cluster, tmp_path, load_balance_mode=True, backend_weight0=0) as group:
        nodes = group.live()
        # The leader and node 0's view of it, read while one leader led throughout.
        leader, status = under_one_leader(nodes, lambda: info(nodes[0]))
        assert status["enabled"] and len(status["nodes"]) == 3
        assert [n["id"] for n in status["nodes"] if n["role"] == "leader"] == [leader]
        assert sum(n["self"] for n in status["nodes"]) == 1
        assert all(readyz(node)[0] == 200 for node in nodes)
        # Every node routes writes to the committed primary.
        wait_for(
            lambda: {info(n)["primary_id"] for n in nodes} == {0}, timeout=10, retry_on=(httpx.HTTPError,)
        )
        assert {quorate_write_port(node) for node in nodes} == {pg_cluster.primary.port}

        # Membership: add a fourth (never started) member, then remove it again.
        spare = f"127.0.0.1:{free_tcp_port()}"
        members = [f"127.0.0.1:{port}" for port in group.raft_ports]
        added = membership_change(
            "POST", f"{api_base_url(nodes[0])}/api/v1/watchdog/members", 409, json={"address": spare}
        )
        assert added.status_code == 409 or spare in added.json()["members"], added.text
        wait_for(
            lambda: all(len(info(n)["nodes"]) == 4 for n in nodes), timeout=10, retry_on=(httpx.HTTPError,)
        )
        removed = membership_change(
            "DELETE", f"{api_base_url(nodes[1])}/api/v1/watchdog/members/{spare}", 404
        )
        assert removed.status_code == 404 or spare not in removed.json()["members"], removed.text
        wait_for(
            lambda: all(sorted(n["id"] for n in info(node)["nodes"]) == sorted(members) for node in nodes),
            timeout=10,
            message="the three original members, and only them, on every node",
            retry_on=(httpx.HTTPError,),
        )
        assert (
            httpx.delete(
                f"{api_base_url(nodes[1])}/api/v1/watchdog/members/{spare}", auth=ADMIN, timeout=10
            ).status_code
            == 404
        )

        # SIGKILL the leader: the other two elect a new one, and the status shows it.
        term_before = info(nodes[0])["term"]
        killed_at = time.monotonic()
        group.kill(index_of(group, leader))
        survivors = group.live()
        new_leader = wait_leader(survivors, timeout=15)
        elected_after = time.monotonic() - killed_at
        assert new_leader != leader
        seen = info(survivors[0])
        assert seen["term"] > term_before
        assert [n["role"] for n in seen["nodes"] if n["id"] == leader] == ["unknown"]
        assert all(quorate_write_port(node) == pg_cluster.primary.port for node in survivors)
        print(f"new leader {new_leader} agreed by both survivors {elected_after:.2f} s after SIGKILL")

        # Kill one more: the last node loses quorum, then (after the 1 s lease) refuses writes: on a
        # connection it already had, and to new clients.
        last = next(n for n in survivors if info(n)["self_id"] != new_leader)
        held = connect(last)
        group.kill(index_of(group, new_leader))
        wait_for(lambda: not info(last)["quorum"], timeout=10, retry_on=(httpx.HTTPError,))

        def held_write_refused() -> psycopg.Error | None:
            try:
                held.execute("SELECT txid_current()")
            except psycopg.Error as exc:
                return exc
            return None

        refusal = wait_for(held_write_refused, timeout=10, message="the lone node refuses writes")
        assert refusal is not None
        assert refusal.sqlstate == "25006", refusal
        assert "lost contact with its watchdog quorum" in str(refusal)
        held.close()
        with pytest.raises(psycopg.Error, match="lost contact with its watchdog quorum") as new_client:
            write_port(last)
        assert new_client.value.sqlstate == "25006"
        # partition_read_policy = stale: a new client still reads from a standby there.
        with connect(last) as reader:
            row = reader.execute("SELECT inet_server_port()").fetchone()
        assert row is not None and int(str(row[0])) in {s.port for s in pg_cluster.standbys}
        code, ready = readyz(last)
        assert code == 503 and ready["quorum"] is False
        committed = info(last)

        # Restart the two killed nodes from their journals: the cluster forms again, terms only rise,
        # and the committed log (epoch, primary) is still there.
        for index, node in enumerate(group.nodes):
            if node is None:
                group.start(index)
        nodes = group.live()
        wait_leader(nodes, timeout=20)
        after = [info(node) for node in nodes]
        assert all(body["term"] >= committed["term"] for body in after)
        assert all(body["commit_index"] >= committed["commit_index"] for body in after)
        assert {(body["epoch"], body["primary_id"]) for body in after} == {(committed["epoch"], 0)}
        wait_for(lambda: write_port(last) == pg_cluster.primary.port, timeout=10, retry_on=(psycopg.Error,))


def login_error(node: BalancerProcess) -> asyncpg.PostgresError | None:
    """The error a new client's login to ``node`` gets (None: it logged in)."""

    async def login() -> asyncpg.PostgresError | None:
        try:
            conn = await asyncpg.connect(node.dsn_url(USER, APP_DB, PASSWORD), timeout=10)
        except asyncpg.PostgresError as exc:
            return exc
        await conn.close()
        return None

    return asyncio.run(login())


def read_port(conn: psycopg.Connection[tuple[object, ...]]) -> int:
    """Run a read on ``conn``; the port of the PostgreSQL server that answered it."""
    row = conn.execute("SELECT inet_server_port()").fetchone()
    assert row is not None
    return int(str(row[0]))


def test_partition_read_policy_refuse_a_node_cut_off_from_its_peers_refuses_reads_too(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    """partition_read_policy = refuse end to end (stale is covered above): the two peers are frozen
    (SIGSTOP), so the third is cut off from the Raft majority while PostgreSQL stays reachable: a
    read it would serve gets 25006 naming the policy, on a held connection and for a new client;
    once the peers run again it serves new clients' reads again."""
    settings: dict[str, Setting] = {"load_balance_mode": True, "backend_weight0": 0}
    with watchdog_nodes(pg_cluster, tmp_path, partition_read_policy="refuse", **settings) as group:
        nodes = group.live()
        wait_leader(nodes)
        lone, *peers = nodes
        standbys = {s.port for s in pg_cluster.standbys}
        held = connect(lone)
        assert read_port(held) in standbys  # with quorum the policy does not apply
        try:
            for peer in peers:
                peer.process.send_signal(signal.SIGSTOP)
            wait_for(lambda: not info(lone)["lease_valid"], timeout=15, retry_on=(httpx.HTTPError,))

            def held_read_refused() -> psycopg.Error | None:
                try:
                    read_port(held)
                except psycopg.Error as exc:
                    return exc
                return None

            refusal = wait_for(held_read_refused, timeout=10, message="the cut-off node refuses reads")
            assert refusal is not None and refusal.sqlstate == "25006", refusal
            assert "refuses queries (partition_read_policy = refuse)" in str(refusal)
            # a new client is refused at login (asyncpg: libpq keeps no SQLSTATE of a failed connect)
            login = login_error(lone)
            assert login is not None and login.sqlstate == "25006", login
            assert "refuses queries (partition_read_policy = refuse)" in str(login)
        finally:
            for peer in peers:
                peer.process.send_signal(signal.SIGCONT)
        held.close()  # the refusal ended that session (FATAL), like the write refusal's
        wait_for(lambda: info(lone)["lease_valid"], timeout=20, retry_on=(httpx.HTTPError,))

        def new_client_read() -> int:
            with connect(lone) as reader:
                return read_port(reader)

        assert wait_for(new_client_read, timeout=10, retry_on=(psycopg.Error,)) in standbys


def test_partition_read_policy_stale_reads_on_the_primary_are_served_writes_are_not(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    """partition_read_policy = stale with every read balanced to the primary (the standbys' weights
    are 0): a node cut off from its peers (both frozen with SIGSTOP) still serves reads there, on a
    held connection and for a new client, but refuses a write with 25006, also one that comes inside
    a transaction whose read it has just served from the primary."""
    settings: dict[str, Setting] = {"load_balance_mode": True, "backend_weight1": 0, "backend_weight2": 0}
    with watchdog_nodes(pg_cluster, tmp_path, partition_read_policy="stale", **settings) as group:
        nodes = group.live()
        wait_leader(nodes)
        lone, *peers = nodes
        primary = pg_cluster.primary.port
        held, in_transaction = connect(lone), connect(lone)
        assert read_port(held) == primary
        try:
            for peer in peers:
                peer.process.send_signal(signal.SIGSTOP)
            wait_for(lambda: not info(lone)["lease_valid"], timeout=15, retry_on=(httpx.HTTPError,))
            assert read_port(held) == primary  # stale: the read is served, from the primary
            with connect(lone) as fresh:
                assert read_port(fresh) == primary
            in_transaction.execute("BEGIN")
            assert read_port(in_transaction) == primary
            with pytest.raises(psycopg.Error, match="lost contact with its watchdog quorum") as refused:
                in_transaction.execute("SELECT txid_current()")
            assert refused.value.sqlstate == "25006"
            with pytest.raises(psycopg.Error, match="lost contact with its watchdog quorum") as refused:
                held.execute("SELECT txid_current()")
            assert refused.value.sqlstate == "25006"
        finally:
            for peer in peers:
                peer.process.send_signal(signal.SIGCONT)
        held.close()
        in_transaction.close()
        wait_for(lambda: info(lone)["lease_valid"], timeout=20, retry_on=(httpx.HTTPError,))
        assert wait_for(lambda: write_port(lone), timeout=10, retry_on=(psycopg.Error,)) == primary


# --------------------------------------------------------------------------- quorum failover


def test_one_node_voting_the_primary_down_is_not_enough_a_majority_fails_over_once(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    with contextlib.ExitStack() as stack:
        # A lease far longer than the test: a leader change under CPU load must not turn the writes
        # below into quorum refusals (25006); votes and failover do not depend on the lease. Nor on
        # the Raft timings: what this proves is the vote count, so elections of 1-2 s
        # (watchdog_election_timeout = 1, the value docs/watchdog.md suggests for noisy VMs) keep a
        # host that steals CPU from re-electing throughout, and run the key end to end.
        group = Trio(cluster, tmp_path, watchdog_lease=120, watchdog_election_timeout=1)
        stack.callback(group.stop_all)
        # Node 0 reaches backend 0 at a port where nothing listens: it alone sees the primary down.
        group.settings[0]["backend_port0"] = free_tcp_port()
        for index in range(3):
            group.start(index)
        nodes = group.live()
        wait_leader(nodes)
        wait_for(
            lambda: {info(n)["primary_id"] for n in nodes} == {0}, timeout=10, retry_on=(httpx.HTTPError,)
        )
        epoch = info(nodes[1])["epoch"]

        # Several health periods with one down vote: nothing moves, writes keep landing on the primary.
        watch_until = time.monotonic() + 4
        while time.monotonic() < watch_until:
            assert {(info(n)["epoch"], info(n)["primary_id"]) for n in nodes} == {(epoch, 0)}
            assert write_port(nodes[1]) == cluster.primary.port
            time.sleep(0.25)
        assert all(cluster.psql(s, "SELECT pg_is_in_recovery()") == "t" for s in cluster.standbys)

        # The primary really dies: the other two vote it down too, and exactly one failover follows.
        pid = cluster.postmaster_pid(cluster.primary)
        assert pid is not None
        os.kill(pid, signal.SIGKILL)

        def moved() -> tuple[int, int] | None:
            seen = {(info(n)["epoch"], info(n)["primary_id"]) for n in nodes}
            return seen.pop() if len(seen) == 1 and 0 not in {p for _, p in seen} else None

        outcome = wait_for(
            moved, timeout=30, message="all nodes on a new primary", retry_on=(httpx.HTTPError,)
        )
        assert outcome is not None
        new_epoch, new_primary = outcome
        assert new_epoch == epoch + 1
        promoted = [s for s in cluster.standbys if cluster.psql(s, "SELECT pg_is_in_recovery()") == "f"]
        assert len(promoted) == 1 and promoted[0] is cluster.nodes[new_primary]
        new_port = promoted[0].port
        for node in nodes:
            wait_for(lambda: write_port(node) == new_port, timeout=15, retry_on=(psycopg.Error,))  # noqa: B023
        assert {(info(n)["epoch"], info(n)["primary_id"]) for n in nodes} == {(new_epoch, new_primary)}


def test_a_node_whose_watchdog_address_is_not_local_exits_saying_what_to_fix(
    pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    settings = base_settings(pg_cluster, tmp_path)
    settings.update(
        watchdog_nodes="192.0.2.1:9000,192.0.2.2:9000",
        watchdog_listen_address="192.0.2.3",  # TEST-NET-1: never an address of this machine
        watchdog_secret="s",
        watchdog_data_dir=str(tmp_path / "raft"),
    )
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        # It exits within seconds; the wait is long only so a CPU-starved host cannot fail it.
        BalancerProcess.start(tmp_path, settings, ready_timeout=90)
    assert "cannot start the watchdog: watchdog cannot listen on 192.0.2.3:9000" in str(caught.value)
    assert "check watchdog_listen_address" in str(caught.value)
