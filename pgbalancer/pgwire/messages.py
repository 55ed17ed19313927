"""PostgreSQL v3 message contents: startup packets, authentication and session messages.

Role: build the exact bytes of the messages pgbalancer sends (as a server to clients and as a
client to backends), and parse the bodies of the messages it must understand. Framing (where a
message starts and ends) lives in :mod:`pgbalancer.pgwire.framing`; this module sees one message
at a time. Parsers take a message BODY (no type byte, no length) and raise ProtocolError on any
malformed input; builders return complete wire messages.

Never: do I/O, hold connection state, or read clocks or randomness (salts and keys are passed in).
"""

from __future__ import annotations

import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from enum import Enum, IntEnum
from types import MappingProxyType
from typing import Final

from pgbalancer.pgwire.errors import ProtocolError, SqlState

PROTOCOL_VERSION_3: Final = 196608  # 3 << 16 | 0
SSL_REQUEST_CODE: Final = 80877103  # 1234 << 16 | 5679
GSSENC_REQUEST_CODE: Final = 80877104  # 1234 << 16 | 5680
CANCEL_REQUEST_CODE: Final = 80877102  # 1234 << 16 | 5678

# Strings in startup packets are bytes in an unknown client encoding. surrogateescape keeps every
# byte, so a packet we parse and re-encode towards a backend is byte-for-byte what the client sent.
_STARTUP_ENCODING: Final = "utf-8"
_STARTUP_ERRORS: Final = "surrogateescape"

_INT32: Final = struct.Struct("!I")
_SIGNED_INT16: Final = struct.Struct("!h")
_SIGNED_INT32: Final = struct.Struct("!i")
_TWO_INT32: Final = struct.Struct("!II")
_UINT32_MAX: Final = 0xFFFFFFFF


class AuthCode(IntEnum):
    """The int32 that follows the 'R' header in an Authentication* message."""

    OK = 0
    KERBEROS_V5 = 2
    CLEARTEXT_PASSWORD = 3
    MD5_PASSWORD = 5
    GSS = 7
    GSS_CONTINUE = 8
    SSPI = 9
    SASL = 10
    SASL_CONTINUE = 11
    SASL_FINAL = 12


class TransactionStatus(bytes, Enum):
    """The status byte of ReadyForQuery. Members are ``bytes``, so ``status == b"I"`` works."""

    IDLE = b"I"
    IN_TRANSACTION = b"T"
    FAILED = b"E"


_TRANSACTION_STATUSES: Final = frozenset(s.value for s in TransactionStatus)


def encode_message(msg_type: bytes, body: bytes) -> bytes:
    """A typed message on the wire: type byte + int32 length (counting itself) + body."""
    if len(msg_type) != 1:
        raise ValueError(f"message type must be exactly one byte, got {msg_type!r}")
    return msg_type + _INT32.pack(len(body) + 4) + body


def _cstring(text: str | bytes) -> bytes:
    raw = text.encode("utf-8") if isinstance(text, str) else text
    if b"\0" in raw:
        raise ValueError(f"a protocol string must not contain NUL: {text!r}")
    return raw + b"\0"


def _uint32(value: int, what: str) -> bytes:
    if not 0 <= value <= _UINT32_MAX:
        raise ValueError(f"{what} must fit in an unsigned 32-bit integer, got {value}")
    return _INT32.pack(value)


# --------------------------------------------------------------------------- startup packets


@dataclass(frozen=True, slots=True)
class StartupMessage:
    """The client's StartupMessage. ``parameters`` keeps the client's order; it is read-only."""

    protocol_version: int
    parameters: Mapping[str, str]

    def __post_init__(self) -> None:
        # Copy, then freeze: the message must not change under whoever holds it.
        object.__setattr__(self, "parameters", MappingProxyType(dict(self.parameters)))

    def __hash__(self) -> int:
        return hash((self.protocol_version, tuple(self.parameters.items())))

    @property
    def protocol_major(self) -> int:
        return self.protocol_version >> 16

    @property
    def protocol_minor(self) -> int:
        return self.protocol_version & 0xFFFF

    @property
    def user(self) -> str:
        return self.parameters.get("user", "")

    @property
    def database(self) -> str:
        """The database; PostgreSQL defaults it to the user name when absent or empty."""
        return self.parameters.get("database") or self.user

    @property
    def protocol_options(self) -> tuple[str, ...]:
        """Names of ``_pq_.*`` protocol extension options (we recognise none of them)."""
        return tuple(name for name in self.parameters if name.startswith("_pq_."))

    def encode(self) -> bytes:
        parts = [_INT32.pack(self.protocol_version)]
        for name, value in self.parameters.items():
            parts.append(_startup_cstring(name))
            parts.append(_startup_cstring(value))
        parts.append(b"\0")
        payload = b"".join(parts)
        return _INT32.pack(len(payload) + 4) + payload


