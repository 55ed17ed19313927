"""Shared data and helpers of the proxy integration tests (importable: tests/ has no packages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

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
        "workers": 1,  # one process, so a node's server connections can be counted by its pid
    }
    for node_id, node in enumerate(cluster.nodes):
        settings[f"backend_hostname{node_id}"] = node.host
        settings[f"backend_port{node_id}"] = node.port
    return settings
