"""Sans-I/O framing of the PostgreSQL v3 byte stream into messages.

Role: turn bytes received from a peer into whole messages, in both directions. ``StartupReader``
handles the untyped packets a client sends first (SSLRequest, GSSENCRequest, CancelRequest,
StartupMessage); ``MessageReader`` handles typed messages (type byte + int32 length + body) from
clients after startup and from servers. The shell feeds bytes with ``receive_data`` (``b""`` means
EOF) and pulls events with ``next_event`` until it gets ``NEED_DATA``, the h11 way.

Lengths are checked as soon as their header is in, before buffering any body, so a hostile
length can never make us buffer gigabytes.

Never: do I/O, block, read clocks, or interpret message contents beyond the header
(contents are :mod:`pgbalancer.pgwire.messages`' job).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.messages import StartupPacket, encode_message, parse_startup_packet

__all__ = [
    "CLOSED",
    "DEFAULT_MAX_MESSAGE_SIZE",
    "MAX_STARTUP_PACKET_SIZE",
    "NEED_DATA",
    "Closed",
    "Message",
    "MessageReader",
    "NeedData",
    "StartupReader",
    "encode_message",
]

DEFAULT_MAX_MESSAGE_SIZE: Final = 256 * 1024 * 1024
# PostgreSQL's MAX_STARTUP_PACKET_LENGTH; like PostgreSQL we apply it to the packet after its
# length word, so the largest acceptable length field is this plus 4.
MAX_STARTUP_PACKET_SIZE: Final = 10_000

_TYPED_HEADER: Final = struct.Struct("!cI")  # type byte, int32 length (which counts itself)
_TYPED_HEADER_SIZE: Final = 5
_UNTYPED_HEADER: Final = struct.Struct("!I")
_MIN_STARTUP_LENGTH: Final = 8  # length word + protocol code


class NeedData:
    """Event: the buffer holds no complete message; feed more bytes."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "NEED_DATA"


class Closed:
    """Event: the peer closed the stream cleanly, between two messages."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "CLOSED"


NEED_DATA: Final = NeedData()
CLOSED: Final = Closed()


@dataclass(frozen=True, slots=True)
class Message:
    """One typed message: ``type`` is one byte (e.g. b"Q"); ``body`` excludes type and length."""

    type: bytes
    body: bytes

    def encode(self) -> bytes:
        return encode_message(self.type, self.body)


class _StreamBuffer:
    """Received bytes not yet consumed, as a bytearray plus a read offset.

    Consuming a message only moves the offset; the consumed prefix is dropped once per
    ``receive_data`` call, not once per message, so draining many small messages stays linear.
    """

    __slots__ = ("_buf", "_eof", "_pos")

    def __init__(self) -> None:
        self._buf = bytearray()
        self._pos = 0
        self._eof = False

    def receive_data(self, data: bytes | bytearray | memoryview) -> None:
        if not data:
            self._eof = True
            return
        if self._eof:
            raise RuntimeError("receive_data called after EOF was signalled")
        if self._pos:
            # Drop the consumed prefix once per receive, not per message. Deleting a bytearray's
            # head is cheap in CPython (it moves the start pointer), and usually the rest is empty.
            if self._pos == len(self._buf):
                self._buf.clear()
            else:
                del self._buf[: self._pos]
            self._pos = 0
        self._buf += data

    @property
    def buffered(self) -> int:
        return len(self._buf) - self._pos

    def take_buffered(self) -> bytes:
        rest = bytes(self._buf[self._pos :])
        self._buf.clear()
        self._pos = 0
        return rest


class MessageReader(_StreamBuffer):
    """Splits a stream of typed messages (type byte + int32 length + body) into :class:`Message`."""

    __slots__ = ("_max_message_size",)

    def __init__(self, max_message_size: int = DEFAULT_MAX_MESSAGE_SIZE) -> None:
        super().__init__()
        self._max_message_size = max_message_size

    def next_event(self) -> Message | NeedData | Closed:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= _TYPED_HEADER_SIZE:
            msg_type, length = _TYPED_HEADER.unpack_from(buf, pos)
            if length < 4 or length > self._max_message_size:
                raise ProtocolError(f"invalid message length {length} for message type {msg_type!r}")
            end = pos + 1 + length
            if end <= len(buf):
                self._pos = end
                return Message(msg_type, bytes(buf[pos + _TYPED_HEADER_SIZE : end]))
        if not self._eof:
            return NEED_DATA
        if available:
            raise ProtocolError("connection closed in the middle of a message")
        return CLOSED


class StartupReader(_StreamBuffer):
    """Splits the untyped packets of the startup phase (int32 length + int32 code + payload).

    One reader serves a whole startup: e.g. SSLRequest, then (after TLS) StartupMessage. After a
    StartupMessage the stream carries typed messages: hand ``take_buffered()`` to a MessageReader.
    """

    __slots__ = ("_max_packet_size",)

    def __init__(self, max_packet_size: int = MAX_STARTUP_PACKET_SIZE) -> None:
        super().__init__()
        self._max_packet_size = max_packet_size

    def next_event(self) -> StartupPacket | NeedData | Closed:
        buf = self._buf
        pos = self._pos
        available = len(buf) - pos
        if available >= _UNTYPED_HEADER.size:
            length = _UNTYPED_HEADER.unpack_from(buf, pos)[0]
            if length < _MIN_STARTUP_LENGTH or length - 4 > self._max_packet_size:
                raise ProtocolError("invalid length of startup packet")
            end = pos + length
            if end <= len(buf):
                self._pos = end
                return parse_startup_packet(bytes(buf[pos + 4 : end]))
        if not self._eof:
            return NEED_DATA
        if available:
            raise ProtocolError("incomplete startup packet")
        return CLOSED
