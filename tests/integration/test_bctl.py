"""bctl against real pgbalancer nodes in front of real PostgreSQL: every command, its JSON values, its
tables (golden files, volatile fields masked), its exit codes and its messages on bad input.

The shared node reads the session cluster only; node actions and the switchover run against a private
cluster (``pg_cluster_factory``). Every bctl run is a real subprocess of the console script with a
temporary HOME, so the operator's own ~/.config is never touched.
"""

from __future__ import annotations

import base64
import json
import queue
import re
import shutil
import stat
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import jwt
import psycopg
import pytest

from pgbalancer.devtools import free_tcp_port, wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgClusterLike
from tests.integration.bctl_support import BCTL, BctlRunner, TmuxBctl, check_golden, kill_tmux
from tests.integration.proxy_support import API_USERS, USERLIST, api_base_url, base_settings
from tests.integration.test_failover import ha_settings
from tests.integration.test_watchdog_cluster import index_of, under_one_leader, wait_leader, watchdog_nodes
from tests.integration.tls_support import make_tls_files

ADMIN, ADMIN_PASSWORD = "api_admin", API_USERS["api_admin"][0]
VIEWER, VIEWER_PASSWORD = "api_viewer", API_USERS["api_viewer"][0]
JWT_SECRET = "bctl-tests-signing-key-0123456789abcdef"
USER, PASSWORD = "app_scram", USERLIST["app_scram"]


@pytest.fixture(scope="module")
def node(pg_cluster: PgClusterLike, tmp_path_factory: pytest.TempPathFactory) -> Iterator[BalancerProcess]:
    workdir = tmp_path_factory.mktemp("bctl-node")
    settings = base_settings(pg_cluster, workdir)
    settings.update(
        api_jwt_secret=JWT_SECRET, health_check_period=1, load_balance_mode=True, pool_mode="transaction"
    )
    started = BalancerProcess.start(workdir, settings)
    try:
        yield started
    finally:
        started.stop()


@pytest.fixture
def bctl(node: BalancerProcess, tmp_path: Path) -> BctlRunner:
    """A runner logged in as the admin (token in the temporary HOME)."""
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    result = runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert result.code == 0, result.stderr
    return runner


def run_queries(node: BalancerProcess, count: int) -> None:
    with psycopg.connect(node.dsn(USER, APP_DB, PASSWORD), autocommit=True) as conn:
        for _ in range(count):
            conn.execute("SELECT 1").fetchone()


def forged_token(expires_in: float, key: str = JWT_SECRET, user: str = ADMIN) -> str:
    now = int(time.time())
    claims = {
        "sub": user,
        "role": "admin",
        "iat": now - 7200,
        "exp": int(now + expires_in),
        "jti": "forged",
        "iss": "pgbalancer",
        "aud": "pgbalancer-api",
    }
    return jwt.encode(claims, key, algorithm="HS256")


# --------------------------------------------------------------------------- session


