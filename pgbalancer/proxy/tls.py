"""TLS for the proxy: SSL contexts built from the config, and a TLS ``PgSocket`` for the relay.

Two directions, two contexts, built once per config (``TlsContexts.from_config``):

- towards clients (pgbalancer is the TLS server): a client's SSLRequest is answered 'S' and the
  handshake runs before the StartupMessage is read (``answer_ssl_request``);
- towards backends (pgbalancer is the TLS client): SSLRequest first, then the handshake, before the
  login (``start_server_tls``).

``TlsConnection`` implements ``netio.PgSocket`` on ``trio.SSLStream`` over the raw trio socket of
the ``TcpConnection`` it upgrades, so the relay and the handshakes need not know which one they
hold. Plain TCP connections never pass through this module, so the plain hot path is untouched.

It must never: downgrade a connection the config says must be encrypted; read bytes that arrived
before a handshake as if they were encrypted (CVE-2021-23214 / CVE-2021-23222); hold protocol or
pooling policy (that belongs to the session and the pools).
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import ssl
from dataclasses import dataclass

import trio

from pgbalancer.config import Config, ConfigError, SslMode
from pgbalancer.pgwire.errors import ProtocolError, SqlState
from pgbalancer.pgwire.messages import SSLRequest
from pgbalancer.proxy.netio import PeerClosed, PgSocket, TcpConnection

log = logging.getLogger(__name__)

# PostgreSQL 17 servers and libpq negotiate this ALPN name; older clients simply do not send it.
_ALPN_POSTGRESQL = "postgresql"
_VERIFYING = frozenset({SslMode.VERIFY_CA, SslMode.VERIFY_FULL})
_REQUIRING = frozenset({SslMode.REQUIRE, *_VERIFYING})


class TlsHandshakeFailed(PeerClosed):
    """The TLS handshake did not complete (garbage instead of a ClientHello, a refused certificate)."""


class ServerTlsError(Exception):
    """A backend cannot be reached with the TLS the config demands; the message says why."""


@dataclass(frozen=True)
class ClientTls:
    """pgbalancer as the TLS server of its clients (``client_tls_*``, PgBouncer's meaning)."""

    mode: SslMode
    context: ssl.SSLContext | None  # None: TLS disabled, every SSLRequest gets 'N'

    @property
    def requires_tls(self) -> bool:
        return self.mode in _REQUIRING

    def plaintext_rejection(self, client: PgSocket) -> tuple[str, str] | None:
        """(SQLSTATE, message) when a client reached its StartupMessage unencrypted but must not."""
        if self.requires_tls and not isinstance(client, TlsConnection):
            return (
                SqlState.INVALID_AUTHORIZATION_SPECIFICATION,
                f"SSL required: pgbalancer accepts only TLS connections (client_tls_sslmode = {self.mode}); "
                "connect with sslmode=require or stronger",
            )
        return None


@dataclass(frozen=True)
class ServerTls:
    """pgbalancer as a TLS client of the backends (``server_tls_*``, libpq's sslmode meaning)."""

    mode: SslMode
    context: ssl.SSLContext | None  # None: TLS disabled

    @property
    def asks_first(self) -> bool:
        """Send SSLRequest on the first attempt (allow starts plain, disable never asks)."""
        return self.mode not in (SslMode.DISABLE, SslMode.ALLOW)

    @property
    def requires_tls(self) -> bool:
        return self.mode in _REQUIRING

    def retries_with_tls(self, login_sqlstate: str) -> bool:
        """allow: a plain login the backend refused by pg_hba (28000) is tried again over TLS."""
        return self.mode is SslMode.ALLOW and login_sqlstate == SqlState.INVALID_AUTHORIZATION_SPECIFICATION


PLAIN_SERVER_TLS = ServerTls(SslMode.DISABLE, None)


@dataclass(frozen=True)
class TlsContexts:
    """Both directions' TLS settings, built once per (re)loaded config."""

    client: ClientTls
    server: ServerTls

    @classmethod
    def from_config(cls, config: Config) -> TlsContexts:
        """Build the SSL contexts; ConfigError naming the keys if a file cannot be loaded."""
        try:
            return cls(
                ClientTls(config.client_tls_sslmode, _client_side_context(config)),
                ServerTls(config.server_tls_sslmode, _backend_side_context(config)),
            )
        except (ssl.SSLError, OSError) as exc:
            raise ConfigError(
                f"cannot load the TLS files (client_tls_* / server_tls_*): {exc}; "
                "check that each names a readable PEM file and that each key matches its certificate"
            ) from exc


def _client_side_context(config: Config) -> ssl.SSLContext | None:
    if config.client_tls_sslmode is SslMode.DISABLE:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(config.client_tls_cert_file, config.client_tls_key_file)
    context.set_alpn_protocols([_ALPN_POSTGRESQL])
    # No session tickets, like PostgreSQL: clients reconnect with full handshakes anyway, and
    # TLS 1.3 tickets would sit unsent (trio delays them) until the session's first send.
    context.options |= ssl.OP_NO_TICKET
    context.num_tickets = 0
    if config.client_tls_sslmode in _VERIFYING:
        context.verify_mode = ssl.CERT_REQUIRED
        context.load_verify_locations(cafile=config.client_tls_ca_file)
    return context


def _backend_side_context(config: Config) -> ssl.SSLContext | None:
    mode = config.server_tls_sslmode
    if mode is SslMode.DISABLE:
        return None
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_alpn_protocols([_ALPN_POSTGRESQL])
    if mode in _VERIFYING:
        context.check_hostname = mode is SslMode.VERIFY_FULL
        context.verify_mode = ssl.CERT_REQUIRED
        if config.server_tls_ca_file:
            context.load_verify_locations(cafile=config.server_tls_ca_file)
        else:
            context.load_default_certs(ssl.Purpose.SERVER_AUTH)
    else:  # allow / prefer / require: encrypted, but the certificate is not checked (as in libpq)
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    if config.server_tls_cert_file:
        context.load_cert_chain(config.server_tls_cert_file, config.server_tls_key_file)
    return context


class TlsConnection:
    """A TLS connection carrying PostgreSQL protocol bytes (implements ``netio.PgSocket``)."""

    __slots__ = ("_leftover", "_sock", "_stream", "_usable", "peer")

    def __init__(self, stream: trio.SSLStream[trio.SocketStream], sock: trio.socket.SocketType, peer: str):
        self._stream = stream
        self._sock = sock
        self.peer = peer
        self._leftover = b""
        self._usable = True  # False once an operation broke or was cancelled midway

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Decrypted bytes into ``buffer``; 0 means closed, broken or a TLS error."""
        if not self._leftover:
            completed = False
            try:
                self._leftover = bytes(await self._stream.receive_some(len(buffer)))
                completed = True
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                return 0
            finally:
                self._usable = self._usable and completed
            if not self._leftover:
                return 0
        # receive_some honours max_bytes; the leftover only guards that promise.
        size = min(len(buffer), len(self._leftover))
        buffer[:size] = self._leftover[:size]
        self._leftover = self._leftover[size:]
        return size

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Encrypt and send every byte; PeerClosed if the peer is gone or TLS broke."""
        completed = False
        try:
            await self._stream.send_all(data)
            completed = True
        except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            raise PeerClosed(f"{self.peer}: {_reason(exc)}") from exc
        finally:
            self._usable = self._usable and completed

    @property
    def description(self) -> str:
        """Protocol version and cipher suite, such as 'TLSv1.3/TLS_AES_256_GCM_SHA384'."""
        cipher = self._stream.cipher()
        return f"{self._stream.version()}/{cipher[0]}" if cipher else str(self._stream.version())

    def looks_idle_and_open(self) -> bool:
        """True only if no decrypted byte waits and the socket is quiet (see TcpConnection's).

        A record already pulled off the socket but not yet decrypted is invisible here, as is
        one still in flight for TCP; the reuse check is a guard, not a proof, in both cases.
        """
        if not self._usable or self._leftover or self._stream.pending():
            return False
        try:
            poller = select.poll()
            poller.register(self._sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLRDHUP)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def close(self) -> None:
        """Close the socket now, after a close_notify only if one can be sent without waiting.

        close() must be synchronous (sessions call it in ``finally``, also when cancelled), so it
        never awaits: ``SSLStream.aclose`` could block on a dead or slow peer. PostgreSQL does not
        depend on close_notify for safety (messages are length-framed and a session ends with
        Terminate), but libpq 17+ reports an EOF without it as an error, and its TLS cancel
        connection ends exactly that way; hence the non-blocking attempt.
        """
        if self._usable:
            self._send_close_notify_nowait()
        self._sock.close()

    def _send_close_notify_nowait(self) -> None:
        # trio keeps the SSLObject and its outgoing BIO private; without them, skip the courtesy.
        ssl_object = getattr(self._stream, "_ssl_object", None)
        outgoing = getattr(self._stream, "_outgoing", None)
        delayed = getattr(self._stream, "_delayed_outgoing", None)  # records owed before ours
        if not isinstance(ssl_object, ssl.SSLObject) or not isinstance(outgoing, ssl.MemoryBIO):
            return
        with contextlib.suppress(ssl.SSLError, ValueError):  # SSLWantReadError: we do not wait for a reply
            ssl_object.unwrap()
        with contextlib.suppress(OSError):  # a full send buffer (EAGAIN) or a gone peer: just close
            os.write(self._sock.fileno(), (delayed if isinstance(delayed, bytes) else b"") + outgoing.read())


def tls_description(connection: PgSocket) -> str:
    """PgBouncer's ``tls`` column of SHOW CLIENTS/SERVERS: 'TLSv1.3/TLS_AES_256_GCM_SHA384', '' if plain."""
    if not isinstance(connection, TlsConnection):
        return ""
    return connection.description


async def answer_ssl_request(client: PgSocket, tls: ClientTls, unread: bytes) -> PgSocket:
    """Answer a client's SSLRequest: 'N' and stay plain, or 'S' and return the TLS connection.

    ``unread`` is whatever the client sent after its SSLRequest before our answer; it must be
    empty, since bytes sent before the handshake are unencrypted yet would be read as if they
    came through TLS (CVE-2021-23214). ProtocolError tells the session what to report;
    TlsHandshakeFailed means the connection is unusable.
    """
    if isinstance(client, TlsConnection):
        raise ProtocolError("SSLRequest received on a connection that already uses TLS")
    if unread:
        raise ProtocolError("received unencrypted data after SSL request")
    if tls.context is None:
        await client.send_all(b"N")
        return client
    if not isinstance(client, TcpConnection):  # only a raw TCP connection can be upgraded
        await client.send_all(b"N")
        return client
    await client.send_all(b"S")
    stream = trio.SSLStream(trio.SocketStream(client.sock), tls.context, server_side=True)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        client.close()
        log.info("TLS handshake with client %s failed: %s", client.peer, _reason(exc))
        raise TlsHandshakeFailed(f"{client.peer}: TLS handshake failed: {_reason(exc)}") from exc
    return TlsConnection(stream, client.sock, client.peer)


async def start_server_tls(server: PgSocket, tls: ServerTls, host: str) -> PgSocket:
    """Ask a backend for TLS (SSLRequest) and return the encrypted connection.

    Returns ``server`` unchanged if the backend answers 'N' and the mode lets us go on in plain
    text (prefer, allow); ServerTlsError otherwise. Exactly one byte is read before the
    handshake, so anything a man in the middle appends to the 'S' lands in the TLS layer and
    fails the handshake instead of being taken for a server message (CVE-2021-23222).
    """
    if tls.context is None or not isinstance(server, TcpConnection):
        raise ServerTlsError("TLS towards backends is disabled (server_tls_sslmode = disable)")
    await server.send_all(SSLRequest().encode())
    answer = bytearray(1)
    if await server.recv_into(answer) == 0:
        raise ServerTlsError("the server closed the connection after SSLRequest")
    if answer == b"N":
        if tls.requires_tls:
            raise ServerTlsError(
                f"the server does not support TLS but server_tls_sslmode = {tls.mode}; "
                "enable ssl on the server or lower server_tls_sslmode"
            )
        return server
    if answer != b"S":
        raise ServerTlsError(f"the server answered SSLRequest with {bytes(answer)!r}, not 'S' or 'N'")
    stream = trio.SSLStream(trio.SocketStream(server.sock), tls.context, server_hostname=host)
    try:
        await stream.do_handshake()
    except (trio.BrokenResourceError, trio.ClosedResourceError) as exc:
        raise ServerTlsError(f"TLS handshake failed: {_reason(exc)}") from exc
    return TlsConnection(stream, server.sock, server.peer)


def _reason(exc: BaseException) -> str:
    """The useful part of a trio error: the SSL or OS error underneath, if any."""
    cause = exc.__cause__
    if isinstance(cause, ssl.SSLCertVerificationError):
        return f"certificate verify failed: {cause.verify_message}"
    if isinstance(cause, ssl.SSLError):
        return cause.reason or str(cause)
    if cause is not None:
        return str(cause) or type(cause).__name__
    return str(exc) or type(exc).__name__
