"""auth_query without a server: its wire messages, the reading of the answer, the TTL cache, the
pool-and-error shell against a scripted fake PostgreSQL, and the authenticator's lookup order."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Callable

import pytest
import trio
import trio.testing
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.config import AuthType
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.auth import ScramClientExchange, make_scram_verifier, md5_client_response
from pgbalancer.pgwire.errors import ProtocolError, SqlState, error_response
from pgbalancer.pgwire.framing import Message, MessageReader
from pgbalancer.pgwire.messages import AuthCode, encode_message, parse_data_row, parse_row_description
from pgbalancer.proxy.authquery import (
    AuthQueryError,
    AuthQuerySettings,
    AuthQuerySource,
    LookupResponse,
    SecretCache,
    lookup_messages,
    secret_from_result,
)
from pgbalancer.proxy.backend import BackendAddress, BackendUnavailable, ServerConnection, ServerCredentials
from pgbalancer.proxy.clientauth import ClientAuthenticator, ClientAuthFailed
from pgbalancer.proxy.netio import MessageChannel, PeerClosed
from pgbalancer.proxy.pool import PoolLimits
from tests.unit.scripted_peer import ScriptedPeer, data_row

QUERY = "SELECT usename, passwd FROM pg_shadow WHERE usename=$1"
VERIFIER = make_scram_verifier("right-password", salt=b"0123456789abcdef", iterations=4096)


def split_messages(data: bytes) -> list[Message]:
    reader = MessageReader()
    reader.receive_data(data)
    messages = []
    while isinstance(event := reader.next_event(), Message):
        messages.append(event)
    return messages


def row_description(*names: str) -> bytes:
    body = struct.pack("!h", len(names))
    for name in names:
        body += name.encode() + b"\0" + struct.pack("!ihihih", 0, 0, 25, -1, -1, 0)
    return encode_message(b"T", body)


def bound_parameter(bind_body: bytes) -> bytes:
    """The single text parameter of a Bind body with unnamed portal and statement."""
    assert bind_body[:2] == b"\0\0"
    formats, count = struct.unpack_from("!hh", bind_body, 2)
    assert (formats, count) == (0, 1)
    (length,) = struct.unpack_from("!i", bind_body, 6)
    return bind_body[10 : 10 + length]


# --------------------------------------------------------------------------- messages


def test_lookup_is_parse_bind_describe_execute_sync_with_the_user_only_in_bind() -> None:
    messages = split_messages(lookup_messages(QUERY, "alice"))
    assert [m.type for m in messages] == [b"P", b"B", b"D", b"E", b"S"]
    parse = messages[0].body
    assert parse == b"\0" + QUERY.encode() + b"\0" + struct.pack("!hi", 1, 0)
    assert bound_parameter(messages[1].body) == b"alice"
    assert messages[1].body.endswith(struct.pack("!h", 0))  # results in text format
    assert messages[2].body == b"P\0"
    assert messages[3].body == b"\0" + struct.pack("!i", 2)  # two rows are enough to see "too many"
    assert messages[4].body == b""


@given(st.text(min_size=1).filter(lambda s: "\0" not in s))
def test_any_user_name_travels_verbatim_as_a_parameter_never_as_sql(user: str) -> None:
    raw = user.encode("utf-8", "surrogateescape")
    parse, bind, *_ = split_messages(lookup_messages(QUERY, user))
    assert parse.body.split(b"\0")[1] == QUERY.encode()
    assert bound_parameter(bind.body) == raw


def test_injection_attempt_is_just_a_parameter_value() -> None:
    user = "x' OR '1'='1"
    parse, bind, *_ = split_messages(lookup_messages(QUERY, user))
    assert user.encode() not in parse.body
    assert bound_parameter(bind.body) == user.encode()


# --------------------------------------------------------------------------- answer parsing


def test_row_description_and_data_row_round_trip() -> None:
    assert parse_row_description(row_description("usename", "passwd")[5:]) == ("usename", "passwd")
    assert parse_data_row(data_row(b"alice", None, b"")[5:]) == (b"alice", None, b"")


@pytest.mark.parametrize(
    "body",
    [
        b"",
        b"\x00\x01name-without-terminator",
        row_description("a")[5:-1],
        row_description("a")[5:] + b"x",
    ],
)
def test_malformed_row_description_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_row_description(body)


@pytest.mark.parametrize(
    "body",
    [b"", b"\x00\x01\x00\x00", data_row(b"abc")[5:-1], data_row(b"abc")[5:] + b"x"],
)
def test_malformed_data_row_is_a_protocol_error(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_data_row(body)


def test_secret_is_the_passwd_column_or_the_second_of_two() -> None:
    assert secret_from_result(("passwd", "usename"), [(b"s1", b"alice")]) == "s1"
    assert secret_from_result(("name", "secret"), [(b"alice", b"s2")]) == "s2"
    assert secret_from_result(("passwd",), [(b"s3",)]) == "s3"


@pytest.mark.parametrize("rows", [[], [(b"alice", None)], [(b"alice", b"")], [(None, None)]])
def test_no_row_null_or_empty_secret_means_unknown_user(rows: list[tuple[bytes | None, ...]]) -> None:
    assert secret_from_result(("usename", "passwd"), rows) is None


def test_a_query_that_matches_several_users_is_refused() -> None:
    with pytest.raises(AuthQueryError, match="more than one row"):
        secret_from_result(("usename", "passwd"), [(b"a", b"x"), (b"b", b"y")])


def test_a_query_without_a_secret_column_is_refused_with_the_fix() -> None:
    with pytest.raises(AuthQueryError, match="named 'passwd'"):
        secret_from_result(("a", "b", "c"), [])


def test_lookup_response_collects_until_ready_for_query() -> None:
    response = LookupResponse()
    stream = (
        encode_message(b"1", b"")
        + encode_message(b"2", b"")
        + row_description("usename", "passwd")
        + data_row(b"alice", VERIFIER.encode().encode())
        + encode_message(b"C", b"SELECT 1\0")
        + pgmsg.ready_for_query(b"I")
    )
    done = [response.handle(message) for message in split_messages(stream)]
    assert done == [False] * 5 + [True]
    assert response.secret() == VERIFIER.encode()


def test_lookup_response_turns_a_server_error_into_server_error() -> None:
    response = LookupResponse()
    stream = error_response("42883", "function user_lookup(unknown) does not exist") + pgmsg.ready_for_query(
        b"I"
    )
    for message in split_messages(stream):
        response.handle(message)
    with pytest.raises(Exception, match="does not exist") as excinfo:
        response.secret()
    assert getattr(excinfo.value, "sqlstate", None) == "42883"


# --------------------------------------------------------------------------- cache


def test_cache_keeps_a_secret_for_ttl_seconds_of_injected_time() -> None:
    cache = SecretCache(ttl=30)
    cache.put("app", "alice", "secret", now=100.0)
    assert cache.get("app", "alice", now=129.9) == "secret"
    assert cache.get("postgres", "alice", now=110.0) is None  # per database: auth_query may differ
    assert cache.get("app", "alice", now=130.0) is None
    assert len(cache) == 0  # an expired entry is dropped when seen


def test_cache_with_ttl_zero_keeps_nothing() -> None:
    cache = SecretCache(ttl=0)
    cache.put("app", "alice", "secret", now=0.0)
    assert cache.get("app", "alice", now=0.0) is None


def test_cache_is_bounded_and_drops_the_oldest() -> None:
    cache = SecretCache(ttl=60, max_entries=2)
    for number, user in enumerate(["a", "b", "c"]):
        cache.put("db", user, f"s-{user}", now=float(number))
    assert len(cache) == 2
    assert cache.get("db", "a", now=3.0) is None
    assert cache.get("db", "c", now=3.0) == "s-c"


def test_cache_repr_hides_secrets() -> None:
    cache = SecretCache(ttl=60)
    cache.put("db", "alice", "very-secret-value", now=0.0)
    assert "very-secret-value" not in repr(cache)


# --------------------------------------------------------------------------- the shell, on a fake server

Answer = Callable[[str], bytes]


def answer_rows(secrets_by_user: dict[str, str | None]) -> Answer:
    def answer(user: str) -> bytes:
        stream = encode_message(b"1", b"") + encode_message(b"2", b"") + row_description("usename", "passwd")
        if user in secrets_by_user:
            secret = secrets_by_user[user]
            stream += data_row(user.encode(), None if secret is None else secret.encode())
        return stream + encode_message(b"C", b"SELECT\0") + pgmsg.ready_for_query(b"I")

    return answer


class FakePostgres:
    """A PgSocket that answers simple queries with success and lookups with ``answer(user)``."""

    peer = "fake:5432"

    def __init__(self, answer: Answer | None) -> None:
        self.answer = answer  # None: never answer a lookup
        self.lookups: list[str] = []
        self.closed = False
        self.dead = False  # the server went away, but looks_idle_and_open cannot tell
        self._pending = bytearray()
        self._reader = MessageReader()
        self._wake = trio.Event()

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        if self.closed or self.dead:
            raise PeerClosed("fake: closed")
        self._reader.receive_data(bytes(data))
        while isinstance(message := self._reader.next_event(), Message):
            self._respond(message)

    def _respond(self, message: Message) -> None:
        if message.type == b"Q":
            self._queue(encode_message(b"C", b"SET\0") + pgmsg.ready_for_query(b"I"))
        elif message.type == b"B":
            self.lookups.append(bound_parameter(message.body).decode())
        elif message.type == b"S" and self.answer is not None:
            self._queue(self.answer(self.lookups[-1]))

    def _queue(self, data: bytes) -> None:
        self._pending += data
        self._wake.set()

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        while not self._pending:
            if self.closed or self.dead:
                return 0
            self._wake = trio.Event()
            await self._wake.wait()
        size = min(len(buffer), len(self._pending))
        buffer[:size] = self._pending[:size]
        del self._pending[:size]
        return size

    def looks_idle_and_open(self) -> bool:
        return not self.closed and not self._pending

    def close(self) -> None:
        self.closed = True
        self._wake.set()


PRIMARY = BackendAddress(0, "127.0.0.1", 5432)


class FakeNode:
    """What ProxyServer gives an AuthQuerySource: the primary's address and a connection opener."""

    def __init__(self, answer: Answer | None, *, fail_with: Exception | None = None) -> None:
        self.answer = answer
        self.fail_with = fail_with
        self.opened: list[tuple[str, ServerCredentials, FakePostgres]] = []

    async def open_server(
        self, address: BackendAddress, database: str, credentials: ServerCredentials
    ) -> ServerConnection:
        if self.fail_with is not None:
            raise self.fail_with
        socket = FakePostgres(self.answer)
        self.opened.append((database, credentials, socket))
        return ServerConnection(socket, address, credentials.user, database, trio.current_time())

    def source(self, *, ttl: float = 0, dbname: str = "", timeout: float = 5) -> AuthQuerySource:
        settings = AuthQuerySettings(
            auth_user="lookup",
            query=QUERY,
            dbname=dbname,
            cache_ttl=ttl,
            timeout=timeout,
            pool_limits=PoolLimits(
                max_size=2, idle_timeout=600, max_sessions_per_server=0, max_age=0, wait_timeout=5
            ),
        )
        return AuthQuerySource(settings, {"lookup": "lookup-password"}, lambda: PRIMARY, self.open_server)


