"""BatchRewriter, ClientStatements and ServerStatements: named statements across pooled servers.

Unit tests check the exact bytes sent to the server and what the router then gives the client.
Property tests run random pipelines from several clients over shared server connections
through the rewriter against a small PostgreSQL stand-in, and compare what each client sees
with what it would see on a server of its own.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.framing import Message, MessageReader
from pgbalancer.pgwire.responses import Piece, ResponseRouter
from pgbalancer.proxy.prepared import (
    CLOSE_COMPLETE,
    PARSE_COMPLETE,
    SERVER_NAME_PREFIX,
    BatchRewriter,
    ClientStatements,
    ServerStatements,
    server_name_for,
)


def frame(kind: bytes, body: bytes = b"") -> bytes:
    return kind + (len(body) + 4).to_bytes(4, "big") + body


def definition(sql: bytes, types: tuple[int, ...] = ()) -> bytes:
    return sql + b"\x00" + len(types).to_bytes(2, "big") + b"".join(oid.to_bytes(4, "big") for oid in types)


def parse(name: bytes, sql: bytes, types: tuple[int, ...] = ()) -> Message:
    return Message(b"P", name + b"\x00" + definition(sql, types))


BIND_TAIL = b"\x00\x00" + b"\x00\x01" + b"\x00\x00\x00\x0242" + b"\x00\x01\x00\x01"  # one text param "42"


def bind(statement: bytes, portal: bytes = b"") -> Message:
    return Message(b"B", portal + b"\x00" + statement + b"\x00" + BIND_TAIL)


def describe(kind: bytes, name: bytes) -> Message:
    return Message(b"D", kind + name + b"\x00")


def close(kind: bytes, name: bytes) -> Message:
    return Message(b"C", kind + name + b"\x00")


EXECUTE = Message(b"E", b"\x00\x00\x00\x00\x00")
SYNC = Message(b"S", b"")
FLUSH = Message(b"H", b"")

SERVER_PARSE_COMPLETE = frame(b"1")
BIND_COMPLETE = frame(b"2")
ROW_DESCRIPTION = frame(b"T", b"\x00\x00")
NO_DATA = frame(b"n")
SELECT_1 = frame(b"C", b"SELECT 1\x00")
READY = frame(b"Z", b"I")
ERROR = frame(b"E", b"SERROR\x00C42601\x00Msyntax error\x00\x00")

SQL = b"SELECT $1::int + 1"
INT4 = 23


def sent(data: bytes | bytearray) -> list[Message]:
    """The messages the rewriter produced, decoded again."""
    reader = MessageReader()
    reader.receive_data(bytes(data))
    reader.receive_data(b"")  # EOF: a partial message would raise instead of hiding
    messages: list[Message] = []
    while isinstance(event := reader.next_event(), Message):
        messages.append(event)
    return messages


def joined(pieces: list[Piece]) -> bytes:
    return b"".join(pieces)


@dataclass
class Server:
    """One pooled server connection as the relay sees it: the statements it holds, its router."""

    statements: ServerStatements = field(default_factory=lambda: ServerStatements(100))

    def router(self) -> ResponseRouter:
        return ResponseRouter(on_request_lost=self.statements.request_lost)  # the relay's wiring


def rewrite(
    client: ClientStatements, server: Server, messages: list[Message]
) -> tuple[list[Message], ResponseRouter]:
    router = server.router()
    data = BatchRewriter(client, server.statements, router).rewrite(messages)
    return sent(data), router


def prepared_on(server: Server, client: ClientStatements, name: bytes, sql: bytes = SQL) -> str:
    """Prepare ``name`` through the rewriter and let the server accept it; its server-side name."""
    messages, router = rewrite(client, server, [parse(name, sql, (INT4,)), SYNC])
    router.feed(b"".join(_SUCCESS[message.type] for message in messages))
    assert router.outstanding == 0
    return client.by_name[name].server_name


SERVER_NAME = server_name_for(definition(SQL, (INT4,)))
_SUCCESS = {b"P": SERVER_PARSE_COMPLETE, b"C": frame(b"3"), b"S": READY}


# --------------------------------------------------------------------------- naming


def test_server_name_is_the_prefix_and_a_hex_digest() -> None:
    assert re.fullmatch(re.escape(SERVER_NAME_PREFIX) + r"[0-9a-f]{24}", SERVER_NAME)


def test_server_name_depends_on_the_parameter_types() -> None:
    assert server_name_for(definition(SQL, (INT4,))) != server_name_for(definition(SQL, (20,)))
    assert server_name_for(definition(SQL, (INT4,))) != server_name_for(definition(SQL))


def test_different_parameter_types_prepare_different_server_statements() -> None:
    client, server = ClientStatements(), Server()
    messages, _ = rewrite(client, server, [parse(b"a", SQL, (INT4,)), parse(b"b", SQL, (20,))])
    names = [message.body.split(b"\x00")[0] for message in messages]
    assert [message.type for message in messages] == [b"P", b"P"]
    assert names[0] != names[1]
    assert len(server.statements) == 2


# --------------------------------------------------------------------------- Parse


def test_first_parse_of_a_named_statement_is_renamed_and_forwarded() -> None:
    client, server = ClientStatements(), Server()
    messages, router = rewrite(client, server, [parse(b"s1", SQL, (INT4,))])
    assert messages == [Message(b"P", SERVER_NAME.encode() + b"\x00" + definition(SQL, (INT4,)))]
    assert router.outstanding == 1
    assert SERVER_NAME in server.statements
    assert joined(router.feed(SERVER_PARSE_COMPLETE)) == SERVER_PARSE_COMPLETE


def test_second_client_preparing_the_same_statement_is_answered_locally() -> None:
    server = Server()
    prepared_on(server, ClientStatements(), b"first")
    other = ClientStatements()
    messages, router = rewrite(other, server, [parse(b"mine", SQL, (INT4,))])
    assert messages == []
    assert joined(router.due_replies()) == PARSE_COMPLETE == SERVER_PARSE_COMPLETE
    assert other.by_name[b"mine"].server_name == SERVER_NAME


def test_local_parse_complete_keeps_its_place_in_a_pipeline() -> None:
    client, server = ClientStatements(), Server()
    prepared_on(server, client, b"s1")
    batch = [bind(b"", b""), parse(b"s2", SQL, (INT4,)), bind(b"s2"), SYNC]
    messages, router = rewrite(client, server, [parse(b"", b"SELECT 1"), *batch])
    assert [message.type for message in messages] == [b"P", b"B", b"B", b"S"]
    out = router.feed(SERVER_PARSE_COMPLETE + BIND_COMPLETE + BIND_COMPLETE + READY)
    assert joined(out) == SERVER_PARSE_COMPLETE + BIND_COMPLETE + PARSE_COMPLETE + BIND_COMPLETE + READY


def test_unnamed_statements_pass_through_byte_identical() -> None:
    client, server = ClientStatements(), Server()
    batch = [
        parse(b"", SQL, (INT4,)),
        describe(b"S", b""),
        bind(b""),
        describe(b"P", b""),
        EXECUTE,
        close(b"S", b""),
        close(b"P", b""),
        SYNC,
    ]
    router = server.router()
    data = BatchRewriter(client, server.statements, router).rewrite(batch)
    assert data == b"".join(message.encode() for message in batch)
    assert router.outstanding == len(batch)
    assert len(server.statements) == 0 and client.by_name == {}


def test_a_failed_parse_is_forgotten_by_the_server_statements() -> None:
    client, server = ClientStatements(), Server()
    _, router = rewrite(client, server, [parse(b"s1", SQL, (INT4,)), SYNC])
    router.feed(ERROR + READY)
    assert SERVER_NAME not in server.statements
    messages, _ = rewrite(client, server, [bind(b"s1")])
    assert [message.type for message in messages] == [b"P", b"B"]  # prepared again, not assumed


def test_malformed_parse_is_a_protocol_error() -> None:
    client, server = ClientStatements(), Server()
    with pytest.raises(ProtocolError):
        rewrite(client, server, [Message(b"P", b"no terminator")])


def test_malformed_bind_is_a_protocol_error() -> None:
    client, server = ClientStatements(), Server()
    with pytest.raises(ProtocolError):
        rewrite(client, server, [Message(b"B", b"\x00statement without terminator")])


# --------------------------------------------------------------------------- Bind and Describe


def test_bind_on_a_server_lacking_the_statement_injects_a_parse() -> None:
    client = ClientStatements()
    prepared_on(Server(), client, b"s1")
    elsewhere = Server()
    messages, router = rewrite(client, elsewhere, [bind(b"s1"), EXECUTE, SYNC])
    assert messages == [
        Message(b"P", SERVER_NAME.encode() + b"\x00" + definition(SQL, (INT4,))),
        Message(b"B", b"\x00" + SERVER_NAME.encode() + b"\x00" + BIND_TAIL),
        EXECUTE,
        SYNC,
    ]
    out = router.feed(SERVER_PARSE_COMPLETE + BIND_COMPLETE + SELECT_1 + READY)
    assert joined(out) == BIND_COMPLETE + SELECT_1 + READY  # the injected Parse's reply is dropped
    assert SERVER_NAME in elsewhere.statements


def test_bind_on_a_server_holding_the_statement_is_only_renamed() -> None:
    server, client = Server(), ClientStatements()
    prepared_on(server, client, b"s1")
    messages, _ = rewrite(client, server, [bind(b"s1", portal=b"p1")])
    assert messages == [Message(b"B", b"p1\x00" + SERVER_NAME.encode() + b"\x00" + BIND_TAIL)]


def test_describe_statement_on_a_server_lacking_it_injects_a_parse() -> None:
    client = ClientStatements()
    prepared_on(Server(), client, b"s1")
    messages, router = rewrite(client, Server(), [describe(b"S", b"s1"), SYNC])
    assert [message.type for message in messages] == [b"P", b"D", b"S"]
    assert messages[1] == describe(b"S", SERVER_NAME.encode())
    parameters = frame(b"t", b"\x00\x01\x00\x00\x00\x17")
    out = router.feed(SERVER_PARSE_COMPLETE + parameters + ROW_DESCRIPTION + READY)
    assert joined(out) == parameters + ROW_DESCRIPTION + READY


def test_describe_portal_passes_through() -> None:
    client, server = ClientStatements(), Server()
    messages, router = rewrite(client, server, [describe(b"P", b"portal")])
    assert messages == [describe(b"P", b"portal")]
    router.feed(NO_DATA)
    assert router.outstanding == 0


def test_unknown_statement_name_passes_through_unchanged() -> None:
    client, server = ClientStatements(), Server()
    router = server.router()
    batch = [bind(b"never_prepared"), describe(b"S", b"never_prepared")]
    data = BatchRewriter(client, server.statements, router).rewrite(batch)
    assert data == b"".join(message.encode() for message in batch)


def test_unknown_name_in_the_server_namespace_never_reaches_a_server_statement() -> None:
    server = Server()
    prepared_on(server, ClientStatements(), b"someone_elses")
    intruder = ClientStatements()
    messages, _ = rewrite(
        intruder, server, [bind(SERVER_NAME.encode()), describe(b"S", SERVER_NAME.encode())]
    )
    statement_names = [messages[0].body.split(b"\x00")[1], messages[1].body[1:-1]]
    assert all(name != SERVER_NAME.encode() for name in statement_names)
    assert all(name.endswith(SERVER_NAME.encode()) for name in statement_names)  # the error names it


def test_client_may_name_its_own_statement_with_the_server_prefix() -> None:
    client, server = ClientStatements(), Server()
    own_name = (SERVER_NAME_PREFIX + "mine").encode()
    prepared_on(server, client, own_name)
    messages, _ = rewrite(client, server, [bind(own_name)])
    assert messages[0].body.split(b"\x00")[1] == SERVER_NAME.encode()


# --------------------------------------------------------------------------- Close


def test_close_of_a_named_statement_is_answered_locally() -> None:
    server, client = Server(), ClientStatements()
    prepared_on(server, client, b"s1")
    messages, router = rewrite(client, server, [close(b"S", b"s1"), SYNC])
    assert messages == [SYNC]
    assert joined(router.due_replies()) == CLOSE_COMPLETE == frame(b"3")
    assert b"s1" not in client.by_name
    assert SERVER_NAME in server.statements  # kept for whoever prepares it next


def test_closed_name_is_unknown_afterwards() -> None:
    server, client = Server(), ClientStatements()
    prepared_on(server, client, b"s1")
    rewrite(client, server, [close(b"S", b"s1")])
    messages, _ = rewrite(client, server, [bind(b"s1")])
    assert messages == [bind(b"s1")]


def test_preparing_again_after_close_is_answered_locally() -> None:
    server, client = Server(), ClientStatements()
    prepared_on(server, client, b"s1")
    rewrite(client, server, [close(b"S", b"s1")])
    messages, router = rewrite(client, server, [parse(b"s1", SQL, (INT4,))])
    assert messages == []
    assert joined(router.due_replies()) == PARSE_COMPLETE


def test_close_of_a_portal_is_forwarded() -> None:
    client, server = ClientStatements(), Server()
    messages, router = rewrite(client, server, [close(b"P", b"p1")])
    assert messages == [close(b"P", b"p1")]
    assert router.outstanding == 1


# --------------------------------------------------------------------------- other messages


def test_simple_messages_are_forwarded_and_expect_what_they_should() -> None:
    client, server = ClientStatements(), Server()
    query = Message(b"Q", b"SELECT 1\x00")
    copy_data = Message(b"d", b"1\n")
    function_call = Message(b"F", b"\x00\x00\x00\x01\x00\x00\x00\x00\x00\x00\x00\x00")
    batch = [query, FLUSH, copy_data, function_call, EXECUTE, SYNC]
    router = server.router()
    data = BatchRewriter(client, server.statements, router).rewrite(batch)
    assert data == b"".join(message.encode() for message in batch)
    assert router.outstanding == 4  # Query, FunctionCall, Execute, Sync; Flush and CopyData get no reply


# --------------------------------------------------------------------------- LRU


def test_server_statements_evict_the_least_recently_used() -> None:
    statements = ServerStatements(2)
    assert statements.add("a") is None
    assert statements.add("b") is None
    statements.touch("a")
    assert statements.add("c") == "b"
    assert "a" in statements and "c" in statements and "b" not in statements


def test_server_statements_hold_at_least_one() -> None:
    statements = ServerStatements(0)
    assert statements.add("a") is None
    assert statements.add("b") == "a"


def test_server_statements_request_lost_ignores_what_is_not_a_name() -> None:
    statements = ServerStatements(2)
    statements.add("a")
    statements.request_lost(None)
    statements.discard("missing")
    assert len(statements) == 1
    statements.clear()
    assert len(statements) == 0


def test_eviction_closes_the_evicted_statement_on_the_server() -> None:
    client = ClientStatements()
    server = Server(ServerStatements(2))
    first = prepared_on(server, client, b"a", b"SELECT 1")
    second = prepared_on(server, client, b"b", b"SELECT 2")
    rewrite(client, server, [bind(b"a")])  # a is now the most recently used
    messages, router = rewrite(client, server, [parse(b"c", b"SELECT 3"), SYNC])
    assert messages[0] == close(b"S", second.encode())
    assert [message.type for message in messages] == [b"C", b"P", b"S"]
    assert joined(router.feed(frame(b"3") + SERVER_PARSE_COMPLETE + READY)) == SERVER_PARSE_COMPLETE + READY
    assert first in server.statements and second not in server.statements


def test_evicted_statement_is_prepared_again_when_used() -> None:
    client = ClientStatements()
    server = Server(ServerStatements(1))
    first = prepared_on(server, client, b"a", b"SELECT 1")
    prepared_on(server, client, b"b", b"SELECT 2")
    messages, _ = rewrite(client, server, [bind(b"a")])
    assert [message.type for message in messages] == [b"C", b"P", b"B"]
    assert messages[1].body.startswith(first.encode() + b"\x00")


# --------------------------------------------------------------------------- a PostgreSQL stand-in


class _Failure(Exception):
    def __init__(self, sqlstate: bytes) -> None:
        super().__init__(sqlstate.decode())
        self.sqlstate = sqlstate


class FakePostgres:
    """Just enough of PostgreSQL's extended protocol to judge what the rewriter sends.

    Named statements persist and cannot be parsed twice (42P05); after an error everything up
    to Sync is ignored. Execute returns the statement's SQL as its row, so running the wrong
    statement shows. Errors carry only a SQLSTATE, never a statement name.
    """

    def __init__(self) -> None:
        self.statements: dict[bytes, tuple[bytes, bytes]] = {}  # name -> (sql, parameter types)
        self.portal: bytes | None = None
        self.skipping = False
        self.reader = MessageReader()

    def receive(self, data: bytes | bytearray) -> bytes:
        if data:  # an empty receive would mean EOF
            self.reader.receive_data(bytes(data))
        out = bytearray()
        while isinstance(message := self.reader.next_event(), Message):
            out += self._answer(message)
        return bytes(out)

    def _answer(self, message: Message) -> bytes:
        if message.type == b"S":
            self.skipping, self.portal = False, None
            return frame(b"Z", b"I")
        if self.skipping or message.type == b"H":
            return b""
        try:
            return self._extended(message)
        except _Failure as failure:
            self.skipping = True
            return frame(b"E", b"SERROR\x00C" + failure.sqlstate + b"\x00Mfailed\x00\x00")

    def _extended(self, message: Message) -> bytes:
        fields = message.body
        if message.type == b"P":
            name, sql, types = fields.split(b"\x00", 2)
            if name and name in self.statements:
                raise _Failure(b"42P05")
            if b"bad" in sql:
                raise _Failure(b"42601")
            self.statements[name] = (sql, types)
            return frame(b"1")
        if message.type == b"B":
            statement = fields.split(b"\x00", 2)[1]
            self.portal = self._statement(statement)[0]
            return frame(b"2")
        if message.type == b"D":
            if fields[:1] == b"S":
                sql, types = self._statement(fields[1:-1])
                return frame(b"t", types) + self._description(sql)
            return self._description(self._portal())
        if message.type == b"E":
            sql = self._portal()
            if b"1/0" in sql:
                raise _Failure(b"22012")
            return frame(b"D", b"\x00\x01" + len(sql).to_bytes(4, "big") + sql) + frame(b"C", b"SELECT 1\x00")
        if message.type == b"C":
            if fields[:1] == b"S":
                self.statements.pop(fields[1:-1], None)
            return frame(b"3")
        raise AssertionError(f"the stand-in does not speak {message.type!r}")

    def _statement(self, name: bytes) -> tuple[bytes, bytes]:
        if name not in self.statements:
            raise _Failure(b"26000")
        return self.statements[name]

    def _portal(self) -> bytes:
        if self.portal is None:
            raise _Failure(b"34000")
        return self.portal

    @staticmethod
    def _description(sql: bytes) -> bytes:
        return ROW_DESCRIPTION if sql.startswith(b"SELECT") else NO_DATA


@dataclass
class PooledServer:
    postgres: FakePostgres
    statements: ServerStatements


class Pooler:
    """Clients' batches through BatchRewriter and ResponseRouter to shared stand-in servers."""

    def __init__(self, servers: int, capacity: int) -> None:
        self.servers = [PooledServer(FakePostgres(), ServerStatements(capacity)) for _ in range(servers)]

    def run(self, client: ClientStatements, server_index: int, batch: list[Message]) -> bytes:
        server = self.servers[server_index]
        router = ResponseRouter(on_request_lost=server.statements.request_lost)
        data = BatchRewriter(client, server.statements, router).rewrite(batch)
        out = joined(router.due_replies())
        out += joined(router.feed(server.postgres.receive(data)))
        assert router.outstanding == 0, "every request was answered: the server can go back to the pool"
        return out


