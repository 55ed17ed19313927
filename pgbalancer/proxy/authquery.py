"""auth_query: fetch a client's stored secret from PostgreSQL itself, as PgBouncer does.

Role: for users missing from auth_file, run ``auth_query`` on the primary as ``auth_user`` and
return what it yields (a SCRAM verifier, an md5 hash or, from a custom query, a plaintext
password). ``ClientAuthenticator`` then treats that secret exactly like an auth_file entry, so a
SCRAM verifier also logs the client in to the backend by pass-through: no plaintext is needed.

The top half of this module is pure (the extended-protocol messages, the reading of the answer,
the TTL cache with time passed in); ``AuthQuerySource`` is the thin trio shell around it, with a
small pool (``AUTH_POOL_SIZE`` connections per database) of auth_user connections.

It must never: paste the user name into SQL (it travels as a Bind parameter), put a secret in a
log line, an error text or a repr, keep a secret longer than auth_query_cache_ttl, or let a
backend failure escape as anything but ClientAuthFailed (that client gets FATAL; the node and
every other session carry on).
"""

from __future__ import annotations

import logging
import struct
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import Final

import trio

from pgbalancer.config import Config
from pgbalancer.pgwire.errors import ProtocolError, SqlState, parse_error_fields
from pgbalancer.pgwire.framing import Message
from pgbalancer.pgwire.messages import encode_message, parse_data_row, parse_row_description
from pgbalancer.proxy.backend import (
    BackendAddress,
    BackendUnavailable,
    ServerConnection,
    ServerCredentials,
    ServerError,
)
from pgbalancer.proxy.clientauth import ClientAuthFailed, credentials_from_secret
from pgbalancer.proxy.netio import PeerClosed
from pgbalancer.proxy.pool import PoolExhausted, PoolKey, PoolLimits, ServerPool

log = logging.getLogger(__name__)

AUTH_POOL_SIZE: Final = 2  # auth_user connections per database: lookups are short and rare
CACHE_MAX_ENTRIES: Final = 10_000
SECRET_COLUMN: Final = "passwd"
# Execute asks for at most this many rows: one is the answer, a second proves the query is wrong.
_MAX_ROWS: Final = 2

_INT16: Final = struct.Struct("!h")
_INT32: Final = struct.Struct("!i")


# Opens and logs in one server connection the way the node opens any (timeouts, TLS).
OpenServer = Callable[[BackendAddress, str, ServerCredentials], Awaitable[ServerConnection]]


class AuthQueryError(Exception):
    """The server answered auth_query, but not in a usable shape (an operator must fix the query)."""


class _StaleConnection(BackendUnavailable):
    """A pooled auth_user connection broke on reuse (the server may have restarted since)."""


# --------------------------------------------------------------------------- pure: messages


def lookup_messages(sql: str, user: str) -> bytes:
    """Parse, Bind (the user as text parameter $1), Describe, Execute and Sync, in one write.

    The unnamed statement and portal are reused by every lookup; Sync ends the implicit
    transaction, so the connection is idle again once ReadyForQuery arrives.
    """
    user_bytes = user.encode("utf-8", "surrogateescape")
    parse = _cstring("") + _cstring(sql) + _INT16.pack(1) + _INT32.pack(0)  # $1's type: inferred
    bind = (
        _cstring("")  # portal
        + _cstring("")  # statement
        + _INT16.pack(0)  # every parameter in text format
        + _INT16.pack(1)
        + _INT32.pack(len(user_bytes))
        + user_bytes
        + _INT16.pack(0)  # every result column in text format
    )
    return b"".join(
        (
            encode_message(b"P", parse),
            encode_message(b"B", bind),
            encode_message(b"D", b"P" + _cstring("")),
            encode_message(b"E", _cstring("") + _INT32.pack(_MAX_ROWS)),
            encode_message(b"S", b""),
        )
    )


def _cstring(text: str) -> bytes:
    raw = text.encode("utf-8")
    if b"\0" in raw:
        raise ValueError("a protocol string must not contain NUL")
    return raw + b"\0"


def secret_from_result(columns: tuple[str, ...], rows: list[tuple[bytes | None, ...]]) -> str | None:
    """The stored secret in auth_query's answer; None means no such user (no row, NULL or empty).

    The secret is the column named passwd, or the second of exactly two columns (PgBouncer's
    shape: user name, secret). More than one row means the query does not pick one user.
    """
    if SECRET_COLUMN in columns:
        index = columns.index(SECRET_COLUMN)
    elif len(columns) == 2:
        index = 1
    else:
        raise AuthQueryError(
            f"auth_query returned the columns {list(columns)}; it must return a column named "
            f"{SECRET_COLUMN!r}, or exactly two columns (user name, secret)"
        )
    if len(rows) > 1:
        raise AuthQueryError("auth_query returned more than one row for one user; make it match one user")
    if not rows:
        return None
    value = rows[0][index] if index < len(rows[0]) else None
    if not value:  # NULL or '': the role has no password, so no password can log it in
        return None
    return value.decode("utf-8", "replace")


