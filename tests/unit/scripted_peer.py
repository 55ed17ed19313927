"""A scripted PostgreSQL peer for shell unit tests: a PgSocket that answers each whole message the
code under test sends with bytes a subclass chooses, without a socket or a clock."""

from __future__ import annotations

import struct

import trio

from pgbalancer.pgwire.framing import Message, MessageReader
from pgbalancer.pgwire.messages import encode_message


def data_row(*values: bytes | None) -> bytes:
    body = struct.pack("!h", len(values))
    for value in values:
        body += struct.pack("!i", -1) if value is None else struct.pack("!i", len(value)) + value
    return encode_message(b"D", body)


class ScriptedPeer:
    """Subclasses answer in ``respond`` by appending to ``pending``; reads take from it."""

    peer = "scripted:1"

    def __init__(self) -> None:
        self.pending = bytearray()
        self._reader = MessageReader()

    def respond(self, message: Message) -> None:
        raise NotImplementedError

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self._reader.receive_data(bytes(data))
        while isinstance(message := self._reader.next_event(), Message):
            self.respond(message)

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        await trio.lowlevel.checkpoint()
        size = min(len(buffer), len(self.pending))
        buffer[:size] = self.pending[:size]
        del self.pending[:size]
        return size

    def looks_idle_and_open(self) -> bool:
        return True

    def close(self) -> None:
        pass
