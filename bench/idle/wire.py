"""Pure PostgreSQL wire pieces an idle client needs: the StartupMessage and Terminate bytes, and an
incremental reader that tells when the server's startup answer ends (ReadyForQuery) or failed.

Never touches a socket or a clock; the shell feeds it the bytes it received.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field
from enum import Enum

PROTOCOL_3_0 = 196608
TERMINATE = b"X\x00\x00\x00\x04"
_HEADER = struct.Struct("!cI")
_AUTH_OK = 0


def startup_message(parameters: dict[str, str]) -> bytes:
    """StartupMessage for protocol 3.0 with these parameters (user, database, application_name, ...)."""
    body = struct.pack("!I", PROTOCOL_3_0)
    body += b"".join(f"{key}\0{value}\0".encode() for key, value in parameters.items()) + b"\0"
    return struct.pack("!I", len(body) + 4) + body


class Phase(Enum):
    WAITING = "waiting"
    READY = "ready"  # ReadyForQuery seen: the connection is open and idle
    FAILED = "failed"


def _error_text(payload: bytes) -> str:
    """ErrorResponse fields as 'SQLSTATE message' (fields: one type byte, a C string each)."""
    fields = {}
    for part in payload.split(b"\0"):
        if part:
            fields[chr(part[0])] = part[1:].decode(errors="replace")
    return f"{fields.get('C', '?????')} {fields.get('M', '(no message)')}"


@dataclass
class HandshakeReader:
    """Follows the server's answer to a StartupMessage up to ReadyForQuery.

    Trust authentication is all it speaks: any other authentication request is a failure that
    names the request, as is an ErrorResponse (its SQLSTATE and message) or a malformed header.
    """

    phase: Phase = Phase.WAITING
    failure: str = ""
    _buffer: bytearray = field(default_factory=bytearray)

    def feed(self, data: bytes) -> Phase:
        if self.phase is not Phase.WAITING:
            return self.phase
        self._buffer += data
        while self.phase is Phase.WAITING and len(self._buffer) >= _HEADER.size:
            kind, length = _HEADER.unpack_from(self._buffer)
            if length < 4:
                return self._fail(f"malformed message header (type {kind!r}, length {length})")
            end = 1 + length
            if len(self._buffer) < end:
                break
            payload = bytes(self._buffer[_HEADER.size : end])
            del self._buffer[:end]
            self._consume(kind, payload)
        return self.phase

    def _consume(self, kind: bytes, payload: bytes) -> None:
        if kind == b"Z":
            self.phase = Phase.READY
        elif kind == b"E":
            self._fail(_error_text(payload))
        elif kind == b"R":
            (code,) = struct.unpack_from("!I", payload) if len(payload) >= 4 else (-1,)
            if code != _AUTH_OK:
                self._fail(f"server asks for authentication request {code}; only trust is supported")
        # ParameterStatus, BackendKeyData and NoticeResponse need no answer from an idle client.

    def _fail(self, reason: str) -> Phase:
        self.phase, self.failure = Phase.FAILED, reason
        return self.phase
