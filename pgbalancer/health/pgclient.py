"""The health checker's own PostgreSQL sessions: log in as health_check_user, run SQL, read rows as text.

Used for probes and for failover actions (pg_promote, ALTER SYSTEM). It reuses the proxy's login
code (every auth method and server TLS) but never pools: each session is opened for one job and
closed. It never relays client bytes and never logs a password.
"""

from __future__ import annotations

import struct
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field

import trio

from pgbalancer.config import Config
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.errors import ProtocolError, parse_error_fields
from pgbalancer.proxy.backend import (
    BackendAddress,
    BackendUnavailable,
    ServerConnection,
    ServerCredentials,
    ServerError,
    open_server_connection,
)
from pgbalancer.proxy.netio import PeerClosed
from pgbalancer.proxy.tls import PLAIN_SERVER_TLS, ServerTls

Row = tuple[str | None, ...]


@dataclass(frozen=True)
class AdminLogin:
    """How the health checker logs in to a backend."""

    user: str
    database: str
    timeout: float
    password: str | None = field(default=None, repr=False)
    tls: ServerTls = PLAIN_SERVER_TLS

    @classmethod
    def from_config(cls, config: Config, tls: ServerTls = PLAIN_SERVER_TLS) -> AdminLogin:
        return cls(
            user=config.health_check_user,
            database=config.health_check_database,
            timeout=config.health_check_timeout,
            password=config.health_check_password or None,
            tls=tls,
        )

    def conninfo_fields(self) -> dict[str, str]:
        """libpq settings for tools (pg_rewind, pg_basebackup); the password goes in PGPASSWORD."""
        return {"user": self.user, "dbname": self.database, "connect_timeout": str(max(1, int(self.timeout)))}


async def open_admin_session(address: BackendAddress, login: AdminLogin) -> ServerConnection:
    """A logged-in session; BackendUnavailable or ServerError when that is impossible."""
    credentials = ServerCredentials(login.user, password=login.password)
    return await open_server_connection(
        address, login.database, credentials, timeout=login.timeout, now=trio.current_time(), tls=login.tls
    )


@asynccontextmanager
async def admin_session(address: BackendAddress, login: AdminLogin) -> AsyncIterator[ServerConnection]:
    server = await open_admin_session(address, login)
    try:
        yield server
    finally:
        with trio.CancelScope(shield=True):
            await server.terminate()


async def fetch_rows(server: ServerConnection, sql: str) -> list[Row]:
    """Run one simple query; its rows as text (None = NULL). ServerError on an ErrorResponse."""
    await server.socket.send_all(pgmsg.query(sql))
    rows: list[Row] = []
    error: dict[str, str] | None = None
    while True:
        try:
            message = await server.channel.read_message()
        except (PeerClosed, ProtocolError) as exc:
            raise BackendUnavailable(f"{server.address}: {exc}") from exc
        if message.type == b"D":
            rows.append(_data_row(message.body))
        elif message.type == b"E" and error is None:
            error = parse_error_fields(message.body)
        elif message.type == b"Z":
            break
    if error is not None:
        raise ServerError(error)
    return rows


async def fetch_value(server: ServerConnection, sql: str) -> str | None:
    """The first column of the first row (None when there is no row or it is NULL)."""
    rows = await fetch_rows(server, sql)
    return rows[0][0] if rows and rows[0] else None


def sql_literal(value: str) -> str:
    """A standard-conforming SQL string literal."""
    return "'" + value.replace("'", "''") + "'"


def _data_row(body: bytes) -> Row:
    try:
        (count,) = struct.unpack_from("!h", body)
        values: list[str | None] = []
        offset = 2
        for _ in range(count):
            (length,) = struct.unpack_from("!i", body, offset)
            offset += 4
            if length < 0:
                values.append(None)
                continue
            values.append(body[offset : offset + length].decode("utf-8", "replace"))
            offset += length
    except struct.error as exc:
        raise ProtocolError(f"malformed DataRow: {exc}") from exc
    return tuple(values)
