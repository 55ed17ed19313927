"""The result cache on a node with two worker processes (issue 9): every worker serves hits from
its own store, and a write that commits through either worker is invalidated in the other one
before the writer's client sees ReadyForQuery.

Which worker serves a connection is read from the process id psycopg reports (its top bits are
the worker index); each worker's hits from GET /api/v1/status (``workers[].cache_hits``).
"""

from __future__ import annotations

import os
import re
import signal
import threading
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager

import httpx
import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from pgbalancer.proxy.peering import worker_of
from tests.integration.proxy_support import BalancerFactory, api_base_url, api_login, cache_stats
from tests.integration.test_workers import listener_pids, worker_pids

pytestmark = pytest.mark.slow

WORKERS = 2
READ = "SELECT v FROM cache_mw WHERE id = 1"


@pytest.fixture(scope="module")
def mw_tables(pg_cluster: PgClusterLike) -> None:
    pg_cluster.psql(
        pg_cluster.primary,
        """
        DROP TABLE IF EXISTS cache_mw, cache_mw_src, cache_mw_dst CASCADE;
        DROP FUNCTION IF EXISTS cache_mw_copy();
        CREATE TABLE cache_mw (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO cache_mw SELECT g, 0 FROM generate_series(1, 8) g;
        CREATE TABLE cache_mw_src (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO cache_mw_src VALUES (1, 0);
        CREATE TABLE cache_mw_dst (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO cache_mw_dst VALUES (1, 0);
        GRANT ALL ON cache_mw, cache_mw_src, cache_mw_dst TO PUBLIC;
        GRANT CREATE ON SCHEMA public TO PUBLIC;
        """,
        dbname=APP_DB,
    )


@pytest.fixture
def node(balancer_factory: BalancerFactory, mw_tables: None) -> BalancerProcess:
    started = balancer_factory(
        workers=WORKERS,
        pool_mode="transaction",
        memory_cache_enabled=True,
        memqcache_maxcache="64kB",
        auth_type="trust",
    )

    def every_worker_listens() -> bool:
        workers = worker_pids(started)
        return len(workers) == WORKERS and sorted(listener_pids(started.port)) == sorted(workers)

    wait_for(every_worker_listens, timeout=15, message="both workers listening")
    return started


def connect(node: BalancerProcess) -> psycopg.Connection:
    # prepare_threshold=None: the same request bytes every time (psycopg would switch to a named
    # statement after 5 runs, a new key whose first run is a miss).
    return psycopg.connect(
        node.dsn("app_trust", APP_DB), autocommit=True, connect_timeout=10, prepare_threshold=None
    )


def worker_index(conn: psycopg.Connection) -> int:
    index = worker_of(conn.info.backend_pid)
    assert index is not None and 0 <= index < WORKERS, conn.info.backend_pid
    return index


@contextmanager
def connections(
    node: BalancerProcess, per_worker: int = 2, limit: int = 80
) -> Iterator[list[psycopg.Connection]]:
    """Open connections (kept open, so the kernel keeps spreading them) until every worker has
    ``per_worker``; yields those, ordered so that consecutive ones alternate workers."""
    with ExitStack() as stack:
        by_worker: dict[int, list[psycopg.Connection]] = {index: [] for index in range(WORKERS)}
        for _ in range(limit):
            conn = stack.enter_context(connect(node))
            mine = by_worker[worker_index(conn)]
            if len(mine) < per_worker:
                mine.append(conn)
            if all(len(conns) == per_worker for conns in by_worker.values()):
                yield [by_worker[w][i] for i in range(per_worker) for w in range(WORKERS)]
                return
        pytest.fail(f"{limit} connections did not reach {per_worker} on every worker")


def hits_by_worker(node: BalancerProcess) -> dict[int, int]:
    token = api_login(node, "api_viewer")
    status = httpx.get(
        f"{api_base_url(node)}/api/v1/status", headers={"Authorization": f"Bearer {token}"}, timeout=10
    ).json()
    return {worker["index"]: worker["cache_hits"] for worker in status["workers"]}


def value(conn: psycopg.Connection, sql: str = READ) -> int:
    row = conn.execute(sql).fetchone()
    assert row is not None
    return int(row[0])


def test_a_write_through_one_worker_is_seen_by_the_next_read_in_every_worker(node: BalancerProcess) -> None:
    with connections(node) as conns:
        conns[0].execute("UPDATE cache_mw SET v = 0 WHERE id = 1")
        for conn in conns:
            assert value(conn) == 0
            assert value(conn) == 0  # the second one at the latest is a hit in its worker
        before = hits_by_worker(node)
        assert set(before) == set(range(WORKERS)) and all(hits > 0 for hits in before.values()), before
        for round_number in range(1, 13):
            writer = conns[round_number % len(conns)]  # alternates between the workers
            writer.execute("UPDATE cache_mw SET v = %s WHERE id = 1", (round_number,))
            for conn in conns:  # the very next read, on every connection of every worker
                assert value(conn) == round_number, (round_number, worker_index(writer), worker_index(conn))
            for conn in conns:
                assert value(conn) == round_number
        after = hits_by_worker(node)
        assert all(after[index] > before[index] for index in before), (before, after)
    stats = cache_stats(node)  # the node's figures: both workers' stores added up
    assert stats["hits"] == sum(after.values()) and stats["entries"] >= WORKERS


