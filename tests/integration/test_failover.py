"""Health checks, failover, switchover and rejoin against real PostgreSQL (private clusters only).

Two kinds of node: a real ``pgbalancer -f`` process for automatic behaviour (failover, fencing,
idle clients carrying on), and an in-process ProxyServer + HaController where a test calls the
operations (switchover, promote, rejoin) that the REST API and bctl expose elsewhere.
"""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

import psycopg
import pytest
import trio

from pgbalancer.config import Config, load_config
from pgbalancer.devtools import free_tcp_port, wait_for, wait_for_async
from pgbalancer.devtools.balancer import BalancerProcess, Setting, render_config
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgNode
from pgbalancer.ha.planner import HaOperationError
from pgbalancer.ha.view import BackendRole, BackendStatus
from pgbalancer.health.controller import HaController
from pgbalancer.proxy.server import ProxyServer
from pgbalancer.userlist import load_userlist
from tests.integration.proxy_support import USERLIST, base_settings

pytestmark = pytest.mark.slow

USER = "app_scram"
PASSWORD = USERLIST[USER]
MakeCluster = Callable[..., LocalPgCluster]


def ha_settings(cluster: LocalPgCluster, workdir: Path, **overrides: Setting) -> dict[str, Setting]:
    workdir.mkdir(parents=True, exist_ok=True)
    settings = base_settings(cluster, workdir)
    settings.update(
        pool_mode="transaction",
        health_check_period=1,
        health_check_max_retries=1,
        health_check_retry_delay=0.3,
        health_check_timeout=3,
        api_port=free_tcp_port(),
        mqtt_mode="off",
    )
    for node_id, node in enumerate(cluster.nodes):
        settings[f"backend_data_directory{node_id}"] = str(node.data_dir)
    settings.update(overrides)
    return settings


def dsn(host: str, port: int) -> str:
    return f"host={host} port={port} user={USER} password={PASSWORD} dbname={APP_DB} connect_timeout=10"