async def test_lookup_logs_in_as_auth_user_and_reuses_its_connection() -> None:
    node = FakeNode(answer_rows({"alice": VERIFIER.encode()}))
    source = node.source()
    assert await source.lookup("alice", "app") == VERIFIER.encode()
    assert await source.lookup("nobody", "app") is None
    [(database, credentials, socket)] = node.opened
    assert (database, credentials.user, credentials.password) == ("app", "lookup", "lookup-password")
    assert socket.lookups == ["alice", "nobody"]


async def test_auth_dbname_overrides_the_clients_database() -> None:
    node = FakeNode(answer_rows({}))
    await node.source(dbname="postgres").lookup("alice", "app")
    assert [opened[0] for opened in node.opened] == ["postgres"]


async def test_found_secrets_are_cached_for_the_ttl_but_unknown_users_never(
    autojump_clock: trio.testing.MockClock,
) -> None:
    node = FakeNode(answer_rows({"alice": "md5" + "0" * 32}))
    source = node.source(ttl=30)
    for _ in range(2):
        assert await source.lookup("alice", "app") is not None
        assert await source.lookup("nobody", "app") is None
    await trio.sleep(31)
    await source.lookup("alice", "app")
    assert node.opened[0][2].lookups == ["alice", "nobody", "nobody", "alice"]


