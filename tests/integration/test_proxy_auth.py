"""Auth-file entries of every kind, end to end: plaintext, md5 hash, SCRAM verifier pass-through, trust."""

from __future__ import annotations

import hashlib
from pathlib import Path

import psycopg
import pytest

from pgbalancer.devtools.pgcluster import APP_DB, PgClusterLike
from tests.integration.proxy_support import BalancerFactory, write_userlist


def test_scram_verifier_entry_logs_in_to_the_backend_by_pass_through(
    balancer_factory: BalancerFactory, pg_cluster: PgClusterLike, tmp_path: Path
) -> None:
    verifier = pg_cluster.psql(
        pg_cluster.primary, "SELECT rolpassword FROM pg_authid WHERE rolname = 'app_scram'"
    ).strip()
    assert verifier.startswith("SCRAM-SHA-256$")
    auth_file = write_userlist(tmp_path / "verifiers.txt", {"app_scram": verifier})
    node = balancer_factory(auth_type="scram-sha-256", auth_file=str(auth_file))
    with psycopg.connect(node.dsn("app_scram", APP_DB, "scram-secret")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_scram",)
    with pytest.raises(psycopg.OperationalError, match="password authentication failed"):
        psycopg.connect(node.dsn("app_scram", APP_DB, "wrong"))


def test_md5_hash_entry_logs_in_to_an_md5_backend(balancer_factory: BalancerFactory, tmp_path: Path) -> None:
    md5_hash = "md5" + hashlib.md5(b"md5-secret" + b"app_md5").hexdigest()
    auth_file = write_userlist(tmp_path / "md5.txt", {"app_md5": md5_hash})
    node = balancer_factory(auth_type="md5", auth_file=str(auth_file))
    with psycopg.connect(node.dsn("app_md5", APP_DB, "md5-secret")) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_md5",)


def test_trust_without_a_secret_for_a_password_backend_says_what_to_do(
    balancer_factory: BalancerFactory,
) -> None:
    node = balancer_factory(auth_type="trust", auth_file="")
    with psycopg.connect(node.dsn("app_trust", APP_DB)) as conn:
        assert conn.execute("SELECT current_user").fetchone() == ("app_trust",)
    with pytest.raises(psycopg.OperationalError) as excinfo:
        psycopg.connect(node.dsn("app_scram", APP_DB))
    message = str(excinfo.value)
    assert "no usable secret" in message and "auth_file" in message
