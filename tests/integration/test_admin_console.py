"""The admin console through a real node: psql and psycopg against the virtual database ``pgbalancer``.

Read-only SHOW tests share one module node; PAUSE, KILL, RELOAD and SHUTDOWN get private nodes.
Admin user: ``app_trust`` (its USERLIST password); app clients log in as ``app_scram``.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, BENCH_DB, PgClusterLike
from tests.integration.proxy_support import USERLIST, BalancerFactory, base_settings, write_userlist
from tests.integration.test_node_lifecycle import asyncpg_login_sqlstate
from tests.integration.tls_support import make_tls_files
from tests.unit.test_admin_commands import (
    PGBOUNCER_DATABASES,
    PGBOUNCER_POOLS,
    PGBOUNCER_SOCKETS,
    PGBOUNCER_STATS,
    PGPOOL_POOL_NODES,
)

pytestmark = pytest.mark.slow

ADMIN = "app_trust"
PSQL = Path("/usr/lib/postgresql/15/bin/psql")
Row = dict[str, Any]


def console(
    node: BalancerProcess, database: str = "pgbalancer", user: str = ADMIN, **conninfo: str
) -> psycopg.Connection:
    """A console connection; ClientCursor keeps psycopg on the simple query protocol, as psql is."""
    return psycopg.connect(
        node.dsn(user, database, USERLIST[user], **conninfo),
        autocommit=True,
        cursor_factory=psycopg.ClientCursor,
    )


def app_client(node: BalancerProcess, user: str = "app_scram", database: str = APP_DB) -> psycopg.Connection:
    return psycopg.connect(node.dsn(user, database, USERLIST[user]), autocommit=True)


def show(conn: psycopg.Connection, what: str) -> tuple[list[str], list[Row]]:
    cur = conn.execute(f"SHOW {what}")
    header = [column.name for column in cur.description or []]
    return header, [dict(zip(header, row, strict=True)) for row in cur.fetchall()]


def rows_where(conn: psycopg.Connection, what: str, **match: object) -> list[Row]:
    return [row for row in show(conn, what)[1] if all(row[k] == v for k, v in match.items())]


def run_psql(node: BalancerProcess, *args: str, user: str = ADMIN) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PGPASSWORD": USERLIST[user], "PGCONNECT_TIMEOUT": "10"}
    command = [str(PSQL), "-X", "-h", node.host, "-p", str(node.port), "-U", user, "pgbalancer", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=30, env=env)


@contextlib.contextmanager
def in_thread(target: Callable[[], object]) -> Iterator[list[object]]:
    """Run ``target`` in a thread; the list gets its result (or exception) when it finishes."""
    outcome: list[object] = []

    def run() -> None:
        try:
            outcome.append(target())
        except Exception as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        yield outcome
    finally:
        thread.join(timeout=30)


@pytest.fixture(scope="module")
def admin_node(
    pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    workdir = tmp_path_factory.mktemp("admin-node")
    settings = base_settings(pg_cluster, workdir)
    settings.update(admin_users=ADMIN, health_check_password="hunter2-not-shown")
    node = BalancerProcess.start(workdir, settings)
    try:
        yield node
    finally:
        node.stop()


# --------------------------------------------------------------------------- SHOW


def test_show_pools_has_pgbouncers_columns_and_counts_live_clients(admin_node: BalancerProcess) -> None:
    with app_client(admin_node) as first, app_client(admin_node) as second, console(admin_node) as admin:
        assert first.execute("SELECT 1").fetchone() == second.execute("SELECT 1").fetchone() == (1,)
        header, _ = show(admin, "POOLS")
        assert header == PGBOUNCER_POOLS
        (pool,) = rows_where(admin, "POOLS", database=APP_DB, user="app_scram")
        assert (pool["cl_active"], pool["cl_waiting"], pool["sv_active"]) == (2, 0, 2)
        assert pool["pool_mode"] == "session"
        (console_pool,) = rows_where(admin, "POOLS", database="pgbalancer")
        assert console_pool["cl_active"] >= 1
    with console(admin_node) as admin:  # the clients left: their servers went back to the pool
        (pool,) = wait_for(lambda: rows_where(admin, "POOLS", database=APP_DB, sv_active=0, cl_active=0))
        assert pool["sv_idle"] == 2


def test_show_clients_and_servers_list_the_connections(admin_node: BalancerProcess) -> None:
    with app_client(admin_node) as first, app_client(admin_node) as second, console(admin_node) as admin:
        first.execute("SELECT 1")
        second.execute("SELECT 1")
        header, _ = show(admin, "CLIENTS")
        assert header == PGBOUNCER_SOCKETS
        clients = rows_where(admin, "CLIENTS", database=APP_DB, user="app_scram")
        assert len(clients) == 2
        assert {c["type"] for c in clients} == {"C"} and {c["state"] for c in clients} == {"active"}
        assert {c["addr"] for c in clients} == {"127.0.0.1"} and all(c["port"] > 0 for c in clients)
        assert rows_where(admin, "CLIENTS", database="pgbalancer", user=ADMIN)  # the console itself
        servers = rows_where(admin, "SERVERS", database=APP_DB, state="active")
        assert len(servers) == 2 and all(s["remote_pid"] > 0 for s in servers)
        assert {s["link"] for s in servers} == {c["ptr"] for c in clients}
        assert all(s["connect_time"].endswith(" UTC") for s in servers)


def test_show_databases_stats_lists_and_version(admin_node: BalancerProcess) -> None:
    with app_client(admin_node) as client, console(admin_node) as admin:
        client.execute("SELECT 1")
        header, _ = show(admin, "DATABASES")
        assert header == PGBOUNCER_DATABASES
        (app,) = rows_where(admin, "DATABASES", name=APP_DB)
        assert (app["current_client_connections"], app["paused"]) == (1, 0)
        header, _ = show(admin, "STATS")
        assert header == PGBOUNCER_STATS
        (stats,) = rows_where(admin, "STATS", database=APP_DB)
        assert isinstance(stats["total_server_assignment_count"], Decimal)
        assert stats["total_server_assignment_count"] >= 1
        assert stats["total_query_count"] >= 1  # the relay feeds the traffic counters live
        assert stats["total_received"] > 0 and stats["total_sent"] > 0
        lists = {row["list"]: row["items"] for row in show(admin, "LISTS")[1]}
        assert lists["used_clients"] >= 2 and lists["pools"] >= 2
        assert show(admin, "VERSION")[1] == [{"version": "pgbalancer 0.1.0"}]
        assert show(admin, "STATE")[1][0] == {"key": "active", "value": "yes"}


def test_show_config_redacts_secrets(admin_node: BalancerProcess) -> None:
    with console(admin_node) as admin:
        header, rows = show(admin, "CONFIG")
    assert header == ["key", "value", "default", "changeable"]
    settings = {row["key"]: row for row in rows}
    assert settings["health_check_password"]["value"] == "********"
    assert "hunter2-not-shown" not in repr(rows)
    assert settings["admin_users"]["value"] == ADMIN
    assert settings["port"]["changeable"] == "no"


def test_show_pool_nodes_lists_every_backend(admin_node: BalancerProcess, pg_cluster: PgClusterLike) -> None:
    with app_client(admin_node) as client, console(admin_node) as admin:
        client.execute("SELECT 1")
        header, nodes = show(admin, "POOL_NODES")
    assert header == PGPOOL_POOL_NODES
    assert [(n["hostname"], n["port"]) for n in nodes] == [(b.host, str(b.port)) for b in pg_cluster.nodes]
    assert [n["role"] for n in nodes] == ["primary", "standby", "standby"]
    assert nodes[0]["status"] == "up" and {n["pg_status"] for n in nodes} == {"up"}
    assert [n["lb_weight"] for n in nodes] == ["0.333333"] * 3


def test_show_pool_nodes_takes_roles_and_lag_from_the_cluster_view(admin_node: BalancerProcess) -> None:
    """pg_role is what the health checker found (pg_is_in_recovery()); with load_balance_mode off
    only the primary is a load_balance_node; replication_delay is the lag in bytes."""

    def probed() -> list[dict[str, object]] | None:
        with console(admin_node) as admin:
            _, nodes = show(admin, "POOL_NODES")
        return nodes if all(n["pg_role"] != "unknown" for n in nodes) else None

    nodes = wait_for(probed, timeout=20, message="every backend probed by the health checker")
    assert nodes is not None
    assert [n["pg_role"] for n in nodes] == ["primary", "standby", "standby"]
    assert [n["load_balance_node"] for n in nodes] == ["true", "false", "false"]
    assert all(int(str(n["replication_delay"])) >= 0 for n in nodes)
    assert {n["status"] for n in nodes} <= {"up", "waiting"}


def test_what_pgbouncer_exporter_reads(admin_node: BalancerProcess) -> None:
    """The exporter's scrape: these queries (with the semicolon), and the shapes it parses."""
    with app_client(admin_node) as client, console(admin_node) as admin:
        client.execute("SELECT 1")
        results = {what: show(admin, f"{what};") for what in ("STATS", "VERSION", "LISTS", "CONFIG")}
        results |= {what: show(admin, f"{what};") for what in ("DATABASES", "STATS_TOTALS", "POOLS")}
    assert results["VERSION"][0] == ["version"]
    header, lists = results["LISTS"]
    assert header == ["list", "items"] and all(isinstance(row["items"], int) for row in lists)
    header, config = results["CONFIG"]
    assert len(header) == 4
    settings = {row["key"]: row["value"] for row in config}
    assert float(settings["max_client_conn"]) > 0  # the one config value it turns into a metric
    wanted_totals = {"database", "query_count", "query_time", "bytes_received", "bytes_sent", "wait_time"}
    assert wanted_totals | {"xact_count", "xact_time"} <= set(results["STATS_TOTALS"][0])
    for label in ("database", "user"):
        assert all(isinstance(row[label], str) for row in results["POOLS"][1])
    for row in results["DATABASES"][1]:
        assert float(row["pool_size"]) >= 0 and float(row["current_connections"]) >= 0


