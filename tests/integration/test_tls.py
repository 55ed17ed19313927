"""TLS end to end: real clients to pgbalancer over TLS, and pgbalancer to real TLS backends.

Client side (client_tls_*): psycopg with sslmode require / verify-full / client certificates,
plain clients refused under require, large results, COPY and cancel through TLS, and hostile
input around the SSLRequest. Server side (server_tls_*): a private cluster with ssl = on and a
hostssl-only pg_hba.conf, checked through pg_stat_ssl from the pgbalancer session itself.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

import psycopg
import pytest

from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import APP_DB, BENCH_DB, LocalPgCluster, PgClusterLike
from pgbalancer.pgwire.messages import PROTOCOL_VERSION_3, SSLRequest, StartupMessage
from tests.integration.proxy_support import USERLIST, BalancerFactory, base_settings
from tests.integration.tls_support import TlsFiles, give_to_postgres, make_tls_files

pytestmark = pytest.mark.slow

Poll = Callable[..., object]
_SSL_OF_MY_BACKEND = "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()"


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


def client_tls(files: TlsFiles, mode: str = "require", **extra: Setting) -> dict[str, Setting]:
    return {
        "client_tls_sslmode": mode,
        "client_tls_cert_file": str(files.server.cert),
        "client_tls_key_file": str(files.server.key),
        **extra,
    }


def connect(node: BalancerProcess, user: str = "app_scram", **conninfo: str) -> psycopg.Connection:
    dbname = BENCH_DB if user == "bench" else APP_DB
    return psycopg.connect(node.dsn(user, dbname, USERLIST[user], **conninfo), autocommit=True)


def uses_tls(conn: psycopg.Connection) -> bool:
    return bool(conn.pgconn.ssl_in_use)


# --------------------------------------------------------------------------- client side


def test_require_serves_tls_clients_and_refuses_plain_ones(
    balancer_factory: BalancerFactory, tls_files: TlsFiles
) -> None:
    node = balancer_factory(**client_tls(tls_files, "require"))
    with connect(node, sslmode="require") as conn:
        assert uses_tls(conn)
        assert conn.execute("SELECT current_user").fetchone() == ("app_scram",)
    with connect(node, sslmode="verify-full", sslrootcert=str(tls_files.ca)) as conn:
        assert uses_tls(conn)
        assert conn.execute("SELECT 40 + 2").fetchone() == (42,)
    with pytest.raises(psycopg.OperationalError, match="certificate verify failed"):
        connect(node, sslmode="verify-ca", sslrootcert=str(tls_files.other_ca))
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        connect(node, sslmode="disable")
    with connect(node, sslmode="require") as conn:  # the refusals cost the node nothing
        assert conn.execute("SELECT 1").fetchone() == (1,)


@pytest.mark.parametrize("mode", ["allow", "prefer"])
def test_allow_and_prefer_serve_tls_and_plain_clients(
    balancer_factory: BalancerFactory, tls_files: TlsFiles, mode: str
) -> None:
    node = balancer_factory(**client_tls(tls_files, mode))
    with connect(node, sslmode="require") as tls_conn, connect(node, sslmode="disable") as plain_conn:
        assert uses_tls(tls_conn)
        assert not uses_tls(plain_conn)
        assert tls_conn.execute("SELECT 1").fetchone() == plain_conn.execute("SELECT 1").fetchone() == (1,)


def test_disabled_client_tls_answers_sslrequest_with_no(balancer: BalancerProcess) -> None:
    with pytest.raises(psycopg.OperationalError, match="does not support SSL"):
        connect(balancer, sslmode="require")
    with connect(balancer, sslmode="prefer") as conn:
        assert not uses_tls(conn)


def test_verify_ca_requires_a_client_certificate_from_the_ca(
    balancer_factory: BalancerFactory, tls_files: TlsFiles
) -> None:
    node = balancer_factory(**client_tls(tls_files, "verify-ca", client_tls_ca_file=str(tls_files.ca)))
    certificate = {"sslcert": str(tls_files.client_app.cert), "sslkey": str(tls_files.client_app.key)}
    with connect(node, sslmode="require", **certificate) as conn:
        assert uses_tls(conn)
        assert conn.execute("SELECT current_user").fetchone() == ("app_scram",)
    no_certificate = {"sslcert": "/nonexistent.crt", "sslkey": "/nonexistent.key"}
    # The handshake fails, or with TLS 1.3 the first read after it: the server checks late.
    with pytest.raises(psycopg.OperationalError), connect(node, sslmode="require", **no_certificate) as conn:
        conn.execute("SELECT 1")
    with pytest.raises(psycopg.OperationalError, match="SSL required"):
        connect(node, sslmode="disable")


def test_large_results_and_copy_both_ways_through_tls(
    balancer_factory: BalancerFactory, tls_files: TlsFiles
) -> None:
    node = balancer_factory(**client_tls(tls_files, "require"))
    with connect(node, sslmode="require") as conn:
        rows = conn.execute("SELECT g, repeat('x', 100) FROM generate_series(1, 100000) g").fetchall()
        assert len(rows) == 100000
        assert rows[-1] == (100000, "x" * 100)
        conn.execute("CREATE TEMP TABLE copied (id int, name text)")
        with conn.cursor().copy("COPY copied FROM STDIN") as copy:
            for index in range(100000):
                copy.write_row((index, f"name-{index}"))
        assert conn.execute("SELECT count(*), sum(id) FROM copied").fetchone() == (100000, 4999950000)
        out = io.BytesIO()
        with conn.cursor().copy("COPY (SELECT * FROM copied ORDER BY id) TO STDOUT") as copy:
            for block in copy:
                out.write(block)
    lines = out.getvalue().decode().splitlines()
    assert len(lines) == 100000
    assert lines[99999] == "99999\tname-99999"


def test_transaction_pooling_over_tls_on_both_sides(
    tls_cluster: LocalPgCluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    settings: dict[str, Setting] = {
        **client_tls(tls_files, "require"),
        "pool_mode": "transaction",
        "server_tls_sslmode": "verify-full",
        "server_tls_ca_file": str(tls_files.ca),
    }
    with (
        balancer_for(tls_cluster, tmp_path / "tx", **settings) as node,
        connect(node, sslmode="require") as first,
        connect(node, sslmode="require") as second,
    ):
        for round_number in range(20):  # server connections change hands between transactions
            for conn in (first, second):
                with conn.transaction():
                    row = conn.execute(
                        f"SELECT ssl, {round_number} FROM pg_stat_ssl WHERE pid = pg_backend_pid()"
                    )
                    assert row.fetchone() == (True, round_number)
        assert uses_tls(first)
        assert uses_tls(second)


def test_cancel_reaches_the_backend_through_tls(
    balancer_factory: BalancerFactory, tls_files: TlsFiles, pg_cluster: PgClusterLike, poll: Poll
) -> None:
    node = balancer_factory(**client_tls(tls_files, "require"))
    outcome: list[BaseException | None] = []
    with connect(node, sslmode="require") as conn:

        def run_long_query() -> None:
            try:
                conn.execute("SELECT pg_sleep(60) /* tls-cancel-test */")
                outcome.append(None)
            except BaseException as exc:
                outcome.append(exc)

        worker = threading.Thread(target=run_long_query)
        worker.start()
        try:
            poll(lambda: _sleeping_sessions(pg_cluster) == 1, timeout=10, message="the query never started")
            conn.cancel_safe(timeout=10)  # libpq 17+ negotiates TLS for the cancel connection too
        finally:
            worker.join(20)
    assert len(outcome) == 1
    assert isinstance(outcome[0], psycopg.errors.QueryCanceled)


def _sleeping_sessions(cluster: PgClusterLike) -> int:
    sql = (
        "SELECT count(*) FROM pg_stat_activity "
        "WHERE query LIKE '%tls-cancel-test%' AND pid <> pg_backend_pid()"
    )
    return int(cluster.psql(cluster.primary, sql))


def _read_until_eof(sock: socket.socket) -> bytes:
    sock.settimeout(10)
    received = bytearray()
    with contextlib.suppress(ConnectionResetError):
        while chunk := sock.recv(4096):
            received += chunk
    return bytes(received)


def test_garbage_instead_of_a_client_hello_ends_only_that_session(
    balancer_factory: BalancerFactory, tls_files: TlsFiles
) -> None:
    node = balancer_factory(**client_tls(tls_files, "require"))
    with socket.create_connection((node.host, node.port), timeout=10) as raw:
        raw.sendall(SSLRequest().encode())
        assert raw.recv(1) == b"S"
        raw.sendall(b"\x00\x00\x00\x08\x04\xd2\x16\x2f" + b"not a ClientHello" * 10)
        _read_until_eof(raw)  # the node hangs up (after a TLS alert, maybe) instead of waiting
    with connect(node, sslmode="require") as conn:
        assert conn.execute("SELECT 1").fetchone() == (1,)


def test_bytes_sent_before_the_tls_handshake_are_refused(
    balancer_factory: BalancerFactory, tls_files: TlsFiles
) -> None:
    node = balancer_factory(**client_tls(tls_files, "require"))
    startup = StartupMessage(PROTOCOL_VERSION_3, {"user": "app_trust", "database": APP_DB}).encode()
    with socket.create_connection((node.host, node.port), timeout=10) as raw:
        raw.sendall(SSLRequest().encode() + startup)  # injected plaintext riding behind the SSLRequest
        answer = _read_until_eof(raw)
    assert answer.startswith(b"E")
    assert b"C08P01\x00" in answer
    assert b"received unencrypted data after SSL request" in answer


# --------------------------------------------------------------------------- server side


_HOSTSSL_ONLY_HBA = """\
local   all  all                      trust
hostssl all  bench      127.0.0.1/32  cert
hostssl all  app_scram  127.0.0.1/32  scram-sha-256
hostssl all  app_md5    127.0.0.1/32  md5
hostssl all  postgres   127.0.0.1/32  trust
hostssl all  app_trust  127.0.0.1/32  trust
hostssl all  all        127.0.0.1/32  scram-sha-256
"""


@pytest.fixture
def postgres_tls_dir() -> Iterator[Path]:
    """A directory the postgres OS user can read (pytest's tmp dirs are private to root)."""
    directory = Path(tempfile.mkdtemp(prefix="pgbalancer-tls-", dir="/tmp"))
    try:
        yield directory
    finally:
        shutil.rmtree(directory, ignore_errors=True)


@pytest.fixture
def tls_cluster(
    pg_cluster_factory: Callable[..., LocalPgCluster], tls_files: TlsFiles, postgres_tls_dir: Path
) -> LocalPgCluster:
    """A primary with ssl = on whose pg_hba.conf admits TCP clients over TLS only."""
    hba = tls_files.directory / "hostssl_only_hba.conf"
    hba.write_text(_HOSTSSL_ONLY_HBA)
    cert, key, ca, hba_copy = give_to_postgres(
        [tls_files.server.cert, tls_files.server.key, tls_files.ca, hba], postgres_tls_dir
    )
    extra_conf = {
        "ssl": "on",
        "ssl_cert_file": str(cert),
        "ssl_key_file": str(key),
        "ssl_ca_file": str(ca),
        "hba_file": str(hba_copy),
    }
    return pg_cluster_factory(standbys=0, extra_conf=extra_conf)


@contextlib.contextmanager
def balancer_for(cluster: PgClusterLike, workdir: Path, **overrides: Setting) -> Iterator[BalancerProcess]:
    workdir.mkdir(parents=True)
    settings = base_settings(cluster, workdir)
    settings.update(overrides)
    node = BalancerProcess.start(workdir, settings)
    try:
        yield node
    finally:
        node.stop()


def backend_uses_tls(node: BalancerProcess, user: str = "app_scram") -> bool:
    with connect(node, user, sslmode="disable") as conn:
        row = conn.execute(_SSL_OF_MY_BACKEND).fetchone()
    assert row is not None
    return bool(row[0])


def test_server_tls_modes_against_a_hostssl_only_backend(
    tls_cluster: LocalPgCluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    with pytest.raises(psycopg.OperationalError, match="no encryption"):  # the backend really is TLS-only
        psycopg.connect(tls_cluster.primary.dsn("app_trust", APP_DB) + " sslmode=disable")
    ca = str(tls_files.ca)
    for index, (mode, extra) in enumerate(
        [
            ("require", {}),
            ("verify-ca", {"server_tls_ca_file": ca}),
            ("verify-full", {"server_tls_ca_file": ca}),
            ("prefer", {}),
            ("allow", {}),  # the plain login is refused (28000), so it tries again over TLS
        ]
    ):
        with balancer_for(tls_cluster, tmp_path / f"n{index}", server_tls_sslmode=mode, **extra) as node:
            assert backend_uses_tls(node), mode
    with (
        balancer_for(tls_cluster, tmp_path / "disabled") as node,
        pytest.raises(psycopg.OperationalError, match="no encryption"),
    ):
        backend_uses_tls(node)
    with (
        balancer_for(
            tls_cluster,
            tmp_path / "other-ca",
            server_tls_sslmode="verify-ca",
            server_tls_ca_file=str(tls_files.other_ca),
        ) as node,
        pytest.raises(psycopg.OperationalError, match="certificate verify failed"),
    ):
        backend_uses_tls(node)


def test_client_certificate_towards_the_backend(
    tls_cluster: LocalPgCluster, tls_files: TlsFiles, tmp_path: Path
) -> None:
    certificate: dict[str, Setting] = {
        "server_tls_cert_file": str(tls_files.client_bench.cert),
        "server_tls_key_file": str(tls_files.client_bench.key),
    }
    with balancer_for(tls_cluster, tmp_path / "cert", server_tls_sslmode="require", **certificate) as node:
        assert backend_uses_tls(node, "bench")  # pg_hba says `cert` for bench: no password, the certificate
    with (
        balancer_for(tls_cluster, tmp_path / "no-cert", server_tls_sslmode="require") as node,
        pytest.raises(psycopg.OperationalError, match="certificate"),
    ):
        backend_uses_tls(node, "bench")


def test_verify_full_checks_the_backend_name_where_verify_ca_does_not(
    tls_cluster: LocalPgCluster, tls_files: TlsFiles, postgres_tls_dir: Path, tmp_path: Path, poll: Poll
) -> None:
    cert, key = give_to_postgres(
        [tls_files.wrong_host_server.cert, tls_files.wrong_host_server.key], postgres_tls_dir / "wrong"
    )
    shutil.copyfile(cert, postgres_tls_dir / tls_files.server.cert.name)
    shutil.copyfile(key, postgres_tls_dir / tls_files.server.key.name)
    tls_cluster.psql(tls_cluster.primary, "SELECT pg_reload_conf()")
    direct = tls_cluster.primary.dsn("app_trust", APP_DB) + f" sslmode=verify-full sslrootcert={tls_files.ca}"

    def serves_the_wrong_host_certificate() -> bool:
        try:
            psycopg.connect(direct).close()
        except psycopg.OperationalError as exc:
            return "mismatch" in str(exc) or "does not match" in str(exc)
        return False

    poll(serves_the_wrong_host_certificate, timeout=10, message="the backend kept its old certificate")
    ca = {"server_tls_ca_file": str(tls_files.ca)}
    with balancer_for(tls_cluster, tmp_path / "ca", server_tls_sslmode="verify-ca", **ca) as node:
        assert backend_uses_tls(node)
    with (
        balancer_for(tls_cluster, tmp_path / "full", server_tls_sslmode="verify-full", **ca) as node,
        pytest.raises(psycopg.OperationalError, match="certificate verify failed"),
    ):
        backend_uses_tls(node)


def test_prefer_falls_back_to_plain_and_require_refuses_a_backend_without_tls(
    balancer_factory: BalancerFactory,
) -> None:
    assert not backend_uses_tls(balancer_factory(server_tls_sslmode="prefer"))
    assert not backend_uses_tls(balancer_factory(server_tls_sslmode="allow"))
    with pytest.raises(psycopg.OperationalError, match="does not support TLS"):
        backend_uses_tls(balancer_factory(server_tls_sslmode="require"))