def test_concurrent_readers_and_writers_on_both_workers_never_read_stale(node: BalancerProcess) -> None:
    rows = (2, 3)
    acknowledged = dict.fromkeys(rows, 0)  # the newest value a write's client was told of, per row
    lock = threading.Lock()
    stop = threading.Event()
    stale: list[str] = []
    reads = [0]
    failures: list[BaseException] = []

    def write(conn: psycopg.Connection) -> None:
        while not stop.is_set():
            for row in rows:
                got = conn.execute(
                    "UPDATE cache_mw SET v = v + 1 WHERE id = %s RETURNING v", (row,)
                ).fetchone()
                assert got is not None
                with lock:
                    acknowledged[row] = max(acknowledged[row], int(got[0]))

    def read(conn: psycopg.Connection) -> None:
        while not stop.is_set():
            for row in rows:
                with lock:
                    floor = acknowledged[row]  # acknowledged before this read started
                seen = value(conn, f"SELECT v FROM cache_mw WHERE id = {row}")
                reads[0] += 1
                if seen < floor:
                    stale.append(f"worker {worker_index(conn)} read v={seen} for row {row} after v={floor}")

    def guarded(target: object, conn: psycopg.Connection) -> None:
        try:
            target(conn)  # type: ignore[operator]
        except BaseException as exc:  # reported below
            failures.append(exc)
            stop.set()

    with psycopg.connect(node.dsn("app_trust", APP_DB), autocommit=True) as setup:
        setup.execute("UPDATE cache_mw SET v = 0 WHERE id = ANY(%s)", (list(rows),))
    with connections(node, per_worker=3) as conns:
        before = hits_by_worker(node)
        writers, readers = conns[:2], conns[2:]  # one writer on each worker
        threads = [threading.Thread(target=guarded, args=(write, conn)) for conn in writers]
        threads += [threading.Thread(target=guarded, args=(read, conn)) for conn in readers]
        for thread in threads:
            thread.start()

        def enough() -> bool:
            return stop.is_set() or (min(acknowledged.values()) >= 60 and reads[0] >= 600)

        try:
            wait_for(enough, timeout=60, message="60 writes per row and 600 reads")
        finally:
            stop.set()
        for thread in threads:
            thread.join(timeout=15)
        after = hits_by_worker(node)
    assert not failures, failures
    assert not stale, stale[:5]
    assert all(after[index] > before[index] for index in before), (before, after)  # both served hits


def test_ddl_through_one_worker_reaches_what_the_others_know_of_relations(
    node: BalancerProcess, pg_cluster: PgClusterLike
) -> None:
    dst = "SELECT v FROM cache_mw_dst WHERE id = 1"
    with connections(node, per_worker=1) as (first, second):
        # the second worker learns that writes to cache_mw_src change only cache_mw_src
        second.execute("UPDATE cache_mw_src SET v = 0 WHERE id = 1")
        second.execute("UPDATE cache_mw_dst SET v = 0 WHERE id = 1")
        for conn in (first, second, first, second):
            assert value(conn, dst) == 0
        # DDL through the first worker: writes to cache_mw_src now change cache_mw_dst too
        first.execute(
            "CREATE FUNCTION cache_mw_copy() RETURNS trigger LANGUAGE plpgsql AS "
            "$$ BEGIN UPDATE cache_mw_dst SET v = NEW.v WHERE id = NEW.id; RETURN NEW; END $$"
        )
        first.execute(
            "CREATE TRIGGER cache_mw_copy AFTER UPDATE ON cache_mw_src "
            "FOR EACH ROW EXECUTE FUNCTION cache_mw_copy()"
        )
        try:
            for conn in (first, second, first, second):
                assert value(conn, dst) == 0  # cached again in both workers
            second.execute("UPDATE cache_mw_src SET v = 7 WHERE id = 1")  # the trigger writes cache_mw_dst
            assert value(first, dst) == 7
            assert value(second, dst) == 7
        finally:  # the table's owner only
            pg_cluster.psql(
                pg_cluster.primary,
                "DROP TRIGGER IF EXISTS cache_mw_copy ON cache_mw_src; "
                "DROP FUNCTION IF EXISTS cache_mw_copy()",
                dbname=APP_DB,
            )


def started_pid(node: BalancerProcess, index: int) -> int:
    found = re.findall(rf"started worker {index} \(pid (\d+)\)", node.log_text())
    assert found, f"no 'started worker {index}' line in the log"
    return int(found[-1])


def test_a_lost_worker_and_the_api_invalidate_every_worker(
    node: BalancerProcess, pg_cluster: PgClusterLike
) -> None:
    with (
        psycopg.connect(pg_cluster.primary.dsn(dbname=APP_DB), autocommit=True) as primary,
        connections(node, per_worker=1) as by_worker,
    ):
        survivor = by_worker[1]
        primary.execute("UPDATE cache_mw SET v = 100 WHERE id = 1")
        assert value(survivor) == 100 and value(survivor) == 100  # cached in worker 1
        primary.execute("UPDATE cache_mw SET v = 101 WHERE id = 1")  # bypasses pgbalancer
        assert value(survivor) == 100  # the cache cannot know
        token = api_login(node)
        response = httpx.post(
            f"{api_base_url(node)}/api/v1/cache/invalidate",
            json={},
            headers={"Authorization": f"Bearer {token}"},
            timeout=10,
        )
        assert response.status_code == 200  # served by worker 0; worker 1 drops its entries too
        assert value(survivor) == 101 and value(survivor) == 101  # cached again
        # A worker that dies may have committed a write it had not invalidated yet: the
        # supervisor invalidates everything on its behalf before replacing it.
        primary.execute("UPDATE cache_mw SET v = 102 WHERE id = 1")
        victim = started_pid(node, 0)
        os.kill(victim, signal.SIGKILL)
        wait_for(
            lambda: f"worker 0 (pid {victim}) exited unexpectedly" in node.log_text(),
            timeout=15,
            message="the supervisor reaped worker 0",
        )
        assert value(survivor) == 102
