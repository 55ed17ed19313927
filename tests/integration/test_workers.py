"""Multi-core workers against a real node: spread, cancel across workers, reload, stop, restart.

The node runs with ``workers = 2``. Which worker serves a connection is read from the process id
psycopg reports (``conn.info.backend_pid``): its top bits are the worker index.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess, pgbalancer_command, render_config
from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from pgbalancer.proxy.peering import peer_socket_path, worker_of
from tests.integration.proxy_support import USERLIST, BalancerFactory, base_settings, write_userlist

pytestmark = pytest.mark.slow

WORKERS = 2
ALL_WORKERS = set(range(WORKERS))
USER = "app_scram"


def start_node(balancer_factory: BalancerFactory, **overrides: str | int) -> BalancerProcess:
    node = balancer_factory(workers=WORKERS, **overrides)  # returns once the first worker listens

    def every_worker_listens() -> bool:
        workers = worker_pids(node)
        return len(workers) == WORKERS and sorted(listener_pids(node.port)) == sorted(workers)

    wait_for(every_worker_listens, timeout=10, message="both workers listening")
    return node


def connect(node: BalancerProcess, user: str = USER, password: str | None = None) -> psycopg.Connection:
    secret = USERLIST[user] if password is None else password
    return psycopg.connect(node.dsn(user, APP_DB, secret), autocommit=True, connect_timeout=10)


def worker_index(conn: psycopg.Connection) -> int:
    index = worker_of(conn.info.backend_pid)
    assert index is not None and index in ALL_WORKERS, conn.info.backend_pid
    return index


def worker_pids(node: BalancerProcess) -> set[int]:
    result = subprocess.run(["pgrep", "-P", str(node.process.pid)], capture_output=True, text=True)
    return {int(pid) for pid in result.stdout.split()}


def processes_running(config_path: Path) -> set[int]:
    result = subprocess.run(["pgrep", "-f", str(config_path)], capture_output=True, text=True)
    return {int(pid) for pid in result.stdout.split()}


def listener_pids(port: int) -> list[int]:
    """Pids owning a listening socket on 127.0.0.1:port, one entry per socket (from ``ss``)."""
    listing = subprocess.run(
        ["ss", "-Htlnp", "src", f"127.0.0.1:{port}"], capture_output=True, text=True, check=True
    ).stdout
    return [int(pid) for line in listing.splitlines() for pid in re.findall(r"pid=(\d+),", line)]


@contextmanager
def connections_on_every_worker(
    node: BalancerProcess, user: str = USER, password: str | None = None, limit: int = 60
) -> Iterator[dict[int, psycopg.Connection]]:
    """Open connections (kept open, so the kernel keeps spreading them) until each worker has one."""
    with ExitStack() as stack:
        by_worker: dict[int, psycopg.Connection] = {}
        for _ in range(limit):
            conn = stack.enter_context(connect(node, user, password))
            by_worker.setdefault(worker_index(conn), conn)
            if set(by_worker) == ALL_WORKERS:
                yield by_worker
                return
        pytest.fail(f"{limit} connections all landed on workers {sorted(by_worker)}")


def test_connections_spread_over_both_workers_sharing_the_port(balancer_factory: BalancerFactory) -> None:
    node = start_node(balancer_factory)  # it also waits for one SO_REUSEPORT listener per worker
    assert len(listener_pids(node.port)) == WORKERS
    with connections_on_every_worker(node) as by_worker:
        for index, conn in by_worker.items():
            assert conn.execute("SELECT current_user").fetchone() == (USER,), index
    assert node.process.poll() is None


def cancel_sleeping_query(conn: psycopg.Connection, primary_dsn: str, tag: str) -> float:
    """Run pg_sleep(20) on ``conn``, cancel it once the primary shows it running; seconds it took."""
    outcome: list[BaseException | None] = []

    def run_query() -> None:
        try:
            conn.execute(f"SELECT pg_sleep(20) /* {tag} */")
            outcome.append(None)
        except BaseException as exc:  # asserted by the caller
            outcome.append(exc)

    started = time.monotonic()
    runner = threading.Thread(target=run_query)
    runner.start()
    with psycopg.connect(primary_dsn, autocommit=True) as observer:

        def query_is_running() -> bool:
            row = observer.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE state = 'active' AND query LIKE %s",
                (f"%{tag}%",),
            ).fetchone()
            return row == (1,)

        wait_for(query_is_running, timeout=10, message=f"query {tag} running on the primary")
    conn.cancel()
    runner.join(timeout=15)
    assert not runner.is_alive(), "the cancel did not reach the query"
    assert isinstance(outcome[0], psycopg.errors.QueryCanceled), outcome
    return time.monotonic() - started


def peer_cancels_logged(node: BalancerProcess) -> int:
    return node.log_text().count("came from a peer")


def test_cancel_reaches_the_owning_worker_wherever_it_lands(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike
) -> None:
    node = start_node(balancer_factory, log_level="debug")
    primary_dsn = pg_cluster.primary.dsn()
    cancelled_on: set[int] = set()
    with connections_on_every_worker(node) as by_worker:
        # Each cancel arrives on a new TCP connection that the kernel gives to either worker, so
        # repeating it exercises both the local path and the hop between workers.
        for attempt in range(20):
            for index, conn in by_worker.items():
                elapsed = cancel_sleeping_query(conn, primary_dsn, f"workers-cancel-{attempt}-{index}")
                assert elapsed < 12
                assert conn.execute("SELECT 'still usable'").fetchone() == ("still usable",)
                cancelled_on.add(index)
            if peer_cancels_logged(node) > 0 and attempt >= 1:
                break
    assert cancelled_on == ALL_WORKERS
    assert peer_cancels_logged(node) > 0, "no cancel was ever passed between workers"


def test_sighup_reloads_every_worker(balancer_factory: BalancerFactory) -> None:
    node = start_node(balancer_factory)
    with pytest.raises(psycopg.OperationalError):
        connect(node, "app_trust", "brand-new-secret")
    write_userlist(node.config_path.parent / "userlist.txt", {**USERLIST, "app_trust": "brand-new-secret"})
    node.process.send_signal(signal.SIGHUP)
    admitted_by: set[int] = set()

    def newcomer_admitted_by_every_worker() -> bool:
        try:
            with connect(node, "app_trust", "brand-new-secret") as conn:
                admitted_by.add(worker_index(conn))
        except psycopg.OperationalError:
            pass  # that worker has not reloaded yet
        return admitted_by == ALL_WORKERS

    wait_for(newcomer_admitted_by_every_worker, timeout=15, message="every worker admits the new user")
    assert node.process.poll() is None


def test_sigterm_stops_every_process_and_exits_0(balancer_factory: BalancerFactory) -> None:
    node = start_node(balancer_factory)
    workers = worker_pids(node)
    assert processes_running(node.config_path) == {node.process.pid, *workers}
    sockets = [peer_socket_path("/tmp", node.port, index) for index in ALL_WORKERS]
    assert all(os.path.exists(path) for path in sockets)
    with connect(node) as conn:
        assert node.stop(timeout=20) == 0
        with pytest.raises(psycopg.OperationalError):
            conn.execute("SELECT 1")
    assert processes_running(node.config_path) == set()
    assert not any(os.path.exists(path) for path in sockets)


def test_a_killed_worker_is_restarted(balancer_factory: BalancerFactory) -> None:
    node = start_node(balancer_factory)
    before = worker_pids(node)
    victim = min(before)
    os.kill(victim, signal.SIGKILL)

    def replaced() -> bool:
        now = worker_pids(node)
        return len(now) == WORKERS and victim not in now and sorted(listener_pids(node.port)) == sorted(now)

    wait_for(replaced, timeout=15, message="the killed worker replaced by a new one")
    assert "exited unexpectedly (killed by SIGKILL); restarting it" in node.log_text()
    with connections_on_every_worker(node) as by_worker:
        assert set(by_worker) == ALL_WORKERS
    assert node.process.poll() is None


def test_workers_that_cannot_bind_make_the_node_exit_1(pg_cluster: PgClusterLike, tmp_path: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        settings = base_settings(pg_cluster, tmp_path)
        settings.update(workers=WORKERS, port=squatter.getsockname()[1])
        config = tmp_path / "pgbalancer.conf"
        config.write_text(render_config(settings))
        result = subprocess.run(
            [*pgbalancer_command(), "-f", str(config)], capture_output=True, text=True, timeout=30
        )
    assert result.returncode == 1
    assert "Address already in use" in result.stderr
    assert "could not start" in result.stderr
    assert processes_running(config) == set()