def scalar(conn: psycopg.Connection[tuple[object, ...]], sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def insert(conn: psycopg.Connection[tuple[object, ...]], note: str) -> int:
    """One committed row; the port of the server that took it."""
    return int(str(scalar(conn, f"INSERT INTO ledger (note) VALUES ('{note}') RETURNING inet_server_port()")))


def create_ledger(cluster: LocalPgCluster) -> None:
    """The test table, on every node: the test cluster commits asynchronously, so a primary killed
    right after the CREATE could take it with it."""
    cluster.psql(
        cluster.primary, "CREATE TABLE ledger (id bigserial PRIMARY KEY, note text)", user=USER, dbname=APP_DB
    )
    wait_for(
        lambda: all(
            cluster.psql(node, "SELECT to_regclass('ledger') IS NOT NULL", dbname=APP_DB) == "t"
            for node in cluster.standbys
        ),
        timeout=20,
        message="the ledger table to reach every standby",
    )


def rows_on(node: PgNode, cluster: LocalPgCluster) -> int:
    return int(cluster.psql(node, "SELECT count(*) FROM ledger", dbname=APP_DB))


def in_recovery(cluster: LocalPgCluster, node: PgNode) -> bool:
    return cluster.psql(node, "SELECT pg_is_in_recovery()") == "t"


def kill_postmaster(cluster: LocalPgCluster, node: PgNode) -> None:
    pid = cluster.postmaster_pid(node)
    assert pid is not None, f"{node.name} is not running"
    os.kill(pid, signal.SIGKILL)
    wait_for(lambda: not cluster.is_running(node), timeout=20, message=f"{node.name} to die")


def streaming_to(cluster: LocalPgCluster, primary: PgNode) -> set[str]:
    sql = "SELECT application_name FROM pg_stat_replication WHERE state = 'streaming'"
    return set(cluster.psql(primary, sql).split())


# --------------------------------------------------------------------------- a real node process


def test_kill_the_primary_writes_resume_the_other_standby_follows_and_the_old_primary_gets_nothing(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    create_ledger(cluster)
    node = BalancerProcess.start(tmp_path / "node", ha_settings(cluster, tmp_path / "node", workers=2))
    try:

        def connect() -> psycopg.Connection[tuple[object, ...]]:
            return psycopg.connect(node.dsn(USER, APP_DB, PASSWORD), autocommit=True)

        idle = [connect() for _ in range(4)]  # spread over both workers, idle between transactions
        for conn in idle:
            assert insert(conn, "before") == cluster.primary.port
        in_flight = connect()
        in_flight.execute("BEGIN")
        insert(in_flight, "never committed")

        kill_postmaster(cluster, cluster.primary)

        def write_lands_on_a_standby() -> int:
            with connect() as conn:
                port = insert(conn, "after failover")
            return port if port != cluster.primary.port else 0

        # How fast is bench/failover_time.py's business; here a loaded machine only gets a generous deadline.
        new_port = wait_for(
            write_lands_on_a_standby, timeout=30, message="writes resume", retry_on=(psycopg.Error,)
        )
        new_primary = next(n for n in cluster.standbys if n.port == new_port)
        other = next(n for n in cluster.standbys if n is not new_primary)
        assert not in_recovery(cluster, new_primary) and in_recovery(cluster, other)

        with pytest.raises(psycopg.OperationalError) as excinfo:
            insert(in_flight, "still in the old transaction")
        assert excinfo.value.sqlstate in ("08006", "57P01"), excinfo.value
        for conn in idle:  # no reconnect: the next transaction simply runs on the new primary
            assert insert(conn, "idle client carries on") == new_port

        wait_for(
            lambda: other.name in streaming_to(cluster, new_primary),
            timeout=20,
            message="the standby follows",
        )

        cluster.start_node(cluster.primary)  # back as a writable primary on its old timeline (issue #64)
        assert not in_recovery(cluster, cluster.primary)
        rows_before = rows_on(cluster.primary, cluster)
        deadline = time.monotonic() + 3.5  # several health periods of both workers
        writes = 0
        while time.monotonic() < deadline or writes < 20:
            with connect() as conn:
                assert insert(conn, "after the old primary returned") == new_port
            for conn in idle:
                assert insert(conn, "idle client again") == new_port
            writes += 1
        assert rows_on(cluster.primary, cluster) == rows_before
        for conn in [*idle, in_flight]:
            conn.close()
        assert node.process.poll() is None
    except BaseException:  # the node's own account of the failover, shown with the failure
        print(f"--- pgbalancer log tail ---\n{node.log_tail(120)}")
        raise
    finally:
        node.stop()


def test_pg_terminate_backend_on_one_server_connection_does_not_fail_over(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=1)
    create_ledger(cluster)
    node = BalancerProcess.start(
        tmp_path / "node", ha_settings(cluster, tmp_path / "node", pool_mode="session")
    )
    try:
        victim = psycopg.connect(node.dsn(USER, APP_DB, PASSWORD), autocommit=True)
        pid = scalar(victim, "SELECT pg_backend_pid()")
        cluster.psql(cluster.primary, f"SELECT pg_terminate_backend({pid})")
        with pytest.raises(psycopg.OperationalError):
            victim.execute("SELECT 1")
        victim.close()
        # The suspicion triggers a re-probe at once; for several periods after it nothing may move.
        watch_until = time.monotonic() + 4
        while time.monotonic() < watch_until:
            assert in_recovery(cluster, cluster.standbys[0])
            with psycopg.connect(node.dsn(USER, APP_DB, PASSWORD), autocommit=True) as conn:
                assert insert(conn, "still the same primary") == cluster.primary.port
    finally:
        node.stop()


# --------------------------------------------------------------------------- an in-process node


def load_config_from(settings: dict[str, Setting], workdir: Path) -> Config:
    config_path = workdir / "pgbalancer.conf"
    config_path.write_text(render_config(settings))
    return load_config(config_path)


@asynccontextmanager
async def in_process_node(
    settings: dict[str, Setting], workdir: Path
) -> AsyncIterator[tuple[ProxyServer, HaController]]:
    config = load_config_from(settings, workdir)
    proxy = ProxyServer(config, load_userlist(config.auth_file))
    ha = HaController(config, proxy)
    proxy.ha = ha
    async with trio.open_nursery() as nursery:
        await nursery.start(ha.run)
        await nursery.start(proxy.serve)
        started = trio.current_time()
        ha.request_probe()  # that round now, not a whole health_check_period later
        await ha.wait_round_started_after(started)
        try:
            yield proxy, ha
        finally:
            proxy.request_shutdown()
            nursery.cancel_scope.cancel()


def node_dsn(proxy: ProxyServer) -> str:
    listening = proxy.listening[0]
    return dsn(listening.host, listening.port)


class Writer:
    """A thread committing rows through pgbalancer on one connection; it records what was acknowledged."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.acknowledged: list[int] = []
        self.errors: list[str] = []
        self.stop = threading.Event()

    def run(self) -> None:
        conn = psycopg.connect(self.target, autocommit=True)
        try:
            while not self.stop.is_set():
                try:
                    row = conn.execute("INSERT INTO ledger (note) VALUES ('w') RETURNING id").fetchone()
                except psycopg.Error as exc:
                    self.errors.append(f"{exc.sqlstate}: {exc}")
                    conn.close()
                    conn = psycopg.connect(self.target, autocommit=True)
                    continue
                assert row is not None
                self.acknowledged.append(int(row[0]))
        finally:
            conn.close()


async def test_switchover_loses_no_acknowledged_commit_and_rejoins_the_old_primary(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    create_ledger(cluster)
    async with in_process_node(ha_settings(cluster, tmp_path), tmp_path) as (proxy, ha):
        writer = Writer(node_dsn(proxy))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, writer.run)
            await wait_for_async(lambda: len(writer.acknowledged) > 50, timeout=20, message="writes flow")
            result = await ha.switchover(2)
            count_at_switch = len(writer.acknowledged)
            await wait_for_async(lambda: len(writer.acknowledged) > count_at_switch + 50, timeout=20)
            writer.stop.set()
        assert result.primary_id == 2 and result.epoch == 1
        assert proxy.cluster_view.primary_id == 2
        new_primary = cluster.standbys[1]
        ids = cluster.psql(new_primary, "SELECT id FROM ledger", dbname=APP_DB).split()
        missing = set(writer.acknowledged) - {int(i) for i in ids}
        assert not missing, f"acknowledged commits lost in the switchover: {sorted(missing)[:10]}"
        assert writer.errors == [], "clients idle between transactions must not notice a switchover"
        # The old primary was rewound and follows the new one; the other standby too.
        assert any("rejoined as a standby" in note for note in result.notes), result.notes
        assert in_recovery(cluster, cluster.primary)
        await wait_for_async(
            lambda: streaming_to(cluster, new_primary) >= {"primary", "standby1"},
            timeout=20,
            message="both follow",
        )
        assert proxy.cluster_view.backend(0).status is BackendStatus.UP


async def writes_resume_after_killing_the_primary(
    cluster: LocalPgCluster, proxy: ProxyServer, writer: Writer
) -> float:
    """Seconds from the kill of the primary until the writer has 5 commits on the new primary."""
    await wait_for_async(lambda: len(writer.acknowledged) > 20, timeout=20, message="writes flow")
    killed_at = trio.current_time()
    await trio.to_thread.run_sync(kill_postmaster, cluster, cluster.primary)
    # An orphaned backend of the killed postmaster may still take a write or two: count the writes
    # acknowledged once the view has moved (the old primary is fenced from then on).
    await wait_for_async(
        lambda: proxy.cluster_view.primary_id not in (None, 0), timeout=20, message="failover"
    )
    acknowledged_at_failover = len(writer.acknowledged)
    await wait_for_async(
        lambda: len(writer.acknowledged) > acknowledged_at_failover + 5,
        timeout=20,
        message="writes resume on the new primary",
    )
    return trio.current_time() - killed_at


async def test_a_writer_s_broken_connection_fails_over_long_before_the_next_health_round(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    create_ledger(cluster)
    period = 30.0  # only the suspicion's immediate re-probe can fail over within the test's bound
    async with in_process_node(ha_settings(cluster, tmp_path, health_check_period=period), tmp_path) as (
        proxy,
        _ha,
    ):
        next_round_at = trio.current_time() + period  # a round has just run
        writer = Writer(node_dsn(proxy))
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.to_thread.run_sync, writer.run)
            try:
                resumed_after = await writes_resume_after_killing_the_primary(cluster, proxy, writer)
            except TimeoutError as exc:
                raise AssertionError(f"{exc}; the writer's last errors: {writer.errors[-3:]}") from exc
            finally:  # the writer thread cannot be cancelled: a failed wait must still end it
                writer.stop.set()
        assert resumed_after < 10, f"writes resumed {resumed_after:.1f}s after the kill"
        assert trio.current_time() < next_round_at, "the periodic round did it, not the suspicion"
        assert proxy.cluster_view.primary_id in (1, 2) and proxy.cluster_view.epoch == 1


async def test_kill_then_rejoin_brings_the_old_primary_back_as_a_standby_with_pg_rewind(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    create_ledger(cluster)
    async with in_process_node(ha_settings(cluster, tmp_path), tmp_path) as (proxy, ha):
        await trio.to_thread.run_sync(kill_postmaster, cluster, cluster.primary)
        await wait_for_async(lambda: proxy.cluster_view.primary_id == 1, timeout=15, message="failover to 1")
        await trio.to_thread.run_sync(cluster.start_node, cluster.primary)
        assert not await trio.to_thread.run_sync(in_recovery, cluster, cluster.primary)
        await ha.wait_round_started_after(trio.current_time())
        assert proxy.cluster_view.backend(0).status is BackendStatus.DOWN  # fenced, though it answers

        result = await ha.rejoin(0)

        assert result.details["method"] == "pg_rewind"
        assert await trio.to_thread.run_sync(in_recovery, cluster, cluster.primary)
        await wait_for_async(
            lambda: "primary" in streaming_to(cluster, cluster.standbys[0]), timeout=20, message="it follows"
        )
        state = proxy.cluster_view.backend(0)
        assert state.status is BackendStatus.UP and state.role is BackendRole.STANDBY
        assert proxy.cluster_view.primary_id == 1


async def test_a_killed_standby_loses_its_reads_within_a_period_and_regains_them_when_it_returns(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    standby = cluster.standbys[1]
    settings = ha_settings(cluster, tmp_path, load_balance_mode=True, load_balance_algorithm="round_robin")
    # The bound health_check_period documents for a backend that refuses connections, plus slack
    # for a loaded test machine.
    config = load_config_from(settings, tmp_path)
    bound = (
        config.health_check_period + config.health_check_max_retries * config.health_check_retry_delay + 3.0
    )
    async with in_process_node(settings, tmp_path) as (proxy, _ha):
        target = node_dsn(proxy)
        assert 2 in readable_ids(proxy)
        assert standby.port in await trio.to_thread.run_sync(read_ports, target, 6)

        await trio.to_thread.run_sync(kill_postmaster, cluster, standby)
        died_at = trio.current_time()
        await wait_for_async(lambda: 2 not in readable_ids(proxy), timeout=bound, message="standby out")
        assert trio.current_time() - died_at <= bound
        assert proxy.cluster_view.primary_id == 0 and proxy.cluster_view.epoch == 0
        down_ports = await trio.to_thread.run_sync(read_ports, target, 20)
        assert len(down_ports) == 20 and standby.port not in down_ports

        await trio.to_thread.run_sync(cluster.start_node, standby)
        await wait_for_async(lambda: 2 in readable_ids(proxy), timeout=15, message="standby back")
        assert proxy.cluster_view.backend(2).role is BackendRole.STANDBY

        def its_reads_come_back() -> bool:
            return wait_for(lambda: standby.port in read_ports(target, 6), timeout=15, message="its reads")

        await trio.to_thread.run_sync(its_reads_come_back)


def read_ports(target: str, count: int) -> list[int]:
    """``count`` reads on one connection through pgbalancer: the port of the server that answered each."""
    with psycopg.connect(target, autocommit=True) as conn:
        return [int(str(scalar(conn, "SELECT inet_server_port()"))) for _ in range(count)]


def readable_ids(proxy: ProxyServer) -> list[int]:
    return [s.node_id for s in proxy.cluster_view.readable()]


async def test_a_standby_that_refuses_connections_costs_no_read_and_is_suspected_at_once(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    standby = cluster.standbys[1]
    period = 30.0  # the next health round is far away: only the suspicion can take the standby out
    settings = ha_settings(
        cluster,
        tmp_path,
        load_balance_mode=True,
        load_balance_algorithm="round_robin",  # every third read goes to the standby
        health_check_period=period,
    )
    async with in_process_node(settings, tmp_path) as (proxy, _ha):
        next_round_at = trio.current_time() + period  # a round has just run
        target = node_dsn(proxy)
        assert standby.port in await trio.to_thread.run_sync(read_ports, target, 6)
        stopped_at = trio.current_time()
        await trio.to_thread.run_sync(cluster.stop_node, standby, "immediate")

        ports = await trio.to_thread.run_sync(read_ports, target, 20)  # raises if any read fails

        assert len(ports) == 20 and standby.port not in ports
        await wait_for_async(
            lambda: proxy.cluster_view.backend(2).status is BackendStatus.DOWN,
            timeout=10,
            message="the refusing standby confirmed down by the re-probe",
        )
        assert trio.current_time() < next_round_at, "it waited for the periodic round"
        assert trio.current_time() - stopped_at < period / 3
        assert 2 not in readable_ids(proxy)
        assert proxy.cluster_view.primary_id == 0 and proxy.cluster_view.epoch == 0


async def test_bad_operations_give_clear_errors_and_change_nothing(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    async with in_process_node(ha_settings(cluster, tmp_path), tmp_path) as (proxy, ha):
        await trio.to_thread.run_sync(kill_postmaster, cluster, cluster.standbys[1])
        await wait_for_async(
            lambda: not proxy.cluster_view.backend(2).is_up, timeout=10, message="node 2 down"
        )
        before = proxy.cluster_view
        bad = [
            (ha.promote, 2, "backend 2 is down: only an up standby can be promoted"),
            (ha.promote, 0, "backend 0 is already the primary"),
            (ha.promote, 9, "there is no backend 9 (configured: 0, 1, 2)"),
            (ha.switchover, 9, "there is no backend 9"),
            (ha.detach, 0, "backend 0 is the primary"),
            (ha.attach, 2, "cannot attach backend 2"),
            (ha.rejoin, 0, "backend 0 is the primary"),
        ]
        for operation, node_id, message in bad:
            with pytest.raises(HaOperationError) as excinfo:
                await operation(node_id)
            assert message in excinfo.value.message, (operation.__name__, node_id, excinfo.value.message)
        after = proxy.cluster_view
        assert (after.primary_id, after.epoch) == (before.primary_id, before.epoch)
        assert [(s.node_id, s.status, s.detached) for s in after] == [
            (s.node_id, s.status, s.detached) for s in before
        ]
        assert await trio.to_thread.run_sync(in_recovery, cluster, cluster.standbys[0])
        assert not await trio.to_thread.run_sync(in_recovery, cluster, cluster.primary)
