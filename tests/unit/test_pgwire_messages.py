"""Message builders and parsers, checked against golden bytes written out by hand."""

from __future__ import annotations

import pytest

from pgbalancer.pgwire.errors import ProtocolError, SqlState
from pgbalancer.pgwire.messages import (
    CANCEL_REQUEST_CODE,
    GSSENC_REQUEST_CODE,
    PROTOCOL_VERSION_3,
    SSL_REQUEST_CODE,
    AuthCode,
    AuthenticationRequest,
    CancelRequest,
    GSSENCRequest,
    SSLRequest,
    StartupMessage,
    TransactionStatus,
    authentication_cleartext_password,
    authentication_md5_password,
    authentication_ok,
    authentication_sasl,
    authentication_sasl_continue,
    authentication_sasl_final,
    backend_key_data,
    encode_message,
    negotiate_protocol_version,
    parameter_status,
    parse_authentication,
    parse_backend_key_data,
    parse_parameter_status,
    parse_password_message,
    parse_ready_for_query,
    parse_sasl_initial_response,
    parse_sasl_list,
    parse_startup_packet,
    password_message,
    query,
    ready_for_query,
    sasl_initial_response,
    sasl_response,
    terminate,
)

ALICE_APP_STARTUP = b"\x00\x00\x00\x21\x00\x03\x00\x00user\x00alice\x00database\x00app\x00\x00"


def test_protocol_codes_are_postgresql_values() -> None:
    assert PROTOCOL_VERSION_3 == 3 << 16
    assert SSL_REQUEST_CODE == (1234 << 16) | 5679
    assert GSSENC_REQUEST_CODE == (1234 << 16) | 5680
    assert CANCEL_REQUEST_CODE == (1234 << 16) | 5678


# --------------------------------------------------------------------------- builders: golden bytes


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (authentication_ok(), b"R\x00\x00\x00\x08\x00\x00\x00\x00"),
        (authentication_cleartext_password(), b"R\x00\x00\x00\x08\x00\x00\x00\x03"),
        (
            authentication_md5_password(b"\x01\x02\x03\x04"),
            b"R\x00\x00\x00\x0c\x00\x00\x00\x05\x01\x02\x03\x04",
        ),
        (authentication_sasl(["SCRAM-SHA-256"]), b"R\x00\x00\x00\x17\x00\x00\x00\x0aSCRAM-SHA-256\x00\x00"),
        (authentication_sasl_continue(b"r=abc"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0br=abc"),
        (authentication_sasl_final(b"v=xyz"), b"R\x00\x00\x00\x0d\x00\x00\x00\x0cv=xyz"),
        (parameter_status("client_encoding", "UTF8"), b"S\x00\x00\x00\x19client_encoding\x00UTF8\x00"),
        (backend_key_data(1234, 0xDEADBEEF), b"K\x00\x00\x00\x0c\x00\x00\x04\xd2\xde\xad\xbe\xef"),
        (ready_for_query(b"I"), b"Z\x00\x00\x00\x05I"),
        (ready_for_query(TransactionStatus.IN_TRANSACTION), b"Z\x00\x00\x00\x05T"),
        (ready_for_query(TransactionStatus.FAILED), b"Z\x00\x00\x00\x05E"),
        (password_message("secret"), b"p\x00\x00\x00\x0bsecret\x00"),
        (password_message(b"md5abc"), b"p\x00\x00\x00\x0bmd5abc\x00"),
        (
            sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc"),
            b"p\x00\x00\x00\x21SCRAM-SHA-256\x00\x00\x00\x00\x0bn,,n=,r=abc",
        ),
        (sasl_response(b"c=biws"), b"p\x00\x00\x00\x0ac=biws"),
        (query("SELECT 1"), b"Q\x00\x00\x00\x0dSELECT 1\x00"),
        (terminate(), b"X\x00\x00\x00\x04"),
        (
            negotiate_protocol_version(0, ["_pq_.foo"]),
            b"v\x00\x00\x00\x15\x00\x00\x00\x00\x00\x00\x00\x01_pq_.foo\x00",
        ),
        (encode_message(b"Q", b""), b"Q\x00\x00\x00\x04"),
    ],
)
def test_builder_golden_bytes(wire: bytes, expected: bytes) -> None:
    assert wire == expected


def test_startup_packet_golden_bytes() -> None:
    assert SSLRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x2f"
    assert GSSENCRequest().encode() == b"\x00\x00\x00\x08\x04\xd2\x16\x30"
    assert (
        CancelRequest(1234, 0xDEADBEEF).encode()
        == b"\x00\x00\x00\x10\x04\xd2\x16\x2e\x00\x00\x04\xd2\xde\xad\xbe\xef"
    )
    startup = StartupMessage(PROTOCOL_VERSION_3, {"user": "alice", "database": "app"})
    assert startup.encode() == ALICE_APP_STARTUP