async def test_unreachable_primary_is_a_08006_fatal_that_names_auth_query_but_not_the_address() -> None:
    node = FakeNode(None, fail_with=BackendUnavailable("backend 0 (10.9.8.7:5432): connection refused"))
    with pytest.raises(ClientAuthFailed) as excinfo:
        await node.source().lookup("alice", "app")
    assert excinfo.value.sqlstate == SqlState.CONNECTION_FAILURE
    assert 'could not look up user "alice" with auth_query' in excinfo.value.message
    assert "10.9.8.7" not in excinfo.value.message


async def test_a_server_error_fails_the_login_but_keeps_the_connection() -> None:
    def refuse(user: str) -> bytes:
        return error_response("42501", "permission denied for view pg_shadow") + pgmsg.ready_for_query(b"I")

    node = FakeNode(refuse)
    source = node.source()
    for _ in range(2):
        with pytest.raises(ClientAuthFailed, match="SQLSTATE 42501") as excinfo:
            await source.lookup("alice", "app")
        assert excinfo.value.sqlstate == SqlState.CONNECTION_FAILURE
    assert len(node.opened) == 1
    assert source.failures_total == 2


async def test_a_silent_server_times_out(autojump_clock: trio.testing.MockClock) -> None:
    node = FakeNode(None)
    with pytest.raises(ClientAuthFailed, match="no answer within 3s"):
        await node.source(timeout=3).lookup("alice", "app")
    assert node.opened[0][2].closed  # a connection with a query in flight is never reused


