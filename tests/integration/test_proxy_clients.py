"""Real clients through pgbalancer in session and transaction pooling: psycopg, psql, asyncpg and pgbench.

Covers simple and extended protocol, prepared statements, COPY in and out, large results,
NOTICE and NOTIFY, and errors in the middle of a transaction.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import psycopg
import pytest

from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, BENCH_DB, PgClusterLike
from tests.integration.proxy_support import USERLIST

PG_BIN = Path("/usr/lib/postgresql/15/bin")


def connect(
    pooled_balancer: BalancerProcess, user: str = "app_scram", **kwargs: object
) -> psycopg.Connection:
    return psycopg.connect(pooled_balancer.dsn(user, APP_DB, USERLIST[user]), autocommit=True, **kwargs)  # type: ignore[arg-type]


def test_simple_and_extended_queries(pooled_balancer: BalancerProcess) -> None:
    with connect(pooled_balancer) as conn:
        assert conn.execute("SELECT 1 + 1").fetchone() == (2,)
        assert conn.execute("SELECT %s::int * 3, %s::text", (7, "x")).fetchone() == (21, "x")
        assert conn.execute("SELECT %s::int", (5,), prepare=True).fetchone() == (5,)
        assert conn.execute("SELECT %s::int", (6,), prepare=True).fetchone() == (6,)


def test_large_result_arrives_whole(pooled_balancer: BalancerProcess) -> None:
    with connect(pooled_balancer) as conn:
        rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 200000) g").fetchall()
    assert len(rows) == 200000
    assert rows[-1] == (200000, "x" * 100)


def test_copy_in_and_out(pooled_balancer: BalancerProcess) -> None:
    # A temp table lives as long as its transaction under transaction pooling (as with PgBouncer).
    with connect(pooled_balancer) as conn, conn.transaction():
        conn.execute("CREATE TEMP TABLE copied (id int, name text)")
        with conn.cursor().copy("COPY copied FROM STDIN") as copy:
            for index in range(5000):
                copy.write_row((index, f"name-{index}"))
        assert conn.execute("SELECT count(*), max(id) FROM copied").fetchone() == (5000, 4999)
        out = io.BytesIO()
        with conn.cursor().copy("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                out.write(block)
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 5000
    assert lines[1] == "1\tname-1"


def test_notice_reaches_the_client(pooled_balancer: BalancerProcess) -> None:
    notices: list[str] = []
    with connect(pooled_balancer) as conn:
        conn.add_notice_handler(lambda diag: notices.append(diag.message_primary or ""))
        conn.execute("DO $$ BEGIN RAISE NOTICE 'hello from the server'; END $$")
    assert notices == ["hello from the server"]


def test_notify_reaches_a_listening_client(
    balancer: BalancerProcess, pooled_balancer: BalancerProcess
) -> None:
    # LISTEN needs its server connection between transactions: session pooling only.
    with connect(balancer) as listener, connect(pooled_balancer) as notifier:
        listener.execute("LISTEN pgb_events")
        notifier.execute("NOTIFY pgb_events, 'payload-1'")
        received = next(listener.notifies(timeout=10, stop_after=1))
    assert (received.channel, received.payload) == ("pgb_events", "payload-1")


def test_error_mid_transaction_then_rollback(pooled_balancer: BalancerProcess) -> None:
    with connect(pooled_balancer) as conn:
        conn.execute("BEGIN")
        with pytest.raises(psycopg.errors.DivisionByZero):
            conn.execute("SELECT 1 / 0")
        with pytest.raises(psycopg.errors.InFailedSqlTransaction):
            conn.execute("SELECT 1")
        conn.execute("ROLLBACK")
        assert conn.execute("SELECT 'alive'").fetchone() == ("alive",)


def test_md5_backend_user(pooled_balancer: BalancerProcess) -> None:
    with connect(pooled_balancer, user="app_md5") as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)


def test_startup_settings_are_applied(pooled_balancer: BalancerProcess) -> None:
    dsn = pooled_balancer.dsn(
        "app_scram",
        APP_DB,
        USERLIST["app_scram"],
        application_name="pgb-test",
        options="'-c search_path=pg_catalog -c work_mem=5MB'",
    )
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute(
            "SELECT current_setting('application_name'), current_setting('search_path'),"
            " current_setting('work_mem')"
        ).fetchone()
    assert row == ("pgb-test", "pg_catalog", "5MB")


def test_psql_script_with_copy_notice_and_error(pooled_balancer: BalancerProcess, tmp_path: Path) -> None:
    data = tmp_path / "rows.csv"
    data.write_text("".join(f"{i},row {i}\n" for i in range(100)))
    script = textwrap.dedent(f"""
        BEGIN;
        CREATE TEMP TABLE t (id int, label text);
        \\copy t FROM '{data}' WITH (FORMAT csv)
        SELECT count(*) AS n FROM t;
        DO $$ BEGIN RAISE NOTICE 'psql notice'; END $$;
        SAVEPOINT before_error; SELECT no_such_column FROM t; ROLLBACK TO before_error;
        \\copy (SELECT id FROM t WHERE id < 3 ORDER BY id) TO STDOUT
        COMMIT;
        NOTIFY ch, 'to myself';
    """)
    env = {**os.environ, "PGPASSWORD": USERLIST["app_scram"]}
    result = subprocess.run(
        [
            str(PG_BIN / "psql"),
            "-X",
            "-h",
            pooled_balancer.host,
            "-p",
            str(pooled_balancer.port),
            "-U",
            "app_scram",
            APP_DB,
        ],
        input=script,
        capture_output=True,
        text=True,
        env=env,
        timeout=60,
    )
    assert "100" in result.stdout
    assert "NOTICE:  psql notice" in result.stderr
    assert 'column "no_such_column" does not exist' in result.stderr
    assert "ROLLBACK\n0\n1\n2\nCOMMIT" in result.stdout


ASYNCPG_SCRIPT = """
import asyncio, sys, asyncpg