def run_directly(postgres: FakePostgres, batch: list[Message]) -> bytes:
    return postgres.receive(b"".join(message.encode() for message in batch))


def test_stand_in_rejects_a_second_parse_of_a_name_like_postgresql() -> None:
    postgres = FakePostgres()
    run_directly(postgres, [parse(b"a", b"SELECT 1"), SYNC])
    assert run_directly(postgres, [parse(b"a", b"SELECT 1"), SYNC]).startswith(b"E")


def test_a_statement_follows_its_client_to_another_server() -> None:
    pooler, client = Pooler(servers=2, capacity=10), ClientStatements()
    pooler.run(client, 0, [parse(b"s1", b"SELECT 41"), SYNC])
    out = pooler.run(client, 1, [bind(b"s1"), EXECUTE, SYNC])
    assert out == BIND_COMPLETE + frame(b"D", b"\x00\x01\x00\x00\x00\x09SELECT 41") + SELECT_1 + READY


def test_eviction_close_skipped_after_an_error_does_not_break_the_next_prepare() -> None:
    pooler = Pooler(servers=1, capacity=1)
    client, other = ClientStatements(), ClientStatements()
    pooler.run(client, 0, [parse(b"a", b"SELECT 1"), SYNC])
    failing_then_evicting = [parse(b"", b"SELECT 1/0"), bind(b""), EXECUTE, parse(b"b", b"SELECT 2"), SYNC]
    pooler.run(client, 0, failing_then_evicting)  # the Close of "SELECT 1" is skipped by the server
    out = pooler.run(other, 0, [parse(b"mine", b"SELECT 1"), bind(b"mine"), EXECUTE, SYNC])
    assert out == run_directly(FakePostgres(), [parse(b"mine", b"SELECT 1"), bind(b"mine"), EXECUTE, SYNC])


