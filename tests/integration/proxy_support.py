"""Shared data and helpers of the proxy integration tests (importable: tests/ has no packages)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from pgbalancer.config import load_config
from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import PgClusterLike
from pgbalancer.pgwire.auth import make_scram_verifier, md5_password_hash

# Client-side passwords pgbalancer checks; the backend secrets come from the same entries.
USERLIST = {
    "app_scram": "scram-secret",
    "app_md5": "md5-secret",
    "bench": "bench-client-secret",
    "app_trust": "trust-client-secret",
}

BalancerFactory = Callable[..., BalancerProcess]

# REST API users of every test node: name -> (password, role). The file stores a SCRAM verifier for
# the admin and an md5 hash for the viewer, as an operator would.
API_USERS = {"api_admin": ("api-admin-secret", "admin"), "api_viewer": ("api-viewer-secret", "viewer")}


def write_api_users(path: Path, users: dict[str, tuple[str, str]] = API_USERS) -> Path:
    lines = []
    for name, (password, role) in users.items():
        stored = (
            make_scram_verifier(password, name.encode().ljust(16, b"s")).encode()
            if role == "admin"
            else md5_password_hash(name, password)
        )
        lines.append(f'"{name}" "{stored}" "{role}"\n')
    path.write_text("".join(lines))
    return path


def api_base_url(node: BalancerProcess) -> str:
    """http://127.0.0.1:<api_port> of a test node (read back from its config file)."""
    return f"http://127.0.0.1:{load_config(node.config_path).api_port}"


def api_login(node: BalancerProcess, user: str = "api_admin", password: str | None = None) -> str:
    """A Bearer token from POST /api/v1/auth/login for one of API_USERS."""
    secret = API_USERS[user][0] if password is None else password
    response = httpx.post(
        f"{api_base_url(node)}/api/v1/auth/login", json={"username": user, "password": secret}, timeout=10
    )
    response.raise_for_status()
    token: str = response.json()["token"]
    return token


def cache_stats(node: BalancerProcess) -> dict[str, Any]:
    """GET /api/v1/cache/stats of a test node, as a viewer."""
    token = api_login(node, "api_viewer")
    response = httpx.get(
        f"{api_base_url(node)}/api/v1/cache/stats", headers={"Authorization": f"Bearer {token}"}, timeout=10
    )
    response.raise_for_status()
    body: dict[str, Any] = response.json()
    return body


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
        # Everything on the primary, so tests can compare server pids; test_routing turns it on.
        "load_balance_mode": False,
        "mqtt_mode": "off",  # test nodes would all bind 1883; the events tests turn it on with free ports
        "api_port": free_tcp_port(),  # every test node would bind 8080 otherwise
        "api_user_file": str(write_api_users(workdir / "api_users.txt")),
    }
    for node_id, node in enumerate(cluster.nodes):
        settings[f"backend_hostname{node_id}"] = node.host
        settings[f"backend_port{node_id}"] = node.port
    return settings
