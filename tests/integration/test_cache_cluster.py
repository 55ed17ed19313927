"""Two pgbalancer nodes with result caches, joined by real Raft (pysyncobj) on loopback (issue 9).

A read after an acknowledged write never returns pre-write data, whichever node serves it:
writers and readers run concurrently on both nodes, every reader remembers the newest write
acknowledged before its read began, and the answer must never be older.
"""

from __future__ import annotations

import contextlib
import functools
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from pgbalancer.devtools import free_tcp_ports, wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from tests.integration.proxy_support import base_settings, cache_stats

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pair(
    pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[list[BalancerProcess]]:
    pg_cluster.psql(
        pg_cluster.primary,
        """
        DROP TABLE IF EXISTS cluster_counter;
        CREATE TABLE cluster_counter (id int PRIMARY KEY, v int NOT NULL);
        INSERT INTO cluster_counter SELECT g, 0 FROM generate_series(1, 4) g;
        GRANT ALL ON cluster_counter TO PUBLIC;
        """,
        dbname=APP_DB,
    )
    root = tmp_path_factory.mktemp("cache-cluster")
    raft_ports = free_tcp_ports(2)
    members = ",".join(f"127.0.0.1:{port}" for port in raft_ports)
    nodes: list[BalancerProcess] = []
    try:
        for index, raft_port in enumerate(raft_ports):
            workdir = root / f"node{index}"
            workdir.mkdir()
            settings = base_settings(pg_cluster, workdir)
            settings.update(
                pool_mode="transaction",
                auth_type="trust",
                memory_cache_enabled=True,
                watchdog_nodes=members,
                watchdog_port=raft_port,
                watchdog_secret="cache-cluster-test-secret",
                watchdog_data_dir=str(Path(workdir) / "raft"),
                # Longer than any test here: a leader change under CPU load must not turn the writes
                # into quorum refusals (25006). Hits never outlive a barrier's hit lease anyway.
                watchdog_lease=120,
            )
            nodes.append(BalancerProcess.start(workdir, settings))
        for node in nodes:
            node.wait_ready(30)
        yield nodes
    finally:
        for node in nodes:
            with contextlib.suppress(Exception):
                node.stop()


def connect(node: BalancerProcess) -> psycopg.Connection:
    return psycopg.connect(node.dsn("app_trust", APP_DB), autocommit=True)


def read(conn: psycopg.Connection, row: int = 1) -> int:
    result = conn.execute("SELECT v FROM cluster_counter WHERE id = %s", (row,)).fetchone()
    assert result is not None
    return int(result[0])


def _serves_hits(node: BalancerProcess) -> bool:
    with connect(node) as conn:
        before = int(cache_stats(node)["hits"])
        read(conn, 4)
        read(conn, 4)
        return int(cache_stats(node)["hits"]) > before


def wait_for_hits(pair: list[BalancerProcess]) -> None:
    """Until Raft has a leader and each node's barrier is fresh (connections are refused before)."""
    for node in pair:
        wait_for(
            functools.partial(_serves_hits, node),
            timeout=30,
            message=f"node {node.port} never served a cache hit",
            # 25006 (ReadOnlySqlTransaction): the node has no watchdog quorum yet and refuses it
            retry_on=(psycopg.OperationalError, psycopg.errors.ReadOnlySqlTransaction),
        )


def test_both_nodes_serve_hits_once_raft_has_a_leader(pair: list[BalancerProcess]) -> None:
    wait_for_hits(pair)


def test_a_write_on_one_node_is_never_read_stale_on_the_other(pair: list[BalancerProcess]) -> None:
    first, second = pair
    wait_for_hits(pair)
    with connect(first) as a, connect(second) as b:
        for value in range(1, 16):
            writer, reader = (a, b) if value % 2 else (b, a)
            read(reader)  # cached on the reader's node (or about to be)
            read(reader)
            started = time.monotonic()
            writer.execute("UPDATE cluster_counter SET v = %s WHERE id = 1", (value,))
            elapsed = time.monotonic() - started
            assert read(reader) == value, f"node read pre-write data after write {value}"
            # the ack waits for the invalidation at most memqcache_invalidation_timeout (5 s) plus the
            # hit lease; the rest is slack for a loaded machine
            assert elapsed < 5 + 0.25 + 5, f"write {value} was acknowledged only after {elapsed:.1f}s"
    assert cache_stats(first)["hits"] > 0 and cache_stats(second)["hits"] > 0


def test_concurrent_writers_and_readers_on_two_nodes_never_see_acknowledged_writes_undone(
    pair: list[BalancerProcess],
) -> None:
    wait_for_hits(pair)
    acknowledged = [0]
    lock = threading.Lock()
    errors: list[str] = []
    stop = threading.Event()
    hits_before = sum(cache_stats(node)["hits"] for node in pair)

    def writer(node: BalancerProcess) -> None:
        try:
            with connect(node) as conn:
                for _ in range(20):
                    with lock:  # one write at a time: the acknowledged value only grows
                        value = acknowledged[0] + 1
                        conn.execute("UPDATE cluster_counter SET v = %s WHERE id = 2", (value,))
                        acknowledged[0] = value
        except Exception as exc:
            errors.append(f"writer: {exc!r}")

    def reader(node: BalancerProcess) -> None:
        try:
            with connect(node) as conn:
                while not stop.is_set():
                    floor = acknowledged[0]
                    seen = read(conn, 2)
                    if seen < floor:
                        errors.append(f"stale read on {node.port}: {seen} after {floor} was acknowledged")
        except Exception as exc:
            errors.append(f"reader: {exc!r}")

    readers = [threading.Thread(target=reader, args=(node,)) for node in pair for _ in range(2)]
    writers = [threading.Thread(target=writer, args=(node,)) for node in pair]
    for thread in readers + writers:
        thread.start()
    for thread in writers:
        thread.join(120)
    stop.set()
    for thread in readers:
        thread.join(30)
    assert not errors, errors[:5]
    assert acknowledged[0] == 40
    assert sum(cache_stats(node)["hits"] for node in pair) > hits_before  # the cache really served
