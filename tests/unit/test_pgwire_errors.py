"""ErrorResponse/NoticeResponse bytes and parsing, checked against literal golden bytes."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.pgwire.errors import (
    ProtocolError,
    SqlState,
    error_response,
    notice_response,
    parse_error_fields,
)

AUTH_FAILED_BODY = b'SFATAL\x00VFATAL\x00C28P01\x00Mpassword authentication failed for user "alice"\x00\x00'


def test_error_response_golden_bytes() -> None:
    wire = error_response(
        SqlState.INVALID_PASSWORD, 'password authentication failed for user "alice"', severity="FATAL"
    )
    assert wire == b"E\x00\x00\x00\x4b" + AUTH_FAILED_BODY


def test_error_response_puts_detail_and_hint_after_message() -> None:
    wire = error_response("53300", "too many", detail="d", hint="h")
    assert wire == b"E\x00\x00\x00\x2aSERROR\x00VERROR\x00C53300\x00Mtoo many\x00Dd\x00Hh\x00\x00"


def test_notice_response_golden_bytes() -> None:
    assert notice_response("00000", "hi") == b"N\x00\x00\x00\x20SNOTICE\x00VNOTICE\x00C00000\x00Mhi\x00\x00"


def test_parse_error_fields_golden() -> None:
    assert parse_error_fields(AUTH_FAILED_BODY) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "28P01",
        "M": 'password authentication failed for user "alice"',
    }


def test_parse_error_fields_keeps_unknown_fields_and_replaces_bad_utf8() -> None:
    fields = parse_error_fields(b"SERROR\x00Fauth.c\x00M\xff\x00\x00")
    assert fields == {"S": "ERROR", "F": "auth.c", "M": "\ufffd"}


@pytest.mark.parametrize(
    "body",
    [
        b"",  # no terminator at all
        b"SERROR\x00",  # field list not terminated
        b"SERROR",  # field not terminated
        b"SERROR\x00\x00extra",  # bytes after the terminator
    ],
)
def test_parse_error_fields_rejects_malformed_bodies(body: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_error_fields(body)
    assert info.value.sqlstate == SqlState.PROTOCOL_VIOLATION


def test_parse_error_fields_accepts_an_empty_field_list() -> None:
    assert parse_error_fields(b"\x00") == {}


def test_error_response_rejects_nul_and_bad_sqlstate() -> None:
    with pytest.raises(ValueError, match="NUL"):
        error_response("XX000", "a\x00b")
    with pytest.raises(ValueError, match="SQLSTATE"):
        error_response("XX00", "short code")


def test_protocol_error_carries_sqlstate_and_renders_fatal_response() -> None:
    error = ProtocolError("unsupported frontend protocol 2.0", SqlState.FEATURE_NOT_SUPPORTED, hint="upgrade")
    assert (error.message, error.sqlstate, str(error)) == (
        "unsupported frontend protocol 2.0",
        "0A000",
        "unsupported frontend protocol 2.0",
    )
    assert parse_error_fields(error.to_response()[5:]) == {
        "S": "FATAL",
        "V": "FATAL",
        "C": "0A000",
        "M": "unsupported frontend protocol 2.0",
        "H": "upgrade",
    }
    assert ProtocolError("x").sqlstate == "08P01"


def test_sqlstate_values_are_postgresql_codes() -> None:
    assert SqlState.INVALID_PASSWORD.value == "28P01"
    assert str(SqlState.CANNOT_CONNECT_NOW) == "57P03"
    assert all(len(code.value) == 5 for code in SqlState)


_field_text = st.text(st.characters(exclude_characters="\x00", codec="utf-8"))


@given(
    sqlstate=st.sampled_from(list(SqlState)),
    message=_field_text,
    severity=st.sampled_from(["ERROR", "FATAL", "PANIC", "WARNING"]),
    detail=st.none() | _field_text,
    hint=st.none() | _field_text,
)
def test_error_response_round_trips_through_parse(
    sqlstate: SqlState, message: str, severity: str, detail: str | None, hint: str | None
) -> None:
    wire = error_response(sqlstate, message, severity=severity, detail=detail, hint=hint)
    assert wire[:1] == b"E"
    assert int.from_bytes(wire[1:5], "big") == len(wire) - 1
    expected = {"S": severity, "V": severity, "C": sqlstate.value, "M": message}
    if detail is not None:
        expected["D"] = detail
    if hint is not None:
        expected["H"] = hint
    assert parse_error_fields(wire[5:]) == expected