def test_skipped_evictions_that_undo_each_other_leave_the_server_statements_true() -> None:
    pooler = Pooler(servers=2, capacity=1)
    client = ClientStatements()
    pooler.run(client, 1, [parse(b"elsewhere", b"SELECT 2"), SYNC])
    pooler.run(client, 0, [parse(b"here", b"SELECT 1"), SYNC])
    failing = [parse(b"", b"SELECT 1/0"), bind(b""), EXECUTE]
    # Each Bind re-prepares on server 0, evicting the other; the server skips all of it.
    pooler.run(client, 0, [*failing, bind(b"elsewhere"), EXECUTE, bind(b"here"), EXECUTE, SYNC])
    batch = [parse(b"mine", b"SELECT 1"), bind(b"mine"), EXECUTE, SYNC]
    assert pooler.run(ClientStatements(), 0, batch) == run_directly(FakePostgres(), batch)


# --------------------------------------------------------------------------- properties

# Few names, statements and types, so that clients keep meeting each other's statements.
_NAMES = [b"a", b"b", (SERVER_NAME_PREFIX + "x").encode()]
_GOOD_SQL = [b"SELECT 1", b"SELECT 2", b"SELECT 1/0"]  # Execute of 1/0 fails
_TYPES: list[tuple[int, ...]] = [(), (INT4,)]
_ACTIONS = ["parse", "parse", "run", "run", "describe", "close", "unnamed", "flush"]

