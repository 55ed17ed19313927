"""Header-only scanning of a relayed PostgreSQL message stream (the proxy's hot path).

The relay forwards bytes untouched; this scanner walks the message headers of
each chunk so the proxy knows, without copying payloads:

* whether the stream sits at a message boundary (safe to reuse or to inject into),
* how many messages of chosen types went by (e.g. Query/Sync sent, ReadyForQuery seen),
* the complete bodies of a few chosen small message types (ReadyForQuery,
  ParameterStatus, Terminate), with where in the chunk they ended.

It must never copy or inspect the payload of a message type it was not asked to
capture, never do per-byte work, and never touch I/O.
"""

from __future__ import annotations

from dataclasses import dataclass

from pgbalancer.pgwire.errors import ProtocolError

_HEADER_SIZE = 5


@dataclass(frozen=True, slots=True)
class CapturedMessage:
    """A captured message: its type byte, its body, and the chunk offset just past it."""

    type: bytes
    body: bytes
    end: int


class HeaderScanner:
    """Tracks message boundaries across arbitrary chunking of one direction of a stream."""

    __slots__ = (
        "_body_buffer",
        "_capture_current",
        "_capture_types",
        "_count_types",
        "_current_type",
        "_header_buffer",
        "_max_message_size",
        "_remaining",
        "counts",
        "last_type",
        "previous_type",
    )

    def __init__(self, *, capture: bytes = b"", count: bytes = b"", max_message_size: int = 1 << 30) -> None:
        self._capture_types = frozenset(capture)
        self._count_types = frozenset(count)
        self._max_message_size = max_message_size
        self._remaining = 0  # body bytes of the current message still to come
        self._current_type = 0
        self._capture_current = False
        self._header_buffer = bytearray()
        self._body_buffer = bytearray()
        self.counts: dict[int, int] = dict.fromkeys(self._count_types, 0)
        self.last_type = 0  # type byte of the last complete message, 0 if none yet
        self.previous_type = 0  # type byte of the complete message before that

    @property
    def at_boundary(self) -> bool:
        """True when no message is partially received."""
        return self._remaining == 0 and not self._header_buffer

    def feed(self, chunk: bytes | bytearray | memoryview) -> list[CapturedMessage]:
        """Advance over ``chunk``; return the captured messages that completed inside it."""
        captured: list[CapturedMessage] = []
        size = len(chunk)
        position = self._finish_current(chunk, 0, size, captured)
        if self._header_buffer:
            position = self._complete_split_header(chunk, position, size, captured)
        while position + _HEADER_SIZE <= size:
            message_type = chunk[position]
            length = int.from_bytes(chunk[position + 1 : position + 5], "big")
            self._start_message(message_type, length)
            position = self._finish_current(chunk, position + _HEADER_SIZE, size, captured)
        if position < size:
            self._header_buffer += chunk[position:size]
        return captured

    def _complete_split_header(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, captured: list[CapturedMessage]
    ) -> int:
        needed = _HEADER_SIZE - len(self._header_buffer)
        self._header_buffer += chunk[position : position + needed]
        position += min(needed, size - position)
        if len(self._header_buffer) < _HEADER_SIZE:
            return position
        header = bytes(self._header_buffer)
        self._header_buffer.clear()
        self._start_message(header[0], int.from_bytes(header[1:5], "big"))
        return self._finish_current(chunk, position, size, captured)

    def _start_message(self, message_type: int, length: int) -> None:
        if length < 4 or length > self._max_message_size:
            raise ProtocolError(f"invalid message length {length} for message type {chr(message_type)!r}")
        self._current_type = message_type
        self._remaining = length - 4
        self._capture_current = message_type in self._capture_types
        if self._capture_current:
            self._body_buffer.clear()
        if message_type in self._count_types:
            self.counts[message_type] += 1
        if self._remaining == 0:
            self._remaining = -1  # marks "complete, not yet reported" for _finish_current

    def _finish_current(
        self, chunk: bytes | bytearray | memoryview, position: int, size: int, captured: list[CapturedMessage]
    ) -> int:
        remaining = self._remaining
        if remaining == 0:
            return position
        if remaining < 0:  # empty body
            self._remaining = 0
            self._complete(position, captured)
            return position
        available = size - position
        if available < remaining:
            if self._capture_current:
                self._body_buffer += chunk[position:size]
            self._remaining = remaining - available
            return size
        end = position + remaining
        if self._capture_current:
            self._body_buffer += chunk[position:end]
        self._remaining = 0
        self._complete(end, captured)
        return end

    def _complete(self, end: int, captured: list[CapturedMessage]) -> None:
        self.previous_type = self.last_type
        self.last_type = self._current_type
        if self._capture_current:
            captured.append(CapturedMessage(bytes((self._current_type,)), bytes(self._body_buffer), end))