@pytest.mark.parametrize(
    "build",
    [
        lambda: authentication_md5_password(b"\x01\x02\x03"),
        lambda: authentication_sasl([]),
        lambda: ready_for_query(b"X"),
        lambda: password_message("a\x00b"),
        lambda: query("SELECT '\x00'"),
        lambda: backend_key_data(-1, 0),
        lambda: backend_key_data(1, 1 << 32),
        lambda: encode_message(b"QQ", b""),
        lambda: StartupMessage(PROTOCOL_VERSION_3, {"user": "a\x00"}).encode(),
    ],
)
def test_builders_reject_unencodable_input(build: object) -> None:
    with pytest.raises(ValueError):
        build()  # type: ignore[operator]


# --------------------------------------------------------------------------- startup packets


def test_parse_startup_message_golden() -> None:
    message = parse_startup_packet(ALICE_APP_STARTUP[4:])
    assert message == StartupMessage(PROTOCOL_VERSION_3, {"user": "alice", "database": "app"})
    assert isinstance(message, StartupMessage)
    assert (message.user, message.database, message.protocol_major, message.protocol_minor) == (
        "alice",
        "app",
        3,
        0,
    )


def test_startup_message_database_defaults_to_user() -> None:
    assert StartupMessage(PROTOCOL_VERSION_3, {"user": "bob"}).database == "bob"
    assert StartupMessage(PROTOCOL_VERSION_3, {"user": "bob", "database": ""}).database == "bob"


def test_startup_message_is_immutable_and_hashable() -> None:
    params = {"user": "alice", "application_name": "x"}
    message = StartupMessage(PROTOCOL_VERSION_3, params)
    params["user"] = "mallory"
    assert message.user == "alice"
    with pytest.raises(TypeError):
        message.parameters["user"] = "mallory"  # type: ignore[index]
    assert hash(message) == hash(
        StartupMessage(PROTOCOL_VERSION_3, {"user": "alice", "application_name": "x"})
    )


def test_startup_message_keeps_undecodable_bytes_for_re_encoding() -> None:
    payload = b"\x00\x03\x00\x00user\x00alice\x00application_name\x00caf\xe9\x00\x00"
    message = parse_startup_packet(payload)
    assert isinstance(message, StartupMessage)
    assert message.encode()[4:] == payload


def test_minor_version_above_zero_is_accepted_and_protocol_options_listed() -> None:
    payload = b"\x00\x03\x00\x02user\x00alice\x00_pq_.compress\x00on\x00\x00"
    message = parse_startup_packet(payload)
    assert isinstance(message, StartupMessage)
    assert message.protocol_version == (3 << 16) | 2
    assert message.protocol_options == ("_pq_.compress",)


def test_parse_special_startup_packets() -> None:
    assert parse_startup_packet(SSLRequest().encode()[4:]) == SSLRequest()
    assert parse_startup_packet(GSSENCRequest().encode()[4:]) == GSSENCRequest()
    assert parse_startup_packet(CancelRequest(7, 0xFFFFFFFF).encode()[4:]) == CancelRequest(7, 0xFFFFFFFF)


