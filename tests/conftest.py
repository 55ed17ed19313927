"""Shared pytest fixtures: a real PostgreSQL cluster, free ports and polling helpers.

Fixtures other test authors use:

- ``pg_cluster`` (session): a started primary + 2 streaming standbys (``PgClusterLike``: ``primary``,
  ``standbys``, ``nodes``, ``psql``; each node has ``dsn(user, dbname, password)``). Shared by the whole
  session: never promote, stop or reconfigure its nodes; use ``pg_cluster_factory`` for that.
- ``pg_cluster_factory`` (function): ``make(standbys=1, **kwargs) -> LocalPgCluster``, a private
  started cluster destroyed after the test (local binaries only; promote/stop_node/start_node on it).
- ``free_port``: ``free_port() -> int``.
- ``poll``: :func:`pgbalancer.devtools.wait_for` (blocking; for sync tests and worker threads).
- ``apoll``: :func:`pgbalancer.devtools.wait_for_async` (inside trio tests).

Users, passwords and databases are constants in :mod:`pgbalancer.devtools.pgcluster` (``TEST_USERS``,
``BENCH_DB``, ``APP_DB``). Sync psycopg inside trio tests goes through ``trio.to_thread.run_sync``.

Clusters live in ``/tmp/pgbalancer-test-*`` rather than under pytest's tmp dir: the servers run as the
``postgres`` OS user, and pytest keeps its base dir mode 0700 (re-applied by every concurrent session).
This file must never start servers at import time or leave them running after the session.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, settings

from pgbalancer.devtools import AsyncPoll, FreePort, Poll, free_tcp_port, wait_for, wait_for_async
from pgbalancer.devtools.containers import ContainerPgCluster, choose_cluster_backend
from pgbalancer.devtools.pgcluster import LocalPgCluster, PgClusterLike, reap_orphaned_clusters
from tests.hoststeal import CpuTimes, read_cpu_times, steal_report

# Timing is never what a property test checks. On a loaded CI machine (2 cores, the suite serial)
# Hypothesis' 200 ms per-example deadline fails examples that are merely slow, and a replay that then
# meets it turns that into a Flaky error; the too-slow health check fails slow generation the same way.
settings.register_profile("pgbalancer", deadline=None, suppress_health_check=[HealthCheck.too_slow])
settings.load_profile("pgbalancer")

_CLUSTER_PARENT = Path(os.environ.get("PGBALANCER_TEST_PGDIR", "/tmp"))
_CLUSTER_PREFIX = "pgbalancer-test-"


def _new_cluster_dir() -> Path:
    """A fresh dir the postgres user can reach, tagged with our pid so later runs can reap it."""
    base = Path(tempfile.mkdtemp(prefix=_CLUSTER_PREFIX, dir=_CLUSTER_PARENT))
    (base / "owner.pid").write_text(f"{os.getpid()}\n")
    return base


@contextlib.contextmanager
def _torn_down(cluster: PgClusterLike) -> Iterator[PgClusterLike]:
    """Start ``cluster`` and guarantee it is destroyed: on exit, on failure, and at interpreter exit."""
    atexit.register(cluster.destroy)
    try:
        cluster.start()
        yield cluster
    except BaseException as original:
        # A teardown error must not replace what is already propagating (a failed start, or the
        # KeyboardInterrupt of Ctrl-C, which would otherwise turn into a test failure and carry on).
        try:
            cluster.destroy()
        except Exception as teardown_error:
            original.add_note(f"tearing the cluster down failed too: {teardown_error}")
        raise
    else:
        cluster.destroy()
    finally:
        atexit.unregister(cluster.destroy)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[PgClusterLike]:
    """Primary + 2 streaming standbys for the whole session (testcontainers if Docker answers)."""
    cluster: PgClusterLike
    if choose_cluster_backend() == "testcontainers":
        cluster = ContainerPgCluster(standbys=2)
    else:
        reap_orphaned_clusters(_CLUSTER_PARENT, _CLUSTER_PREFIX)
        cluster = LocalPgCluster(_new_cluster_dir(), standbys=2, fast=True)
    with _torn_down(cluster) as started:
        yield started


@pytest.fixture
def pg_cluster_factory() -> Iterator[Callable[..., LocalPgCluster]]:
    """``make(standbys=1, **kwargs)``: a private started local cluster, destroyed after the test."""
    with contextlib.ExitStack() as stack:

        def make(standbys: int = 1, **kwargs: Any) -> LocalPgCluster:
            kwargs.setdefault("fast", True)
            cluster = LocalPgCluster(_new_cluster_dir(), standbys=standbys, **kwargs)
            stack.enter_context(_torn_down(cluster))
            return cluster

        yield make


@pytest.fixture
def free_port() -> FreePort:
    """``free_port() -> int``: a TCP port on 127.0.0.1 that was free a moment ago."""
    return free_tcp_port


@pytest.fixture
def poll() -> Poll:
    """``poll(predicate, timeout=10, interval=0.05, message=..., retry_on=())``: blocking poll."""
    return wait_for


@pytest.fixture
def apoll() -> AsyncPoll:
    """``await apoll(predicate, ...)``: the trio poll; predicate may be sync or async."""
    return wait_for_async


# ---- reruns (README.md, "Tests"): only tests marked flaky (the Raft-timing modules) are rerun;
# a failed attempt of one reports the host's steal time over that attempt.

_ATTEMPT_STARTED = pytest.StashKey[CpuTimes | None]()


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    if item.get_closest_marker("flaky") is not None:
        item.stash[_ATTEMPT_STARTED] = read_cpu_times()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    report = outcome.get_result()  # type: ignore[attr-defined]
    if report.failed and report.when in ("setup", "call") and _ATTEMPT_STARTED in item.stash:
        line = steal_report(item.stash[_ATTEMPT_STARTED], read_cpu_times())
        report.sections.append(("host steal time", line))
        terminal = item.config.pluginmanager.get_plugin("terminalreporter")
        if terminal is not None:
            terminal.write_line(f"\n{item.nodeid} failed; {line}")
