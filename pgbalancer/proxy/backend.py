"""Server connections: connect, authenticate to a backend, and run the proxy's own queries.

A ``ServerConnection`` is one authenticated PostgreSQL session that the pools lend to
clients. This shell performs the startup exchange with the pure ``pgwire`` code and
keeps the server's ParameterStatus values current. It never logs credentials and
holds no pooling policy (that is ``pool.py``).
"""

from __future__ import annotations

import contextlib
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import NoReturn

import trio

from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.auth import ScramAuthFailed, ScramClientExchange, ScramError, md5_client_response
from pgbalancer.pgwire.errors import ProtocolError, SqlState, parse_error_fields
from pgbalancer.pgwire.framing import Message
from pgbalancer.pgwire.messages import AuthCode
from pgbalancer.proxy.netio import MessageChannel, PeerClosed, PgSocket, connect_tcp
from pgbalancer.proxy.prepared import ServerStatements
from pgbalancer.proxy.tls import PLAIN_SERVER_TLS, ServerTls, ServerTlsError, start_server_tls


@dataclass(frozen=True)
class ServerCredentials:
    """What pgbalancer may present to a backend for one user; secrets never appear in repr."""

    user: str
    password: str | None = field(default=None, repr=False)
    md5_hash: str | None = field(default=None, repr=False)
    scram_client_key: bytes | None = field(default=None, repr=False)
    scram_server_key: bytes | None = field(default=None, repr=False)


@dataclass(frozen=True)
class BackendAddress:
    node_id: int
    host: str
    port: int

    def __str__(self) -> str:
        return f"backend {self.node_id} ({self.host}:{self.port})"


DEFAULT_PREPARED_STATEMENTS = 200


class BackendUnavailable(Exception):
    """The backend could not be reached or broke; clients get SQLSTATE 08006.

    ``address``: the backend that failed, when one was tried (None: none was, e.g. no primary is up).
    """

    def __init__(self, message: str, address: BackendAddress | None = None) -> None:
        super().__init__(message)
        self.address = address


def connect_failure_message(exc: BackendUnavailable, primary_id: int | None) -> str:
    """The client's error text for a server connection that could not be had: it names the backend
    and its role, so the operator knows which server to look at."""
    failed = exc.address
    role = "the primary" if failed is None or failed.node_id == primary_id else "a standby"
    return f"pgbalancer could not connect to {role}: {exc}"


class QuorumLost(BackendUnavailable):
    """This node lost its watchdog quorum and may not serve the request; clients get SQLSTATE 25006."""

    sqlstate = "25006"  # read_only_sql_transaction: drivers that look for a writable node move on
    hint = "connect through another pgbalancer node or the virtual IP"


class ServerError(Exception):
    """The backend answered with an ErrorResponse (login or the proxy's own query)."""

    def __init__(self, fields: Mapping[str, str]) -> None:
        super().__init__(fields.get("M", "server error"))
        self.fields = dict(fields)

    @property
    def sqlstate(self) -> str:
        return self.fields.get("C", SqlState.INTERNAL_ERROR)


