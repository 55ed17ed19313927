"""Failover with the operator's own scripts, writes waiting out a failover, and rejoin by re-cloning,
against real PostgreSQL (private clusters only).

- failover_command / follow_primary_command are real shell scripts run by a real ``pgbalancer -f``:
  they record their arguments (pgpool's %-placeholders, substituted) and do the promotion and the
  re-pointing themselves; a failing failover_command promotes nothing.
- A write sent while no primary is in the view (the failover_command is still promoting) waits for
  the new primary instead of being refused, and after server_connect_timeout gets 08006 naming what
  to do.
- Rejoin falls back to pg_basebackup when pg_rewind is impossible (wal_log_hints off, no checksums).
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import psycopg
import pytest
import trio

from pgbalancer.devtools import wait_for, wait_for_async
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PG_OS_USER, LocalPgCluster
from pgbalancer.ha.view import BackendRole, BackendStatus
from tests.integration.test_failover import (
    PASSWORD,
    USER,
    MakeCluster,
    create_ledger,
    ha_settings,
    in_process_node,
    in_recovery,
    insert,
    kill_postmaster,
    rows_on,
    streaming_to,
)

pytestmark = pytest.mark.slow

PASSWORD_DSN_KEYS = {"connect_timeout": "10"}


def hooks_dir(cluster: LocalPgCluster) -> Path:
    """Scripts and their records, where the postgres OS user (who runs the hooks) can write."""
    path = cluster.base_dir / "hooks"
    path.mkdir(exist_ok=True)
    if os.geteuid() == 0:
        shutil.chown(path, PG_OS_USER, PG_OS_USER)
    return path


def script(path: Path, body: str) -> Path:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def lines(path: Path) -> list[str]:
    return path.read_text().splitlines() if path.exists() else []


def connect(node: BalancerProcess) -> psycopg.Connection[tuple[object, ...]]:
    return psycopg.connect(node.dsn(USER, APP_DB, PASSWORD, **PASSWORD_DSN_KEYS), autocommit=True)


def test_a_write_during_a_failover_waits_for_the_new_primary_and_the_hooks_get_their_placeholders(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    create_ledger(cluster)
    hooks = hooks_dir(cluster)
    pg_ctl, psql = cluster.pg_bin / "pg_ctl", cluster.pg_bin / "psql"
    # Promote only for the primary's failure (%d = %P); a standby's failure runs it too, as in Pgpool-II.
    # The sleep holds the cluster without a primary long enough for a client to write meanwhile.
    failover = script(
        hooks / "failover.sh",
        f'echo "$@" >> {hooks}/failover.args\n'
        '[ "$1" = "$7" ] || exit 0\n'
        "sleep 2\n"
        f'exec {pg_ctl} promote -w -D "$8"\n',
    )
    # Re-point the standby (%h:%p) at the new primary (%H:%r) with the slot it already names.
    follow = script(
        hooks / "follow.sh",
        f'echo "$@" >> {hooks}/follow.args\n'
        f'slot=$({psql} -h "$2" -p "$3" -U postgres -d postgres -Atc "SHOW primary_slot_name") || exit 4\n'
        f'{psql} -h "$5" -p "$6" -U postgres -d postgres -Atc "SELECT pg_create_physical_replication_slot('
        "'$slot') WHERE NOT EXISTS (SELECT FROM pg_replication_slots WHERE slot_name = '$slot')\" || exit 5\n"
        f'{psql} -h "$2" -p "$3" -U postgres -d postgres -Atc '
        "\"ALTER SYSTEM SET primary_conninfo = 'host=$5 port=$6 user=replicator'\" "
        '-c "SELECT pg_reload_conf()" || exit 6\n',
    )
    settings = ha_settings(
        cluster,
        tmp_path / "node",
        failover_command=f"{failover} %d %h %p %m %H %r %P %R",
        follow_primary_command=f"{follow} %d %h %p %m %H %r",
        server_connect_timeout=20,
    )
    node = BalancerProcess.start(tmp_path / "node", settings)
    try:
        idle = connect(node)  # a client idle between transactions (transaction pooling)
        assert insert(idle, "before") == cluster.primary.port
        old_port = cluster.primary.port
        kill_postmaster(cluster, cluster.primary)
        wait_for(
            lambda: any(line.startswith("0 ") for line in lines(hooks / "failover.args")),
            timeout=20,
            message="failover_command started for the primary",
        )
        # No primary in the view now: the script sleeps before it promotes. The write waits, then lands.
        started = time.monotonic()
        with idle:
            new_port = insert(idle, "during the failover")
        waited = time.monotonic() - started
        assert new_port in {s.port for s in cluster.standbys}, new_port
        assert waited > 0.3, f"the write cannot have waited for the promotion: {waited:.2f}s"
        new_primary = next(s for s in cluster.standbys if s.port == new_port)
        new_id = cluster.nodes.index(new_primary)
        other = next(s for s in cluster.standbys if s is not new_primary)
        other_id = cluster.nodes.index(other)

        assert f"0 127.0.0.1 {old_port} {new_id} 127.0.0.1 {new_port} 0 {new_primary.data_dir}" in lines(
            hooks / "failover.args"
        )
        wait_for(
            lambda: (
                f"{other_id} 127.0.0.1 {other.port} {new_id} 127.0.0.1 {new_port}"
                in lines(hooks / "follow.args")
            ),
            timeout=20,
            message="follow_primary_command ran for the other standby",
        )
        wait_for(
            lambda: other.name in streaming_to(cluster, new_primary),
            timeout=30,
            message=f"{other.name} streams from the new primary (re-pointed by the script)",
        )
        assert not in_recovery(cluster, new_primary) and in_recovery(cluster, other)
        during = "SELECT count(*) FROM ledger WHERE note = 'during the failover'"
        assert cluster.psql(new_primary, during, dbname=APP_DB) == "1"
    finally:
        node.stop()


def test_a_failing_failover_command_promotes_nothing_and_writes_get_a_clear_error(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=1)
    create_ledger(cluster)
    hooks = hooks_dir(cluster)
    settings = ha_settings(
        cluster,
        tmp_path / "node",
        failover_command=f"echo %d >> {hooks}/failed.args; exit 3",
        server_connect_timeout=3,
        load_balance_mode=True,
    )
    node = BalancerProcess.start(tmp_path / "node", settings)
    try:
        with connect(node) as conn, connect(node) as reader:
            assert insert(conn, "before") == cluster.primary.port
            kill_postmaster(cluster, cluster.primary)
            wait_for(lambda: "0" in lines(hooks / "failed.args"), timeout=20, message="failover_command ran")
            started = time.monotonic()
            with pytest.raises(psycopg.OperationalError) as excinfo:
                insert(conn, "no primary")
            elapsed = time.monotonic() - started
            error = excinfo.value
            assert error.sqlstate == "08006", error
            assert "no primary is up" in str(error)
            assert error.diag.message_hint is not None and "promote a standby" in error.diag.message_hint
            assert elapsed < 3 + 2, f"the write waited {elapsed:.1f}s, past server_connect_timeout"
            # The node goes on: a session that never wrote still reads from the standby.
            row = reader.execute("SELECT pg_is_in_recovery()").fetchone()
            assert row == (True,)
        assert in_recovery(cluster, cluster.standbys[0]), "a failed failover_command must promote nothing"
    finally:
        node.stop()


async def test_rejoin_reclones_with_pg_basebackup_when_pg_rewind_is_impossible(
    pg_cluster_factory: MakeCluster, tmp_path: Path
) -> None:
    # Neither wal_log_hints nor data checksums: pg_rewind refuses this old primary.
    cluster = pg_cluster_factory(standbys=1, extra_conf={"wal_log_hints": "off"})
    create_ledger(cluster)
    assert cluster.psql(cluster.primary, "SHOW data_checksums") == "off"
    async with in_process_node(ha_settings(cluster, tmp_path), tmp_path) as (proxy, ha):
        await trio.to_thread.run_sync(kill_postmaster, cluster, cluster.primary)
        await wait_for_async(lambda: proxy.cluster_view.primary_id == 1, timeout=20, message="failover to 1")
        new_primary = cluster.standbys[0]
        cluster.psql(new_primary, "INSERT INTO ledger (note) VALUES ('after')", dbname=APP_DB)

        result = await ha.rejoin(0)

        assert result.details["method"] == "pg_basebackup", result
        assert await trio.to_thread.run_sync(in_recovery, cluster, cluster.primary)
        await wait_for_async(
            lambda: "primary" in streaming_to(cluster, new_primary), timeout=30, message="it follows"
        )
        await wait_for_async(
            lambda: rows_on(cluster.primary, cluster) == rows_on(new_primary, cluster) == 1,
            timeout=20,
            message="the re-cloned node has the new primary's rows",
        )
        state = proxy.cluster_view.backend(0)
        assert state.status is BackendStatus.UP and state.role is BackendRole.STANDBY
