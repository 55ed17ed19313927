"""The result cache through real clients and real PostgreSQL (issue 9).

Byte-identical answers, parameters in the key, volatile functions and unsafe relations never
cached, writes invalidate before they are acknowledged, huge results stream past the cache,
malformed statements are not cached, and the REST API and /metrics show the counters.
"""

from __future__ import annotations

import asyncio
import socket
import struct
import subprocess

import asyncpg
import httpx
import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from tests.integration.proxy_support import BalancerFactory, api_base_url, api_login, cache_stats

ROWS = 200


@pytest.fixture(scope="module")
def cache_tables(pg_cluster: PgClusterLike) -> None:
    pg_cluster.psql(
        pg_cluster.primary,
        f"""
        DROP TABLE IF EXISTS cache_items, cache_other, cache_audit, cache_child, cache_parent CASCADE;
        DROP VIEW IF EXISTS cache_view;
        CREATE TABLE cache_items (id int PRIMARY KEY, v text NOT NULL);
        INSERT INTO cache_items SELECT g, 'v' || g FROM generate_series(1, {ROWS}) g;
        CREATE TABLE cache_other (id int PRIMARY KEY, v text);
        INSERT INTO cache_other VALUES (1, 'one');
        CREATE VIEW cache_view AS SELECT * FROM cache_items;
        CREATE TABLE cache_audit (n int);
        CREATE TABLE cache_parent (id int PRIMARY KEY);
        CREATE TABLE cache_child (id int, parent int REFERENCES cache_parent ON DELETE CASCADE);
        INSERT INTO cache_parent VALUES (1), (2);
        INSERT INTO cache_child VALUES (10, 1), (20, 2);
        GRANT ALL ON cache_items, cache_other, cache_view, cache_audit, cache_parent, cache_child TO PUBLIC;
        """,
        dbname=APP_DB,
    )


@pytest.fixture
def cached(balancer_factory: BalancerFactory, cache_tables: None) -> BalancerProcess:
    return balancer_factory(
        pool_mode="transaction", memory_cache_enabled=True, memqcache_maxcache="64kB", auth_type="trust"
    )


def connect(node: BalancerProcess, **extra: object) -> psycopg.Connection:
    return psycopg.connect(node.dsn("app_trust", APP_DB), autocommit=True, **extra)  # type: ignore[arg-type]


stats = cache_stats


def hits(node: BalancerProcess) -> int:
    return int(stats(node)["hits"])


# ---- a raw protocol client, to compare bytes exactly