def test_unknown_command_is_42601_and_the_console_keeps_working(admin_node: BalancerProcess) -> None:
    with console(admin_node) as admin:
        with pytest.raises(psycopg.errors.SyntaxError, match="invalid command 'FROB', use SHOW HELP;"):
            admin.execute("FROB")
        with pytest.raises(psycopg.errors.FeatureNotSupported):
            admin.execute("SET max_client_conn = 5")
        admin.execute("")  # an empty query is answered, not an error
        assert show(admin, "VERSION")[1] == [{"version": "pgbalancer 0.1.0"}]


def test_the_pgbouncer_alias_and_psycopgs_default_cursor(admin_node: BalancerProcess) -> None:
    with console(admin_node, database="pgbouncer") as admin:
        assert show(admin, "version")[1] == [{"version": "pgbalancer 0.1.0"}]
    dsn = admin_node.dsn(ADMIN, "pgbalancer", USERLIST[ADMIN])
    with psycopg.connect(dsn, autocommit=True) as default_cursor:  # no parameters: simple protocol
        assert default_cursor.execute("SHOW VERSION").fetchone() == ("pgbalancer 0.1.0",)
    extended = psycopg.connect(dsn, autocommit=True)
    with pytest.raises(psycopg.errors.FeatureNotSupported, match="extended query protocol not supported"):
        extended.execute("SHOW POOLS", prepare=True)  # Parse/Bind/Execute: refused, as by PgBouncer
    assert extended.closed


