"""Session pooling behaviour: reuse with reset, dirty disconnects, limits, cancel, backend outages."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import threading
import time

import httpx
import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from tests.integration.proxy_support import API_USERS, USERLIST, BalancerFactory, api_base_url


def waiting_clients(node: BalancerProcess) -> int:
    """Clients queued for a server connection in any pool of ``node`` (GET /api/v1/pools)."""
    viewer = ("api_viewer", API_USERS["api_viewer"][0])
    response = httpx.get(f"{api_base_url(node)}/api/v1/pools", auth=viewer, timeout=10)
    response.raise_for_status()
    return sum(int(pool["waiting"]) for pool in response.json()["pools"])


def connect(node: BalancerProcess, user: str = "app_scram", **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(node.dsn(user, APP_DB, USERLIST[user]), autocommit=True, **kwargs)  # type: ignore[arg-type]


def backend_pid(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT pg_backend_pid()").fetchone()
    assert row is not None
    return int(row[0])


def abort_connection(conn: psycopg.Connection) -> None:
    """Drop the TCP connection without a Terminate message, as a crashed client would."""
    duplicate = socket.socket(fileno=os.dup(conn.pgconn.socket))
    duplicate.shutdown(socket.SHUT_RDWR)
    duplicate.close()
    with contextlib.suppress(psycopg.Error):
        conn.close()


def test_server_connection_is_reused_and_reset(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(num_init_children=1)
    with connect(node) as first:
        first_pid = backend_pid(first)
        first.execute("SET work_mem = '7MB'")
        first.execute("CREATE TEMP TABLE leftover (x int)")
        first.execute("PREPARE leaked AS SELECT 1")
    with connect(node) as second:
        assert backend_pid(second) == first_pid
        assert second.execute("SHOW work_mem").fetchone() != ("7MB",)
        assert second.execute("SELECT to_regclass('pg_temp.leftover')").fetchone() == (None,)
        assert second.execute("SELECT count(*) FROM pg_prepared_statements").fetchone() == (0,)


def test_client_that_vanishes_mid_transaction_is_rolled_back(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    node = balancer_factory(num_init_children=1)
    pg_cluster.psql(pg_cluster.primary, "CREATE TABLE IF NOT EXISTS vanish (id int)", dbname=APP_DB)
    pg_cluster.psql(pg_cluster.primary, "GRANT ALL ON vanish TO PUBLIC", dbname=APP_DB)
    doomed = connect(node)
    server_pid = backend_pid(doomed)
    doomed.execute("BEGIN")
    doomed.execute("INSERT INTO vanish VALUES (1)")
    abort_connection(doomed)
    with connect(node) as next_client:
        assert backend_pid(next_client) == server_pid  # rolled back and reused, not leaked
        assert next_client.execute("SELECT count(*) FROM vanish").fetchone() == (0,)
        assert next_client.execute("SELECT pg_current_xact_id_if_assigned()").fetchone() == (None,)
        next_client.execute("BEGIN")
        next_client.execute("INSERT INTO vanish VALUES (2)")
        next_client.execute("COMMIT")
    assert (
        pg_cluster.psql(pg_cluster.primary, "SELECT array_agg(id) FROM vanish", dbname=APP_DB).strip()
        == "{2}"
    )


def test_client_that_vanishes_mid_query_does_not_leak_its_server(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    node = balancer_factory(num_init_children=1)
    doomed = connect(node)
    doomed_pid = backend_pid(doomed)
    doomed.pgconn.send_query(b"SELECT pg_sleep(0.5)")
    abort_connection(doomed)
    with connect(node) as next_client:
        assert backend_pid(next_client) != doomed_pid
        assert next_client.execute("SELECT 1").fetchone() == (1,)


def test_child_max_connections_retires_server_connections(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(num_init_children=1, child_max_connections=1)
    pids = []
    for _ in range(3):
        with connect(node) as conn:
            pids.append(backend_pid(conn))
    assert len(set(pids)) == 3


def test_idle_limits_cut_silent_session_clients_and_hand_their_server_on(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(
        num_init_children=1, client_idle_timeout=1, idle_transaction_timeout=1, query_wait_timeout=20
    )
    first = connect(node)
    first.execute("CREATE TABLE IF NOT EXISTS idle_probe (note text)")
    # A statement that outlasts the limit is not idleness: the server owed the reply meanwhile.
    assert first.execute("SELECT 'done' FROM pg_sleep(1.5)").fetchone() == ("done",)
    first_pid = backend_pid(first)
    first.execute("BEGIN")
    first.execute("INSERT INTO idle_probe VALUES ('rolled back with the idle transaction')")
    # The pool's one server is first's: this connect waits until idle_transaction_timeout cuts it.
    second = connect(node)
    assert backend_pid(second) == first_pid  # rolled back and reused, not closed
    assert second.execute("SELECT count(*) FROM idle_probe").fetchone() == (0,)
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle_transaction_timeout"):
        first.execute("SELECT 1")
    # Outside a transaction, client_idle_timeout: second is cut once silent for a second.
    with connect(node) as third:
        assert backend_pid(third) == first_pid
    with pytest.raises(psycopg.errors.IdleSessionTimeout, match="client_idle_timeout"):
        second.execute("SELECT 1")
    first.close()
    second.close()


def test_pool_full_gives_53300_after_query_wait_timeout(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(num_init_children=2, query_wait_timeout=1)
    with connect(node), connect(node):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError) as excinfo:
            connect(node)
        waited = time.monotonic() - started
    assert "no server connection free in pool app/app_scram@backend0" in str(excinfo.value)
    assert "raise num_init_children" in str(excinfo.value)
    assert 0.8 < waited < 5


def test_waiting_client_gets_the_connection_when_it_frees(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(num_init_children=1, query_wait_timeout=20)
    holder = connect(node)
    result: list[object] = []

    def wait_for_connection() -> None:
        with connect(node) as conn:
            result.append(conn.execute("SELECT 'got it'").fetchone())

    waiter = threading.Thread(target=wait_for_connection)
    waiter.start()
    # the waiter queues for the pool's one server connection before the holder lets it go
    wait_for(lambda: waiting_clients(node) == 1, timeout=15, message="the second client waiting in the pool")
    holder.close()
    waiter.join(15)
    assert result == [("got it",)]


def test_max_pool_caps_distinct_pools_per_backend(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(max_pool=1)
    with connect(node, user="app_scram"):
        with pytest.raises(psycopg.OperationalError) as excinfo:
            connect(node, user="app_md5")
        assert "raise max_pool" in str(excinfo.value)
    with connect(node, user="app_md5") as conn:  # the idle pool is evicted once unused
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)


def test_cancel_reaches_the_running_query(balancer: BalancerProcess) -> None:
    with connect(balancer) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)


def server_connections_of(node: BalancerProcess, backend_port: int) -> int:
    """TCP connections the pgbalancer process holds to the backend port (from ``ss``)."""
    listing = subprocess.run(
        ["ss", "-Htnp", "state", "established", "dst", f"127.0.0.1:{backend_port}"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return sum(f"pid={node.process.pid}," in line for line in listing.splitlines())


def test_total_server_connections_stay_within_the_pool_size(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    # sr_check_period = 0: the WAL position reader keeps a connection of its own (as
    # health_check_user, outside the pool), which ss would count with the pool's.
    node = balancer_factory(num_init_children=3, query_wait_timeout=30, sr_check_period=0)
    errors: list[BaseException] = []

    def client() -> None:
        try:
            with connect(node) as conn:
                conn.execute("SELECT pg_sleep(0.2)")
        except BaseException as exc:  # collected and asserted below
            errors.append(exc)

    threads = [threading.Thread(target=client) for _ in range(9)]
    for thread in threads:
        thread.start()
    peak = 0
    while any(t.is_alive() for t in threads):
        peak = max(peak, server_connections_of(node, pg_cluster.primary.port))
    for thread in threads:
        thread.join()
    assert errors == []
    assert 1 <= peak <= 3


def test_server_killed_under_an_idle_pooled_connection_is_replaced(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    node = balancer_factory(num_init_children=1)
    with connect(node) as conn:
        old_pid = backend_pid(conn)
    pg_cluster.psql(pg_cluster.primary, f"SELECT pg_terminate_backend({old_pid})")
    wait_for(
        lambda: (
            pg_cluster.psql(
                pg_cluster.primary, f"SELECT count(*) FROM pg_stat_activity WHERE pid = {old_pid}"
            ).strip()
            == "0"
        ),
        timeout=10,
        message="terminated backend to exit",
    )
    with connect(node) as conn:
        assert backend_pid(conn) != old_pid
        assert conn.execute("SELECT 1").fetchone() == (1,)