def test_login_stores_the_token_0600_and_commands_use_it(node: BalancerProcess, tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    assert not runner.token_file.exists()
    result = runner("--json", "login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD + "\n")
    assert result.json() == {"logged_in": True, "user": ADMIN, "token_file": str(runner.token_file)}
    assert stat.S_IMODE(runner.token_file.stat().st_mode) == 0o600
    token = runner.token_file.read_text().strip()
    claims = json.loads(base64.urlsafe_b64decode(token.split(".")[1] + "=="))
    assert claims["sub"] == ADMIN and claims["role"] == "admin"
    assert ADMIN_PASSWORD not in result.stdout + result.stderr
    assert runner("status").json()["backends"]["total"] == 3
    assert runner("--json", "logout").json()["removed"] is True
    again = runner("status")
    assert again.code == 1 and "not logged in: run `bctl login`" in again.stderr


def test_env_credentials_log_in_without_a_token_file(node: BalancerProcess, tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    status = runner("status", PGBALANCER_USER=VIEWER, PGBALANCER_PASSWORD=VIEWER_PASSWORD).json()
    assert status["backends"]["total"] == 3
    token = runner("--json", "login", PGBALANCER_USER=VIEWER, PGBALANCER_PASSWORD=VIEWER_PASSWORD)
    assert token.code == 0 and runner.token_file.exists()
    env_token = runner.token_file.read_text().strip()
    runner.token_file.unlink()
    assert runner("status", PGBALANCER_TOKEN=env_token).json()["backends"]["up"] == 3
    # The viewer may read but not act; the message says what to do.
    refused = runner("reload", PGBALANCER_TOKEN=env_token)
    assert refused.code == 1 and "permission denied" in refused.stderr and "admin" in refused.stderr


# --------------------------------------------------------------------------- reading, JSON


def test_status_counts_the_queries_sent(node: BalancerProcess, bctl: BctlRunner) -> None:
    before = bctl("status").json()
    run_queries(node, 25)
    after = bctl("status", "--json").json()
    assert after["queries_total"] - before["queries_total"] >= 25
    assert after["backends"] == {"up": 3, "total": 3}
    assert after["pool_mode"] == "transaction" and after["primary_id"] == 0 and after["paused"] is False


def test_nodes_health_pools_ai_stats_and_config(
    node: BalancerProcess, bctl: BctlRunner, pg_cluster: PgClusterLike
) -> None:
    run_queries(node, 5)
    nodes = bctl("nodes").json()
    assert [(n["node_id"], n["port"], n["role"], n["status"]) for n in nodes["nodes"]] == [
        (i, pg.port, "primary" if i == 0 else "standby", "up") for i, pg in enumerate(pg_cluster.nodes)
    ]
    one = bctl("nodes", "1").json()
    assert one["node_id"] == 1 and one["port"] == pg_cluster.nodes[1].port and one["role"] == "standby"
    health = bctl("health").json()
    assert [b["node_id"] for b in health["backends"]] == [0, 1, 2]
    assert health["period_seconds"] == 1
    pools = bctl("pools").json()["pools"]
    mine = [p for p in pools if p["database"] == APP_DB and p["user"] == USER]
    assert sum(p["queries_total"] for p in mine) >= 5
    ai = bctl("ai-stats").json()
    assert ai["load_balance_mode"] is True and ai["algorithm"] == "adaptive"
    assert [n["node_id"] for n in ai["nodes"]] == [0, 1, 2] and ai["decisions"] >= 5
    assert sum(n["picks"] for n in ai["nodes"]) == ai["decisions"]
    settings = bctl("config", "show").json()["settings"]
    assert settings["num_init_children"] == 10 and settings["max_pool"] == 4
    assert settings["api_jwt_secret"] != JWT_SECRET  # redacted


def test_host_and_port_flags_reach_the_node(node: BalancerProcess, bctl: BctlRunner) -> None:
    port = api_base_url(node).rsplit(":", 1)[1]
    dead = f"http://127.0.0.1:{free_tcp_port()}"  # the flags win over PGBALANCER_URL
    result = bctl("--host", "127.0.0.1", "--port", port, "--verbose", "status", PGBALANCER_URL=dead)
    assert result.json()["backends"] == {"up": 3, "total": 3}
    assert f"> GET http://127.0.0.1:{port}/api/v1/status -> 200" in result.stderr


def test_verbose_shows_requests_and_timing(bctl: BctlRunner) -> None:
    result = bctl("--verbose", "status", "--json")
    assert result.code == 0
    assert "> GET http://127.0.0.1:" in result.stderr and "/api/v1/status -> 200 (" in result.stderr
    assert " ms)" in result.stderr and "Bearer" not in result.stderr


def test_tables_match_the_golden_files(
    balancer_factory: Callable[..., BalancerProcess], pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    # load_balance_mode on (transaction pooling: the balancer picks per transaction), so the read
    # balancer has a row per backend.
    fresh = balancer_factory(health_check_period=1, load_balance_mode=True, pool_mode="transaction")
    runner = BctlRunner(tmp_path / "home", api_base_url(fresh))
    login = runner("--table", "login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD)
    assert login.code == 0 and runner.token_file.exists()
    check_golden("bctl_login", login.stdout)
    wait_for(
        lambda: all(b["checks_observed"] > 0 for b in runner("health").json()["backends"]),
        20,
        message="a health round on every backend",
    )

    def golden_tables(goldens: dict[str, list[str]]) -> None:
        for name, args in goldens.items():
            result = runner("--table", *args)
            assert result.code == 0, result.stderr
            assert "┌" in result.stdout and "│" in result.stdout
            check_golden(name, result.stdout)

    with psycopg.connect(fresh.dsn(USER, APP_DB, PASSWORD), autocommit=True) as client:
        # First one pool, (app, app_scram), on the primary only (the hint keeps the balancer out).
        client.execute("/* pgbalancer: primary */ SELECT 1").fetchone()
        golden_tables(
            {
                "bctl_nodes": ["nodes"],
                "bctl_node_detail": ["nodes", "0"],
                "bctl_status": ["status"],
                "bctl_pools": ["pools"],
            }
        )
        # Then a balanced read: the balancer's table gets its per-backend rows.
        client.execute("SELECT 1").fetchone()
        assert len(runner("ai-stats").json()["nodes"]) == 3
        golden_tables(
            {
                "bctl_ai_stats": ["ai-stats"],
                "bctl_health": ["health"],
                "bctl_pool_advice": ["pool-advice", "--dsn", pg_cluster.primary.dsn()],
            }
        )
    # Wide enough that no path folds onto a second line, whatever the temporary directory's length.
    config = runner("--table", "config", "show", COLUMNS="1000")
    assert config.code == 0 and "api_jwt_secret" in config.stdout
    check_golden("bctl_config_show", config.stdout)
    logout = runner("--table", "logout")
    assert logout.code == 0 and not runner.token_file.exists()
    check_golden("bctl_logout", logout.stdout)


# --------------------------------------------------------------------------- acting on the shared node


def test_reload_pause_resume(bctl: BctlRunner) -> None:
    reloaded = bctl("reload").json()
    assert reloaded["reloaded"] is True and reloaded["changed"] == []
    reload_table = bctl("--table", "reload")
    assert reload_table.code == 0
    check_golden("bctl_reload", reload_table.stdout)
    paused = bctl("pause", "--database", APP_DB, "--timeout", "5").json()
    assert paused["paused"] is True and paused["database"] == APP_DB
    assert bctl("status").json()["paused_databases"] == [APP_DB]
    twice = bctl("resume", "--database", "postgres")
    assert twice.code == 1 and "not paused" in twice.stderr
    assert bctl("resume", "--database", APP_DB).json() == {"resumed": True, "database": APP_DB}
    assert bctl("status").json()["paused_databases"] == []
    # The same actions as tables.
    pause_table = bctl("--table", "pause", "--database", APP_DB, "--timeout", "5")
    assert pause_table.code == 0 and bctl("status").json()["paused_databases"] == [APP_DB]
    check_golden("bctl_pause", pause_table.stdout)
    resume_table = bctl("--table", "resume", "--database", APP_DB)
    assert resume_table.code == 0 and bctl("status").json()["paused_databases"] == []
    check_golden("bctl_resume", resume_table.stdout)


def test_features_off_on_this_node_say_so_with_exit_1(bctl: BctlRunner) -> None:
    """The shared node runs without the result cache and without a watchdog."""
    assert bctl("cache", "stats").json() == {
        "enabled": False,
        "entries": 0,
        "bytes": 0,
        "limit_bytes": 0,
        "hits": 0,
        "misses": 0,
        "hit_ratio": 0.0,
        "evictions": 0,
        "invalidations": 0,
    }
    off = bctl("cache", "invalidate", "--yes")
    assert off.code == 1 and off.stdout == "" and "refused (HTTP 409)" in off.stderr
    assert "set memory_cache_enabled = on" in off.stderr
    watchdog = bctl("watchdog-status")
    assert watchdog.code == 1 and watchdog.stdout == "" and watchdog.stderr.count("\n") == 1
    assert "not available on http://127.0.0.1:" in watchdog.stderr and "set watchdog_nodes" in watchdog.stderr


@pytest.fixture
def cache_table(pg_cluster: PgClusterLike) -> str:
    pg_cluster.psql(
        pg_cluster.primary,
        """
        CREATE TABLE IF NOT EXISTS bctl_cache_items (id int PRIMARY KEY, v text);
        INSERT INTO bctl_cache_items VALUES (1, 'one'), (2, 'two') ON CONFLICT DO NOTHING;
        GRANT ALL ON bctl_cache_items TO PUBLIC;
        """,
        dbname=APP_DB,
    )
    return "bctl_cache_items"


def test_cache_stats_and_invalidate_on_a_caching_node(
    balancer_factory: Callable[..., BalancerProcess], tmp_path: Path, cache_table: str
) -> None:
    cached = balancer_factory(pool_mode="transaction", memory_cache_enabled=True, auth_type="trust")
    runner = BctlRunner(tmp_path / "home", api_base_url(cached))
    assert runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0
    with psycopg.connect(cached.dsn("app_trust", APP_DB), autocommit=True) as conn:
        for _ in range(3):
            assert conn.execute(f"SELECT v FROM {cache_table} WHERE id = 1").fetchone() == ("one",)
        conn.execute(f"SELECT v FROM {cache_table} WHERE id = 2").fetchone()
    stats = runner("cache", "stats").json()
    assert stats["enabled"] is True and stats["entries"] == 2 and stats["bytes"] > 0
    assert (stats["hits"], stats["misses"]) == (2, 2) and stats["hit_ratio"] == pytest.approx(0.5)
    table = runner("--table", "cache", "stats")
    assert table.code == 0
    check_golden("bctl_cache_stats", table.stdout)
    dropped = runner("cache", "invalidate", "--table", cache_table, "--yes").json()
    assert dropped == {"invalidated_entries": 2, "tables": [cache_table]}
    after = runner("cache", "stats").json()
    assert after["entries"] == 0 and after["invalidations"] >= 1
    assert runner("cache", "invalidate", "--yes").json() == {"invalidated_entries": 0, "tables": None}
    every = runner("--table", "cache", "invalidate", "--yes")
    assert every.code == 0
    check_golden("bctl_cache_invalidate", every.stdout)


def test_actions_need_yes_without_a_terminal(bctl: BctlRunner) -> None:
    for args in (
        ["node", "detach", "1"],
        ["switchover", "--to", "1"],
        ["cache", "invalidate"],
        ["watchdog", "add", "127.0.0.1:7999"],
        ["watchdog", "remove", "127.0.0.1:7999"],
    ):
        result = bctl(*args)
        assert result.code == 2 and "without --yes" in result.stderr, result.stderr
    assert bctl("nodes", "1").json()["detached"] is False


# --------------------------------------------------------------------------- bad input


def test_unreachable_host_exits_3(tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home")
    port = str(free_tcp_port())
    result = runner("--host", "127.0.0.1", "--port", port, "status", PGBALANCER_TOKEN=forged_token(600))
    assert result.code == 3 and "cannot reach pgbalancer" in result.stderr and port in result.stderr
    login = runner(
        "--host", "127.0.0.1", "--port", port, "login", "--user", "x", "--password-stdin", stdin="y"
    )
    assert login.code == 3
    # Without any token bctl says so before it tries the network (exit 1, not 3).
    anonymous = runner("--host", "127.0.0.1", "--port", port, "status")
    assert anonymous.code == 1 and "not logged in: run `bctl login`" in anonymous.stderr


def test_https_with_the_api_ca(balancer_factory: Callable[..., BalancerProcess], tmp_path: Path) -> None:
    tls = make_tls_files(tmp_path / "tls")
    node = balancer_factory(api_tls_cert_file=str(tls.server.cert), api_tls_key_file=str(tls.server.key))
    url = api_base_url(node).replace("http://", "https://")
    runner = BctlRunner(tmp_path / "home", url, {"PGBALANCER_CAFILE": str(tls.ca)})
    assert runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0
    assert runner("status").json()["backends"]["total"] == 3
    untrusted = runner("status", PGBALANCER_CAFILE=str(tls.other_ca))
    assert untrusted.code == 3 and "set PGBALANCER_CAFILE" in untrusted.stderr


def test_wrong_password_exits_1(node: BalancerProcess, tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    result = runner("login", "--user", ADMIN, "--password-stdin", stdin="not-the-password")
    assert (
        result.code == 1
        and "login refused" in result.stderr
        and "wrong user name or password" in result.stderr
    )
    assert not runner.token_file.exists()


def test_expired_token_says_to_log_in_and_is_refreshed_with_a_password(
    node: BalancerProcess, tmp_path: Path
) -> None:
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    runner.token_file.parent.mkdir(parents=True)
    runner.token_file.write_text(forged_token(-30) + "\n")
    expired = runner("status")
    assert expired.code == 1 and "token expired" in expired.stderr and "run `bctl login`" in expired.stderr
    env = runner("status", PGBALANCER_TOKEN=forged_token(-30))
    assert env.code == 1 and "token expired" in env.stderr
    other_key = runner("status", PGBALANCER_TOKEN=forged_token(600, key="another-key-" * 4))
    assert other_key.code == 1 and "signature does not verify" in other_key.stderr
    assert "run `bctl login`" in other_key.stderr
    # With the password at hand, an expired stored token is replaced by a fresh one.
    refreshed = runner("status", PGBALANCER_USER=ADMIN, PGBALANCER_PASSWORD=ADMIN_PASSWORD)
    assert refreshed.code == 0, refreshed.stderr
    claims = jwt.decode(runner.token_file.read_text().strip(), options={"verify_signature": False})
    assert claims["exp"] > time.time() + 3000
    assert stat.S_IMODE(runner.token_file.stat().st_mode) == 0o600


def test_unknown_node_id_exits_1(bctl: BctlRunner) -> None:
    result = bctl("nodes", "9")
    assert result.code == 1 and "no backend 9 (known: 0, 1, 2)" in result.stderr
    action = bctl("node", "attach", "9", "--yes")
    assert action.code == 1 and "no backend 9" in action.stderr
    switch = bctl("switchover", "--to", "9", "--yes")
    assert switch.code == 1 and "no backend 9" in switch.stderr


@pytest.mark.parametrize(
    "cluster",
    ["", "a:b", "db1:8080,,db2:8080", "db1:0", "db1:70000", "[::1:80", "http://x:80", "a b:80", "db:²"],
)
def test_malformed_cluster_exits_2(tmp_path: Path, cluster: str) -> None:
    result = BctlRunner(tmp_path / "home")("--cluster", cluster, "status")
    assert result.code == 2 and "--cluster" in result.stderr, result.stderr


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home")
    for args in (
        ["node", "detach", "one"],
        ["nodes", "-1"],
        ["frobnicate"],
        ["switchover"],
        ["top", "--interval", "x"],
    ):
        result = runner(*args)
        assert result.code == 2 and "usage: bctl" in result.stderr, args
    bad_url = runner("status", PGBALANCER_URL="ftp://x")
    assert bad_url.code == 2 and "PGBALANCER_URL" in bad_url.stderr
    both = runner("--cluster", "db1:8080", "--port", "9090", "status")
    assert both.code == 2 and "either --cluster or --host/--port" in both.stderr
    slash = runner("--host", "a/b", "status")
    assert slash.code == 2 and "--host 'a/b' is not a host name" in slash.stderr


def test_cluster_skips_a_dead_node_and_acts_on_a_live_one(node: BalancerProcess, bctl: BctlRunner) -> None:
    dead = f"127.0.0.1:{free_tcp_port()}"
    live = api_base_url(node).removeprefix("http://")
    status = bctl("--verbose", "--cluster", f"{dead},{live}", "status")
    assert status.json()["backends"]["total"] == 3
    assert f"http://{dead}/api/v1/status -> unreachable" in status.stderr
    # No watchdog here: a control command goes to any node that answers.
    reloaded = bctl("--cluster", f"{dead},{live}", "reload")
    assert reloaded.json()["reloaded"] is True
    nobody = bctl("--cluster", f"{dead},{dead}", "status")
    assert nobody.code == 3


# --------------------------------------------------------------------------- pool-advice


def test_pool_advice_follows_its_formula_and_the_servers_settings(
    node: BalancerProcess, bctl: BctlRunner, pg_cluster: PgClusterLike
) -> None:
    run_queries(node, 3)
    primary = pg_cluster.primary
    advice = bctl("pool-advice", "--dsn", primary.dsn()).json()

    def setting(name: str) -> int:
        return int(pg_cluster.psql(primary, f"SHOW {name}"))

    server = advice["server"]
    assert server["version_num"] == setting("server_version_num") and server["version_num"] < 160000
    assert server["max_connections"] == setting("max_connections")
    assert server["superuser_reserved_connections"] == setting("superuser_reserved_connections")
    assert server["reserved_connections"] is None  # PostgreSQL 15 has none
    available = setting("max_connections") - setting("superuser_reserved_connections")
    assert server["available_connections"] == available
    busy = server["busy_ratio"]
    active, idle = server["active_time_ms"], server["idle_in_transaction_time_ms"]
    assert active > 0 and busy == pytest.approx(active / (active + idle))

    ours = advice["pgbalancer"]
    assert (ours["nodes"], ours["workers"], ours["num_init_children"], ours["max_pool"]) == (1, 1, 10, 4)
    pools = {(p["database"], p["user"]) for p in ours["pools"]}
    assert (APP_DB, USER) in pools

    rec = advice["recommended"]
    budget = available - 1
    assert rec["budget"] == budget and rec["per_process"] == budget
    assert rec["max_pool"] == len(pools)
    assert rec["num_init_children"] == budget // len(pools)
    assert rec["max_server_connections"] == rec["num_init_children"] * rec["max_pool"]
    assert rec["max_server_connections"] + 1 <= available
    total = sum(p["queries"] for p in ours["pools"])
    for pool, demand in zip(rec["pools"], ours["pools"], strict=True):
        share = demand["queries"] / total
        assert pool["size"] == min(rec["num_init_children"], max(1, int(budget * share)))
    assert any(line.startswith("available = max_connections") for line in advice["explanation"])
    table = bctl("--table", "pool-advice", "--dsn", primary.dsn())
    assert table.code == 0 and "arithmetic" in table.stdout and str(available) in table.stdout


def test_pool_advice_unreachable_database_exits_3(bctl: BctlRunner) -> None:
    result = bctl(
        "pool-advice", "--dsn", f"host=127.0.0.1 port={free_tcp_port()} user=postgres connect_timeout=3"
    )
    assert result.code == 3 and "cannot connect to PostgreSQL" in result.stderr


# --------------------------------------------------------------------------- events


def test_events_streams_the_retained_state(
    balancer_factory: Callable[..., BalancerProcess], tmp_path: Path
) -> None:
    users = tmp_path / "mqtt_users.txt"
    users.write_text('"monitor" "monitor-secret"\n')
    events_node = balancer_factory(
        mqtt_mode="embedded",
        mqtt_port=free_tcp_port(),
        mqtt_listen_addresses="127.0.0.1",
        mqtt_user_file=str(users),
    )
    runner = BctlRunner(tmp_path / "home", api_base_url(events_node))
    assert runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0
    monitor = {"PGBALANCER_MQTT_USER": "monitor", "PGBALANCER_MQTT_PASSWORD": "monitor-secret"}
    runner.extra_env.update(monitor)
    result = runner("events", "--json", "--count", "4")
    messages = [json.loads(line) for line in result.stdout.splitlines()]
    assert result.code == 0 and len(messages) == 4
    topics = {m["topic"] for m in messages}
    assert "pgbalancer/cluster/health" in topics and "pgbalancer/nodes/0/status" in topics
    health = next(m for m in messages if m["topic"] == "pgbalancer/cluster/health")
    assert health["retain"] is True and health["payload"]["event"] == "cluster_health"
    health_topic = ("--count", "1", "--topic", "pgbalancer/cluster/health")
    wait_for(
        lambda: runner("events", "--json", *health_topic).json()["payload"]["backends_up"] == 3,
        20,
        message="a retained cluster health with every backend up",
    )
    lines = runner("events", "--table", *health_topic)
    assert lines.code == 0 and " pgbalancer/cluster/health cluster_health " in lines.stdout
    # Why it was published (periodic, a health check) and which figures are measured yet (null) depend
    # on timing.
    check_golden(
        "bctl_events_line",
        lines.stdout,
        also=lambda t: re.sub(r"reason=.*", "reason=R", t.replace(": null", ": N")),
    )
    refused = runner(
        "events", "--count", "1", PGBALANCER_MQTT_USER="monitor", PGBALANCER_MQTT_PASSWORD="wrong"
    )
    assert refused.code == 1 and "refused" in refused.stderr

    # A topic filter over several messages: the three retained backend statuses, nothing else.
    nodes = runner("events", "--json", "--count", "3", "--topic", "pgbalancer/nodes/#")
    statuses = [json.loads(line) for line in nodes.stdout.splitlines()]
    assert nodes.code == 0 and len(statuses) == 3
    assert all(m["topic"].startswith("pgbalancer/nodes/") for m in statuses)
    assert sorted(m["topic"] for m in statuses) == [f"pgbalancer/nodes/{i}/status" for i in range(3)]


@pytest.mark.slow
def test_events_streams_an_event_as_it_happens(
    balancer_factory: Callable[..., BalancerProcess], tmp_path: Path
) -> None:
    events_node = balancer_factory(
        mqtt_mode="embedded",
        mqtt_port=free_tcp_port(),
        mqtt_listen_addresses="127.0.0.1",
        mqtt_allow_anonymous=True,
    )
    runner = BctlRunner(tmp_path / "home", api_base_url(events_node))
    assert runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0
    # 3 retained statuses first (proof that the subscription stands), then the live one.
    stream = subprocess.Popen(
        [BCTL, "events", "--json", "--count", "4", "--topic", "pgbalancer/nodes/#"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=runner.env(),
    )
    lines: queue.Queue[str] = queue.Queue()

    def read() -> None:
        for line in stream.stdout or ():
            lines.put(line)

    threading.Thread(target=read, daemon=True).start()
    try:
        retained = [json.loads(lines.get(timeout=30)) for _ in range(3)]
        assert all(m["retain"] and m["payload"]["backend"]["detached"] is False for m in retained)
        assert runner("node", "detach", "2", "--yes").json()["action"] == "detach"
        live = json.loads(lines.get(timeout=30))
        assert live["topic"] == "pgbalancer/nodes/2/status"
        assert live["payload"]["event"] == "node_status" and live["payload"]["backend"]["detached"] is True
        assert stream.wait(15) == 0
    finally:
        if stream.poll() is None:
            stream.kill()
            stream.wait()
        stream_err = stream.stderr.read() if stream.stderr else ""
    assert "Traceback" not in stream_err
    assert runner("node", "attach", "2", "--yes").json()["action"] == "attach"


def test_events_on_a_node_without_mqtt_exits_1(bctl: BctlRunner) -> None:
    result = bctl("events", "--count", "1")
    assert result.code == 1 and "mqtt_mode = off" in result.stderr


# --------------------------------------------------------------------------- top, completion


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make test installs it)")
def test_top_renders_the_nodes_under_tmux_and_quits_on_q(bctl: BctlRunner, pg_cluster: PgClusterLike) -> None:
    terminal = TmuxBctl(bctl, "top", "--interval", "0.5")
    try:
        shown = terminal.wait_for_screen("q quits", "primary")
        for pg in pg_cluster.nodes:
            assert f"127.0.0.1:{pg.port}" in shown
        assert "QPS" in shown and "standby" in shown and "balancer" in shown
        terminal.keys("q")
        assert terminal.exit_code() == 0
    finally:
        terminal.close()


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make test installs it)")
def test_an_action_asks_on_a_terminal_and_no_changes_nothing(bctl: BctlRunner) -> None:
    terminal = TmuxBctl(bctl, "node", "detach", "1")
    try:
        terminal.wait_for_screen("Detach backend 1? [y/N]")
        terminal.keys("n", "Enter")
        assert terminal.exit_code() == 1
        assert "aborted: nothing was changed" in terminal.screen()
    finally:
        terminal.close()
    assert bctl("nodes", "1").json()["detached"] is False


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make test installs it)")
def test_an_expired_token_is_refreshed_by_asking_on_a_terminal(node: BalancerProcess, tmp_path: Path) -> None:
    runner = BctlRunner(tmp_path / "home", api_base_url(node))
    runner.token_file.parent.mkdir(parents=True)
    runner.token_file.write_text(forged_token(-30) + "\n")
    terminal = TmuxBctl(runner, "--json", "status")
    try:
        terminal.wait_for_screen(f"token expired; password for {ADMIN}")
        terminal.keys(ADMIN_PASSWORD, "Enter")
        assert terminal.exit_code() == 0
        assert '"backends"' in terminal.screen() and ADMIN_PASSWORD not in terminal.screen()
    finally:
        terminal.close()
    claims = jwt.decode(runner.token_file.read_text().strip(), options={"verify_signature": False})
    assert claims["exp"] > time.time() + 3000


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("tmux") is None, reason="tmux is not installed (make test installs it)")
def test_tables_are_the_default_on_a_terminal(bctl: BctlRunner) -> None:
    terminal = TmuxBctl(bctl, "nodes")  # no --table, no --json
    try:
        shown = terminal.wait_for_screen("backends (primary 0", "┌", "└")
        assert terminal.exit_code() == 0
        assert re.search(r"│ +primary +│", shown) and '"nodes"' not in shown
    finally:
        terminal.close()


def test_top_without_a_terminal_exits_2(bctl: BctlRunner) -> None:
    result = bctl("top")
    assert result.code == 2 and "needs a terminal" in result.stderr


def test_bash_completion_loads_and_completes(tmp_path: Path) -> None:
    script = BctlRunner(tmp_path / "home")("completion", "bash")
    assert script.code == 0
    path = tmp_path / "bctl.bash"
    path.write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = (
            f"source {path}; COMP_WORDS=({line}); COMP_CWORD={len(words) - 1}; _bctl; echo ${{COMPREPLY[@]}}"
        )
        done = subprocess.run(["bash", "-c", probe], capture_output=True, text=True, check=True)
        assert done.stderr == ""
        return sorted(done.stdout.split())

    assert complete("bctl", "no") == ["node", "nodes"]  # sorted
    assert complete("bctl", "node", "") == sorted(
        ["attach", "detach", "promote", "rejoin", "--help", "--json", "--table", "--verbose"]
    )
    assert complete("bctl", "--host", "h", "swi") == ["switchover"]
    assert "--to" in complete("bctl", "--table", "switchover", "--")
    assert complete("bctl", "completion", "") == ["--help", "bash", "zsh"]
    assert complete("bctl", "cache", "invalidate", "--t") == ["--table"]


def test_zsh_completion_completes(tmp_path: Path) -> None:
    """zsh (a required OS package) through its own bash layer: ``$_comps[bctl]`` runs as the widget
    would, and the candidates it hands ``compadd`` are filtered by the typed prefix as compadd does."""
    script = BctlRunner(tmp_path / "home")("completion", "zsh")
    assert script.code == 0
    path = tmp_path / "bctl.zsh"
    path.write_text(script.stdout)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        probe = f"""
            source {path}
            compadd() {{  # stands in for the builtin: print what it would offer for $PREFIX
              while [[ $# -gt 0 && $1 != - ]]; do shift; done; shift
              local word; for word in "$@"; do [[ $word == $PREFIX* ]] && print -r -- $word; done
            }}
            words=({line}); CURRENT={len(words)}; PREFIX=${{words[CURRENT]}}
            ${{=_comps[bctl]}}
        """
        done = subprocess.run(["zsh", "-f", "-c", probe], capture_output=True, text=True, check=True)
        assert done.stderr == ""
        return sorted(done.stdout.split())

    assert complete("bctl", "no") == ["node", "nodes"]
    assert complete("bctl", "node", "") == sorted(
        ["attach", "detach", "promote", "rejoin", "--help", "--json", "--table", "--verbose"]
    )
    assert complete("bctl", "--host", "h", "swi") == ["switchover"]
    assert "--to" in complete("bctl", "--table", "switchover", "--")
    assert complete("bctl", "completion", "") == ["--help", "bash", "zsh"]
    assert complete("bctl", "watchdog", "re") == ["remove"]


@pytest.mark.slow
def test_zsh_completes_on_a_real_terminal(tmp_path: Path) -> None:
    """An interactive zsh under tmux: Tab after ``bctl switc`` writes ``switchover``."""
    home = tmp_path / "zhome"
    home.mkdir()
    script = BctlRunner(tmp_path / "home")("completion", "zsh")
    (home / "bctl.zsh").write_text(script.stdout)
    (home / ".zshrc").write_text(f"PS1='zsh> '\nsource {home / 'bctl.zsh'}\n")
    name = f"bctl-zsh-{time.monotonic_ns()}"
    tmux = ["tmux", "-L", name]
    bin_dir = Path(BCTL).parent
    shell = f"env -i HOME={home} ZDOTDIR={home} TERM=xterm PATH={bin_dir}:/usr/bin:/bin zsh -i"
    subprocess.run([*tmux, "new-session", "-d", "-s", "z", "-x", "120", "-y", "20", shell], check=True)

    def screen() -> str:
        return subprocess.run(
            [*tmux, "capture-pane", "-p", "-t", "z"], capture_output=True, text=True, check=True
        ).stdout

    def shown(text: str) -> None:
        try:
            wait_for(lambda: text in screen(), 15, message=repr(text))
        except TimeoutError as exc:
            raise AssertionError(f"zsh never showed {text!r}:\n{screen()}") from exc

    try:
        shown("zsh>")  # capture-pane drops trailing blanks
        subprocess.run([*tmux, "send-keys", "-t", "z", "bctl switc", "Tab"], check=True)
        shown("zsh> bctl switchover")
        subprocess.run([*tmux, "send-keys", "-t", "z", "C-u", "bctl node det", "Tab"], check=True)
        shown("zsh> bctl node detach")
    finally:
        kill_tmux(name)


# --------------------------------------------------------------------------- node actions (private cluster)


def watchdog_masks(masked: str) -> str:
    """Which member leads and which one answered move from run to run: each member row's role
    becomes ROLE (a peer that does not lead is "unknown": pysyncobj does not say what it is), its
    "(this node)" mark goes, and the rows are sorted."""
    lines = masked.splitlines()
    members = [i for i, line in enumerate(lines) if line.startswith("│ N.N:N")]
    rows = sorted(
        re.sub(r"│ (leader|follower|candidate|unknown) │", "│ ROLE │", lines[i].replace(" (this node)", ""))
        for i in members
    )
    for i, row in zip(members, rows, strict=True):
        lines[i] = row
    return "\n".join(lines) + "\n"


def ha_node(cluster: LocalPgCluster, workdir: Path) -> BalancerProcess:
    return BalancerProcess.start(workdir, ha_settings(cluster, workdir))


@pytest.mark.slow
def test_detach_attach_switchover_and_rejoin_for_real(
    pg_cluster_factory: Callable[..., LocalPgCluster], tmp_path: Path
) -> None:
    cluster = pg_cluster_factory(standbys=2)
    ha = ha_node(cluster, tmp_path / "node")
    try:
        bctl = BctlRunner(tmp_path / "home", api_base_url(ha))
        assert bctl("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0
        wait_for(
            lambda: bctl("nodes").json()["nodes"][2]["checked_at"] is not None, 20, message="a health round"
        )

        detached = bctl("node", "detach", "2", "--yes").json()
        assert detached["action"] == "detach" and detached["node_id"] == 2 and detached["primary_id"] == 0
        assert bctl("nodes", "2").json()["detached"] is True
        attached = bctl("node", "attach", "2", "--yes").json()
        assert attached["action"] == "attach"
        wait_for(lambda: bctl("nodes", "2").json()["status"] == "up", 20, message="backend 2 up again")
        assert bctl("nodes", "2").json()["detached"] is False
        # The same two actions as tables.
        detach_table = bctl("--table", "node", "detach", "2", "--yes")
        assert detach_table.code == 0 and bctl("nodes", "2").json()["detached"] is True
        check_golden("bctl_node_detach", detach_table.stdout)
        attach_table = bctl("--table", "node", "attach", "2", "--yes")
        assert attach_table.code == 0
        check_golden("bctl_node_attach", attach_table.stdout)
        wait_for(lambda: bctl("nodes", "2").json()["status"] == "up", 20, message="backend 2 up again")

        epoch = bctl("status").json()["epoch"]
        switched_table = bctl("--table", "switchover", "--to", "1", "--yes")
        assert switched_table.code == 0, switched_table.stderr
        check_golden("bctl_switchover", switched_table.stdout)
        assert bctl("status").json()["epoch"] > epoch
        assert cluster.psql(cluster.nodes[1], "SELECT pg_is_in_recovery()") == "f"
        nodes = bctl("nodes").json()
        assert nodes["primary_id"] == 1 and nodes["nodes"][1]["role"] == "primary"
        with psycopg.connect(ha.dsn(USER, APP_DB, PASSWORD), autocommit=True) as conn:
            conn.execute("CREATE TABLE IF NOT EXISTS after_switchover (x int)")
            port = conn.execute(
                "INSERT INTO after_switchover VALUES (1) RETURNING inet_server_port()"
            ).fetchone()
        assert port is not None and port[0] == cluster.nodes[1].port

        # The old primary was rejoined by the switchover; `node rejoin` maps to /nodes/0/recovery.
        wait_for(
            lambda: cluster.psql(cluster.nodes[0], "SELECT pg_is_in_recovery()") == "t", 60, message="rejoin"
        )
        refused_rejoin = bctl("node", "rejoin", "0", "--yes")
        assert refused_rejoin.code == 1 and "HTTP 409" in refused_rejoin.stderr
        assert "already an up standby; detach it first" in refused_rejoin.stderr
        assert bctl("node", "detach", "0", "--yes").json()["action"] == "detach"
        rejoined = bctl("node", "rejoin", "0", "--yes").json()
        assert rejoined["action"] == "recovery" and rejoined["node_id"] == 0 and rejoined["primary_id"] == 1
        wait_for(lambda: bctl("nodes", "0").json()["status"] == "up", 30, message="backend 0 rejoined")
        assert cluster.psql(cluster.nodes[0], "SELECT pg_is_in_recovery()") == "t"
        refused = bctl("node", "promote", "1", "--yes")
        assert refused.code == 1 and "HTTP 409" in refused.stderr

        # promote with the primary up is a switchover back to backend 0.
        promoted = bctl("node", "promote", "0", "--yes").json()
        assert promoted["action"] == "promote" and promoted["primary_id"] == 0
        assert cluster.psql(cluster.nodes[0], "SELECT pg_is_in_recovery()") == "f"
        assert bctl("nodes").json()["primary_id"] == 0
    finally:
        ha.stop()


# --------------------------------------------------------------------------- a watchdog cluster


@pytest.mark.slow
def test_cluster_follows_the_watchdog_leader(pg_cluster: PgClusterLike, tmp_path: Path) -> None:
    # One signing key on every node, as a cluster should have it: a token from one works on all.
    with watchdog_nodes(pg_cluster, tmp_path / "nodes", api_jwt_secret=JWT_SECRET) as group:
        nodes = group.live()
        wait_leader(nodes)
        apis = [api_base_url(node) for node in nodes]
        cluster = ",".join(api.removeprefix("http://") for api in apis)
        runner = BctlRunner(tmp_path / "home", extra_env={"PGBALANCER_URL": apis[0]})
        assert runner("login", "--user", ADMIN, "--password-stdin", stdin=ADMIN_PASSWORD).code == 0

        # Leadership may move under CPU load: each check runs while one leader led throughout (the
        # nodes' /watchdog/info agree on it, in the same term, just before and just after the call).
        leader, status = under_one_leader(
            nodes, lambda: runner("--cluster", cluster, "watchdog-status").json()
        )
        assert status["enabled"] is True and status["leader"] == leader and len(status["nodes"]) == 3
        assert [n["id"] for n in status["nodes"] if n["role"] == "leader"] == [leader]
        leader, table = under_one_leader(
            nodes, lambda: runner("--cluster", cluster, "--table", "watchdog-status")
        )
        assert table.code == 0 and leader in table.stdout and "members" in table.stdout
        check_golden("bctl_watchdog_status", table.stdout, also=watchdog_masks)

        # A control command goes to the leader's API, whichever node is listed first.
        leader, reloaded = under_one_leader(
            nodes, lambda: runner("--cluster", cluster, "--verbose", "reload")
        )
        leader_api = apis[index_of(group, leader)]
        assert reloaded.json()["reloaded"] is True
        assert f"the watchdog leader is {leader} at {leader_api}" in reloaded.stderr
        assert f"> POST {leader_api}/api/v1/control/reload -> 200" in reloaded.stderr

        spare = f"127.0.0.1:{free_tcp_port()}"
        added = runner("--cluster", cluster, "watchdog", "add", spare, "--yes").json()
        assert added["added"] == spare and spare in added["members"]
        wait_for(lambda: len(runner("--cluster", cluster, "watchdog-status").json()["nodes"]) == 4, 15)
        removed = runner("--cluster", cluster, "watchdog", "remove", spare, "--yes").json()
        assert removed["removed"] == spare and spare not in removed["members"]
        wait_for(lambda: len(runner("--cluster", cluster, "watchdog-status").json()["nodes"]) == 3, 15)
        # The same two actions as tables.
        add_table = runner("--table", "--cluster", cluster, "watchdog", "add", spare, "--yes")
        assert add_table.code == 0, add_table.stderr
        check_golden("bctl_watchdog_add", add_table.stdout)
        wait_for(lambda: len(runner("--cluster", cluster, "watchdog-status").json()["nodes"]) == 4, 15)
        remove_table = runner("--table", "--cluster", cluster, "watchdog", "remove", spare, "--yes")
        assert remove_table.code == 0, remove_table.stderr
        check_golden("bctl_watchdog_remove", remove_table.stdout)
        wait_for(lambda: len(runner("--cluster", cluster, "watchdog-status").json()["nodes"]) == 3, 15)
        again = runner("--cluster", cluster, "watchdog", "remove", spare, "--yes")
        assert again.code == 1 and "HTTP 404" in again.stderr

        # The leader dies: bctl skips its dead API and follows the new leader.
        leader = wait_leader(nodes)
        group.kill(index_of(group, leader))
        # the survivors agree on one of themselves (never the killed one) before and after the call
        new_leader, moved = under_one_leader(
            group.live(), lambda: runner("--cluster", cluster, "--verbose", "reload"), timeout=40
        )
        assert new_leader != leader
        new_api = apis[index_of(group, new_leader)]
        assert moved.code == 0, moved.stderr
        assert f"the watchdog leader is {new_leader} at {new_api}" in moved.stderr
