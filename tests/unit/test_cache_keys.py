"""Result cache keys: everything an answer depends on is in the key; unkeyable batches get none."""

from __future__ import annotations

import struct

from hypothesis import given, settings
from hypothesis import strategies as st

from pgbalancer.cache.keys import extended_request, query_key, session_key
from pgbalancer.pgwire.framing import Message

SESSION = session_key("app", "alice", {"search_path": "public", "TimeZone": "UTC"})


def _parse(sql: bytes, name: bytes = b"", types: tuple[int, ...] = ()) -> Message:
    return Message(b"P", name + b"\x00" + sql + b"\x00" + struct.pack(f"!H{len(types)}I", len(types), *types))


def _bind(values: tuple[bytes, ...], statement: bytes = b"", formats: tuple[int, ...] = (0,)) -> Message:
    body = b"\x00" + statement + b"\x00" + struct.pack("!HH", 1, 0) + struct.pack("!H", len(values))
    for value in values:
        body += struct.pack("!I", len(value)) + value
    body += struct.pack(f"!H{len(formats)}H", len(formats), *formats)
    return Message(b"B", body)


DESCRIBE = Message(b"D", b"P\x00")
EXECUTE = Message(b"E", b"\x00" + struct.pack("!I", 0))
SYNC = Message(b"S", b"")


def _key(batch: list[Message], statements: dict[bytes, bytes] | None = None) -> bytes | None:
    request = extended_request(SESSION, batch, statements or {})
    return None if request is None else request.key


def test_session_settings_user_and_database_are_in_the_key() -> None:
    body = b"SELECT 1\x00"
    keys = {
        query_key(SESSION, body),
        query_key(session_key("app", "bob", {"search_path": "public", "TimeZone": "UTC"}), body),
        query_key(session_key("other", "alice", {"search_path": "public", "TimeZone": "UTC"}), body),
        query_key(session_key("app", "alice", {"search_path": "s2", "TimeZone": "UTC"}), body),
        query_key(
            session_key("app", "alice", {"search_path": "public", "TimeZone": "UTC", "role": "r"}), body
        ),
    }
    assert len(keys) == 5
    assert session_key("a", "b", {"X": "1", "y": "2"}) == session_key("a", "b", {"y": "2", "X": "1"})


def test_parameter_values_types_and_result_formats_are_in_the_key() -> None:
    sql = b"SELECT v FROM t WHERE id = $1"
    base = _key([_parse(sql, types=(23,)), _bind((b"1",)), DESCRIBE, EXECUTE, SYNC])
    assert base is not None
    assert base != _key([_parse(sql, types=(23,)), _bind((b"2",)), DESCRIBE, EXECUTE, SYNC])
    assert base != _key([_parse(sql, types=(20,)), _bind((b"1",)), DESCRIBE, EXECUTE, SYNC])
    assert base != _key([_parse(sql, types=(23,)), _bind((b"1",), formats=(1,)), DESCRIBE, EXECUTE, SYNC])
    assert base != _key([_parse(sql, types=(23,)), _bind((b"1",)), EXECUTE, SYNC])  # no RowDescription


def test_named_statements_are_keyed_by_what_they_stand_for() -> None:
    sql = b"SELECT v FROM t WHERE id = $1"
    definition = sql + b"\x00" + struct.pack("!HI", 1, 23)
    first = extended_request(SESSION, [_parse(sql, b"s1", (23,)), _bind((b"1",), b"s1"), EXECUTE, SYNC], {})
    assert first is not None and first.parses == ((b"s1", definition),) and first.sql == sql
    later = _key([_bind((b"1",), b"other_name"), EXECUTE, SYNC], {b"other_name": definition})
    assert later is not None
    assert _key([_bind((b"1",), b"unknown"), EXECUTE, SYNC]) is None


def test_batches_the_cache_cannot_answer_whole_get_no_key() -> None:
    sql = b"SELECT 1"
    assert _key([_parse(sql), _bind(()), EXECUTE]) is None  # no Sync
    assert _key([_parse(sql), _bind(()), EXECUTE, EXECUTE, SYNC]) is None
    assert _key([_parse(sql), SYNC]) is None  # nothing executed
    partial = Message(b"E", b"\x00" + struct.pack("!I", 1))
    limited = _key([_parse(sql), _bind(()), partial, SYNC])  # max_rows is in the key
    assert limited is not None and limited != _key([_parse(sql), _bind(()), EXECUTE, SYNC])
    named_portal = Message(b"B", b"p\x00\x00" + struct.pack("!HHH", 0, 0, 0))
    assert _key([_parse(sql), named_portal, EXECUTE, SYNC]) is None
    assert _key([_parse(sql), _bind(()), Message(b"C", b"S\x00"), EXECUTE, SYNC]) is None
    assert _key([_bind(()), EXECUTE, SYNC]) is None  # the unnamed statement of an earlier batch


@settings(max_examples=500, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"P", b"B", b"D", b"E", b"S", b"C", b"H", b"Q"]), st.binary(max_size=40)),
        max_size=8,
    )
)
def test_any_batch_gets_a_key_or_none_and_never_raises(raw: list[tuple[bytes, bytes]]) -> None:
    batch = [Message(kind, body) for kind, body in raw]
    request = extended_request(SESSION, batch, {b"s": b"SELECT 1\x00\x00\x00"})
    assert request is None or request.key.startswith(SESSION)
