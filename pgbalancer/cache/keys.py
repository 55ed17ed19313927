"""Result cache keys: everything a cached answer depends on, as exact bytes.

A key is (database, user, the session's settings — search_path, role, TimeZone, DateStyle,
extra_float_digits, … —, the request). For a simple Query the request is the query text;
for an extended-protocol batch (Parse? Bind Describe? Execute Sync) it is every message
with client statement names replaced by what they stand for (query text and parameter
types), so the Bind's parameter formats, values and result formats are in the key, and two
clients naming one statement differently share entries.

Only batches the cache can answer whole are keyed: one unnamed portal executed once (its
``max_rows`` in the key: the Sync ends the portal, so a PortalSuspended answer is complete),
one Sync at the end, nothing else (no Close, Flush, second Execute).
Anything else gets no key and simply goes to PostgreSQL.

Pure: no I/O, no clock; never raises on any message bodies (malformed ones get no key).
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

from pgbalancer.pgwire.framing import Message

_LENGTH = struct.Struct("!I")
_EXTENDED_TYPES = frozenset(b"PBDES")


def _field(data: bytes) -> bytes:
    return _LENGTH.pack(len(data)) + data


# Settings no cacheable answer depends on (current_setting() and SHOW are never cached), left
# out so every application shares entries.
_NOT_IN_KEY = frozenset({"application_name"})


def session_key(database: str, user: str, settings: Mapping[str, str]) -> bytes:
    """The part of every key that says whose session it is and how it formats values."""
    parts = [_field(database.encode()), _field(user.encode())]
    for name in sorted(settings, key=str.lower):
        if name.lower() not in _NOT_IN_KEY:
            parts.append(_field(name.lower().encode()) + _field(settings[name].encode()))
    return b"".join(parts)


def query_key(session: bytes, query_body: bytes) -> bytes:
    """Key of a simple Query (its body: the text and the terminating NUL)."""
    return session + b"Q" + _field(query_body)


@dataclass(frozen=True, slots=True)
class ExtendedRequest:
    """A keyable extended-protocol batch."""

    key: bytes
    sql: bytes  # the statement executed
    parses: tuple[tuple[bytes, bytes], ...]  # named Parses in it: (client name, definition)


def extended_request(
    session: bytes, batch: Sequence[Message], statements: Mapping[bytes, bytes]
) -> ExtendedRequest | None:
    """The key of an extended batch the cache can answer whole, or None.

    ``statements`` maps the client's statement names to their definitions (the Parse body
    after the name: query, parameter count, parameter type OIDs).
    """
    try:
        return _extended(session, batch, statements)
    except (ValueError, IndexError, struct.error):
        return None


def _cstring(body: bytes, start: int) -> tuple[bytes, int]:
    end = body.index(b"\x00", start)
    return body[start:end], end + 1


def _extended(
    session: bytes, batch: Sequence[Message], statements: Mapping[bytes, bytes]
) -> ExtendedRequest | None:
    if len(batch) < 3 or batch[-1].type != b"S" or batch[-1].body:
        return None
    known: dict[bytes, bytes] = {}  # statements this batch parses
    parses: list[tuple[bytes, bytes]] = []
    unnamed: bytes | None = None
    executed: bytes | None = None
    bound: bytes | None = None
    out = [session]
    for message in batch[:-1]:
        kind = message.type
        if len(kind) != 1 or kind[0] not in _EXTENDED_TYPES:
            return None
        body = message.body
        if kind == b"P":
            name, after = _cstring(body, 0)
            definition = body[after:]
            _cstring(definition, 0)  # the query text must be terminated
            if name:
                known[name] = definition
                parses.append((name, definition))
            else:
                unnamed = definition
            out.append(b"P" + _field(definition))
        elif kind == b"B":
            if bound is not None:
                return None
            portal, after = _cstring(body, 0)
            name, after = _cstring(body, after)
            bound = (known.get(name) or statements.get(name)) if name else unnamed
            if portal or bound is None:
                return None
            definition = bound
            out.append(b"B" + _field(definition) + _field(body[after:]))
        elif kind == b"D":
            target = body[:1]
            name, _ = _cstring(body, 1)
            if target == b"P" and not name and bound is not None:
                out.append(b"D" + _field(b"P"))
            elif target == b"S":
                described = (known.get(name) or statements.get(name)) if name else unnamed
                if described is None:
                    return None
                out.append(b"D" + _field(b"S" + described))
            else:
                return None
        else:  # Execute
            portal, after = _cstring(body, 0)
            if portal or executed is not None or bound is None:
                return None
            executed = bound
            out.append(b"E" + _field(body[after : after + 4]))  # max_rows (a PortalSuspended answer)
    if executed is None:
        return None
    sql, _ = _cstring(executed, 0)
    return ExtendedRequest(b"".join(out), sql, tuple(parses))


# Reply messages a cached answer may hold: ParseComplete, BindComplete, ParameterDescription,
# RowDescription, NoData, DataRow, CommandComplete, PortalSuspended, and the final ReadyForQuery.
_ANSWER_TYPES = frozenset(b"12tTnDCs")


def clean_answer(payload: bytes) -> bool:
    """Whether captured reply bytes are one complete, clean answer worth replaying: whole
    messages of the expected kinds only (no ErrorResponse, NoticeResponse, NotificationResponse
    or ParameterStatus, which belong to that moment), ending in ReadyForQuery 'I'."""
    size = len(payload)
    position = 0
    while position + 5 <= size:
        kind = payload[position]
        length = _LENGTH.unpack_from(payload, position + 1)[0]
        end = position + 1 + length
        if length < 4 or end > size:
            return False
        if kind == ord("Z"):
            return end == size and length == 5 and payload[position + 5] == ord("I")
        if kind not in _ANSWER_TYPES:
            return False
        position = end
    return False
