"""Thin socket wrappers for the proxy: raw trio sockets with ``recv_into`` and message reads.

The relay works on raw ``trio.socket`` objects rather than ``SocketStream`` because every
avoided layer is per-I/O overhead on the hot path. This module holds no protocol policy:
it moves bytes and hands them to the pure ``pgwire`` readers.
"""

from __future__ import annotations

import contextlib
import errno
import select
import socket as stdlib_socket
from typing import Protocol

import trio

from pgbalancer.pgwire.errors import ProtocolError
from pgbalancer.pgwire.framing import CLOSED, NEED_DATA, Message, MessageReader

RECV_SIZE = 65536


class ReceiveBuffer:
    """A receive buffer that starts small, so idle clients cost little, and doubles each time
    a read fills it (bulk transfers get large reads)."""

    __slots__ = ("data", "view")

    def __init__(self, size: int = 8192) -> None:
        self.data = bytearray(size)
        self.view = memoryview(self.data)

    def grow_if_filled(self, received: int) -> None:
        size = len(self.data)
        if received == size and size < RECV_SIZE:  # views into the old buffer stay valid
            self.data = bytearray(size * 2)
            self.view = memoryview(self.data)


class PeerClosed(Exception):
    """The peer closed the connection (or it broke) while we needed more bytes."""


class PgSocket(Protocol):
    """A connection carrying PostgreSQL protocol bytes: plain TCP, or TLS (see tls.py)."""

    peer: str

    async def recv_into(self, buffer: bytearray | memoryview) -> int: ...

    async def send_all(self, data: bytes | bytearray | memoryview) -> None: ...

    def looks_idle_and_open(self) -> bool: ...

    def close(self) -> None: ...


class TcpConnection:
    """A connected plain TCP socket: the hot path.

    trio's socket methods always pass through the scheduler, even when the kernel answers at
    once; that per-operation cost dominated a relayed transaction. Here each receive and send
    is first tried directly on the non-blocking socket, and the task waits (a checkpoint) only
    when the kernel says it would block. Cancellation is still honoured on every call.
    """

    __slots__ = ("_raw", "peer", "sock")

    def __init__(self, sock: trio.socket.SocketType, peer: str) -> None:
        self.sock = sock
        self.peer = peer
        # trio keeps the wrapped (non-blocking) stdlib socket here; it stays the owner.
        raw = getattr(sock, "_sock", None)
        self._raw: stdlib_socket.socket | None = raw if isinstance(raw, stdlib_socket.socket) else None

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        """Receive into ``buffer``; 0 means the peer closed. Connection errors count as closed."""
        raw = self._raw
        if raw is None:
            try:
                return await self.sock.recv_into(buffer)
            except OSError:
                return 0
        await trio.lowlevel.checkpoint_if_cancelled()
        while True:
            try:
                return raw.recv_into(buffer)
            except BlockingIOError:
                pass
            except OSError:
                return 0
            try:
                await trio.lowlevel.wait_readable(raw)
            except (trio.ClosedResourceError, OSError):
                return 0

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        """Send every byte, raising PeerClosed if the peer is gone."""
        view = memoryview(data)
        raw = self._raw
        try:
            if raw is None:
                while view:
                    view = view[await self.sock.send(view) :]
                return
            await trio.lowlevel.checkpoint_if_cancelled()
            while view:
                try:
                    view = view[raw.send(view) :]
                except BlockingIOError:
                    await trio.lowlevel.wait_writable(raw)
        except OSError as exc:
            raise PeerClosed(f"{self.peer}: {exc.strerror or exc}") from exc
        except trio.ClosedResourceError as exc:
            raise PeerClosed(f"{self.peer}: socket closed") from exc

    def looks_idle_and_open(self) -> bool:
        """True if nothing is waiting to be read and the peer has not hung up.

        A pooled server connection should be silent; anything readable (an
        ErrorResponse before a backend restart, or EOF) means it is not reusable.
        """
        try:
            poller = select.poll()
            poller.register(self.sock.fileno(), select.POLLIN | select.POLLPRI | select.POLLRDHUP)
            return not poller.poll(0)
        except (OSError, ValueError):
            return False

    def finish_sending(self) -> None:
        """Half-close (SHUT_WR) after the last message: the peer reads EOF right behind it, so
        libpq reports a FATAL at once instead of waiting for the close, while the session can
        still drain what the client sends (closing with unread input would reset the connection)."""
        with contextlib.suppress(OSError):
            self.sock.shutdown(stdlib_socket.SHUT_WR)

    def close(self) -> None:
        self.sock.close()


def configure_socket(sock: trio.socket.SocketType) -> None:
    """Low latency and dead-peer detection for both client and server sockets."""
    try:
        sock.setsockopt(stdlib_socket.IPPROTO_TCP, stdlib_socket.TCP_NODELAY, 1)
        sock.setsockopt(stdlib_socket.SOL_SOCKET, stdlib_socket.SO_KEEPALIVE, 1)
    except OSError as exc:  # unix sockets and odd platforms: not fatal
        if exc.errno not in (errno.EOPNOTSUPP, errno.ENOPROTOOPT, errno.EINVAL):
            raise


async def connect_tcp(host: str, port: int, timeout: float) -> PgSocket:
    """Open a TCP connection to a backend, trying each resolved address, within ``timeout``."""
    errors: list[str] = []
    with trio.move_on_after(timeout) as scope:
        infos = await trio.socket.getaddrinfo(host, port, type=stdlib_socket.SOCK_STREAM)
        for family, sock_type, proto, _, address in infos:
            sock = trio.socket.socket(family, sock_type, proto)
            try:
                await sock.connect(address)
            except OSError as exc:
                sock.close()
                errors.append(f"{address[0]!s}:{address[1]!s}: {exc.strerror or exc}")
                continue
            except BaseException:
                sock.close()
                raise
            configure_socket(sock)
            return TcpConnection(sock, f"{host}:{port}")
    if scope.cancelled_caught:
        errors.append(f"timed out after {timeout:g}s")
    raise OSError(f"could not connect to {host}:{port}: {'; '.join(errors) or 'no address'}")


class MessageChannel:
    """Reads whole messages from a PgSocket during handshakes (not used on the relay path)."""

    __slots__ = ("_buffer", "reader", "socket")

    def __init__(self, socket: PgSocket, max_message_size: int) -> None:
        self.socket = socket
        self.reader = MessageReader(max_message_size)
        self._buffer = ReceiveBuffer(1024)  # handshakes are small; it grows if a message is not

    async def read_message(self) -> Message:
        """The next complete message; PeerClosed on EOF, ProtocolError on malformed input."""
        while True:
            event = self.reader.next_event()
            if isinstance(event, Message):
                return event
            if event is CLOSED:
                raise PeerClosed(f"{self.socket.peer}: connection closed")
            assert event is NEED_DATA
            received = await self.socket.recv_into(self._buffer.data)
            if received == 0:
                self.reader.receive_data(b"")
                with contextlib.suppress(ProtocolError):
                    self.reader.next_event()
                raise PeerClosed(f"{self.socket.peer}: connection closed")
            self.reader.receive_data(self._buffer.view[:received])
            self._buffer.grow_if_filled(received)

    async def send(self, data: bytes | bytearray | memoryview) -> None:
        await self.socket.send_all(data)