async def main(dsn):
    conn = await asyncpg.connect(dsn, statement_cache_size=100)
    assert await conn.fetchval("SELECT $1::int + 1", 41) == 42
    statement = await conn.prepare("SELECT $1::text || '!'")
    assert [await statement.fetchval(str(i)) for i in range(3)] == ["0!", "1!", "2!"]
    async with conn.transaction():  # temp tables live as long as the transaction when pooled
        await conn.execute("CREATE TEMP TABLE r (id int, v text)")
        await conn.copy_records_to_table("r", records=[(i, str(i)) for i in range(1000)])
        await conn.executemany("INSERT INTO r VALUES ($1, $2)", [(i, "m") for i in range(100)])
        assert await conn.fetchval("SELECT count(*) FROM r") == 1100
    for _ in range(3):  # the statement cache survives landing on other server connections
        assert await conn.fetchval("SELECT $1::int * 2", 21) == 42
    rows = await conn.fetch("SELECT g FROM generate_series(1, 50000) g")
    assert len(rows) == 50000
    await conn.close()
    print("asyncpg ok")

asyncio.run(main(sys.argv[1]))
"""


def test_asyncpg(pooled_balancer: BalancerProcess) -> None:
    dsn = f"postgresql://app_scram:{USERLIST['app_scram']}@{pooled_balancer.host}:{pooled_balancer.port}/{APP_DB}"
    result = subprocess.run(
        [sys.executable, "-c", ASYNCPG_SCRIPT, dsn], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "asyncpg ok"


@pytest.fixture(scope="module")
def pgbench_tables(pg_cluster: PgClusterLike) -> None:
    primary = pg_cluster.primary
    subprocess.run(
        [
            str(PG_BIN / "pgbench"),
            "-i",
            "-q",
            "-s",
            "1",
            "-h",
            primary.host,
            "-p",
            str(primary.port),
            "-U",
            "bench",
            BENCH_DB,
        ],
        check=True,
        capture_output=True,
        timeout=120,
    )


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["simple", "extended", "prepared"])
@pytest.mark.parametrize("select_only", [True, False], ids=["select-only", "tpcb"])
def test_pgbench(
    pooled_balancer: BalancerProcess, pgbench_tables: None, mode: str, select_only: bool
) -> None:
    command = [
        str(PG_BIN / "pgbench"),
        "-n",
        "-M",
        mode,
        "-c",
        "4",
        "-j",
        "2",
        "-t",
        "200",
        "-h",
        pooled_balancer.host,
        "-p",
        str(pooled_balancer.port),
        "-U",
        "bench",
        BENCH_DB,
    ]
    if select_only:
        command.append("-S")
    env = {**os.environ, "PGPASSWORD": USERLIST["bench"]}
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stderr
    assert "number of transactions actually processed: 800/800" in result.stdout
    assert "number of failed transactions: 0" in result.stdout