def frame(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


def open_raw(host: str, port: int) -> socket.socket:
    sock = socket.create_connection((host, port), timeout=10)
    body = struct.pack("!I", 196608) + f"user\0app_trust\0database\0{APP_DB}\0\0".encode()
    sock.sendall(struct.pack("!I", len(body) + 4) + body)
    read_reply(sock)
    return sock


def read_reply(sock: socket.socket) -> bytes:
    """Every byte up to and including the next ReadyForQuery."""
    data = b""
    position = 0
    while True:
        while len(data) - position >= 5:
            length = int.from_bytes(data[position + 1 : position + 5], "big")
            if len(data) - position < 1 + length:
                break
            kind = data[position : position + 1]
            position += 1 + length
            if kind == b"Z":
                return data[:position]
        chunk = sock.recv(65536)
        assert chunk, "connection closed"
        data += chunk


def query(sock: socket.socket, sql: str) -> bytes:
    sock.sendall(frame(b"Q", sql.encode() + b"\0"))
    return read_reply(sock)


def extended(sock: socket.socket, sql: str, value: bytes, *, oid: int = 23, binary: bool = False) -> bytes:
    parse = frame(b"P", b"\0" + sql.encode() + b"\0" + struct.pack("!HI", 1, oid))
    bind = frame(
        b"B",
        b"\0\0"
        + struct.pack("!HH", 1, 0)
        + struct.pack("!HI", 1, len(value))
        + value
        + struct.pack("!HH", 1, 1 if binary else 0),
    )
    sock.sendall(parse + bind + frame(b"D", b"P\0") + frame(b"E", b"\0\0\0\0\0") + frame(b"S", b""))
    return read_reply(sock)


def test_hits_are_byte_identical_to_what_postgresql_sent(
    cached: BalancerProcess, pg_cluster: PgClusterLike
) -> None:
    primary = pg_cluster.primary
    direct = open_raw(primary.host, primary.port)
    through = open_raw(cached.host, cached.port)
    try:
        sql = "SELECT id, v, id * 2.5 AS f FROM cache_items WHERE id <= 50 ORDER BY id"
        expected = query(direct, sql)
        before = hits(cached)
        miss = query(through, sql)
        hit = query(through, sql)
        assert miss == expected and hit == expected
        ext_expected = extended(direct, "SELECT v FROM cache_items WHERE id = $1", b"7")
        assert extended(through, "SELECT v FROM cache_items WHERE id = $1", b"7") == ext_expected
        assert extended(through, "SELECT v FROM cache_items WHERE id = $1", b"7") == ext_expected
        assert hits(cached) - before == 2
    finally:
        direct.close()
        through.close()


def test_extended_protocol_parameters_and_formats_are_in_the_key(cached: BalancerProcess) -> None:
    sock = open_raw(cached.host, cached.port)
    try:
        sql = "SELECT v FROM cache_items WHERE id = $1"
        answers = {value: extended(sock, sql, value) for value in (b"1", b"2", b"3")}
        for value, answer in answers.items():
            assert extended(sock, sql, value) == answer
            assert b"v" + value in answer
        binary = extended(sock, "SELECT id FROM cache_items WHERE id = $1", b"5", binary=True)
        text = extended(sock, "SELECT id FROM cache_items WHERE id = $1", b"5")
        assert binary != text and b"\x00\x00\x00\x05" in binary
        as_bigint = extended(sock, "SELECT pg_typeof($1)::text FROM cache_items WHERE id = 1", b"5", oid=20)
        as_int = extended(sock, "SELECT pg_typeof($1)::text FROM cache_items WHERE id = 1", b"5", oid=23)
        assert b"bigint" in as_bigint and b"integer" in as_int
    finally:
        sock.close()


def test_a_settings_change_after_a_cached_read_never_gets_the_old_answer(
    cached: BalancerProcess, pg_cluster: PgClusterLike
) -> None:
    """The same bytes under another search_path are another statement: hits follow SET."""
    pg_cluster.psql(
        pg_cluster.primary,
        """
        DROP SCHEMA IF EXISTS cache_sp1, cache_sp2 CASCADE;
        CREATE SCHEMA cache_sp1; CREATE SCHEMA cache_sp2;
        CREATE TABLE cache_sp1.cache_sp (v text); INSERT INTO cache_sp1.cache_sp VALUES ('one');
        CREATE TABLE cache_sp2.cache_sp (v text); INSERT INTO cache_sp2.cache_sp VALUES ('two');
        GRANT USAGE ON SCHEMA cache_sp1, cache_sp2 TO PUBLIC;
        GRANT SELECT ON cache_sp1.cache_sp, cache_sp2.cache_sp TO PUBLIC;
        """,
        dbname=APP_DB,
    )
    sock = open_raw(cached.host, cached.port)
    other = open_raw(cached.host, cached.port)
    try:
        read = "SELECT v FROM cache_sp"
        query(sock, "SET search_path TO cache_sp1")
        assert b"one" in query(sock, read)
        before = hits(cached)
        assert b"one" in query(sock, read)
        assert hits(cached) == before + 1  # cached under cache_sp1
        query(sock, "SET search_path TO cache_sp2")
        for _ in range(3):
            answer = query(sock, read)
            assert b"two" in answer and b"one" not in answer
        query(other, "SET search_path TO cache_sp1")  # another client with the first settings
        assert b"one" in query(other, read)
        query(sock, "RESET search_path")
        query(sock, "SET search_path TO cache_sp1")
        assert b"one" in query(sock, read)
    finally:
        sock.close()
        other.close()


def test_a_redefined_prepared_statement_never_gets_the_old_answer(cached: BalancerProcess) -> None:
    """Byte-identical Bind/Execute requests naming a statement that now means something else."""
    sock = open_raw(cached.host, cached.port)

    def define(sql: str) -> None:
        sock.sendall(frame(b"P", b"s_cache\0" + sql.encode() + b"\0\0\0") + frame(b"S", b""))
        assert read_reply(sock).startswith(frame(b"1", b""))

    execute = (
        frame(b"B", b"\0s_cache\0" + struct.pack("!HHH", 0, 0, 0))
        + frame(b"D", b"P\0")
        + frame(b"E", b"\0\0\0\0\0")
        + frame(b"S", b"")
    )

    def run() -> bytes:
        sock.sendall(execute)
        return read_reply(sock)

    try:
        define("SELECT v FROM cache_items WHERE id = 31")
        first = run()
        before = hits(cached)
        assert run() == first and b"v31" in first
        assert hits(cached) == before + 1
        sock.sendall(frame(b"C", b"Ss_cache\0") + frame(b"S", b""))
        read_reply(sock)
        define("SELECT v FROM cache_items WHERE id = 32")
        for _ in range(2):
            answer = run()
            assert b"v32" in answer and b"v31" not in answer
    finally:
        sock.close()


def test_psycopg_and_asyncpg_get_cached_answers_with_their_parameters(cached: BalancerProcess) -> None:
    before = hits(cached)
    with connect(cached) as conn:
        for _ in range(3):
            for key in (11, 12):
                row = conn.execute("SELECT v FROM cache_items WHERE id = %s", (key,)).fetchone()
                assert row == (f"v{key}",)
    assert hits(cached) - before >= 3  # the 6th run is psycopg preparing a named statement: a new shape

    async def with_asyncpg() -> list[str]:
        conn = await asyncpg.connect(cached.dsn_url("app_trust", APP_DB), statement_cache_size=100)
        try:
            return [
                await conn.fetchval("SELECT v FROM cache_items WHERE id = $1", i) for i in (21, 22, 21, 22)
            ]
        finally:
            await conn.close()

    before = hits(cached)
    assert asyncio.run(with_asyncpg()) == ["v21", "v22", "v21", "v22"]
    assert hits(cached) - before >= 2


def test_volatile_functions_and_unsafe_relations_are_never_cached(cached: BalancerProcess) -> None:
    with connect(cached) as conn:
        before = stats(cached)
        for sql in (
            "SELECT now(), v FROM cache_items WHERE id = 1",
            "SELECT random() FROM cache_items WHERE id = 1",
            "SELECT current_user, v FROM cache_items WHERE id = 1",
            "SELECT clock_timestamp()",
            "SELECT count(*) FROM pg_class",
            "SELECT v FROM cache_view WHERE id = 1",  # a view: its base table is not named
            "/* pgbalancer: nocache */ SELECT v FROM cache_items WHERE id = 1",
        ):
            first = conn.execute(sql).fetchall()
            conn.execute(sql).fetchall()
            assert first
        values = {conn.execute("SELECT random()").fetchone() for _ in range(5)}
        assert len(values) == 5
        assert stats(cached)["hits"] == before["hits"]
        assert stats(cached)["entries"] == before["entries"]


def test_a_write_invalidates_before_it_is_acknowledged(cached: BalancerProcess) -> None:
    with connect(cached) as reader, connect(cached) as writer:
        read = "SELECT v FROM cache_items WHERE id = 100"
        reader.execute(read).fetchone()
        assert reader.execute(read).fetchone() == ("v100",)  # cached now
        for round_number in range(20):
            writer.execute("UPDATE cache_items SET v = %s WHERE id = 100", (f"w{round_number}",))
            assert reader.execute(read).fetchone() == (f"w{round_number}",)
            assert reader.execute(read).fetchone() == (f"w{round_number}",)
        # in an explicit transaction: invalidated at COMMIT
        with writer.transaction():
            writer.execute("UPDATE cache_items SET v = 'in-tx' WHERE id = 100")
        assert reader.execute(read).fetchone() == ("in-tx",)
        # a foreign key ON DELETE CASCADE changes the child table too
        child = "SELECT count(*) FROM cache_child"
        assert reader.execute(child).fetchone() == (2,)
        reader.execute(child).fetchone()
        writer.execute("DELETE FROM cache_parent WHERE id = 1")
        assert reader.execute(child).fetchone() == (1,)
        writer.execute("UPDATE cache_items SET v = 'v100' WHERE id = 100")


def test_ddl_on_unknown_targets_and_the_api_drop_entries(cached: BalancerProcess) -> None:
    with connect(cached) as conn:
        conn.execute("SELECT v FROM cache_other WHERE id = 1").fetchone()
        conn.execute("SELECT v FROM cache_items WHERE id = 2").fetchone()
        assert int(stats(cached)["entries"]) >= 2
        conn.execute("GRANT SELECT ON cache_other TO PUBLIC")
        assert stats(cached)["entries"] == 0
        conn.execute("SELECT v FROM cache_other WHERE id = 1").fetchone()
        conn.execute("SELECT v FROM cache_items WHERE id = 2").fetchone()
    token = api_login(cached)
    url = f"{api_base_url(cached)}/api/v1/cache/invalidate"
    headers = {"Authorization": f"Bearer {token}"}
    response = httpx.post(url, json={"table": "cache_other"}, headers=headers, timeout=10)
    assert response.status_code == 200
    assert response.json() == {"invalidated_entries": 1, "tables": ["cache_other"]}
    response = httpx.post(url, json={}, headers=headers, timeout=10)
    assert response.json()["invalidated_entries"] >= 1 and response.json()["tables"] is None
    viewer = api_login(cached, "api_viewer")
    denied = httpx.post(url, json={}, headers={"Authorization": f"Bearer {viewer}"}, timeout=10)
    assert denied.status_code == 403
    bad = httpx.post(url, json={"table": 5}, headers=headers, timeout=10)
    assert bad.status_code == 400 and "error" in bad.json()
    metrics = httpx.get(f"{api_base_url(cached)}/metrics", timeout=10).text
    assert "pgbalancer_cache_hits_total" in metrics and "pgbalancer_cache_bytes" in metrics


def test_huge_results_stream_past_the_cache(cached: BalancerProcess) -> None:
    sql = "SELECT g, repeat('x', 200) FROM generate_series(1, 20000) g"  # ~4.6 MB, maxcache 64kB
    with connect(cached) as conn:
        before = stats(cached)
        assert len(conn.execute(sql).fetchall()) == 20000
        assert len(conn.execute(sql).fetchall()) == 20000
        after = stats(cached)
        assert after["hits"] == before["hits"]
        assert int(after["bytes"]) <= int(after["limit_bytes"])


def test_malformed_statements_are_not_cached_and_the_session_goes_on(cached: BalancerProcess) -> None:
    with connect(cached) as conn:
        before = stats(cached)["entries"]
        for sql in ("SELEC 1", "SELECT * FROM no_such_table_here", "SELECT 1/0 FROM cache_items"):
            for _ in range(2):
                with pytest.raises(psycopg.Error):
                    conn.execute(sql)
        assert stats(cached)["entries"] == before
        assert conn.execute("SELECT v FROM cache_items WHERE id = 3").fetchone() == ("v3",)


def test_psql_gets_the_same_answers(cached: BalancerProcess) -> None:
    command = [
        "psql",
        "-X",
        "-A",
        "-t",
        "-h",
        cached.host,
        "-p",
        str(cached.port),
        "-U",
        "app_trust",
        "-d",
        APP_DB,
        "-c",
        "SELECT v FROM cache_items WHERE id = 9",
    ]
    outputs = {subprocess.run(command, capture_output=True, text=True, check=True).stdout for _ in range(3)}
    assert outputs == {"v9\n"}


def test_a_write_invalidates_once_though_the_commit_lsn_probe_follows_it(
    balancer_factory: BalancerFactory, cache_tables: None
) -> None:
    # With reads balanced to standbys, read_your_writes pipelines SELECT pg_current_wal_insert_lsn()
    # after a write; its reply is the proxy's own, so the write's ReadyForQuery ends the write: a second
    # invalidation when the probe's reply follows would drop (or refuse) what prefetch and other
    # sessions cached in between.
    cached = balancer_factory(
        pool_mode="transaction", memory_cache_enabled=True, auth_type="trust", load_balance_mode=True
    )

    def invalidation_events() -> float:
        text = httpx.get(f"{api_base_url(cached)}/metrics", timeout=10).text
        return float(
            next(
                line.split()[-1]
                for line in text.splitlines()
                if line.startswith("pgbalancer_cache_invalidation_events_total")
            )
        )

    with connect(cached) as writer:
        writer.execute("UPDATE cache_items SET v = 'w0' WHERE id = 151")  # the session has written now
        before = invalidation_events()
        for value in range(1, 11):
            writer.execute("UPDATE cache_items SET v = %s WHERE id = 151", (f"w{value}",))
        assert invalidation_events() == before + 10


def test_prefetch_warms_the_hottest_results_after_a_write(
    balancer_factory: BalancerFactory, cache_tables: None
) -> None:
    node = balancer_factory(
        pool_mode="transaction", memory_cache_enabled=True, memqcache_prefetch=True, auth_type="trust"
    )
    metrics_url = f"{api_base_url(node)}/metrics"

    def prefetched() -> float:
        text = httpx.get(metrics_url, timeout=10).text
        line = next(
            line for line in text.splitlines() if line.startswith("pgbalancer_cache_prefetched_total")
        )
        return float(line.split()[-1])

    read = "SELECT v FROM cache_items WHERE id = 150"
    with connect(node) as reader, connect(node) as writer:
        for _ in range(4):  # cached, then hit three times: the hottest entry of cache_items
            assert reader.execute(read).fetchone() == ("v150",)
        writer.execute("UPDATE cache_items SET v = 'warm' WHERE id = 150")
        wait_for(lambda: prefetched() >= 1, timeout=10, message="nothing was prefetched")
        before = hits(node)
        assert reader.execute(read).fetchone() == ("warm",)  # the prefetched answer, post-write
        assert hits(node) == before + 1
        writer.execute("UPDATE cache_items SET v = 'v150' WHERE id = 150")
