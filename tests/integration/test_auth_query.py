"""auth_query end to end: SCRAM roles missing from auth_file log in, and reach the backend by
pass-through, with no plaintext password anywhere in pgbalancer (PgBouncer's long-open gap)."""

from __future__ import annotations

import asyncio
import hashlib
from collections.abc import Callable
from pathlib import Path

import asyncpg
import psycopg
import pytest

from pgbalancer.devtools import wait_for
from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB, LocalPgCluster, PgClusterLike
from tests.integration.proxy_support import USERLIST, BalancerFactory, base_settings, write_userlist

SCRAM_ROLE, SCRAM_PASSWORD = "aq_scram", "aq-scram-secret"  # in no auth file: only auth_query knows it
LOOKUP_ROLE, LOOKUP_PASSWORD = "aq_lookup", "aq-lookup-secret"
LOOKUP_FUNCTION_QUERY = "SELECT usename, passwd FROM pgbalancer.user_lookup($1)"
INJECTION = "x' OR '1'='1"

ROLES_SQL = f"""
SET password_encryption = 'scram-sha-256';
DO $$ BEGIN
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{SCRAM_ROLE}') THEN
    CREATE ROLE {SCRAM_ROLE} LOGIN PASSWORD '{SCRAM_PASSWORD}';
  END IF;
  IF NOT EXISTS (SELECT FROM pg_roles WHERE rolname = '{LOOKUP_ROLE}') THEN
    CREATE ROLE {LOOKUP_ROLE} LOGIN PASSWORD '{LOOKUP_PASSWORD}';
  END IF;
END $$;
"""

# PgBouncer's recommended lookup function: auth_user reads one user's secret, never pg_shadow itself.
LOOKUP_FUNCTION_SQL = f"""
CREATE SCHEMA IF NOT EXISTS pgbalancer;
CREATE OR REPLACE FUNCTION pgbalancer.user_lookup(i_username text, OUT usename name, OUT passwd text)
  RETURNS record LANGUAGE sql SECURITY DEFINER SET search_path = pg_catalog
  AS $$ SELECT usename, passwd FROM pg_catalog.pg_shadow WHERE usename = i_username $$;
REVOKE ALL ON FUNCTION pgbalancer.user_lookup(text) FROM PUBLIC;
GRANT USAGE ON SCHEMA pgbalancer TO {LOOKUP_ROLE};
GRANT EXECUTE ON FUNCTION pgbalancer.user_lookup(text) TO {LOOKUP_ROLE};
"""


def create_lookup_roles(cluster: PgClusterLike) -> None:
    cluster.psql(cluster.primary, ROLES_SQL)
    cluster.psql(cluster.primary, LOOKUP_FUNCTION_SQL, dbname=APP_DB)


@pytest.fixture(scope="module")
def lookup_roles(pg_cluster: PgClusterLike) -> PgClusterLike:
    create_lookup_roles(pg_cluster)
    return pg_cluster


async def _asyncpg_login(url: str) -> str:
    try:
        conn = await asyncpg.connect(url)
    except asyncpg.PostgresError as exc:
        return f"{exc.sqlstate}: {exc}"
    await conn.close()
    return "ok"


def login_outcome(node: BalancerProcess, user: str, password: str, dbname: str = APP_DB) -> str:
    """'ok', or 'SQLSTATE: message' of the refusal."""
    return asyncio.run(_asyncpg_login(node.dsn_url(user, dbname, password)))


def current_user(node: BalancerProcess, user: str, password: str) -> str:
    with psycopg.connect(node.dsn(user, APP_DB, password)) as conn:
        row = conn.execute("SELECT current_user").fetchone()
    assert row is not None
    return str(row[0])


def assert_no_plaintext_in(node: BalancerProcess, workdir: Path) -> None:
    files = [*workdir.rglob("*.txt"), node.config_path]
    assert all(SCRAM_PASSWORD not in path.read_text() for path in files)
    assert SCRAM_PASSWORD not in node.log_text()


@pytest.fixture
def superuser_node(lookup_roles: PgClusterLike, balancer_factory: BalancerFactory) -> BalancerProcess:
    # postgres is trusted by the test cluster's pg_hba, so auth_file needs no entry for it.
    return balancer_factory(auth_user="postgres", auth_dbname="postgres")


@pytest.fixture
def function_node(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory, tmp_path: Path
) -> BalancerProcess:
    auth_file = write_userlist(tmp_path / "with-lookup.txt", {**USERLIST, LOOKUP_ROLE: LOOKUP_PASSWORD})
    return balancer_factory(
        auth_file=str(auth_file), auth_user=LOOKUP_ROLE, auth_query=LOOKUP_FUNCTION_QUERY, auth_dbname=APP_DB
    )


def test_the_backend_demands_scram_from_the_lookup_role(lookup_roles: PgClusterLike) -> None:
    # What makes the tests below prove pass-through: without a password the server refuses the role.
    with pytest.raises(psycopg.OperationalError, match="password"):
        psycopg.connect(lookup_roles.primary.dsn(SCRAM_ROLE, APP_DB))


@pytest.mark.slow
def test_scram_role_in_no_auth_file_logs_in_through_pg_shadow_and_passes_through(
    superuser_node: BalancerProcess, tmp_path: Path
) -> None:
    assert current_user(superuser_node, SCRAM_ROLE, SCRAM_PASSWORD) == SCRAM_ROLE
    assert current_user(superuser_node, "app_scram", USERLIST["app_scram"]) == "app_scram"  # file users too
    assert_no_plaintext_in(superuser_node, tmp_path)


