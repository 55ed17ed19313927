"""Protocol-level prepared statements across pooled server connections (pure).

In transaction pooling a client's next transaction may run on any server connection.
A client's named statements are therefore renamed to a server-side name derived from
the statement itself (query text + parameter types), so every client preparing the same
statement shares it. Each server connection keeps an LRU of the names it holds
(``max_prepared_statements``); a Bind or Describe for a statement the server lacks gets
a Parse injected before it, whose reply the response router drops. A Parse for a
statement the server already holds is answered locally; a Close of a named statement
only forgets the client's name.

The rewriter builds the bytes to send and registers each request with the router.
It performs no I/O.
"""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Iterable
from dataclasses import dataclass

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.framing import Message, encode_message
from pgbalancer.pgwire.responses import Request, ResponseRouter

SERVER_NAME_PREFIX = "pgbs_"
PARSE_COMPLETE = b"1\x00\x00\x00\x04"
CLOSE_COMPLETE = b"3\x00\x00\x00\x04"

_SIMPLE_REQUESTS = {
    ord("Q"): Request.QUERY,
    ord("F"): Request.FUNCTION_CALL,
    ord("S"): Request.SYNC,
    ord("E"): Request.EXECUTE,
}


@dataclass(frozen=True, slots=True)
class EvictedStatement:
    """Token of an eviction Close: if the server never performs it, the statement is still there."""

    server_name: str


@dataclass(frozen=True, slots=True)
class PreparedStatement:
    server_name: str
    definition: bytes  # the Parse body after the name: query, parameter count and types


def _cstring(body: bytes, start: int) -> tuple[bytes, int]:
    end = body.find(b"\x00", start)
    if end < 0:
        raise ProtocolError("malformed message: missing string terminator")
    return body[start:end], end + 1


def server_name_for(definition: bytes) -> str:
    return SERVER_NAME_PREFIX + hashlib.sha256(definition).hexdigest()[:24]


class ServerStatements:
    """The statements one server connection holds, least recently used first."""

    def __init__(self, capacity: int) -> None:
        self.capacity = max(1, capacity)
        self._names: OrderedDict[str, None] = OrderedDict()

    def __contains__(self, name: str) -> bool:
        return name in self._names

    def __len__(self) -> int:
        return len(self._names)

    def touch(self, name: str) -> None:
        self._names.move_to_end(name)

    def add(self, name: str) -> str | None:
        """Record ``name``; return the evicted name the server must close, if any."""
        self._names[name] = None
        self._names.move_to_end(name)
        if len(self._names) > self.capacity:
            evicted, _ = self._names.popitem(last=False)
            return evicted
        return None

    def discard(self, name: str) -> None:
        self._names.pop(name, None)

    def request_lost(self, token: object) -> None:
        """The server never performed a request (an error made it skip to Sync): undo its effect."""
        if isinstance(token, EvictedStatement):  # the server still holds it: remember it again
            self._names[token.server_name] = None
            self._names.move_to_end(token.server_name, last=False)
        elif isinstance(token, str):  # a Parse that did not happen
            self.discard(token)

    def clear(self) -> None:
        self._names.clear()


class ClientStatements:
    """A client's own statement names and what they stand for."""

    def __init__(self) -> None:
        self.by_name: dict[bytes, PreparedStatement] = {}

    def clear(self) -> None:
        self.by_name.clear()

    def forget(self, name: bytes) -> None:
        self.by_name.pop(name, None)


_PARSE, _BIND, _DESCRIBE, _CLOSE = b"PBDC"  # message type bytes, as ints


class BatchRewriter:
    """Turns client messages into server bytes for one server connection."""

    def __init__(self, client: ClientStatements, server: ServerStatements, router: ResponseRouter) -> None:
        self.client = client
        self.server = server
        self.router = router
        self.out = bytearray()

    def rewrite(self, messages: Iterable[Message]) -> bytearray:
        self.out = bytearray()
        for message in messages:
            self._rewrite_one(message)
        return self.out

    def _rewrite_one(self, message: Message) -> None:
        kind = message.type[0]
        if kind == _PARSE:
            self._parse(message.body)
        elif kind == _BIND:
            self._bind(message.body)
        elif kind == _DESCRIBE:
            self._describe(message.body)
        elif kind == _CLOSE:
            self._close(message.body)
        else:
            self.out += message.encode()
            request = _SIMPLE_REQUESTS.get(kind)
            if request is not None:  # Flush and COPY data have no reply; unknown types get a FATAL one
                self.router.expect(request)

    def _parse(self, body: bytes) -> None:
        name, after = _cstring(body, 0)
        if not name:
            self.out += encode_message(b"P", body)
            self.router.expect(Request.PARSE)
            return
        definition = body[after:]
        statement = PreparedStatement(server_name_for(definition), definition)
        self.client.by_name[name] = statement
        if statement.server_name in self.server:
            self.server.touch(statement.server_name)
            self.router.reply_locally(PARSE_COMPLETE)
        else:
            self._send_parse(statement, forward=True)

    def _send_parse(self, statement: PreparedStatement, *, forward: bool) -> None:
        evicted = self.server.add(statement.server_name)
        if evicted is not None:
            self.out += encode_message(b"C", b"S" + evicted.encode() + b"\x00")
            self.router.expect(Request.CLOSE, forward=False, token=EvictedStatement(evicted))
        self.out += encode_message(b"P", statement.server_name.encode() + b"\x00" + statement.definition)
        self.router.expect(Request.PARSE, forward=forward, token=statement.server_name)

    def _server_name(self, client_name: bytes) -> bytes:
        """The name the server knows this client statement by, preparing it there if needed."""
        if not client_name:
            return client_name
        statement = self.client.by_name.get(client_name)
        if statement is None:
            # Unknown to this client: let the server report it, but never let a client reach
            # another client's statement through our server-side namespace.
            if client_name.startswith(SERVER_NAME_PREFIX.encode()):
                return b"pgbalancer:unknown:" + client_name
            return client_name
        if statement.server_name in self.server:
            self.server.touch(statement.server_name)
        else:
            self._send_parse(statement, forward=False)
        return statement.server_name.encode()

    def _bind(self, body: bytes) -> None:
        portal, after_portal = _cstring(body, 0)
        statement, after_statement = _cstring(body, after_portal)
        renamed = self._server_name(statement)
        if renamed is statement:
            self.out += encode_message(b"B", body)
        else:
            self.out += encode_message(b"B", portal + b"\x00" + renamed + b"\x00" + body[after_statement:])
        self.router.expect(Request.BIND)

    def _describe(self, body: bytes) -> None:
        if body[:1] == b"S":
            name, _ = _cstring(body, 1)
            self.out += encode_message(b"D", b"S" + self._server_name(name) + b"\x00")
            self.router.expect(Request.DESCRIBE_STATEMENT)
        else:
            self.out += encode_message(b"D", body)
            self.router.expect(Request.DESCRIBE_PORTAL)

    def _close(self, body: bytes) -> None:
        name, _ = _cstring(body, 1) if len(body) > 1 else (b"", 1)
        if body[:1] == b"S" and name:
            self.client.forget(name)  # the server keeps it cached for whoever needs it next
            self.router.reply_locally(CLOSE_COMPLETE)
            return
        self.out += encode_message(b"C", body)
        self.router.expect(Request.CLOSE)
