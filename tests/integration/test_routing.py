"""Read/write routing through real clients: reads reach standbys, writes and transactions do not."""

from __future__ import annotations

import psycopg
import pytest

from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from tests.integration.proxy_support import USERLIST, BalancerFactory


@pytest.fixture
def routed(balancer_factory: BalancerFactory, pg_cluster: PgClusterLike) -> BalancerProcess:
    pg_cluster.psql(
        pg_cluster.primary, "CREATE TABLE IF NOT EXISTS routed (id serial, note text)", dbname=APP_DB
    )
    pg_cluster.psql(pg_cluster.primary, "GRANT ALL ON routed, routed_id_seq TO PUBLIC", dbname=APP_DB)
    return balancer_factory(
        pool_mode="transaction", load_balance_mode=True, load_balance_algorithm="round_robin"
    )


def connect(node: BalancerProcess) -> psycopg.Connection:
    return psycopg.connect(node.dsn("app_scram", APP_DB, USERLIST["app_scram"]), autocommit=True)


def where(
    conn: psycopg.Connection, sql: str = "SELECT pg_is_in_recovery(), inet_server_port()"
) -> tuple[bool, int]:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return bool(row[0]), int(row[1])


def test_autocommit_reads_reach_standbys_and_writes_the_primary(routed: BalancerProcess) -> None:
    with connect(routed) as conn:
        ports = {where(conn) for _ in range(30)}
        assert any(in_recovery for in_recovery, _ in ports), f"no read reached a standby: {ports}"
        for _ in range(5):
            row = conn.execute(
                "INSERT INTO routed (note) VALUES ('w') RETURNING pg_is_in_recovery()"
            ).fetchone()
            assert row == (False,)


def test_a_session_reads_its_own_writes_every_time(routed: BalancerProcess) -> None:
    with connect(routed) as conn:
        for index in range(40):
            row = conn.execute(
                "INSERT INTO routed (note) VALUES (%s) RETURNING id", (f"ryw-{index}",)
            ).fetchone()
            assert row is not None
            seen = conn.execute("SELECT note FROM routed WHERE id = %s", (row[0],)).fetchone()
            assert seen == (f"ryw-{index}",)


def test_a_transaction_never_spans_two_nodes(routed: BalancerProcess) -> None:
    with connect(routed) as conn:
        for _ in range(10):
            with conn.transaction():
                first = where(conn)
                assert all(where(conn) == first for _ in range(5))
                conn.execute("INSERT INTO routed (note) VALUES ('tx')")
                assert where(conn) == first
                assert first[0] is False  # a transaction that writes runs on the primary


def test_functions_with_side_effects_go_to_the_primary(routed: BalancerProcess) -> None:
    with connect(routed) as conn:
        for _ in range(10):
            row = conn.execute("SELECT nextval('routed_id_seq'), pg_is_in_recovery()").fetchone()
            assert row is not None and row[1] is False


def test_a_lazily_begun_read_transaction_moves_to_the_primary_on_its_first_write(
    routed: BalancerProcess,
) -> None:
    with connect(routed) as conn:
        for _ in range(10):
            conn.execute("BEGIN")
            conn.execute("SELECT count(*) FROM routed")
            row = conn.execute(
                "INSERT INTO routed (note) VALUES ('lazy') RETURNING pg_is_in_recovery()"
            ).fetchone()
            assert row == (False,)
            conn.execute("COMMIT")


def test_read_only_transactions_may_use_a_standby(routed: BalancerProcess) -> None:
    with connect(routed) as conn:
        seen = set()
        for _ in range(20):
            conn.execute("BEGIN READ ONLY")
            seen.add(where(conn))
            conn.execute("COMMIT")
        assert any(in_recovery for in_recovery, _ in seen), seen


# Each is unreadable to the classifier (and to PostgreSQL): it must reach the primary, whose own
# error comes back, and the session goes on. The 1 MB one is valid SQL, too long to classify.
HOSTILE: dict[str, bytes] = {
    "unterminated quote": b"SELECT 'never closed, pg_is_in_recovery()",
    "nested comment left open": b"SELECT 1 /* outer /* inner */ outer never closed",
    "dollar quote left open": b"SELECT $q$ never closed, pg_is_in_recovery()",
    "invalid utf-8": b"SELECT '\xff\xfe\xfd' AS bad",
    "1 MB statement": b"SELECT pg_is_in_recovery() /* " + b"x" * (1 << 20) + b" */",
}


@pytest.mark.slow
def test_hostile_sql_is_routed_to_the_primary_and_the_session_goes_on(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(
        pool_mode="transaction",
        load_balance_mode=True,
        load_balance_algorithm="round_robin",
        admin_users="app_trust",
    )

    def statements_per_node() -> list[int]:
        with psycopg.connect(
            node.dsn("app_trust", "pgbalancer", USERLIST["app_trust"]),
            autocommit=True,
            cursor_factory=psycopg.ClientCursor,
        ) as admin:
            rows = admin.execute("SHOW POOL_NODES").fetchall()
        return [int(row[8]) for row in rows]  # select_cnt, in node order

    with connect(node) as conn:
        assert where(conn)  # warm up: the pools exist
        for name, sql in HOSTILE.items():
            before = statements_per_node()
            try:
                row = conn.execute(sql).fetchone()
            except psycopg.errors.SyntaxError:
                pass  # PostgreSQL's own answer to the broken ones
            except psycopg.errors.CharacterNotInRepertoire:
                pass  # invalid UTF-8, refused by the server
            else:
                assert name == "1 MB statement" and row == (False,), (name, row)
            after = statements_per_node()
            grew = [b - a for a, b in zip(before, after, strict=True)]
            assert grew[0] == 1 and grew[1:] == [0] * (len(grew) - 1), (name, grew)
            assert where(conn) is not None  # the session goes on
