"""Fixtures that run a real pgbalancer process in front of the session's PostgreSQL cluster.

``balancer`` is one shared node (scram-sha-256 against ``USERLIST``); ``balancer_factory``
starts private nodes with overridden settings. Every node is stopped with SIGTERM at teardown.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import PgClusterLike

# Client-side passwords pgbalancer checks; the backend secrets come from the same entries.
USERLIST = {
    "app_scram": "scram-secret",
    "app_md5": "md5-secret",
    "bench": "bench-client-secret",
    "app_trust": "trust-client-secret",
}

BalancerFactory = Callable[..., BalancerProcess]


def write_userlist(path: Path, entries: dict[str, str]) -> Path:
    path.write_text("".join(f'"{user}" "{secret}"\n' for user, secret in entries.items()))
    return path


def base_settings(cluster: PgClusterLike, workdir: Path) -> dict[str, Setting]:
    settings: dict[str, Setting] = {
        "listen_addresses": "127.0.0.1",
        "port": free_tcp_port(),
        "pool_mode": "session",
        "auth_type": "scram-sha-256",
        "auth_file": str(write_userlist(workdir / "userlist.txt", USERLIST)),
        "num_init_children": 10,
        "max_pool": 4,
        "client_login_timeout": 10,
        "log_level": "info",
    }
    for node_id, node in enumerate(cluster.nodes):
        settings[f"backend_hostname{node_id}"] = node.host
        settings[f"backend_port{node_id}"] = node.port
    return settings


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
def balancer(pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    with _balancers(pg_cluster, tmp_path_factory.mktemp("balancer")) as start:
        yield start()