async def test_a_pooled_connection_that_died_unnoticed_is_retried_once_on_a_fresh_one() -> None:
    node = FakeNode(answer_rows({"alice": "md5" + "1" * 32}))
    source = node.source()
    await source.lookup("alice", "app")
    node.opened[0][2].dead = True
    assert await source.lookup("alice", "app") == "md5" + "1" * 32
    assert len(node.opened) == 2


async def test_user_names_that_are_not_utf8_are_unknown_without_asking() -> None:
    node = FakeNode(answer_rows({}))
    assert await node.source().lookup("bad\udcff", "app") is None
    assert node.opened == []


async def test_close_drops_idle_connections_and_the_cache() -> None:
    node = FakeNode(answer_rows({"alice": "md5" + "2" * 32}))
    source = node.source(ttl=60)
    await source.lookup("alice", "app")
    source.close()
    assert node.opened[0][2].closed
    assert len(source.cache) == 0


# --------------------------------------------------------------------------- the authenticator's lookup


class FakeSource:
    def __init__(self, secrets_by_user: dict[str, str], *, error: ClientAuthFailed | None = None) -> None:
        self.secrets_by_user = secrets_by_user
        self.error = error
        self.asked: list[tuple[str, str]] = []

    async def lookup(self, user: str, database: str) -> str | None:
        self.asked.append((user, database))
        if self.error is not None:
            raise self.error
        return self.secrets_by_user.get(user)


