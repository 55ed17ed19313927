"""Client authentication: trust, md5 and scram-sha-256 against the auth file (or auth_query).

Follows PgBouncer's meaning of ``auth_type`` and of the userlist entries: a plaintext
password works with every method, an ``md5…`` hash with md5, and a SCRAM verifier with
SCRAM (and with md5 clients upgraded to SCRAM, as PgBouncer does). Unknown users go
through the same challenge as known ones, with a mock secret, so the exchange itself
does not reveal whether the user exists. Secrets never reach logs or error texts.
A user missing from the auth file is looked up in the injected ``SecretSource`` (auth_query,
see ``authquery.py``); whatever it returns is used exactly like an auth-file entry.
"""

from __future__ import annotations

import enum
import hashlib
import hmac
import secrets
from collections.abc import Mapping
from typing import Protocol

from pgbalancer.config import AuthType
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.auth import (
    ScramAuthFailed,
    ScramError,
    ScramServerExchange,
    ScramVerifier,
    is_md5_hash,
    make_scram_verifier,
    md5_verify,
    mock_scram_verifier,
    parse_scram_verifier,
)
from pgbalancer.pgwire.errors import SqlState
from pgbalancer.proxy.backend import ServerCredentials
from pgbalancer.proxy.netio import MessageChannel


class ClientAuthFailed(Exception):
    """Authentication was refused; the message is safe to show the client."""

    def __init__(self, sqlstate: str, message: str) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate
        self.message = message


class Method(enum.Enum):
    TRUST = "trust"
    MD5 = "md5"
    SCRAM = "scram-sha-256"


def choose_method(auth_type: AuthType, stored_secret: str | None) -> Method:
    """Which challenge to send, from the configured auth_type and the user's stored secret."""
    if auth_type == AuthType.TRUST:
        return Method.TRUST
    if stored_secret is not None and parse_scram_verifier(stored_secret) is not None:
        return Method.SCRAM
    if auth_type == AuthType.MD5:
        return Method.MD5
    return Method.SCRAM


def credentials_from_secret(user: str, stored_secret: str | None) -> ServerCredentials:
    """What can be presented to a backend, given only the stored secret (no SCRAM keys)."""
    if stored_secret is None or parse_scram_verifier(stored_secret) is not None:
        return ServerCredentials(user)
    if is_md5_hash(stored_secret):
        return ServerCredentials(user, md5_hash=stored_secret)
    return ServerCredentials(user, password=stored_secret)


def _failure(user: str, known: bool) -> ClientAuthFailed:
    # Same text either way; only the SQLSTATE differs (28P01 wrong password, 28000 unknown user).
    sqlstate = SqlState.INVALID_PASSWORD if known else SqlState.INVALID_AUTHORIZATION_SPECIFICATION
    return ClientAuthFailed(sqlstate, f'password authentication failed for user "{user}"')


class SecretSource(Protocol):
    """Where secrets of users missing from the auth file come from (auth_query)."""

    async def lookup(self, user: str, database: str) -> str | None:
        """The stored secret, None for an unknown user; ClientAuthFailed if it cannot tell."""
        ...


