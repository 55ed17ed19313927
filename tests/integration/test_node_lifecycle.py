"""The ``pgbalancer`` command: config validation, a dead backend at startup, SIGTERM and SIGHUP; and
how tests start it: distinct free ports, and a node that cannot bind never passes for ready."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgbalancer.config import load_config
from pgbalancer.devtools import free_tcp_port, free_tcp_ports, wait_for
from pgbalancer.devtools.balancer import pgbalancer_command, render_config
from pgbalancer.devtools.pgcluster import APP_DB
from tests.integration.proxy_support import USERLIST, BalancerFactory, write_userlist


async def _asyncpg_sqlstate(url: str) -> str:
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    await conn.close()
    return "ok"


def asyncpg_login_sqlstate(url: str) -> str:
    return asyncio.run(_asyncpg_sqlstate(url))


def run_pgbalancer(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([*pgbalancer_command(), *args], capture_output=True, text=True, timeout=30)


def test_check_accepts_a_valid_config(tmp_path: Path) -> None:
    config = tmp_path / "ok.conf"
    config.write_text(render_config({"backend_hostname0": "127.0.0.1", "auth_type": "trust"}))
    result = run_pgbalancer("--check", "-f", str(config))
    assert result.returncode == 0, result.stderr
    assert "configuration is valid" in result.stdout


@pytest.mark.parametrize("command", [["--check", "-f"], ["-f"]], ids=["check", "start"])
def test_invalid_config_exits_nonzero_naming_key_value_and_fix(tmp_path: Path, command: list[str]) -> None:
    config = tmp_path / "bad.conf"
    config.write_text("backend_hostname0 = '127.0.0.1'\nauth_type = trust\nport = 'abc'\n")
    result = run_pgbalancer(*command, str(config))
    assert result.returncode == 2
    assert "port" in result.stderr and "'abc'" in result.stderr
    assert "set port to" in result.stderr


def test_missing_config_file_is_a_clear_error(tmp_path: Path) -> None:
    result = run_pgbalancer("-f", str(tmp_path / "nope.conf"))
    assert result.returncode == 2
    assert "nope.conf" in result.stderr


def test_backend_down_at_startup_gives_08006_and_the_node_keeps_running(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(
        auth_type="trust",
        backend_port0=free_tcp_port(),
        backend_port1=free_tcp_port(),
        backend_port2=free_tcp_port(),
    )
    for _ in range(2):
        with pytest.raises(psycopg.OperationalError) as excinfo:
            psycopg.connect(node.dsn("app_trust", APP_DB))
        assert "could not connect to the primary" in str(excinfo.value)
    assert asyncpg_login_sqlstate(node.dsn_url("app_trust", APP_DB)) == "08006"
    assert node.process.poll() is None


def test_sigterm_shuts_down_cleanly_and_tells_connected_clients(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory()
    conn = psycopg.connect(node.dsn("app_scram", APP_DB, USERLIST["app_scram"]), autocommit=True)
    assert conn.execute("SELECT 1").fetchone() == (1,)
    assert node.stop(timeout=15) == 0
    with pytest.raises(psycopg.OperationalError) as excinfo:
        conn.execute("SELECT 1")
    assert "pgbalancer shutdown" in str(excinfo.value) or "closed" in str(excinfo.value)
    conn.close()


def test_sighup_reloads_the_auth_file(balancer_factory: BalancerFactory) -> None:
    node = balancer_factory()
    newcomer_dsn = node.dsn("app_trust", APP_DB, "brand-new-secret")
    with pytest.raises(psycopg.OperationalError):
        psycopg.connect(newcomer_dsn)
    auth_file = node.config_path.parent / "userlist.txt"
    write_userlist(auth_file, {**USERLIST, "app_trust": "brand-new-secret"})
    node.process.send_signal(1)  # SIGHUP

    def newcomer_gets_in() -> bool:
        try:
            with psycopg.connect(newcomer_dsn) as conn:
                return conn.execute("SELECT current_user").fetchone() == ("app_trust",)
        except psycopg.OperationalError:
            return False

    wait_for(newcomer_gets_in, timeout=10, message="reloaded auth_file to admit app_trust")
    assert node.process.poll() is None


def test_free_ports_handed_out_by_separate_calls_are_distinct() -> None:
    # bind(0) draws from ~14,000 ports at random: 1,000 separate picks would repeat one almost surely.
    picks = [free_tcp_port() for _ in range(1000)] + free_tcp_ports(3)
    assert len(set(picks)) == len(picks)


def test_a_node_whose_port_another_node_serves_fails_its_start_instead_of_passing_for_ready(
    balancer_factory: BalancerFactory,
) -> None:
    first = balancer_factory()
    api_port = load_config(first.config_path).api_port
    # Connecting to the port succeeds at once (the first node's API answers), but this node exits.
    with pytest.raises(RuntimeError, match="exited with 1") as caught:
        balancer_factory(port=api_port)
    assert f"cannot start (port {api_port})" in str(caught.value)
    assert "Address already in use" in str(caught.value)
    assert first.process.poll() is None