def test_a_user_outside_admin_users_is_refused(admin_node: BalancerProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="not allowed"):
        console(admin_node, user="app_scram")
    assert (
        asyncpg_login_sqlstate(admin_node.dsn_url("app_scram", "pgbalancer", USERLIST["app_scram"]))
        == "28000"
    )


def test_psql_plain_expanded_and_unaligned_output(admin_node: BalancerProcess) -> None:
    plain = run_psql(admin_node, "-c", "SHOW POOLS")
    assert plain.returncode == 0, plain.stderr
    assert "cl_active" in plain.stdout.splitlines()[0] and "pgbalancer" in plain.stdout
    expanded = run_psql(admin_node, "-c", "\\x", "-c", "SHOW POOL_NODES")
    assert expanded.returncode == 0, expanded.stderr
    assert "-[ RECORD 1 ]" in expanded.stdout and "pg_status" in expanded.stdout
    unaligned = run_psql(admin_node, "-At", "-c", "show version;")
    assert unaligned.stdout.strip() == "pgbalancer 0.1.0"
    wrong = run_psql(admin_node, "-c", "SHOW NOTHING")
    assert wrong.returncode == 1 and "invalid command" in wrong.stderr


def test_show_clients_tls_column(balancer_factory: BalancerFactory, tmp_path: Path) -> None:
    files = make_tls_files(tmp_path / "tls")
    node = balancer_factory(
        admin_users=ADMIN,
        client_tls_sslmode="allow",
        client_tls_cert_file=str(files.server.cert),
        client_tls_key_file=str(files.server.key),
    )
    tls_dsn = node.dsn("app_scram", APP_DB, USERLIST["app_scram"], sslmode="require")
    with psycopg.connect(tls_dsn, autocommit=True) as over_tls, console(node, sslmode="disable") as admin:
        over_tls.execute("SELECT 1")
        (client,) = rows_where(admin, "CLIENTS", user="app_scram")
        assert client["tls"].startswith("TLSv1.")
        (console_row,) = rows_where(admin, "CLIENTS", user=ADMIN)
        assert console_row["tls"] == ""
        (server,) = rows_where(admin, "SERVERS", database=APP_DB)
        assert server["tls"] == ""  # the backend side is plain here


# --------------------------------------------------------------------------- PAUSE / RESUME / KILL