@pytest.mark.slow
def test_pgbouncer_style_security_definer_function_with_its_own_auth_user(
    function_node: BalancerProcess, tmp_path: Path
) -> None:
    assert current_user(function_node, SCRAM_ROLE, SCRAM_PASSWORD) == SCRAM_ROLE
    assert login_outcome(function_node, SCRAM_ROLE, "not-the-password").startswith("28P01")
    assert login_outcome(function_node, "aq_nobody", "whatever").startswith("28000")
    injected = login_outcome(function_node, INJECTION, "whatever")
    assert injected.startswith("28000") and 'password authentication failed for user "x' in injected
    assert_no_plaintext_in(function_node, tmp_path)


@pytest.mark.slow
def test_wrong_password_unknown_role_and_injection_through_pg_shadow(superuser_node: BalancerProcess) -> None:
    assert login_outcome(superuser_node, SCRAM_ROLE, "not-the-password").startswith("28P01")
    assert login_outcome(superuser_node, "aq_nobody", "whatever").startswith("28000")
    assert login_outcome(superuser_node, INJECTION, "whatever").startswith("28000")
    assert login_outcome(superuser_node, SCRAM_ROLE, SCRAM_PASSWORD) == "ok"


@pytest.mark.slow
def test_md5_hash_from_pg_shadow_serves_md5_clients(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory, tmp_path: Path
) -> None:
    stored = lookup_roles.psql(lookup_roles.primary, "SELECT passwd FROM pg_shadow WHERE usename = 'app_md5'")
    assert stored == "md5" + hashlib.md5(b"md5-secret" + b"app_md5").hexdigest()
    empty_auth_file = write_userlist(tmp_path / "empty.txt", {})
    node = balancer_factory(
        auth_type="md5", auth_file=str(empty_auth_file), auth_user="postgres", auth_dbname="postgres"
    )
    assert current_user(node, "app_md5", "md5-secret") == "app_md5"
    assert login_outcome(node, "app_md5", "wrong").startswith("28P01")


@pytest.mark.slow
def test_auth_user_that_cannot_log_in_is_a_clear_fatal_and_file_users_carry_on(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory, tmp_path: Path
) -> None:
    auth_file = write_userlist(tmp_path / "bad-lookup.txt", {**USERLIST, LOOKUP_ROLE: "not-its-password"})
    node = balancer_factory(
        auth_file=str(auth_file), auth_user=LOOKUP_ROLE, auth_query=LOOKUP_FUNCTION_QUERY, auth_dbname=APP_DB
    )
    outcome = login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD)
    assert outcome.startswith("08006") and "auth_query" in outcome, outcome
    assert current_user(node, "app_scram", USERLIST["app_scram"]) == "app_scram"
    assert node.process.poll() is None
    assert "auth_query as 'aq_lookup'" in node.log_text()


@pytest.mark.slow
def test_a_query_error_is_a_fatal_that_names_the_sqlstate(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory
) -> None:
    node = balancer_factory(
        auth_user="postgres",
        auth_dbname="postgres",
        auth_query="SELECT passwd FROM no_such_table WHERE u = $1",
    )
    outcome = login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD)
    assert outcome.startswith("08006") and "SQLSTATE 42P01" in outcome, outcome
    assert current_user(node, "app_scram", USERLIST["app_scram"]) == "app_scram"


@pytest.mark.slow
def test_auth_user_switched_on_by_reload(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory
) -> None:
    node = balancer_factory()
    assert login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD).startswith("28000")
    config = node.config_path.read_text()
    node.config_path.write_text(config + "auth_user = 'postgres'\nauth_dbname = 'postgres'\n")
    node.reload()
    wait_for(
        lambda: login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD) == "ok",
        timeout=10,
        message="auth_query did not start working after SIGHUP",
    )


@pytest.mark.slow
def test_auth_dbname_defaults_to_the_clients_database(function_node_default_db: BalancerProcess) -> None:
    assert current_user(function_node_default_db, SCRAM_ROLE, SCRAM_PASSWORD) == SCRAM_ROLE


@pytest.fixture
def function_node_default_db(
    lookup_roles: PgClusterLike, balancer_factory: BalancerFactory, tmp_path: Path
) -> BalancerProcess:
    # The lookup function exists only in database app, which is where the client goes.
    auth_file = write_userlist(tmp_path / "with-lookup.txt", {**USERLIST, LOOKUP_ROLE: LOOKUP_PASSWORD})
    return balancer_factory(auth_file=str(auth_file), auth_user=LOOKUP_ROLE, auth_query=LOOKUP_FUNCTION_QUERY)


@pytest.fixture
def private_cluster(pg_cluster_factory: Callable[..., LocalPgCluster]) -> LocalPgCluster:
    cluster = pg_cluster_factory(standbys=0)
    create_lookup_roles(cluster)
    return cluster


@pytest.mark.slow
def test_primary_down_is_a_clear_fatal_and_the_node_serves_again_when_it_returns(
    private_cluster: LocalPgCluster, tmp_path: Path
) -> None:
    settings = base_settings(private_cluster, tmp_path)
    settings.update(auth_user="postgres", auth_dbname="postgres", server_connect_timeout=2)
    node = BalancerProcess.start(tmp_path / "node", settings)
    try:
        assert login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD) == "ok"  # leaves a pooled auth connection
        private_cluster.stop_node(private_cluster.primary)
        outcome = login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD)
        assert outcome.startswith("08006") and "could not look up user" in outcome, outcome
        private_cluster.start_node(private_cluster.primary)
        assert login_outcome(node, SCRAM_ROLE, SCRAM_PASSWORD) == "ok"
        assert current_user(node, "app_scram", USERLIST["app_scram"]) == "app_scram"
        assert node.process.poll() is None
    finally:
        node.stop()