T = TypeVar("T")


class Choices:
    """Decisions drawn up front as one list of integers: far cheaper than a draw per decision."""

    def __init__(self, numbers: list[int]) -> None:
        self._numbers = iter(numbers)

    def pick(self, options: Sequence[T]) -> T:
        return options[next(self._numbers, 0) % len(options)]

    def number(self, low: int, high: int) -> int:
        return low + next(self._numbers, 0) % (high - low + 1)


@dataclass
class ClientModel:
    """One client: its own statement names through the pooler, and a server of its own to compare."""

    statements: ClientStatements = field(default_factory=ClientStatements)
    direct: FakePostgres = field(default_factory=FakePostgres)
    closed: set[bytes] = field(default_factory=set)  # closed by the client; a skipped Close leaves them


@dataclass
class BatchBuilder:
    """Builds one pipeline ending in Sync, using only names a well-behaved client may use."""

    client: ClientModel
    choices: Choices
    stop_after_error: bool
    messages: list[Message] = field(default_factory=list)
    defined: set[bytes] = field(default_factory=set)
    usable: set[bytes] = field(default_factory=set)
    may_have_failed: bool = False  # after a failing request the server ignores the rest

    def __post_init__(self) -> None:
        self.defined = {name for name in self.client.direct.statements if name}
        self.usable = self.defined - self.client.closed

    def build(self) -> list[Message]:
        for _ in range(self.choices.number(1, 6)):
            self._add_action()
            if self.may_have_failed and self.stop_after_error:
                break
        return [*self.messages, SYNC]

    def _add_action(self) -> None:
        action = self.choices.pick(_ACTIONS)
        free = [name for name in _NAMES if name not in self.defined]
        used = sorted(self.usable)
        if action == "parse" and free:
            self._parse(self.choices.pick(free))
        elif action == "run" and used:
            self._run(self.choices.pick(used))
        elif action == "describe" and used:
            self.messages.append(describe(b"S", self.choices.pick(used)))
        elif action == "close" and used:
            self._close(self.choices.pick(used))
        elif action == "flush":
            self.messages.append(FLUSH)
        else:
            self._unnamed()

    def _parse(self, name: bytes) -> None:
        sql = self.choices.pick([*_GOOD_SQL, b"bad sql"])  # a Parse the server rejects
        self.messages.append(parse(name, sql, self.choices.pick(_TYPES)))
        self.defined.add(name)
        if sql == b"bad sql":
            self.may_have_failed = True
        elif not self.may_have_failed:
            self.usable.add(name)
            self.client.closed.discard(name)

    def _run(self, name: bytes) -> None:
        self.messages.append(bind(name))
        if self.choices.pick([False, True]):
            self.messages.append(describe(b"P", b""))
        self.messages.append(EXECUTE)
        self.may_have_failed |= b"1/0" in self._sql_of(name)

    def _close(self, name: bytes) -> None:
        self.messages.append(close(b"S", name))
        self.defined.discard(name)
        self.usable.discard(name)
        self.client.closed.add(name)

    def _unnamed(self) -> None:
        sql = self.choices.pick(_GOOD_SQL)
        self.messages += [parse(b"", sql, self.choices.pick(_TYPES)), bind(b""), EXECUTE]
        self.may_have_failed |= b"1/0" in sql

    def _sql_of(self, name: bytes) -> bytes:
        for message in reversed(self.messages):
            if message.type == b"P" and message.body.startswith(name + b"\x00"):
                return message.body.split(b"\x00")[1]
        return self.client.direct.statements[name][0]


