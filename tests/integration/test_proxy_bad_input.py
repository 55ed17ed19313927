"""Bad input at the proxy: protocol abuse and failed logins hurt only the offending client."""

from __future__ import annotations

import asyncio
import socket
import struct

import asyncpg
import psycopg
import pytest

from pgbalancer.devtools.balancer import BalancerProcess
from pgbalancer.devtools.pgcluster import APP_DB
from pgbalancer.pgwire.errors import parse_error_fields
from tests.integration.proxy_support import USERLIST, BalancerFactory


def startup_packet(user: str, database: str, version: int = 196608) -> bytes:
    body = struct.pack("!I", version) + f"user\0{user}\0database\0{database}\0\0".encode()
    return struct.pack("!I", len(body) + 4) + body


def read_until_closed(sock: socket.socket, limit: int = 1 << 16) -> bytes:
    received = b""
    sock.settimeout(10)
    while len(received) < limit:
        chunk = sock.recv(4096)
        if not chunk:
            break
        received += chunk
    return received


def first_error(data: bytes) -> dict[str, str]:
    position = 0
    while position + 5 <= len(data):
        message_type = data[position : position + 1]
        length = int.from_bytes(data[position + 1 : position + 5], "big")
        if message_type == b"E":
            return parse_error_fields(data[position + 5 : position + 1 + length])
        position += 1 + length
    raise AssertionError(f"no ErrorResponse in {data[:200]!r}")


def raw_exchange(node: BalancerProcess, payload: bytes) -> bytes:
    with socket.create_connection((node.host, node.port), timeout=10) as sock:
        sock.sendall(payload)
        return read_until_closed(sock)


def still_serving(node: BalancerProcess) -> bool:
    with psycopg.connect(node.dsn("app_scram", APP_DB, USERLIST["app_scram"])) as conn:
        return conn.execute("SELECT true").fetchone() == (True,)


def test_garbage_first_packet_gets_a_protocol_error(balancer: BalancerProcess) -> None:
    reply = raw_exchange(balancer, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
    assert first_error(reply)["C"] == "08P01"
    assert still_serving(balancer)


def test_the_connection_ends_right_after_a_fatal_while_the_client_still_holds_it(
    balancer: BalancerProcess,
) -> None:
    """libpq reports a FATAL only once the connection ends: pgbalancer half-closes right behind the
    message instead of waiting (its drain lasts a second) for the client to close first."""
    with socket.create_connection((balancer.host, balancer.port), timeout=10) as sock:
        sock.sendall(startup_packet("app_scram", APP_DB, version=2 << 16))
        sock.settimeout(0.5)  # well under the one-second drain that used to come first
        received = b""
        while chunk := sock.recv(4096):  # a timeout here means no EOF yet
            received += chunk
        assert first_error(received)["C"] == "0A000"
        sock.sendall(b"late bytes are drained, not answered with a reset")
    assert still_serving(balancer)


def test_two_gigabyte_startup_length_is_refused_at_once(balancer: BalancerProcess) -> None:
    reply = raw_exchange(balancer, struct.pack("!I", 2**31 - 1) + b"\x00\x03\x00\x00")
    assert first_error(reply)["C"] == "08P01"
    assert still_serving(balancer)


def test_unknown_protocol_version_is_refused(balancer: BalancerProcess) -> None:
    reply = raw_exchange(balancer, startup_packet("app_scram", APP_DB, version=2 << 16))
    error = first_error(reply)
    assert error["C"] == "0A000"
    assert "unsupported frontend protocol" in error["M"]
    assert still_serving(balancer)


def test_client_disconnecting_mid_startup_harms_nobody(balancer: BalancerProcess) -> None:
    packet = startup_packet("app_scram", APP_DB)
    for cut in (2, 7, len(packet) - 1):
        with socket.create_connection((balancer.host, balancer.port), timeout=5) as sock:
            sock.sendall(packet[:cut])
    assert still_serving(balancer)


def login_trust(sock: socket.socket) -> None:
    sock.sendall(startup_packet("app_trust", APP_DB))
    received = b""
    while not received.endswith(b"Z\x00\x00\x00\x05I"):
        chunk = sock.recv(4096)
        assert chunk, f"closed during login: {received!r}"
        received += chunk


@pytest.fixture
def trust_node(balancer_factory: BalancerFactory) -> BalancerProcess:
    return balancer_factory(auth_type="trust", num_init_children=1)


def backend_pid_via(node: BalancerProcess) -> int:
    with psycopg.connect(node.dsn("app_trust", APP_DB)) as conn:
        row = conn.execute("SELECT pg_backend_pid()").fetchone()
        assert row is not None
        return int(row[0])


def test_two_gigabyte_message_after_login_gets_fatal_08p01(trust_node: BalancerProcess) -> None:
    pid_before = backend_pid_via(trust_node)
    with socket.create_connection((trust_node.host, trust_node.port), timeout=10) as sock:
        login_trust(sock)
        sock.sendall(b"Q" + struct.pack("!I", 2**31 - 1) + b"SELECT")
        error = first_error(read_until_closed(sock))
    assert (error["S"], error["C"]) == ("FATAL", "08P01")
    assert backend_pid_via(trust_node) != pid_before  # the cut-off server connection was not reused


def test_disconnect_mid_message_after_login_does_not_reuse_the_server(trust_node: BalancerProcess) -> None:
    pid_before = backend_pid_via(trust_node)
    with socket.create_connection((trust_node.host, trust_node.port), timeout=10) as sock:
        login_trust(sock)
        sock.sendall(b"Q" + struct.pack("!I", 100) + b"SELECT 1")  # 91 bytes short
    assert backend_pid_via(trust_node) != pid_before


async def _asyncpg_login(dsn: str) -> str:
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.PostgresError as exc:
        return str(exc.sqlstate)
    await conn.close()
    return "ok"


def asyncpg_login(node: BalancerProcess, user: str, password: str) -> str:
    return asyncio.run(_asyncpg_login(node.dsn_url(user, APP_DB, password)))


@pytest.mark.parametrize("auth_type", ["scram-sha-256", "md5"])
def test_wrong_password_is_28p01_and_unknown_user_is_28000(
    balancer_factory: BalancerFactory, auth_type: str
) -> None:
    node = balancer_factory(auth_type=auth_type)
    assert asyncpg_login(node, "app_scram", USERLIST["app_scram"]) == "ok"
    assert asyncpg_login(node, "app_scram", "not-the-password") == "28P01"
    assert asyncpg_login(node, "nobody_here", "whatever") == "28000"
    with pytest.raises(psycopg.OperationalError) as wrong:
        psycopg.connect(node.dsn("app_scram", APP_DB, "not-the-password"))
    with pytest.raises(psycopg.OperationalError) as unknown:
        psycopg.connect(node.dsn("nobody_here", APP_DB, "whatever"))
    assert 'password authentication failed for user "app_scram"' in str(wrong.value)
    assert 'password authentication failed for user "nobody_here"' in str(unknown.value)
    assert "not-the-password" not in node.log_text()
    assert still_serving(node)
