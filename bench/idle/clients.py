"""Process shell that holds many idle client connections from this one process: non-blocking sockets
on one selector, each completing the PostgreSQL startup handshake (trust) and then staying silent.

At most `in_flight` handshakes run at once so the pooler's listen backlog never overflows. It never
retries a failed connection (a failure is a finding, counted by its reason) and never sends a query.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import selectors
import socket
import time
from dataclasses import dataclass, field

from idle.wire import TERMINATE, HandshakeReader, Phase, startup_message


@dataclass
class _Handshake:
    sock: socket.socket
    outgoing: bytes
    reader: HandshakeReader = field(default_factory=HandshakeReader)


@dataclass
class IdleClients:
    """The connections that reached ReadyForQuery, plus what went wrong with the others."""

    sockets: list[socket.socket]
    failures: dict[str, int]
    seconds: float

    @property
    def failed(self) -> int:
        return sum(self.failures.values())

    def still_open(self) -> int:
        """How many the server has not closed (a non-blocking peek finds no EOF and no error)."""
        alive = 0
        for sock in self.sockets:
            try:
                alive += sock.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) != b""
            except BlockingIOError:
                alive += 1  # nothing to read: open and idle, as expected
            except OSError:
                pass
        return alive

    def close(self) -> None:
        """Terminate, then close, every connection; a pooler that already dropped one is no error."""
        for sock in self.sockets:
            with contextlib.suppress(OSError):
                sock.send(TERMINATE, socket.MSG_DONTWAIT)
            sock.close()
        self.sockets = []


class _Opener:
    def __init__(self, host: str, port: int, parameters: dict[str, str]) -> None:
        self.address = (host, port)
        self.startup = startup_message(parameters)
        self.selector = selectors.DefaultSelector()
        self.ready: list[socket.socket] = []
        self.failures: collections.Counter[str] = collections.Counter()

    def start_one(self) -> None:
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        code = sock.connect_ex(self.address)
        if code not in (0, errno.EINPROGRESS):
            self._fail(sock, f"connect: {errno.errorcode.get(code, code)}")
            return
        self.selector.register(sock, selectors.EVENT_WRITE, _Handshake(sock, self.startup))

    def step(self, timeout_s: float) -> None:
        for key, events in self.selector.select(timeout_s):
            handshake: _Handshake = key.data
            if events & selectors.EVENT_WRITE:
                self._write(handshake)
            elif events & selectors.EVENT_READ:
                self._read(handshake)

    def in_flight(self) -> int:
        return len(self.selector.get_map())

    def abandon_all(self, reason: str) -> None:
        for key in list(self.selector.get_map().values()):
            self._fail(key.fileobj, reason)  # type: ignore[arg-type]  # we only register sockets

    def _write(self, handshake: _Handshake) -> None:
        sock = handshake.sock
        code = sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if code:
            self._fail(sock, f"connect: {errno.errorcode.get(code, code)}")
            return
        try:
            sent = sock.send(handshake.outgoing)
        except OSError as exc:
            self._fail(sock, f"send: {exc.strerror}")
            return
        handshake.outgoing = handshake.outgoing[sent:]
        if not handshake.outgoing:
            self.selector.modify(sock, selectors.EVENT_READ, handshake)

    def _read(self, handshake: _Handshake) -> None:
        sock = handshake.sock
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return
        except OSError as exc:
            self._fail(sock, f"recv: {exc.strerror}")
            return
        if not data:
            self._fail(sock, "closed by the server during the handshake")
            return
        phase = handshake.reader.feed(data)
        if phase is Phase.READY:
            self.selector.unregister(sock)
            self.ready.append(sock)
        elif phase is Phase.FAILED:
            self._fail(sock, handshake.reader.failure)

    def _fail(self, sock: socket.socket, reason: str) -> None:
        self.failures[reason] += 1
        with contextlib.suppress(KeyError, ValueError):  # it may never have been registered
            self.selector.unregister(sock)
        sock.close()


def open_idle_clients(
    port: int,
    count: int,
    *,
    host: str = "127.0.0.1",
    user: str = "bench",
    database: str = "bench",
    in_flight: int = 100,
    timeout_s: float = 120.0,
) -> IdleClients:
    """Opens `count` connections that each completed the startup handshake, or says why not."""
    parameters = {"user": user, "database": database, "application_name": "idle_clients"}
    opener = _Opener(host, port, parameters)
    started = time.monotonic()
    to_start = count
    try:
        while to_start or opener.in_flight():
            if time.monotonic() - started > timeout_s:
                opener.abandon_all(f"no ReadyForQuery within {timeout_s:.0f} s")
                break
            while to_start and opener.in_flight() < in_flight:
                opener.start_one()
                to_start -= 1
            opener.step(timeout_s=0.5)
    finally:
        opener.selector.close()
    for _ in range(to_start):  # only left over when the deadline passed
        opener.failures["not attempted: deadline passed"] += 1
    return IdleClients(opener.ready, dict(opener.failures), time.monotonic() - started)