def check_pooled_clients_see_what_a_server_of_their_own_shows(
    choices: Choices, *, servers: int, capacity: int, stop_after_error: bool
) -> None:
    pooler = Pooler(servers, capacity)
    clients = [ClientModel() for _ in range(choices.number(1, 3))]
    for _ in range(choices.number(1, 20)):
        client = choices.pick(clients)
        batch = BatchBuilder(client, choices, stop_after_error).build()
        server_index = choices.number(0, servers - 1)
        assert pooler.run(client.statements, server_index, batch) == run_directly(client.direct, batch)


_DECISIONS = st.lists(st.integers(0, 1 << 16), min_size=100, max_size=400)


@given(decisions=_DECISIONS)
def test_pooled_clients_see_what_a_server_of_their_own_shows(decisions: list[int]) -> None:
    check_pooled_clients_see_what_a_server_of_their_own_shows(
        Choices(decisions), servers=2, capacity=100, stop_after_error=False
    )


@given(decisions=_DECISIONS, capacity=st.integers(1, 3))
def test_pooled_clients_see_the_same_under_eviction(decisions: list[int], capacity: int) -> None:
    # Errors may be followed by more requests in the same batch: skipped evictions included.
    check_pooled_clients_see_what_a_server_of_their_own_shows(
        Choices(decisions), servers=2, capacity=capacity, stop_after_error=False
    )