class ScriptedClient(ScriptedPeer):
    """A client PgSocket that answers the server's auth requests with ``password``."""

    peer = "client:1"

    def __init__(self, user: str, password: str) -> None:
        super().__init__()
        self.user = user
        self.password = password
        self.scram = ScramClientExchange(user, "client-nonce-123", password=password)

    def respond(self, message: Message) -> None:
        request = pgmsg.parse_authentication(message.body)
        if request.code == AuthCode.SASL:
            self.pending += pgmsg.sasl_initial_response("SCRAM-SHA-256", self.scram.client_first())
        elif request.code == AuthCode.SASL_CONTINUE:
            self.pending += pgmsg.sasl_response(self.scram.handle_server_first(request.data))
        elif request.code == AuthCode.SASL_FINAL:
            self.scram.verify_server_final(request.data)
        elif request.code == AuthCode.MD5_PASSWORD:
            self.pending += pgmsg.password_message(
                md5_client_response(self.user, self.password, request.data)
            )


async def authenticate(
    authenticator: ClientAuthenticator, user: str, password: str, database: str = "app"
) -> ServerCredentials:
    channel = MessageChannel(ScriptedClient(user, password), 1 << 20)
    return await authenticator.authenticate(channel, user, database)


async def test_a_verifier_from_auth_query_logs_in_and_passes_through_to_the_backend() -> None:
    source = FakeSource({"alice": VERIFIER.encode()})
    authenticator = ClientAuthenticator(AuthType.SCRAM_SHA_256, {}, source)
    credentials = await authenticate(authenticator, "alice", "right-password")
    assert source.asked == [("alice", "app")]
    assert credentials.password is None
    assert credentials.scram_server_key == VERIFIER.server_key
    assert credentials.scram_client_key is not None
    assert hashlib.sha256(credentials.scram_client_key).digest() == VERIFIER.stored_key


async def test_wrong_password_is_28p01_and_unknown_user_28000_with_the_same_text() -> None:
    authenticator = ClientAuthenticator(AuthType.SCRAM_SHA_256, {}, FakeSource({"alice": VERIFIER.encode()}))
    with pytest.raises(ClientAuthFailed) as wrong:
        await authenticate(authenticator, "alice", "wrong")
    with pytest.raises(ClientAuthFailed) as unknown:
        await authenticate(authenticator, "bob", "whatever")
    assert (wrong.value.sqlstate, unknown.value.sqlstate) == ("28P01", "28000")
    assert wrong.value.message.replace("alice", "bob") == unknown.value.message


async def test_md5_hash_from_auth_query_serves_md5_clients_and_the_md5_backend_login() -> None:
    md5_hash = "md5" + hashlib.md5(b"pw" + b"carol").hexdigest()
    authenticator = ClientAuthenticator(AuthType.MD5, {}, FakeSource({"carol": md5_hash}))
    credentials = await authenticate(authenticator, "carol", "pw")
    assert credentials.md5_hash == md5_hash


async def test_the_auth_file_wins_and_trust_never_asks() -> None:
    source = FakeSource({"alice": VERIFIER.encode()})
    file_first = ClientAuthenticator(AuthType.SCRAM_SHA_256, {"alice": "right-password"}, source)
    await authenticate(file_first, "alice", "right-password")
    trusting = ClientAuthenticator(AuthType.TRUST, {}, source)
    assert (await authenticate(trusting, "alice", "")).user == "alice"
    assert source.asked == []


async def test_a_failing_lookup_reaches_the_client_as_its_error() -> None:
    failure = ClientAuthFailed(SqlState.CONNECTION_FAILURE, "could not look up user")
    authenticator = ClientAuthenticator(AuthType.SCRAM_SHA_256, {}, FakeSource({}, error=failure))
    with pytest.raises(ClientAuthFailed) as excinfo:
        await authenticate(authenticator, "alice", "pw")
    assert excinfo.value is failure