class ClientAuthenticator:
    """Runs the auth exchange for one node; holds derived verifiers and the mock-secret key."""

    def __init__(
        self, auth_type: AuthType, userlist: Mapping[str, str], secret_source: SecretSource | None = None
    ) -> None:
        self.auth_type = auth_type
        self.userlist = dict(userlist)
        self.secret_source = secret_source
        self._mock_key = secrets.token_bytes(32)
        self._derived: dict[tuple[str, str], ScramVerifier] = {}

    async def authenticate(self, channel: MessageChannel, user: str, database: str = "") -> ServerCredentials:
        """Challenge the client; return backend credentials or raise ClientAuthFailed.

        ``database`` is the one the client asked for; auth_query runs there unless auth_dbname is set.
        """
        stored = await self._lookup(user, database)
        method = choose_method(self.auth_type, stored)
        if method is Method.TRUST:
            return credentials_from_secret(user, stored)
        if method is Method.MD5:
            await self._md5(channel, user, stored)
            return credentials_from_secret(user, stored)
        if stored is not None and is_md5_hash(stored):
            raise ClientAuthFailed(
                SqlState.INVALID_PASSWORD, f'password authentication failed for user "{user}"'
            )  # an md5 hash cannot answer SCRAM; the log (not the client) says why
        client_key = await self._scram(channel, user, stored)
        verifier = parse_scram_verifier(stored) if stored is not None else None
        if verifier is not None:
            return ServerCredentials(user, scram_client_key=client_key, scram_server_key=verifier.server_key)
        return credentials_from_secret(user, stored)

    async def _lookup(self, user: str, database: str) -> str | None:
        """The user's stored secret: the auth file first, then the secret source (never under trust)."""
        stored = self.userlist.get(user)
        if stored is not None or self.secret_source is None or self.auth_type is AuthType.TRUST:
            return stored
        return await self.secret_source.lookup(user, database)

    async def _md5(self, channel: MessageChannel, user: str, stored: str | None) -> None:
        salt = secrets.token_bytes(4)
        await channel.send(pgmsg.authentication_md5_password(salt))
        response = await _read_password(channel)
        secret = stored if stored is not None else self._mock_secret(user).hex()
        if not md5_verify(user, secret, salt, response.decode("utf-8", "replace")) or stored is None:
            raise _failure(user, known=stored is not None)

    async def _scram(self, channel: MessageChannel, user: str, stored: str | None) -> bytes:
        verifier = self._verifier_for(user, stored)
        exchange = ScramServerExchange(verifier, secrets.token_urlsafe(18))
        await channel.send(pgmsg.authentication_sasl(["SCRAM-SHA-256"]))
        first = await channel.read_message()
        _expect_password_message(first.type)
        mechanism, data = pgmsg.parse_sasl_initial_response(first.body)
        if mechanism != "SCRAM-SHA-256":
            raise ClientAuthFailed(
                SqlState.PROTOCOL_VIOLATION, f"client selected an invalid SASL mechanism {mechanism!r}"
            )
        try:
            await channel.send(pgmsg.authentication_sasl_continue(exchange.handle_client_first(data)))
            final = await channel.read_message()
            _expect_password_message(final.type)
            server_final = exchange.handle_client_final(final.body)
        except ScramAuthFailed as exc:
            raise _failure(user, known=stored is not None) from exc
        except ScramError as exc:
            raise ClientAuthFailed(SqlState.PROTOCOL_VIOLATION, f"malformed SCRAM message: {exc}") from exc
        if stored is None:
            raise _failure(user, known=False)
        await channel.send(pgmsg.authentication_sasl_final(server_final))
        return exchange.client_key

    def _verifier_for(self, user: str, stored: str | None) -> ScramVerifier:
        if stored is None:
            return mock_scram_verifier(user, self._mock_key)
        parsed = parse_scram_verifier(stored)
        if parsed is not None:
            return parsed
        cached = self._derived.get((user, stored))
        if cached is None:
            cached = make_scram_verifier(stored, salt=self._mock_secret("salt:" + user)[:16])
            self._derived[(user, stored)] = cached
        return cached

    def _mock_secret(self, user: str) -> bytes:
        return hmac.new(self._mock_key, user.encode(), hashlib.sha256).digest()


async def _read_password(channel: MessageChannel) -> bytes:
    message = await channel.read_message()
    _expect_password_message(message.type)
    return pgmsg.parse_password_message(message.body)


def _expect_password_message(message_type: bytes) -> None:
    if message_type != b"p":
        raise ClientAuthFailed(
            SqlState.PROTOCOL_VIOLATION,
            f"expected a password response, got message type {message_type.decode('latin-1')!r}",
        )
