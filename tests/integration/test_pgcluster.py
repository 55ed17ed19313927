"""The real PostgreSQL cluster fixtures give what the proxy tests rely on.

A writable primary, standbys that are in recovery and replay, servers run as the postgres OS user with
wal_log_hints on, and the test users' passwords and pg_hba methods. Never asserts on log text.
"""

from __future__ import annotations

import functools
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import psycopg
import pytest
import trio

from pgbalancer.devtools import Poll
from pgbalancer.devtools.pgcluster import (
    APP_DB,
    PG_OS_USER,
    TEST_USER_AUTH,
    TEST_USERS,
    LocalPgCluster,
    PgClusterError,
    PgClusterLike,
    PgNode,
    reap_orphaned_clusters,
)

pytestmark = pytest.mark.slow


def _fetch_one(dsn: str, sql: str) -> object:
    with psycopg.connect(dsn, connect_timeout=5) as conn:
        row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


def _local_only(cluster: PgClusterLike) -> LocalPgCluster:
    if not isinstance(cluster, LocalPgCluster):
        pytest.skip("needs the local-binaries backend")
    return cluster


def test_primary_is_writable_and_standbys_are_in_recovery(pg_cluster: PgClusterLike) -> None:
    assert len(pg_cluster.standbys) == 2
    assert pg_cluster.nodes == [pg_cluster.primary, *pg_cluster.standbys]
    assert pg_cluster.psql(pg_cluster.primary, "SELECT pg_is_in_recovery()") == "f"
    for standby in pg_cluster.standbys:
        assert pg_cluster.psql(standby, "SELECT pg_is_in_recovery()") == "t"
        with pytest.raises(PgClusterError, match="read-only transaction"):
            pg_cluster.psql(standby, "CREATE TABLE must_fail (id int)")


def test_standbys_replay_a_row_written_on_the_primary(pg_cluster: PgClusterLike, poll: Poll) -> None:
    table = f"replay_{uuid.uuid4().hex[:12]}"
    token = uuid.uuid4().hex
    pg_cluster.psql(
        pg_cluster.primary, f"CREATE TABLE {table} (token text); INSERT INTO {table} VALUES ('{token}')"
    )

    def replayed(node: PgNode) -> bool:
        return pg_cluster.psql(node, f"SELECT token FROM {table}") == token

    for standby in pg_cluster.standbys:
        poll(
            functools.partial(replayed, standby),
            timeout=15,
            message=f"{standby.name} replaying {table}",
            retry_on=(PgClusterError,),  # the table itself may not have been replayed yet
        )
    pg_cluster.psql(pg_cluster.primary, f"DROP TABLE {table}")


def test_servers_run_as_the_postgres_os_user(pg_cluster: PgClusterLike) -> None:
    cluster = _local_only(pg_cluster)
    postgres_uid = pwd.getpwnam(PG_OS_USER).pw_uid
    for node in cluster.nodes:
        pid = cluster.postmaster_pid(node)
        assert pid is not None, f"{node.name} has no postmaster"
        assert os.stat(f"/proc/{pid}").st_uid == postgres_uid
        assert os.stat(node.data_dir).st_uid == postgres_uid


@pytest.mark.parametrize("setting", ["wal_log_hints", "hot_standby", "full_page_writes"])
def test_rewind_prerequisites_are_on_everywhere(pg_cluster: PgClusterLike, setting: str) -> None:
    for node in pg_cluster.nodes:
        assert pg_cluster.psql(node, f"SHOW {setting}") == "on", node.name


def test_passwords_are_stored_in_the_format_their_hba_method_needs(pg_cluster: PgClusterLike) -> None:
    stored = dict(
        line.split("|", 1)
        for line in pg_cluster.psql(
            pg_cluster.primary,
            "SELECT rolname, coalesce(left(rolpassword, 14), '') FROM pg_authid "
            "WHERE rolname IN ('app_scram', 'app_md5', 'app_trust')",
        ).splitlines()
    )
    assert stored["app_scram"] == "SCRAM-SHA-256$"
    assert stored["app_md5"].startswith("md5")
    assert stored["app_trust"] == ""