def _startup_cstring(text: str) -> bytes:
    raw = text.encode(_STARTUP_ENCODING, _STARTUP_ERRORS)
    if b"\0" in raw:
        raise ValueError(f"a startup parameter must not contain NUL: {text!r}")
    return raw + b"\0"


@dataclass(frozen=True, slots=True)
class SSLRequest:
    """The client asks for TLS; the answer is a single byte, b"S" or b"N"."""

    def encode(self) -> bytes:
        return _TWO_INT32.pack(8, SSL_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class GSSENCRequest:
    """The client asks for GSSAPI encryption; the answer is a single byte, b"G" or b"N"."""

    def encode(self) -> bytes:
        return _TWO_INT32.pack(8, GSSENC_REQUEST_CODE)


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A cancel request on a fresh connection; the key pair is what BackendKeyData handed out."""

    process_id: int
    secret_key: int

    def encode(self) -> bytes:
        return (
            _TWO_INT32.pack(16, CANCEL_REQUEST_CODE)
            + _uint32(self.process_id, "process_id")
            + _uint32(self.secret_key, "secret_key")
        )


StartupPacket = StartupMessage | SSLRequest | GSSENCRequest | CancelRequest


def parse_startup_packet(packet: bytes) -> StartupPacket:
    """Decode one untyped startup-phase packet: int32 code + payload (the length word removed).

    Rejects what PostgreSQL rejects, with its SQLSTATEs: an unsupported protocol version is
    0A000, a startup packet without a user name is 28000, anything malformed is 08P01.
    """
    if len(packet) < 4:
        raise ProtocolError("invalid length of startup packet")
    code = _INT32.unpack_from(packet)[0]
    if code == CANCEL_REQUEST_CODE:
        if len(packet) != 12:
            raise ProtocolError("invalid length of cancel request packet")
        process_id, secret_key = _TWO_INT32.unpack_from(packet, 4)
        return CancelRequest(process_id, secret_key)
    if code in (SSL_REQUEST_CODE, GSSENC_REQUEST_CODE):
        if len(packet) != 4:
            raise ProtocolError("invalid length of encryption request packet")
        return SSLRequest() if code == SSL_REQUEST_CODE else GSSENCRequest()
    major, minor = code >> 16, code & 0xFFFF
    if major != 3:
        raise ProtocolError(
            f"unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.0",
            SqlState.FEATURE_NOT_SUPPORTED,
        )
    message = StartupMessage(code, dict(_parse_startup_parameters(packet[4:])))
    if not message.user:
        raise ProtocolError(
            "no PostgreSQL user name specified in startup packet",
            SqlState.INVALID_AUTHORIZATION_SPECIFICATION,
        )
    return message


def _parse_startup_parameters(payload: bytes) -> Iterator[tuple[str, str]]:
    # Layout: (name NUL value NUL)* NUL. An empty name would be the terminator, so names are non-empty.
    if not payload or payload[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    pairs = payload[:-1]
    if not pairs:
        return
    if pairs[-1] != 0:
        raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
    fields = pairs[:-1].split(b"\0")
    if len(fields) % 2:
        raise ProtocolError("invalid startup packet layout: parameter without a value")
    for i in range(0, len(fields), 2):
        name, value = fields[i], fields[i + 1]
        if not name:
            raise ProtocolError("invalid startup packet layout: expected terminator as last byte")
        yield (
            name.decode(_STARTUP_ENCODING, _STARTUP_ERRORS),
            value.decode(_STARTUP_ENCODING, _STARTUP_ERRORS),
        )


# --------------------------------------------------------------------------- authentication


@dataclass(frozen=True, slots=True)
class AuthenticationRequest:
    """A parsed 'R' message.

    ``data`` is the 4-byte salt for MD5, the raw mechanism list for SASL (see
    :func:`parse_sasl_list`), the SCRAM payload for SASL_CONTINUE/SASL_FINAL, and empty otherwise.
    """

    code: AuthCode
    data: bytes


def _authentication(code: AuthCode, data: bytes = b"") -> bytes:
    return encode_message(b"R", _INT32.pack(code) + data)


def authentication_ok() -> bytes:
    return _authentication(AuthCode.OK)


def authentication_cleartext_password() -> bytes:
    return _authentication(AuthCode.CLEARTEXT_PASSWORD)


def authentication_md5_password(salt: bytes) -> bytes:
    if len(salt) != 4:
        raise ValueError(f"the MD5 salt is exactly 4 bytes, got {len(salt)}")
    return _authentication(AuthCode.MD5_PASSWORD, salt)


def authentication_sasl(mechanisms: Sequence[str]) -> bytes:
    if not mechanisms:
        raise ValueError("AuthenticationSASL needs at least one mechanism")
    return _authentication(AuthCode.SASL, b"".join(_cstring(m) for m in mechanisms) + b"\0")


def authentication_sasl_continue(data: bytes) -> bytes:
    return _authentication(AuthCode.SASL_CONTINUE, data)


def authentication_sasl_final(data: bytes) -> bytes:
    return _authentication(AuthCode.SASL_FINAL, data)


# Exact body sizes (after the int32 code) for the requests that carry fixed data.
_AUTH_FIXED_DATA_LENGTH: Final = {
    AuthCode.OK: 0,
    AuthCode.KERBEROS_V5: 0,
    AuthCode.CLEARTEXT_PASSWORD: 0,
    AuthCode.MD5_PASSWORD: 4,
    AuthCode.GSS: 0,
    AuthCode.SSPI: 0,
}


def parse_authentication(body: bytes) -> AuthenticationRequest:
    if len(body) < 4:
        raise ProtocolError("malformed authentication request: shorter than its code")
    raw_code = _INT32.unpack_from(body)[0]
    try:
        code = AuthCode(raw_code)
    except ValueError:
        raise ProtocolError(f"unsupported authentication request code {raw_code}") from None
    data = body[4:]
    expected = _AUTH_FIXED_DATA_LENGTH.get(code)
    if expected is not None and len(data) != expected:
        raise ProtocolError(f"malformed authentication request {code.name}: {len(data)} data bytes")
    return AuthenticationRequest(code, data)


def parse_sasl_list(data: bytes) -> list[str]:
    """Mechanism names from AuthenticationSASL data: NUL-terminated names, then an empty one."""
    if len(data) < 2 or data[-2:] != b"\0\0":
        raise ProtocolError("malformed SASL mechanism list: missing terminator")
    names = data[:-2].split(b"\0")
    if any(not name for name in names):
        raise ProtocolError("malformed SASL mechanism list: empty mechanism name")
    return [name.decode("utf-8", errors="replace") for name in names]


def password_message(password: bytes | str) -> bytes:
    """PasswordMessage ('p') carrying a cleartext password or an "md5..." response."""
    return encode_message(b"p", _cstring(password))


def parse_password_message(body: bytes) -> bytes:
    """The password without its terminating NUL; exactly one NUL, at the end, is allowed."""
    if not body or body[-1] != 0 or body.find(b"\0") != len(body) - 1:
        raise ProtocolError("invalid password packet size")
    return body[:-1]


def sasl_initial_response(mechanism: str, data: bytes) -> bytes:
    return encode_message(b"p", _cstring(mechanism) + _INT32.pack(len(data)) + data)


def parse_sasl_initial_response(body: bytes) -> tuple[str, bytes]:
    """(mechanism, data) from SASLInitialResponse; a data length of -1 means no data (b"")."""
    nul = body.find(b"\0")
    if nul <= 0:
        raise ProtocolError("malformed SASLInitialResponse: missing mechanism name")
    if len(body) < nul + 5:
        raise ProtocolError("malformed SASLInitialResponse: missing data length")
    mechanism = body[:nul].decode("utf-8", errors="replace")
    length = int.from_bytes(body[nul + 1 : nul + 5], "big", signed=True)
    data = body[nul + 5 :]
    if length == -1 and not data:
        return mechanism, b""
    if length != len(data):
        raise ProtocolError("malformed SASLInitialResponse: data length does not match the message")
    return mechanism, data


def sasl_response(data: bytes) -> bytes:
    return encode_message(b"p", data)


# --------------------------------------------------------------------------- session setup


def parameter_status(name: str, value: str) -> bytes:
    return encode_message(b"S", _cstring(name) + _cstring(value))


def parse_parameter_status(body: bytes) -> tuple[str, str]:
    fields = body.split(b"\0")
    if len(fields) != 3 or fields[2] != b"" or not fields[0]:
        raise ProtocolError("malformed ParameterStatus message")
    return fields[0].decode("utf-8", errors="replace"), fields[1].decode("utf-8", errors="replace")


def backend_key_data(process_id: int, secret_key: int) -> bytes:
    return encode_message(b"K", _uint32(process_id, "process_id") + _uint32(secret_key, "secret_key"))


def parse_backend_key_data(body: bytes) -> tuple[int, int]:
    if len(body) != 8:
        raise ProtocolError(f"malformed BackendKeyData: {len(body)} bytes, expected 8")
    process_id, secret_key = _TWO_INT32.unpack(body)
    return process_id, secret_key


def ready_for_query(status: bytes) -> bytes:
    if status not in _TRANSACTION_STATUSES:
        raise ValueError(f"transaction status must be one of b'I', b'T', b'E', got {status!r}")
    return b"Z\x00\x00\x00\x05" + bytes(status)


def parse_ready_for_query(body: bytes) -> bytes:
    """The transaction status byte, returned as a :class:`TransactionStatus` member."""
    if body not in _TRANSACTION_STATUSES:
        raise ProtocolError(f"malformed ReadyForQuery: status {body!r}")
    return TransactionStatus(body)


def negotiate_protocol_version(newest_minor: int, unrecognized_options: Sequence[str]) -> bytes:
    """NegotiateProtocolVersion ('v'): the newest 3.x minor we speak and the options we ignored."""
    body = _uint32(newest_minor, "newest_minor") + _uint32(len(unrecognized_options), "option count")
    return encode_message(b"v", body + b"".join(_cstring(name) for name in unrecognized_options))


def query(sql: str) -> bytes:
    return encode_message(b"Q", _cstring(sql))


def terminate() -> bytes:
    return b"X\x00\x00\x00\x04"


def parse_row_description(body: bytes) -> tuple[str, ...]:
    """Column names of a RowDescription ('T') body."""
    try:
        (count,) = _SIGNED_INT16.unpack_from(body)
        names: list[str] = []
        offset = 2
        for _ in range(count):
            end = body.index(b"\0", offset)
            names.append(body[offset:end].decode("utf-8", "replace"))
            offset = end + 1 + 18  # table oid, attnum, type oid, typlen, typmod, format
        if offset != len(body):
            raise ProtocolError("malformed RowDescription: length does not match its fields")
    except (struct.error, ValueError) as exc:
        raise ProtocolError(f"malformed RowDescription: {exc}") from exc
    return tuple(names)


def parse_data_row(body: bytes) -> tuple[bytes | None, ...]:
    """Column values of a DataRow ('D') body; None is SQL NULL."""
    try:
        (count,) = _SIGNED_INT16.unpack_from(body)
        values: list[bytes | None] = []
        offset = 2
        for _ in range(count):
            (length,) = _SIGNED_INT32.unpack_from(body, offset)
            offset += 4
            if length < 0:
                values.append(None)
                continue
            if offset + length > len(body):
                raise ProtocolError("malformed DataRow: a value runs past the message")
            values.append(body[offset : offset + length])
            offset += length
    except struct.error as exc:
        raise ProtocolError(f"malformed DataRow: {exc}") from exc
    if offset != len(body):
        raise ProtocolError("malformed DataRow: length does not match its values")
    return tuple(values)
