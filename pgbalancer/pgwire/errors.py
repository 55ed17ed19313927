"""PostgreSQL error codes, the ProtocolError exception, and ErrorResponse/NoticeResponse encoding.

Role: one place that knows how an error looks on the wire (the 'E' and 'N' messages and their
field list) and which SQLSTATE means what. Everything the proxy tells a client about a failure is
built here, so clients see the same fields PostgreSQL itself would send.

Never: do I/O, log, or decide policy (whether an error is FATAL for the session is the caller's call).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Final


class SqlState(StrEnum):
    """The SQLSTATE codes pgbalancer sends itself (PostgreSQL Appendix A)."""

    SUCCESSFUL_COMPLETION = "00000"
    CONNECTION_EXCEPTION = "08000"
    SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION = "08001"
    CONNECTION_FAILURE = "08006"
    PROTOCOL_VIOLATION = "08P01"
    FEATURE_NOT_SUPPORTED = "0A000"
    INVALID_PARAMETER_VALUE = "22023"
    READ_ONLY_SQL_TRANSACTION = "25006"
    INVALID_SQL_STATEMENT_NAME = "26000"
    INVALID_AUTHORIZATION_SPECIFICATION = "28000"
    INVALID_PASSWORD = "28P01"
    INVALID_CURSOR_NAME = "34000"
    INVALID_CATALOG_NAME = "3D000"
    TOO_MANY_CONNECTIONS = "53300"
    CONFIGURATION_LIMIT_EXCEEDED = "53400"
    PROGRAM_LIMIT_EXCEEDED = "54000"
    IDLE_IN_TRANSACTION_SESSION_TIMEOUT = "25P03"
    IDLE_SESSION_TIMEOUT = "57P05"
    IN_FAILED_SQL_TRANSACTION = "25P02"
    QUERY_CANCELED = "57014"
    ADMIN_SHUTDOWN = "57P01"
    CANNOT_CONNECT_NOW = "57P03"
    INTERNAL_ERROR = "XX000"


class ProtocolError(Exception):
    """The peer broke the wire protocol (or asked for something we cannot speak).

    ``sqlstate`` is what the client should be told; the caller usually answers with
    ``error.to_response()`` (a FATAL ErrorResponse) and closes the connection.
    """

    def __init__(
        self, message: str, sqlstate: str = SqlState.PROTOCOL_VIOLATION, *, hint: str | None = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.sqlstate = str(sqlstate)
        self.hint = hint

    def to_response(self, severity: str = "FATAL") -> bytes:
        """The ErrorResponse a client should receive for this error."""
        return error_response(self.sqlstate, self.message, severity=severity, hint=self.hint)


# Field type codes of ErrorResponse/NoticeResponse ("Error and Notice Message Fields" in the docs).
FIELD_SEVERITY: Final = "S"
FIELD_SEVERITY_NONLOCALIZED: Final = "V"
FIELD_SQLSTATE: Final = "C"
FIELD_MESSAGE: Final = "M"
FIELD_DETAIL: Final = "D"
FIELD_HINT: Final = "H"


def error_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "ERROR",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """The complete ErrorResponse ('E') message: header, fields S, V, C, M, [D], [H], terminator."""
    return _encode_report(b"E", sqlstate, message, severity, detail, hint)


def notice_response(
    sqlstate: str,
    message: str,
    *,
    severity: str = "NOTICE",
    detail: str | None = None,
    hint: str | None = None,
) -> bytes:
    """The complete NoticeResponse ('N') message; same fields as :func:`error_response`."""
    return _encode_report(b"N", sqlstate, message, severity, detail, hint)


def _encode_report(
    msg_type: bytes, sqlstate: str, message: str, severity: str, detail: str | None, hint: str | None
) -> bytes:
    if len(sqlstate) != 5:
        raise ValueError(f"SQLSTATE must be 5 characters, got {sqlstate!r}")
    fields = [
        (FIELD_SEVERITY, severity),
        (FIELD_SEVERITY_NONLOCALIZED, severity),
        (FIELD_SQLSTATE, str(sqlstate)),
        (FIELD_MESSAGE, message),
    ]
    if detail is not None:
        fields.append((FIELD_DETAIL, detail))
    if hint is not None:
        fields.append((FIELD_HINT, hint))
    parts = []
    for code, value in fields:
        if "\0" in value:
            # A NUL would end the field early and desynchronise the client's parser.
            raise ValueError(f"error field {code} must not contain NUL: {value!r}")
        parts.append(code.encode("ascii") + value.encode("utf-8") + b"\0")
    body = b"".join(parts) + b"\0"
    return msg_type + (len(body) + 4).to_bytes(4, "big") + body


def parse_error_fields(body: bytes) -> dict[str, str]:
    """Decode the body of an ErrorResponse/NoticeResponse into ``{field code: value}``.

    Text that is not valid UTF-8 (a server may speak another client_encoding) is decoded with
    replacement characters: these fields are for humans and logs, never for routing.
    Raises ProtocolError when the field list is not NUL-terminated.
    """
    fields: dict[str, str] = {}
    pos = 0
    end = len(body)
    while pos < end:
        code = body[pos]
        if code == 0:
            if pos != end - 1:
                raise ProtocolError("malformed error/notice message: data after the field terminator")
            return fields
        nul = body.find(b"\0", pos + 1)
        if nul < 0:
            raise ProtocolError("malformed error/notice message: unterminated field")
        fields[chr(code)] = body[pos + 1 : nul].decode("utf-8", errors="replace")
        pos = nul + 1
    raise ProtocolError("malformed error/notice message: missing terminator")