@pytest.mark.parametrize("user", sorted(TEST_USERS))
def test_each_test_user_logs_in_over_tcp(pg_cluster: PgClusterLike, user: str) -> None:
    dsn = pg_cluster.primary.dsn(user=user, dbname=APP_DB, password=TEST_USERS[user])
    assert _fetch_one(dsn, "SELECT current_user") == user


def test_hba_methods_match_the_contract(pg_cluster: PgClusterLike) -> None:
    rules = pg_cluster.psql(
        pg_cluster.primary,
        "SELECT array_to_string(user_name, ','), auth_method FROM pg_hba_file_rules "
        "WHERE type = 'host' AND 'all' = ANY(database) ORDER BY line_number",
    ).splitlines()
    methods = dict(rule.split("|") for rule in rules)
    for user, method in TEST_USER_AUTH.items():
        assert methods[user] == method, user
    assert rules[-1] == "all|scram-sha-256", "the catch-all line must come last"


@pytest.mark.parametrize("user", ["app_scram", "app_md5"])
def test_wrong_or_missing_password_is_refused(pg_cluster: PgClusterLike, user: str) -> None:
    for password in ["not-the-password", ""]:
        dsn = pg_cluster.primary.dsn(user=user, dbname=APP_DB, password=password)
        with pytest.raises(psycopg.OperationalError, match="password"):
            _fetch_one(dsn, "SELECT 1")


async def test_psycopg_from_trio_goes_through_a_thread(pg_cluster: PgClusterLike) -> None:
    # psycopg's async API needs asyncio; in trio tests the sync API runs in a worker thread.
    standby = pg_cluster.standbys[0]
    in_recovery = await trio.to_thread.run_sync(_fetch_one, standby.dsn(), "SELECT pg_is_in_recovery()")
    assert in_recovery is True


def test_factory_cluster_promotes_and_stops_idempotently(
    pg_cluster_factory: Callable[..., LocalPgCluster],
) -> None:
    cluster = pg_cluster_factory(standbys=1)
    standby: PgNode = cluster.standbys[0]
    cluster.promote(standby)
    assert cluster.psql(standby, "SELECT pg_is_in_recovery()") == "f"
    cluster.psql(standby, "CREATE TABLE after_promotion (id int)")
    cluster.stop()
    cluster.stop()  # already stopped: must not raise
    assert not any(item.running for item in cluster.status())
    again = LocalPgCluster.attach(cluster.base_dir)
    assert again.nodes == cluster.nodes


def test_clusters_of_dead_test_runs_are_reaped(poll: Poll) -> None:
    parent = Path(tempfile.mkdtemp(prefix="pgbalancer-reap-", dir="/tmp"))
    parent.chmod(0o755)  # the postgres user must reach the clusters inside
    orphan = LocalPgCluster(parent / "orphan-1", standbys=0, fast=True)
    try:
        orphan.start()
        postmaster = orphan.postmaster_pid(orphan.primary)
        finished = subprocess.Popen(["true"])
        finished.wait()  # reaped: its pid now belongs to no process
        (orphan.base_dir / "owner.pid").write_text(f"{finished.pid}\n")
        owned = parent / "orphan-2"
        owned.mkdir()
        (owned / "owner.pid").write_text(f"{os.getpid()}\n")

        assert reap_orphaned_clusters(parent, "orphan-") == [orphan.base_dir]
        assert not orphan.base_dir.exists()
        # pg_ctl returns once postmaster.pid is gone; the process itself exits a moment later.
        poll(lambda: not Path(f"/proc/{postmaster}").exists(), timeout=10, message="the postmaster to exit")
        assert owned.exists(), "a cluster whose owner is alive must be left alone"
    finally:
        orphan.destroy()
        shutil.rmtree(parent, ignore_errors=True)
