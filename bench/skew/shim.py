"""A TCP shim that makes one backend reproducibly slow: every chunk the server sends back is held
for a fixed delay before it is forwarded (one delay per round trip for request/response traffic).

Used by bench/routing_skew in front of one standby. The delay can be changed while it runs, so a
benchmark can make the node "recover" and watch the balancer notice. Threads and blocking
sockets: this is benchmark tooling, not part of pgbalancer. It listens on 127.0.0.1 only and
closes every socket and joins every thread it started on ``stop()``.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from types import TracebackType

_CHUNK = 64 * 1024


class DelayShim:
    """Forwards 127.0.0.1:<port> to ``target``, delaying the server-to-client direction."""

    def __init__(self, target: tuple[str, int], delay_s: float, listen_port: int = 0) -> None:
        self.target = target
        self._delay_s = delay_s
        self._listen_port = listen_port
        self._listener: socket.socket | None = None
        self._threads: list[threading.Thread] = []
        self._sockets: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self.port = 0

    @property
    def delay_s(self) -> float:
        return self._delay_s

    def set_delay(self, delay_s: float) -> None:
        """Takes effect for the next chunk of every connection."""
        self._delay_s = delay_s

    def start(self) -> int:
        listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        listener.bind(("127.0.0.1", self._listen_port))
        listener.listen(128)
        listener.settimeout(0.2)  # so the accept loop notices stop()
        self._listener = listener
        self.port = listener.getsockname()[1]
        self._spawn(self._accept_loop)
        return self.port

    def stop(self) -> None:
        self._stopping.set()
        with self._lock:
            sockets = list(self._sockets)
        for sock in sockets:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        if self._listener is not None:
            self._listener.close()
        for thread in list(self._threads):
            thread.join(5)

    def __enter__(self) -> DelayShim:
        self.start()
        return self

    def __exit__(
        self, kind: type[BaseException] | None, error: BaseException | None, trace: TracebackType | None
    ) -> None:
        self.stop()

    def _spawn(self, target: object, *args: object) -> None:
        thread = threading.Thread(target=target, args=args, daemon=True)  # type: ignore[arg-type]
        self._threads.append(thread)
        thread.start()

    def _track(self, sock: socket.socket) -> None:
        with self._lock:
            self._sockets.append(sock)

    def _accept_loop(self) -> None:
        assert self._listener is not None
        while not self._stopping.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return  # the listener was closed by stop()
            try:
                server = socket.create_connection(self.target, timeout=5)
            except OSError:
                client.close()
                continue
            server.settimeout(None)
            for sock in (client, server):
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                self._track(sock)
            self._spawn(self._pump, client, server, False)
            self._spawn(self._pump, server, client, True)

    def _pump(self, source: socket.socket, sink: socket.socket, delayed: bool) -> None:
        try:
            while not self._stopping.is_set():
                data = source.recv(_CHUNK)
                if not data:
                    break
                if delayed and self._delay_s > 0:
                    time.sleep(self._delay_s)
                sink.sendall(data)
        except OSError:
            pass
        finally:
            with contextlib.suppress(OSError):
                sink.shutdown(socket.SHUT_WR)