@dataclass
class LookupResponse:
    """Collects the server's answer to ``lookup_messages``; ``handle`` returns True at ReadyForQuery."""

    columns: tuple[str, ...] = ()
    rows: list[tuple[bytes | None, ...]] = field(default_factory=list)
    error: dict[str, str] | None = None

    def handle(self, message: Message) -> bool:
        kind = message.type
        if kind == b"T":
            self.columns = parse_row_description(message.body)
        elif kind == b"D":
            self.rows.append(parse_data_row(message.body))
        elif kind == b"E" and self.error is None:
            self.error = parse_error_fields(message.body)
        elif kind == b"Z":
            return True
        # ParseComplete, BindComplete, NoData, CommandComplete, PortalSuspended, notices: nothing to keep
        return False

    def secret(self) -> str | None:
        """The looked-up secret; ServerError if the server refused the query."""
        if self.error is not None:
            raise ServerError(self.error)
        return secret_from_result(self.columns, self.rows)


class SecretCache:
    """Found secrets by (database, user) for ``ttl`` seconds, at most ``max_entries`` (oldest go first).

    ``ttl <= 0`` disables it. Time is passed in. Unknown users are never cached, so a role created
    a moment ago can log in at once.
    """

    def __init__(self, ttl: float, max_entries: int = CACHE_MAX_ENTRIES) -> None:
        self.ttl = ttl
        self.max_entries = max_entries
        self._entries: OrderedDict[tuple[str, str], tuple[float, str]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __repr__(self) -> str:
        return f"SecretCache(ttl={self.ttl}, entries={len(self._entries)}, secrets hidden)"

    def get(self, database: str, user: str, now: float) -> str | None:
        entry = self._entries.get((database, user))
        if entry is None:
            return None
        expires_at, secret = entry
        if now >= expires_at:
            del self._entries[(database, user)]
            return None
        return secret

    def put(self, database: str, user: str, secret: str, now: float) -> None:
        if self.ttl <= 0 or self.max_entries <= 0:
            return
        key = (database, user)
        self._entries.pop(key, None)
        while len(self._entries) >= self.max_entries:
            self._entries.popitem(last=False)
        self._entries[key] = (now + self.ttl, secret)

    def clear(self) -> None:
        self._entries.clear()


# --------------------------------------------------------------------------- trio shell


@dataclass(frozen=True)
class AuthQuerySettings:
    """The config keys this module reads; built once per (re)load."""

    auth_user: str
    query: str
    dbname: str
    cache_ttl: float
    timeout: float
    pool_limits: PoolLimits

    @classmethod
    def from_config(cls, config: Config) -> AuthQuerySettings:
        return cls(
            auth_user=config.auth_user,
            query=config.auth_query,
            dbname=config.auth_dbname,
            cache_ttl=config.auth_query_cache_ttl,
            timeout=config.server_connect_timeout,
            pool_limits=PoolLimits(
                max_size=AUTH_POOL_SIZE,
                idle_timeout=config.child_life_time,
                max_sessions_per_server=0,
                max_age=config.connection_life_time,
                wait_timeout=config.query_wait_timeout,
            ),
        )


class AuthQuerySource:
    """The ``SecretSource`` of ClientAuthenticator backed by auth_query on the primary."""

    def __init__(
        self,
        settings: AuthQuerySettings,
        userlist: Mapping[str, str],
        primary: Callable[[], BackendAddress],
        open_server: OpenServer,
    ) -> None:
        self.settings = settings
        self._credentials = credentials_from_secret(settings.auth_user, userlist.get(settings.auth_user))
        self._primary = primary
        self._open_server = open_server
        self._pools: dict[PoolKey, ServerPool] = {}
        self.cache = SecretCache(settings.cache_ttl)
        self._closed = False
        self.lookups_total = 0
        self.failures_total = 0

    async def lookup(self, user: str, database: str) -> str | None:
        """The stored secret of ``user`` (None: unknown); ClientAuthFailed if the server can't say."""
        if not _is_utf8(user):
            return None  # no role has a name that is not UTF-8 text; don't make the server say so
        dbname = self.settings.dbname or database or user  # as PostgreSQL: no database = the user's name
        now = trio.current_time()
        cached = self.cache.get(dbname, user, now)
        if cached is not None:
            return cached
        self.lookups_total += 1
        try:
            secret = await self._query(user, dbname)
        except ClientAuthFailed:
            self.failures_total += 1
            raise
        if secret is not None:
            self.cache.put(dbname, user, secret, trio.current_time())
        return secret

    async def _query(self, user: str, dbname: str) -> str | None:
        address = self._primary()
        pool = self._pool_for(PoolKey(address.node_id, dbname, self.settings.auth_user))
        try:
            try:
                return await self._query_on(pool, address, user)
            except _StaleConnection:
                return await self._query_on(pool, address, user)  # one fresh try tells the truth
        except BackendUnavailable as exc:
            raise self._failed(user, dbname, "the primary is unreachable or broke off", exc) from exc
        except ServerError as exc:
            raise self._failed(user, dbname, f"the server refused it (SQLSTATE {exc.sqlstate})", exc) from exc
        except AuthQueryError as exc:
            raise self._failed(user, dbname, "its result is unusable", exc) from exc
        except trio.TooSlowError as exc:
            reason = f"no answer within {self.settings.timeout:g}s"
            raise self._failed(user, dbname, reason, exc) from exc
        except PoolExhausted as exc:
            log.warning("auth_query for user %r in database %r: %s", user, dbname, exc)
            raise ClientAuthFailed(
                SqlState.TOO_MANY_CONNECTIONS,
                f'could not look up user "{user}": every auth_query connection is busy; try again',
            ) from exc
        finally:
            self._forget_if_unused(pool)

    async def _query_on(self, pool: ServerPool, address: BackendAddress, user: str) -> str | None:
        async def open_server() -> ServerConnection:
            return await self._open(address, pool.key.database)

        server = await pool.acquire(open_server)
        reused = server.sessions_served > 0
        reusable = False
        try:
            with trio.fail_after(self.settings.timeout):
                response = await _run_lookup(server, self.settings.query, user)
            reusable = not self._closed
        except BackendUnavailable as exc:
            if reused:
                raise _StaleConnection(str(exc)) from exc
            raise
        finally:
            pool.release(server, reusable=reusable)
        return response.secret()  # a ServerError here leaves the connection idle and reusable

    async def _open(self, address: BackendAddress, dbname: str) -> ServerConnection:
        server = await self._open_server(address, dbname, self._credentials)
        try:
            # The user name is sent as UTF-8 whatever the database's default client encoding is.
            with trio.fail_after(self.settings.timeout):
                await server.run_query("SET client_encoding TO 'UTF8'")
        except BaseException:
            server.close()
            raise
        return server

    def _pool_for(self, key: PoolKey) -> ServerPool:
        pool = self._pools.get(key)
        if pool is None:
            pool = self._pools[key] = ServerPool(key, self.settings.pool_limits)
        return pool

    def _forget_if_unused(self, pool: ServerPool) -> None:
        # A client can name any database; keep no empty pool for one that did not work out.
        if pool.active == 0 and pool.idle_count == 0 and pool.waiting == 0:
            self._pools.pop(pool.key, None)

    def _failed(self, user: str, dbname: str, reason: str, exc: Exception) -> ClientAuthFailed:
        # The details (server message, address) go to the log, not to a client that is not logged in.
        log.warning(
            "auth_query as %r in database %r for user %r failed: %s: %s",
            self.settings.auth_user,
            dbname,
            user,
            reason,
            exc,
        )
        return ClientAuthFailed(
            SqlState.CONNECTION_FAILURE,
            f'could not look up user "{user}" with auth_query: {reason}; see the pgbalancer log',
        )

    def close_expired_idle(self) -> None:
        for pool in list(self._pools.values()):
            pool.close_expired_idle()
            self._forget_if_unused(pool)

    def close(self) -> None:
        """Drop the idle connections and the cache; lookups still running discard theirs."""
        self._closed = True
        self.cache.clear()
        for pool in self._pools.values():
            pool.close_idle()

    def statistics(self) -> dict[str, object]:
        return {
            "lookups_total": self.lookups_total,
            "failures_total": self.failures_total,
            "cached": len(self.cache),
            "pools": [pool.statistics().__dict__ for pool in self._pools.values()],
        }


def _is_utf8(text: str) -> bool:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:  # lone surrogates: bytes of the startup packet that were not UTF-8
        return False
    return True


async def _run_lookup(server: ServerConnection, sql: str, user: str) -> LookupResponse:
    response = LookupResponse()
    try:
        await server.socket.send_all(lookup_messages(sql, user))
    except PeerClosed as exc:
        raise BackendUnavailable(f"{server.address}: {exc}") from exc
    while True:
        try:
            message = await server.channel.read_message()
            done = response.handle(message)
        except (PeerClosed, ProtocolError) as exc:
            raise BackendUnavailable(f"{server.address}: {exc}") from exc
        if done:
            return response
