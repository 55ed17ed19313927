"""TLS settings: config validation, the SSL contexts built from them, and TlsConnection on a socketpair.

The socketpair tests run the real handshake code of both directions against each other
(pgbalancer as TLS server for a client, and as TLS client of a backend) without PostgreSQL.
"""

from __future__ import annotations

import socket as stdlib_socket
import ssl
from collections.abc import Iterator
from pathlib import Path

import pytest
import trio
import trio.testing

from pgbalancer.config import ConfigError, SslMode, load_config, parse_config_text
from pgbalancer.pgwire.errors import ProtocolError, SqlState
from pgbalancer.pgwire.messages import SSLRequest
from pgbalancer.proxy.netio import TcpConnection
from pgbalancer.proxy.tls import (
    ClientTls,
    ServerTls,
    ServerTlsError,
    TlsConnection,
    TlsContexts,
    TlsHandshakeFailed,
    answer_ssl_request,
    start_server_tls,
    tls_description,
)
from tests.integration.tls_support import TlsFiles, make_tls_files


@pytest.fixture(scope="module")
def tls_files(tmp_path_factory: pytest.TempPathFactory) -> TlsFiles:
    return make_tls_files(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def plain() -> Iterator[TcpConnection]:
    with stdlib_socket.socket() as sock:
        yield TcpConnection(trio.socket.from_stdlib_socket(sock), "peer")


def parse(text: str) -> object:
    return parse_config_text("backend_hostname0 = db\nauth_type = trust\n" + text)


def config_errors(text: str) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        parse(text)
    return caught.value.errors


# --------------------------------------------------------------------------- config


def test_tls_is_off_by_default_in_both_directions() -> None:
    config = parse_config_text("backend_hostname0 = db\nauth_type = trust")
    assert config.client_tls_sslmode is SslMode.DISABLE
    assert config.server_tls_sslmode is SslMode.DISABLE
    contexts = TlsContexts.from_config(config)
    assert contexts.client.context is None
    assert contexts.server.context is None


def test_client_tls_needs_a_certificate_and_a_key() -> None:
    errors = config_errors("client_tls_sslmode = require\n")
    assert len(errors) == 2
    assert "client_tls_sslmode = 'require' needs client_tls_cert_file" in errors[0]
    assert "needs client_tls_key_file" in errors[1]
    assert all("pgbalancer.conf:3" in error for error in errors)


def test_client_certificate_checks_need_a_ca() -> None:
    errors = config_errors(
        "client_tls_sslmode = verify-ca\nclient_tls_cert_file = c\nclient_tls_key_file = k\n"
    )
    assert errors == [
        "pgbalancer.conf:3: client_tls_sslmode = 'verify-ca' checks client certificates but "
        "client_tls_ca_file is empty; set it to the PEM file of the CA that signs them, or use "
        "client_tls_sslmode = require"
    ]


def test_a_backend_client_certificate_needs_its_key() -> None:
    errors = config_errors("server_tls_cert_file = c\n")
    assert errors == [
        "pgbalancer.conf:3: server_tls_cert_file is set but server_tls_key_file is empty; a client "
        "certificate for the backends needs both, so set server_tls_key_file or clear server_tls_cert_file"
    ]


def test_unknown_sslmode_suggests_the_close_one() -> None:
    (error,) = config_errors("server_tls_sslmode = verify_full\n")
    assert "did you mean 'verify-full'?" in error


def test_load_config_checks_that_tls_files_exist_and_load(tmp_path: Path, tls_files: TlsFiles) -> None:
    conf = tmp_path / "pgbalancer.conf"
    conf.write_text(
        "backend_hostname0 = db\nauth_type = trust\nclient_tls_sslmode = require\n"
        f"client_tls_cert_file = '{tls_files.server.cert}'\nclient_tls_key_file = 'missing.key'\n"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(conf, env={})
    assert caught.value.errors == [
        f"{conf}:5: client_tls_key_file = '{tmp_path / 'missing.key'}': no such file; put the PEM file "
        "there or set client_tls_key_file to its path"
    ]
    # A key that does not match the certificate is caught by --check, not at the first client.
    conf.write_text(conf.read_text().replace("missing.key", str(tls_files.client_app.key)))
    with pytest.raises(ConfigError, match="client_tls_cert_file and client_tls_key_file cannot be loaded"):
        load_config(conf, env={})


def test_load_config_refuses_a_ca_file_that_is_not_pem(tmp_path: Path) -> None:
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    conf = tmp_path / "pgbalancer.conf"
    conf.write_text("backend_hostname0 = db\nauth_type = trust\nserver_tls_ca_file = ca.pem\n")
    with pytest.raises(ConfigError, match=r"pgbalancer.conf:3: server_tls_ca_file = .* cannot be loaded"):
        load_config(conf, env={})


def tls_config(files: TlsFiles, client_mode: str, server_mode: str) -> TlsContexts:
    config = parse_config_text(
        "backend_hostname0 = db\nauth_type = trust\n"
        f"client_tls_sslmode = {client_mode}\nserver_tls_sslmode = {server_mode}\n"
        f"client_tls_cert_file = '{files.server.cert}'\nclient_tls_key_file = '{files.server.key}'\n"
        f"client_tls_ca_file = '{files.ca}'\nserver_tls_ca_file = '{files.ca}'\n"
    )
    return TlsContexts.from_config(config)


@pytest.mark.parametrize(
    ("mode", "verify_mode", "check_hostname"),
    [
        ("allow", ssl.CERT_NONE, False),
        ("prefer", ssl.CERT_NONE, False),
        ("require", ssl.CERT_NONE, False),
        ("verify-ca", ssl.CERT_REQUIRED, False),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_backend_context_follows_libpq_sslmode(
    tls_files: TlsFiles, mode: str, verify_mode: ssl.VerifyMode, check_hostname: bool
) -> None:
    server = tls_config(tls_files, "disable", mode).server
    assert server.context is not None
    assert server.context.verify_mode == verify_mode
    assert server.context.check_hostname is check_hostname
    assert server.context.minimum_version is ssl.TLSVersion.TLSv1_2
    assert server.asks_first is (mode != "allow")
    assert server.requires_tls is (mode not in ("allow", "prefer"))


def test_only_allow_retries_a_refused_plain_login_over_tls(tls_files: TlsFiles) -> None:
    hba_refusal = SqlState.INVALID_AUTHORIZATION_SPECIFICATION
    assert ServerTls(SslMode.ALLOW, None).retries_with_tls(hba_refusal)
    assert not ServerTls(SslMode.ALLOW, None).retries_with_tls(SqlState.INVALID_PASSWORD)
    assert not ServerTls(SslMode.PREFER, None).retries_with_tls(hba_refusal)


@pytest.mark.parametrize(
    ("mode", "verify_mode", "refuses_plain"),
    [
        ("allow", ssl.CERT_NONE, False),
        ("prefer", ssl.CERT_NONE, False),
        ("require", ssl.CERT_NONE, True),
        ("verify-ca", ssl.CERT_REQUIRED, True),
        ("verify-full", ssl.CERT_REQUIRED, True),
    ],
)
def test_client_context_follows_pgbouncer_sslmode(
    tls_files: TlsFiles, plain: TcpConnection, mode: str, verify_mode: ssl.VerifyMode, refuses_plain: bool
) -> None:
    client = tls_config(tls_files, mode, "disable").client
    assert client.context is not None
    assert client.context.verify_mode == verify_mode
    rejection = client.plaintext_rejection(plain)
    assert (rejection is not None) is refuses_plain
    if rejection is not None:
        assert rejection[0] == SqlState.INVALID_AUTHORIZATION_SPECIFICATION
        assert rejection[1].startswith("SSL required")


# --------------------------------------------------------------------------- socketpair handshakes


async def _connected_pair(
    files: TlsFiles, client_mode: str = "require", server_mode: str = "verify-full"
) -> tuple[TlsConnection, TlsConnection]:
    """(pgbalancer's side towards a client, pgbalancer's side towards a backend), handshaken."""
    contexts = tls_config(files, client_mode, server_mode)
    near, far = trio.socket.socketpair()
    accepted: list[TlsConnection] = []

    async def accept() -> None:
        raw = TcpConnection(far, "client")
        request = bytearray(8)
        assert await raw.recv_into(request) == 8
        assert bytes(request) == SSLRequest().encode()
        upgraded = await answer_ssl_request(raw, contexts.client, b"")
        assert isinstance(upgraded, TlsConnection)
        accepted.append(upgraded)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        connected = await start_server_tls(TcpConnection(near, "backend"), contexts.server, "localhost")
    assert isinstance(connected, TlsConnection)
    return accepted[0], connected


async def _receive_exactly(connection: TlsConnection, size: int, chunk: int) -> bytes:
    received = bytearray()
    buffer = bytearray(chunk)
    while len(received) < size:
        count = await connection.recv_into(buffer)
        assert count > 0, "closed early"
        received += buffer[:count]
    return bytes(received)


async def test_tls_connections_carry_bytes_both_ways_at_once(tls_files: TlsFiles) -> None:
    accepted, connected = await _connected_pair(tls_files)
    payload = bytes(range(256)) * 4096  # 1 MiB, many TLS records
    results: dict[str, bytes] = {}

    async def receive(name: str, connection: TlsConnection, chunk: int) -> None:
        results[name] = await _receive_exactly(connection, len(payload), chunk)

    async with trio.open_nursery() as nursery:
        nursery.start_soon(receive, "at accepted", accepted, 1000)  # small buffers: partial records
        nursery.start_soon(receive, "at connected", connected, 65536)
        nursery.start_soon(accepted.send_all, memoryview(payload))
        nursery.start_soon(connected.send_all, payload)
    assert results == {"at accepted": payload, "at connected": payload}
    assert tls_description(accepted).startswith("TLSv1.")
    assert tls_description(connected) == tls_description(accepted)
    accepted.close()
    connected.close()


async def test_idle_check_sees_waiting_bytes_and_close_notify_ends_the_peer(tls_files: TlsFiles) -> None:
    accepted, connected = await _connected_pair(tls_files)
    assert connected.looks_idle_and_open()
    await accepted.send_all(b"Z\x00\x00\x00\x05I")
    await trio.testing.wait_all_tasks_blocked()
    assert not connected.looks_idle_and_open()
    assert await _receive_exactly(connected, 2, 2) == b"Z\x00"
    assert not connected.looks_idle_and_open()  # 4 decrypted bytes still wait
    assert await _receive_exactly(connected, 4, 64) == b"\x00\x00\x05I"
    assert connected.looks_idle_and_open()
    accepted.close()
    assert await connected.recv_into(bytearray(16)) == 0  # a clean TLS EOF, not an error
    connected.close()


async def test_bytes_before_the_handshake_are_refused_before_answering(tls_files: TlsFiles) -> None:
    contexts = tls_config(tls_files, "require", "disable")
    near, far = trio.socket.socketpair()
    with (
        near,
        far,
        trio.fail_after(5),  # if it answered 'S', the handshake would wait for a ClientHello forever
        pytest.raises(ProtocolError, match="received unencrypted data after SSL request"),
    ):
        await answer_ssl_request(TcpConnection(far, "client"), contexts.client, b"Q\x00\x00\x00\x05x")


async def test_garbage_instead_of_a_client_hello_fails_the_handshake(tls_files: TlsFiles) -> None:
    contexts = tls_config(tls_files, "require", "disable")
    near, far = trio.socket.socketpair()
    with near:
        await near.send(b"\x16\x03\x01\x00\x05hello" + b"garbage" * 50)
        with pytest.raises(TlsHandshakeFailed, match="TLS handshake failed"):
            await answer_ssl_request(TcpConnection(far, "client"), contexts.client, b"")
        assert far.fileno() == -1  # closed


async def test_backend_without_tls_under_require_is_refused(tls_files: TlsFiles) -> None:
    contexts = tls_config(tls_files, "disable", "require")
    near, far = trio.socket.socketpair()
    with near, far:
        await far.send(b"N")
        with pytest.raises(ServerTlsError, match="does not support TLS but server_tls_sslmode = require"):
            await start_server_tls(TcpConnection(near, "backend"), contexts.server, "localhost")


async def test_prefer_goes_on_in_plain_text_when_the_backend_says_no(tls_files: TlsFiles) -> None:
    contexts = tls_config(tls_files, "disable", "prefer")
    near, far = trio.socket.socketpair()
    with near, far:
        await far.send(b"N")
        plain = TcpConnection(near, "backend")
        assert await start_server_tls(plain, contexts.server, "localhost") is plain


async def test_verify_full_refuses_a_certificate_for_another_host(tls_files: TlsFiles) -> None:
    contexts = tls_config(tls_files, "require", "verify-full")
    near, far = trio.socket.socketpair()

    async def accept() -> None:
        raw = TcpConnection(far, "client")
        await raw.recv_into(bytearray(8))
        with pytest.raises(TlsHandshakeFailed):
            await answer_ssl_request(raw, contexts.client, b"")

    async with trio.open_nursery() as nursery:
        nursery.start_soon(accept)
        with pytest.raises(ServerTlsError, match="certificate verify failed: Hostname mismatch"):
            await start_server_tls(TcpConnection(near, "backend"), contexts.server, "db.example.com")
        near.close()


def test_disabled_client_tls_lets_plain_clients_in(plain: TcpConnection) -> None:
    assert ClientTls(SslMode.DISABLE, None).plaintext_rejection(plain) is None
    assert tls_description(plain) == ""