def test_unsupported_protocol_version_is_feature_not_supported() -> None:
    with pytest.raises(ProtocolError) as info:
        parse_startup_packet(b"\x00\x02\x00\x00user\x00alice\x00\x00")
    assert info.value.sqlstate == SqlState.FEATURE_NOT_SUPPORTED
    assert info.value.message == "unsupported frontend protocol 2.0: server supports 3.0 to 3.0"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x03\x00\x00\x00",  # no parameters at all
        b"\x00\x03\x00\x00database\x00app\x00\x00",  # no user
        b"\x00\x03\x00\x00user\x00\x00\x00",  # empty user
    ],
)
def test_startup_without_user_is_invalid_authorization(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_startup_packet(payload)
    assert info.value.sqlstate == SqlState.INVALID_AUTHORIZATION_SPECIFICATION
    assert info.value.message == "no PostgreSQL user name specified in startup packet"


@pytest.mark.parametrize(
    "payload",
    [
        b"\x00\x03",  # shorter than the code
        b"\x00\x03\x00\x00",  # no terminator
        b"\x00\x03\x00\x00user\x00alice\x00",  # missing final terminator
        b"\x00\x03\x00\x00user\x00alice",  # value not terminated
        b"\x00\x03\x00\x00user\x00\x00",  # name without value
        b"\x00\x03\x00\x00\x00user\x00alice\x00\x00",  # empty name before the pairs
        b"\x04\xd2\x16\x2e\x00\x00\x00\x01",  # cancel request too short
        b"\x04\xd2\x16\x2f\x00",  # SSLRequest with trailing data
    ],
)
def test_malformed_startup_packets_are_protocol_violations(payload: bytes) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_startup_packet(payload)
    assert info.value.sqlstate == SqlState.PROTOCOL_VIOLATION


# --------------------------------------------------------------------------- authentication


@pytest.mark.parametrize(
    ("wire", "expected"),
    [
        (authentication_ok(), AuthenticationRequest(AuthCode.OK, b"")),
        (authentication_cleartext_password(), AuthenticationRequest(AuthCode.CLEARTEXT_PASSWORD, b"")),
        (authentication_md5_password(b"salt"), AuthenticationRequest(AuthCode.MD5_PASSWORD, b"salt")),
        (
            authentication_sasl(["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]),
            AuthenticationRequest(AuthCode.SASL, b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00"),
        ),
        (authentication_sasl_continue(b"r=1"), AuthenticationRequest(AuthCode.SASL_CONTINUE, b"r=1")),
        (authentication_sasl_final(b"v=2"), AuthenticationRequest(AuthCode.SASL_FINAL, b"v=2")),
    ],
)
def test_parse_authentication_round_trip(wire: bytes, expected: AuthenticationRequest) -> None:
    assert parse_authentication(wire[5:]) == expected


@pytest.mark.parametrize(
    "body",
    [
        b"\x00\x00\x00",  # shorter than the code
        b"\x00\x00\x00\x01",  # unknown code
        b"\x00\x00\x00\x00\x01",  # OK with data
        b"\x00\x00\x00\x05\x01\x02\x03",  # MD5 with a 3-byte salt
    ],
)
def test_parse_authentication_rejects_malformed(body: bytes) -> None:
    with pytest.raises(ProtocolError):
        parse_authentication(body)


def test_parse_sasl_list() -> None:
    assert parse_sasl_list(b"SCRAM-SHA-256-PLUS\x00SCRAM-SHA-256\x00\x00") == [
        "SCRAM-SHA-256-PLUS",
        "SCRAM-SHA-256",
    ]
    for bad in (b"", b"\x00", b"SCRAM-SHA-256\x00", b"A\x00\x00B\x00\x00"):
        with pytest.raises(ProtocolError):
            parse_sasl_list(bad)


def test_parse_password_message() -> None:
    assert parse_password_message(b"secret\x00") == b"secret"
    assert parse_password_message(b"\x00") == b""
    for bad in (b"", b"secret", b"sec\x00ret\x00"):
        with pytest.raises(ProtocolError, match="invalid password packet size"):
            parse_password_message(bad)


def test_parse_sasl_initial_response() -> None:
    wire = sasl_initial_response("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert parse_sasl_initial_response(wire[5:]) == ("SCRAM-SHA-256", b"n,,n=,r=abc")
    assert parse_sasl_initial_response(b"SCRAM-SHA-256\x00\xff\xff\xff\xff") == ("SCRAM-SHA-256", b"")
    for bad in (
        b"",
        b"\x00\x00\x00\x00\x00",  # empty mechanism
        b"SCRAM-SHA-256",  # no NUL
        b"SCRAM-SHA-256\x00\x00\x00",  # truncated length
        b"SCRAM-SHA-256\x00\x00\x00\x00\x05abc",  # length larger than data
        b"SCRAM-SHA-256\x00\xff\xff\xff\xffabc",  # -1 but data present
    ):
        with pytest.raises(ProtocolError):
            parse_sasl_initial_response(bad)


def test_parse_parameter_status() -> None:
    assert parse_parameter_status(parameter_status("TimeZone", "UTC")[5:]) == ("TimeZone", "UTC")
    assert parse_parameter_status(b"application_name\x00\x00") == ("application_name", "")
    for bad in (b"", b"TimeZone\x00UTC", b"TimeZone\x00UTC\x00x\x00", b"\x00UTC\x00"):
        with pytest.raises(ProtocolError):
            parse_parameter_status(bad)


def test_parse_backend_key_data() -> None:
    assert parse_backend_key_data(backend_key_data(1234, 0xDEADBEEF)[5:]) == (1234, 0xDEADBEEF)
    with pytest.raises(ProtocolError):
        parse_backend_key_data(b"\x00" * 7)


def test_parse_ready_for_query() -> None:
    status = parse_ready_for_query(b"T")
    assert status == b"T"
    assert status is TransactionStatus.IN_TRANSACTION
    for bad in (b"", b"X", b"II"):
        with pytest.raises(ProtocolError):
            parse_ready_for_query(bad)