class ServerConnection:
    """An authenticated server session, lent to one client at a time."""

    __slots__ = (
        "address",
        "aligned_with",
        "backend_pid",
        "backend_secret",
        "channel",
        "created_at",
        "database",
        "dirty",
        "last_used",
        "parameters",
        "sessions_served",
        "socket",
        "statements",
        "user",
    )

    def __init__(
        self, socket: PgSocket, address: BackendAddress, user: str, database: str, now: float
    ) -> None:
        self.socket = socket
        self.address = address
        self.user = user
        self.database = database
        self.channel = MessageChannel(socket, max_message_size=1 << 30)
        self.parameters: dict[str, str] = {}
        self.backend_pid = 0
        self.backend_secret = 0
        self.created_at = now
        self.last_used = now
        self.sessions_served = 0
        self.statements = ServerStatements(DEFAULT_PREPARED_STATEMENTS)
        self.dirty = False  # holds session state of a client: reset before anyone else gets it
        self.aligned_with: tuple[int, int] | None = None  # the client settings it was last set to

    def take_unrelayed_bytes(self) -> bytes:
        """Bytes the handshake reader received but did not consume (forward them first)."""
        return self.channel.reader.take_buffered()

    async def run_query(self, sql: str) -> None:
        """Run the proxy's own simple query, discarding rows; ServerError on ErrorResponse."""
        await self.fetch_rows(sql)

    async def fetch_rows(self, sql: str) -> list[tuple[str | None, ...]]:
        """Run the proxy's own simple query; its rows as text; ServerError on ErrorResponse."""
        await self.socket.send_all(pgmsg.query(sql))
        error: dict[str, str] | None = None
        rows: list[tuple[str | None, ...]] = []
        while True:
            message = await self._read()
            if message.type == b"D":
                rows.append(
                    tuple(
                        None if v is None else v.decode("utf-8", "replace")
                        for v in pgmsg.parse_data_row(message.body)
                    )
                )
            elif message.type == b"E" and error is None:
                error = parse_error_fields(message.body)
            elif message.type == b"G":  # COPY FROM STDIN in a proxy query: refuse it
                await self.socket.send_all(_copy_fail("pgbalancer does not feed COPY in its own queries"))
            elif message.type == b"Z":
                break
        if error is not None:
            raise ServerError(error)
        return rows

    async def reset(self, *, rollback: bool, reset_query: str) -> None:
        """Roll back if needed and run the reset query; the statements it held are gone."""
        if rollback:
            await self.run_query("ROLLBACK")
        if reset_query:
            await self.run_query(reset_query)
            self.statements.clear()
        self.dirty = False
        self.aligned_with = None

    async def _read(self) -> Message:
        try:
            message = await self.channel.read_message()
        except (PeerClosed, ProtocolError) as exc:
            raise BackendUnavailable(f"{self.address}: {exc}", self.address) from exc
        if message.type == b"S":
            name, value = pgmsg.parse_parameter_status(message.body)
            self.parameters[name] = value
        return message

    async def terminate(self) -> None:
        """Say goodbye politely (best effort) and close."""
        with trio.move_on_after(1):
            with contextlib.suppress(PeerClosed):
                await self.socket.send_all(pgmsg.terminate())
        self.socket.close()

    def close(self) -> None:
        self.socket.close()


def _copy_fail(reason: str) -> bytes:
    body = reason.encode() + b"\x00"
    return b"f" + (len(body) + 4).to_bytes(4, "big") + body


async def open_server_connection(
    address: BackendAddress,
    database: str,
    credentials: ServerCredentials,
    *,
    timeout: float,
    now: float,
    tls: ServerTls = PLAIN_SERVER_TLS,
) -> ServerConnection:
    """Connect (with TLS as ``tls`` says) and log in; BackendUnavailable or ServerError on failure."""
    try:
        return await _open_once(address, database, credentials, timeout, now, tls, use_tls=tls.asks_first)
    except ServerError as exc:
        if not tls.retries_with_tls(exc.sqlstate):
            raise
    return await _open_once(address, database, credentials, timeout, now, tls, use_tls=True)  # sslmode=allow


async def _open_once(
    address: BackendAddress,
    database: str,
    credentials: ServerCredentials,
    timeout: float,
    now: float,
    tls: ServerTls,
    *,
    use_tls: bool,
) -> ServerConnection:
    try:
        socket = await connect_tcp(address.host, address.port, timeout)
    except OSError as exc:
        raise BackendUnavailable(f"{address}: {exc}", address) from exc
    try:
        with trio.fail_after(timeout):
            if use_tls:
                socket = await start_server_tls(socket, tls, address.host)
            server = ServerConnection(socket, address, credentials.user, database, now)
            await _login(server, credentials)
    except trio.TooSlowError as exc:
        socket.close()
        raise BackendUnavailable(f"{address}: login did not finish within {timeout:g}s", address) from exc
    except (ServerTlsError, PeerClosed) as exc:
        socket.close()
        raise BackendUnavailable(f"{address}: {exc}", address) from exc
    except BaseException:
        socket.close()
        raise
    return server