def test_pause_waits_for_session_clients_and_holds_new_ones_until_resume(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(admin_users=ADMIN)
    holder = app_client(node)
    holder.execute("SELECT 1")
    with console(node) as admin, console(node) as watcher:
        with in_thread(lambda: admin.execute("PAUSE app").statusmessage) as pause:
            wait_for(lambda: rows_where(watcher, "DATABASES", name=APP_DB, paused=1), message="app paused")
            assert not pause  # PgBouncer's PAUSE returns only once the session-mode client is gone
            holder.close()
            wait_for(lambda: pause, message="PAUSE to return")
        assert pause == ["PAUSE"]
        with in_thread(lambda: app_client(node).execute("SELECT 42").fetchone()) as late:
            wait_for(lambda: rows_where(watcher, "POOLS", database=APP_DB, cl_waiting=1), message="a waiter")
            assert not late  # logged in, but held at the paused gate
            assert admin.execute("RESUME app").statusmessage == "RESUME"
            wait_for(lambda: late, message="the held client to be served")
        assert late == [(42,)]
        with pytest.raises(psycopg.errors.ObjectNotInPrerequisiteState, match="not paused"):
            admin.execute("RESUME app")


def test_kill_disconnects_the_databases_clients(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(admin_users=ADMIN)
    victims = [app_client(node), app_client(node)]
    bystander = app_client(node, user="bench", database=BENCH_DB)
    for conn in [*victims, bystander]:
        conn.execute("SELECT 1")
    with console(node) as admin:
        assert admin.execute("KILL app").statusmessage == "KILL"
        for victim in victims:
            with pytest.raises(psycopg.OperationalError):
                victim.execute("SELECT 1")
        assert bystander.execute("SELECT 2").fetchone() == (2,)
        assert not rows_where(admin, "SERVERS", database=APP_DB)
        assert rows_where(admin, "DATABASES", name=APP_DB, paused=1)  # as PgBouncer: killed means paused
        admin.execute("RESUME app")
        with app_client(node) as again:
            assert again.execute("SELECT 3").fetchone() == (3,)
    bystander.close()


def test_in_transaction_pooling_pause_holds_the_next_query_of_a_connected_client(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(admin_users=ADMIN, pool_mode="transaction")
    with app_client(node) as client, console(node) as admin, console(node) as watcher:
        client.execute("SELECT 1")
        assert admin.execute("PAUSE").statusmessage == "PAUSE"  # idle between transactions: no wait
        assert show(watcher, "STATE")[1][1] == {"key": "paused", "value": "yes"}
        with in_thread(lambda: client.execute("SELECT 7").fetchone()) as query:
            (pool,) = wait_for(lambda: rows_where(watcher, "POOLS", database=APP_DB, cl_waiting=1))
            assert pool["pool_mode"] == "transaction" and not query
            admin.execute("RESUME")
            wait_for(lambda: query, message="the held query to run")
        assert query == [(7,)]


def test_in_transaction_pooling_kill_drops_idle_clients_too(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(admin_users=ADMIN, pool_mode="transaction")
    with app_client(node) as client, console(node) as admin:
        client.execute("SELECT 1")
        admin.execute("KILL app")
        with pytest.raises(psycopg.OperationalError):
            client.execute("SELECT 1")
        assert not rows_where(admin, "CLIENTS", database=APP_DB)


# --------------------------------------------------------------------------- RELOAD / SHUTDOWN


def test_reload_applies_a_changed_auth_file(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(admin_users=ADMIN)
    write_userlist(node.config_path.parent / "userlist.txt", {**USERLIST, "bench": "rotated-secret"})
    with console(node) as admin:
        assert admin.execute("RELOAD").statusmessage == "RELOAD"
    with psycopg.connect(node.dsn("bench", BENCH_DB, "rotated-secret")) as bench:
        assert bench.execute("SELECT 1").fetchone() == (1,)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(node.dsn("bench", BENCH_DB, USERLIST["bench"]))


def test_a_failed_reload_is_an_error_and_keeps_the_running_config(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(admin_users=ADMIN)
    good_config = node.config_path.read_text()
    node.config_path.write_text(good_config + "port = 'not a port'\n")
    with console(node) as admin:
        with pytest.raises(psycopg.Error, match="RELOAD failed") as excinfo:
            admin.execute("RELOAD")
        assert excinfo.value.sqlstate == "F0000"
        assert show(admin, "VERSION")[1]  # still serving


def test_shutdown_stops_the_node_cleanly(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(admin_users=ADMIN)
    result = run_psql(node, "-c", "SHUTDOWN")
    assert result.returncode == 0, result.stderr
    assert wait_for(lambda: node.process.poll() is not None, message="the node to exit")
    assert node.process.returncode == 0
