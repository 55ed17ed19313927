"""Read/write routing through real clients: reads reach standbys, writes and transactions do not."""

from __future__ import annotations

import time

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


def _read_back(conn: psycopg.Connection, row_id: int) -> tuple[str, bool]:
    row = conn.execute("SELECT note, pg_is_in_recovery() FROM routed WHERE id = %s", (row_id,)).fetchone()
    assert row is not None, f"row {row_id} not visible: a stale read"
    return str(row[0]), bool(row[1])


def _reads_until_a_standby_answers(conn: psycopg.Connection, row_id: int, note: str, limit: float) -> bool:
    """Reads the row back until a standby serves it (True) or ``limit`` seconds pass; every read
    must see the write (read-your-writes), wherever it ran."""
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        seen, on_standby = _read_back(conn, row_id)
        assert seen == note
        if on_standby:
            return True
        time.sleep(0.05)
    return False


def _slow_health_checks(balancer_factory: BalancerFactory, *, sr_check_period: float) -> BalancerProcess:
    """Round-robin routing with health rounds 60 s apart: no probe after a commit during a test."""
    return balancer_factory(
        pool_mode="transaction",
        load_balance_mode=True,
        load_balance_algorithm="round_robin",
        health_check_period=60,
        sr_check_period=sr_check_period,
    )


@pytest.mark.slow
def test_reads_return_to_standbys_once_they_replay_past_the_commit_lsn(
    balancer_factory: BalancerFactory, routed: BalancerProcess
) -> None:
    # Health rounds every 60 s: the commit-time token (a primary probe after the commit) cannot be
    # satisfied during this test, so standbys can only qualify through the commit's own LSN
    # (pipelined after the write) and the positions read every sr_check_period.
    with connect(_slow_health_checks(balancer_factory, sr_check_period=0.2)) as conn:
        for index in range(3):
            note = f"lsn-{index}"
            row = conn.execute("INSERT INTO routed (note) VALUES (%s) RETURNING id", (note,)).fetchone()
            assert row is not None
            assert _reads_until_a_standby_answers(conn, int(row[0]), note, limit=15.0), (
                "reads never left the primary after a write"
            )
        with conn.cursor().copy("COPY routed (note) FROM STDIN") as copy:  # no probe after a COPY
            copy.write_row(("copied",))
        assert conn.execute("SELECT count(*) FROM routed WHERE note = 'copied'").fetchone() is not None


@pytest.mark.slow
def test_without_position_reads_a_writing_session_stays_on_the_primary(
    balancer_factory: BalancerFactory, routed: BalancerProcess
) -> None:
    with connect(_slow_health_checks(balancer_factory, sr_check_period=0)) as conn:
        row = conn.execute("INSERT INTO routed (note) VALUES ('pinned') RETURNING id").fetchone()
        assert row is not None
        assert not _reads_until_a_standby_answers(conn, int(row[0]), "pinned", limit=3.0)
