"""Unit tests of the idle client's pure protocol pieces (startup bytes, handshake reader).

Run with `.venv/bin/pytest bench/idle/test_wire.py -q`. They never open a socket.
"""

from __future__ import annotations

import struct

from idle.wire import TERMINATE, HandshakeReader, Phase, startup_message


def message(kind: bytes, payload: bytes) -> bytes:
    return kind + struct.pack("!I", len(payload) + 4) + payload


AUTH_OK = message(b"R", struct.pack("!I", 0))
PARAMETER = message(b"S", b"server_version\x0015.4\x00")
KEY_DATA = message(b"K", struct.pack("!II", 1234, 5678))
READY = message(b"Z", b"I")


def test_startup_message_golden_bytes() -> None:
    expected = struct.pack("!II", 35, 196608) + b"user\x00bench\x00database\x00bench\x00\x00"
    assert startup_message({"user": "bench", "database": "bench"}) == expected


def test_terminate_is_an_empty_x_message() -> None:
    assert message(b"X", b"") == TERMINATE


def test_ready_after_trust_handshake_fed_byte_by_byte() -> None:
    reader = HandshakeReader()
    answer = AUTH_OK + PARAMETER + KEY_DATA + READY
    phases = [reader.feed(answer[i : i + 1]) for i in range(len(answer))]
    assert phases[:-1] == [Phase.WAITING] * (len(answer) - 1)
    assert phases[-1] is Phase.READY


def test_error_response_is_a_failure_naming_sqlstate_and_message() -> None:
    error = message(b"E", b"SFATAL\x00C53300\x00Mtoo many connections\x00\x00")
    reader = HandshakeReader()
    assert reader.feed(error) is Phase.FAILED
    assert reader.failure == "53300 too many connections"


def test_password_request_is_a_failure() -> None:
    reader = HandshakeReader()
    assert reader.feed(message(b"R", struct.pack("!I", 10) + b"SCRAM-SHA-256\x00\x00")) is Phase.FAILED
    assert "authentication request 10" in reader.failure


def test_malformed_length_is_a_failure() -> None:
    reader = HandshakeReader()
    assert reader.feed(b"Z" + struct.pack("!I", 2)) is Phase.FAILED


def test_bytes_after_the_verdict_change_nothing() -> None:
    reader = HandshakeReader()
    reader.feed(AUTH_OK + READY)
    assert reader.feed(message(b"E", b"C57P01\x00Mbye\x00\x00")) is Phase.READY