async def _login(server: ServerConnection, credentials: ServerCredentials) -> None:
    startup = pgmsg.StartupMessage(
        pgmsg.PROTOCOL_VERSION_3, {"user": credentials.user, "database": server.database}
    )
    await server.socket.send_all(startup.encode())
    scram: ScramClientExchange | None = None
    while True:
        message = await server._read()
        if message.type == b"R":
            scram = await _answer_auth_request(server, credentials, message, scram)
        elif message.type == b"K":
            server.backend_pid, server.backend_secret = pgmsg.parse_backend_key_data(message.body)
        elif message.type == b"E":
            raise ServerError(parse_error_fields(message.body))
        elif message.type == b"Z":
            return


async def _answer_auth_request(
    server: ServerConnection,
    credentials: ServerCredentials,
    message: Message,
    scram: ScramClientExchange | None,
) -> ScramClientExchange | None:
    request = pgmsg.parse_authentication(message.body)
    code = request.code
    if code == AuthCode.OK:
        return scram
    if code == AuthCode.CLEARTEXT_PASSWORD:
        await server.socket.send_all(pgmsg.password_message(_require_password(server, credentials)))
        return scram
    if code == AuthCode.MD5_PASSWORD:
        secret = credentials.password or credentials.md5_hash
        if secret is None:
            _missing_secret(server, credentials, "md5")
        reply = md5_client_response(credentials.user, secret, request.data)
        await server.socket.send_all(pgmsg.password_message(reply))
        return scram
    if code == AuthCode.SASL:
        scram = _start_scram(server, credentials, pgmsg.parse_sasl_list(request.data))
        await server.socket.send_all(pgmsg.sasl_initial_response("SCRAM-SHA-256", scram.client_first()))
        return scram
    if code == AuthCode.SASL_CONTINUE and scram is not None:
        try:
            reply_data = scram.handle_server_first(request.data)
        except ScramError as exc:
            raise BackendUnavailable(
                f"{server.address}: SCRAM exchange failed: {exc}", server.address
            ) from exc
        await server.socket.send_all(pgmsg.sasl_response(reply_data))
        return scram
    if code == AuthCode.SASL_FINAL and scram is not None:
        try:
            scram.verify_server_final(request.data)
        except ScramAuthFailed as exc:
            raise BackendUnavailable(
                f"{server.address}: server failed SCRAM verification: {exc}", server.address
            ) from exc
        return scram
    raise ServerError(
        {
            "S": "FATAL",
            "C": SqlState.FEATURE_NOT_SUPPORTED,
            "M": f"{server.address} asked for an unsupported authentication method (code {code})",
            "H": "configure the backend's pg_hba.conf to use scram-sha-256, md5, password or trust",
        }
    )


def _start_scram(
    server: ServerConnection, credentials: ServerCredentials, mechanisms: list[str]
) -> ScramClientExchange:
    if "SCRAM-SHA-256" not in mechanisms:
        raise ServerError(
            {
                "S": "FATAL",
                "C": SqlState.FEATURE_NOT_SUPPORTED,
                "M": f"{server.address} offered SASL mechanisms {mechanisms}; pgbalancer needs SCRAM-SHA-256",
            }
        )
    nonce = secrets.token_urlsafe(18)
    if credentials.password is not None:
        return ScramClientExchange(credentials.user, nonce, password=credentials.password)
    if credentials.scram_client_key is not None and credentials.scram_server_key is not None:
        return ScramClientExchange(
            credentials.user,
            nonce,
            client_key=credentials.scram_client_key,
            server_key=credentials.scram_server_key,
        )
    _missing_secret(server, credentials, "scram-sha-256")


def _require_password(server: ServerConnection, credentials: ServerCredentials) -> str:
    if credentials.password is None:
        _missing_secret(server, credentials, "password")
    return credentials.password


def _missing_secret(server: ServerConnection, credentials: ServerCredentials, method: str) -> NoReturn:
    raise ServerError(
        {
            "S": "FATAL",
            "C": SqlState.INVALID_AUTHORIZATION_SPECIFICATION,
            "M": f'{server.address} requires {method} authentication for user "{credentials.user}", '
            "but pgbalancer has no usable secret for that user",
            "H": "add the user's plaintext password (or, for scram-sha-256 clients, the same SCRAM verifier "
            "the server stores) to auth_file",
        }
    )
