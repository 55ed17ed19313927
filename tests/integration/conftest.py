"""Fixtures that run a real pgbalancer process in front of the session's PostgreSQL cluster.

``balancer`` is one shared node (scram-sha-256 against ``USERLIST``); ``balancer_factory``
starts private nodes with overridden settings. Every node is stopped with SIGTERM at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from pathlib import Path

import pytest

from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import PgClusterLike
from tests.integration.proxy_support import BalancerFactory, base_settings


@contextlib.contextmanager
def _balancers(cluster: PgClusterLike, root: Path) -> Iterator[BalancerFactory]:
    started: list[BalancerProcess] = []

    def start(**overrides: Setting) -> BalancerProcess:
        workdir = root / f"node{len(started)}"
        workdir.mkdir(parents=True)
        settings = base_settings(cluster, workdir)
        settings.update(overrides)
        node = BalancerProcess.start(workdir, settings)
        started.append(node)
        return node

    try:
        yield start
    finally:
        for node in started:
            node.stop()


@pytest.fixture
def balancer_factory(pg_cluster: PgClusterLike, tmp_path: Path) -> Iterator[BalancerFactory]:
    with _balancers(pg_cluster, tmp_path) as start:
        yield start


@pytest.fixture(scope="module")
def balancer(
    pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    with _balancers(pg_cluster, tmp_path_factory.mktemp("balancer")) as start:
        yield start()


@pytest.fixture(scope="module", params=["session", "transaction"])
def pooled_balancer(
    request: pytest.FixtureRequest, pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[BalancerProcess]:
    """A shared node per pool mode; tests using it run once in each mode."""
    with _balancers(pg_cluster, tmp_path_factory.mktemp(f"balancer-{request.param}")) as start:
        yield start(pool_mode=request.param, num_init_children=4)
