"""Transaction and statement pooling through real clients: sharing, hygiene, prepared statements, limits."""

from __future__ import annotations

import asyncio
import socket
import struct
import threading
import time
from collections.abc import Callable

import asyncpg
import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgClusterLike
from pgbalancer.pgwire.errors import parse_error_fields
from tests.integration.proxy_support import USERLIST, BalancerFactory


def connect(node: BalancerProcess, user: str = "app_scram", **kwargs: object) -> psycopg.Connection:
    return psycopg.connect(node.dsn(user, APP_DB, USERLIST[user]), autocommit=True, **kwargs)  # type: ignore[arg-type]


def scalar(conn: psycopg.Connection, sql: str) -> object:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return row[0]


@pytest.fixture
def one_server(balancer_factory: BalancerFactory) -> BalancerProcess:
    """Transaction pooling with a single server connection: every client shares it."""
    return balancer_factory(pool_mode="transaction", num_init_children=1, query_wait_timeout=10)


def test_two_clients_share_one_server_connection(one_server: BalancerProcess) -> None:
    with connect(one_server) as first, connect(one_server) as second:
        for _ in range(3):
            assert scalar(first, "SELECT pg_backend_pid()") == scalar(second, "SELECT pg_backend_pid()")


def test_one_clients_settings_never_leak_to_another(one_server: BalancerProcess) -> None:
    with connect(one_server) as setter, connect(one_server) as bystander:
        baseline = [scalar(bystander, f"SHOW {name}") for name in ("DateStyle", "TimeZone", "work_mem")]
        setter.execute("SET DateStyle = 'SQL, DMY'")
        setter.execute("SET TimeZone = 'Asia/Tokyo'")
        setter.execute("SET work_mem = '7MB'")
        setter.execute("SET application_name = 'setter'")
        assert scalar(setter, "SELECT pg_backend_pid()") == scalar(bystander, "SELECT pg_backend_pid()")
        assert [
            scalar(bystander, f"SHOW {name}") for name in ("DateStyle", "TimeZone", "work_mem")
        ] == baseline
        assert scalar(bystander, "SHOW application_name") != "setter"
        # ...while the client that set them keeps them, transaction after transaction.
        assert scalar(setter, "SHOW DateStyle") == "SQL, DMY"
        assert scalar(setter, "SHOW TimeZone") == "Asia/Tokyo"
        assert scalar(setter, "SHOW work_mem") == "7MB"
        assert scalar(setter, "SHOW application_name") == "setter"
        assert scalar(bystander, "SHOW work_mem") == baseline[2]


def test_prepared_statements_follow_clients_across_servers(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(pool_mode="transaction", num_init_children=2)
    clients = [connect(node) for _ in range(4)]
    try:
        for round_number in range(5):
            for index, conn in enumerate(clients):
                value = round_number * 10 + index
                assert scalar_prepared(conn, value) == value + 1
        clients[0].execute("DEALLOCATE ALL")
        assert scalar_prepared(clients[0], 1) == 2  # psycopg prepares again, transparently
    finally:
        for conn in clients:
            conn.close()


def scalar_prepared(conn: psycopg.Connection, value: int) -> object:
    row = conn.execute("SELECT %s::int + 1", (value,), prepare=True).fetchone()
    assert row is not None
    return row[0]


def test_pipelined_extended_batch(one_server: BalancerProcess) -> None:
    with connect(one_server) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS piped (id int)")
        conn.execute("TRUNCATE piped")
        with conn.pipeline(), conn.transaction():
            for index in range(200):
                conn.execute("INSERT INTO piped VALUES (%s)", (index,), prepare=index % 2 == 0)
        assert scalar(conn, "SELECT count(*) FROM piped") == 200


async def _asyncpg_statement_cache(url: str) -> list[int]:
    connections = [await asyncpg.connect(url, statement_cache_size=50) for _ in range(3)]
    results = []
    for round_number in range(4):
        for conn in connections:
            results.append(await conn.fetchval("SELECT $1::int * 2", round_number))
    for conn in connections:
        await conn.close()
    return results


def test_asyncpg_statement_cache_over_one_server(one_server: BalancerProcess) -> None:
    url = one_server.dsn_url("app_scram", APP_DB, USERLIST["app_scram"])
    assert asyncio.run(_asyncpg_statement_cache(url)) == [r * 2 for r in range(4) for _ in range(3)]


def test_client_vanishing_mid_transaction_is_rolled_back_before_reuse(
    one_server: BalancerProcess, pg_cluster: PgClusterLike
) -> None:
    pg_cluster.psql(pg_cluster.primary, "CREATE TABLE IF NOT EXISTS tx_vanish (id int)", dbname=APP_DB)
    pg_cluster.psql(pg_cluster.primary, "GRANT ALL ON tx_vanish TO PUBLIC", dbname=APP_DB)
    doomed = connect(one_server)
    doomed.execute("BEGIN")
    doomed.execute("INSERT INTO tx_vanish VALUES (1)")
    sock = socket.socket(fileno=__import__("os").dup(doomed.pgconn.socket))
    sock.shutdown(socket.SHUT_RDWR)
    sock.close()
    with connect(one_server) as next_client:
        assert scalar(next_client, "SELECT count(*) FROM tx_vanish") == 0
        assert scalar(next_client, "SELECT pg_current_xact_id_if_assigned()") is None


def raw_trust_session(node: BalancerProcess) -> socket.socket:
    sock = socket.create_connection((node.host, node.port), timeout=10)
    body = struct.pack("!I", 196608) + f"user\0app_trust\0database\0{APP_DB}\0\0".encode()
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    received = b""
    while not received.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(4096)
        assert chunk
        received += chunk
    return sock


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def read_messages_until_ready(sock: socket.socket) -> list[tuple[bytes, bytes]]:
    data = b""
    messages: list[tuple[bytes, bytes]] = []
    while not messages or messages[-1][0] != b"Z":
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
        while len(data) >= 5 and len(data) >= 1 + int.from_bytes(data[1:5], "big"):
            length = int.from_bytes(data[1:5], "big")
            messages.append((data[:1], data[5 : 1 + length]))
            data = data[1 + length :]
    return messages


@pytest.fixture
def trust_transaction_node(balancer_factory: BalancerFactory) -> BalancerProcess:
    return balancer_factory(pool_mode="transaction", auth_type="trust", num_init_children=1)


def test_execute_of_unknown_portal_is_an_error_and_the_session_goes_on(
    trust_transaction_node: BalancerProcess,
) -> None:
    with raw_trust_session(trust_transaction_node) as sock:
        sock.sendall(frame(b"E", b"no_such_portal\0\0\0\0\0") + frame(b"S", b""))
        messages = read_messages_until_ready(sock)
        assert parse_error_fields(dict(messages)[b"E"])["C"] == "34000"
        sock.sendall(frame(b"Q", b"SELECT 42\0"))
        assert any(kind == b"D" and b"42" in body for kind, body in read_messages_until_ready(sock))


def test_bind_of_a_never_prepared_statement_is_an_error(trust_transaction_node: BalancerProcess) -> None:
    with raw_trust_session(trust_transaction_node) as sock:
        sock.sendall(frame(b"B", b"\0never_prepared\0\0\0\0\0\0\0") + frame(b"S", b""))
        error = parse_error_fields(dict(read_messages_until_ready(sock))[b"E"])
        assert error["C"] == "26000"
        assert "never_prepared" in error["M"]
        sock.sendall(frame(b"Q", b"SELECT 7\0"))
        assert any(kind == b"D" for kind, _ in read_messages_until_ready(sock))


def test_ten_thousand_messages_without_sync_get_an_error(trust_transaction_node: BalancerProcess) -> None:
    with raw_trust_session(trust_transaction_node) as sock:
        parse = frame(b"P", b"\0SELECT 1\0\0\0")
        sock.sendall(parse * 10_000)
        messages = read_messages_until_ready(sock)
    errors = [parse_error_fields(body) for kind, body in messages if kind == b"E"]
    assert errors and errors[-1]["C"] == "54000"
    with psycopg.connect(trust_transaction_node.dsn("app_trust", APP_DB)) as conn:
        assert conn.execute("SELECT 'others fine'").fetchone() == ("others fine",)


def test_statement_mode_refuses_transaction_blocks(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(pool_mode="statement", num_init_children=1)
    with connect(node) as conn:
        assert scalar(conn, "SELECT 1") == 1
        with pytest.raises(psycopg.errors.FeatureNotSupported, match="not allowed in statement pooling mode"):
            conn.execute("BEGIN")
    with connect(node) as conn:
        assert scalar(conn, "SELECT 2") == 2


def test_per_user_pool_mode_override(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(pool_mode="transaction", user_pool_mode="app_md5:session", num_init_children=2)
    with connect(node, user="app_md5") as conn:
        conn.execute("CREATE TEMP TABLE only_in_session (x int)")  # survives: this user is session-pooled
        assert scalar(conn, "SELECT count(*) FROM only_in_session") == 0


def test_cancel_in_transaction_mode(one_server: BalancerProcess) -> None:
    with connect(one_server) as conn:
        timer = threading.Timer(0.5, conn.cancel)
        timer.start()
        started = time.monotonic()
        with pytest.raises(psycopg.errors.QueryCanceled):
            conn.execute("SELECT pg_sleep(20)")
        assert time.monotonic() - started < 10
        assert scalar(conn, "SELECT 'usable'") == "usable"


def test_max_client_conn_refuses_at_once(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(pool_mode="transaction", max_client_conn=2)
    with connect(node), connect(node):
        started = time.monotonic()
        with pytest.raises(psycopg.OperationalError, match=r"max_client_conn = 2"):
            connect(node)
        assert time.monotonic() - started < 5


def test_reserve_pool_serves_a_client_that_waited(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(
        pool_mode="transaction",
        num_init_children=1,
        reserve_pool_size=1,
        reserve_pool_timeout=0.5,
        query_wait_timeout=10,
    )
    with connect(node) as holder:
        holder.execute("BEGIN")  # holds the only regular server connection
        started = time.monotonic()
        with connect(node) as waiter:
            assert scalar(waiter, "SELECT 'from the reserve'") == "from the reserve"
        assert 0.4 < time.monotonic() - started < 8
        holder.execute("COMMIT")


def test_idle_transaction_timeout_frees_the_server(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory(
        pool_mode="transaction", num_init_children=1, idle_transaction_timeout=1, query_wait_timeout=10
    )
    idle = connect(node)
    idle.execute("BEGIN")
    with connect(node) as other:
        assert scalar(other, "SELECT 'served after the timeout'") == "served after the timeout"
    with pytest.raises(psycopg.errors.IdleInTransactionSessionTimeout, match="idle_transaction_timeout"):
        idle.execute("SELECT 1")
    idle.close()


def test_backend_restart_while_clients_idle_costs_at_most_one_error(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    node = balancer_factory(pool_mode="transaction", num_init_children=2)
    clients = [connect(node) for _ in range(3)]
    old_pids = {scalar(conn, "SELECT pg_backend_pid()") for conn in clients}
    pid_list = ",".join(map(str, old_pids))
    pg_cluster.psql(
        pg_cluster.primary,
        f"SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE pid IN ({pid_list})",
    )
    wait_for(
        lambda: (
            pg_cluster.psql(
                pg_cluster.primary,
                f"SELECT count(*) FROM pg_stat_activity WHERE pid IN ({pid_list})",
            ).strip()
            == "0"
        ),
        timeout=10,
        message="terminated server connections to exit",
    )
    errors = 0
    for conn in clients:
        try:
            assert scalar(conn, "SELECT 1") == 1
        except psycopg.OperationalError:
            errors += 1
    assert errors == 0  # idle clients hold no server connection; dead pooled ones are replaced
    for conn in clients:
        conn.close()


@pytest.mark.slow
def test_real_server_restart_under_idle_clients(
    balancer_factory: BalancerFactory, pg_cluster_factory: Callable[..., LocalPgCluster]
) -> None:
    cluster = pg_cluster_factory(standbys=0)
    node = balancer_factory(
        pool_mode="transaction",
        num_init_children=2,
        backend_hostname0=cluster.primary.host,
        backend_port0=cluster.primary.port,  # backend 0 is the primary; the others are not used yet
    )
    clients = [connect(node) for _ in range(3)]
    for conn in clients:
        assert scalar(conn, "SELECT 1") == 1
    cluster.stop_node(cluster.primary)
    cluster.start_node(cluster.primary)
    errors = 0
    for conn in clients:
        for _ in range(2):
            try:
                assert scalar(conn, "SELECT 2") == 2
            except psycopg.OperationalError:
                errors += 1
    assert errors <= 1
    for conn in clients:
        conn.close()


def test_a_failed_set_does_not_poison_the_session(one_server: BalancerProcess) -> None:
    with connect(one_server) as conn:
        baseline = scalar(conn, "SHOW work_mem")
        with pytest.raises(psycopg.errors.InvalidParameterValue):
            conn.execute("SET work_mem = 'lots'")
        assert scalar(conn, "SELECT 'still fine'") == "still fine"
        assert scalar(conn, "SHOW work_mem") == baseline


def test_a_set_rolled_back_with_its_transaction_is_not_replayed(one_server: BalancerProcess) -> None:
    with connect(one_server) as conn, connect(one_server) as other:
        baseline = scalar(conn, "SHOW work_mem")
        conn.execute("BEGIN")
        conn.execute("SET work_mem = '3MB'")
        conn.execute("ROLLBACK")
        scalar(other, "SELECT 1")  # the server serves someone else in between
        assert scalar(conn, "SHOW work_mem") == baseline


def test_a_trailing_comment_after_a_set_loses_nothing(one_server: BalancerProcess) -> None:
    with connect(one_server) as conn, connect(one_server) as other:
        conn.execute("SET work_mem = '7MB' -- a note")
        conn.execute("SET statement_timeout = '5s'")
        scalar(other, "SELECT 1")
        assert (scalar(conn, "SHOW work_mem"), scalar(conn, "SHOW statement_timeout")) == ("7MB", "5s")


def test_one_clients_deallocate_all_never_breaks_anothers_statements(one_server: BalancerProcess) -> None:
    with connect(one_server) as victim, connect(one_server) as vandal:
        assert scalar_prepared(victim, 1) == 2
        vandal.execute("SELECT 1; DEALLOCATE ALL")
        assert scalar_prepared(victim, 2) == 3
