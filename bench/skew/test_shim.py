"""The delay shim forwards bytes intact and holds each reply for the configured delay.

Run with `.venv/bin/pytest bench/skew/test_shim.py -q`. Loopback sockets only; no PostgreSQL.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator

import pytest

from skew.shim import DelayShim


@pytest.fixture
def echo_server() -> Iterator[tuple[str, int]]:
    """Echoes every chunk back until the peer closes; serves connections one after another."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    listener.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, OSError):
                continue
            with conn:
                while data := conn.recv(65536):
                    conn.sendall(data)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield listener.getsockname()
    stop.set()
    listener.close()
    thread.join(5)


def round_trip(port: int, payload: bytes) -> tuple[bytes, float]:
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        started = time.monotonic()
        sock.sendall(payload)
        received = b""
        while len(received) < len(payload):
            chunk = sock.recv(65536)
            if not chunk:
                break
            received += chunk
        return received, time.monotonic() - started


def test_bytes_arrive_intact_and_late(echo_server: tuple[str, int]) -> None:
    with DelayShim(echo_server, delay_s=0.05) as shim:
        payload = bytes(range(256)) * 40
        received, elapsed = round_trip(shim.port, payload)
    assert received == payload
    assert elapsed >= 0.05


def test_the_delay_changes_while_running(echo_server: tuple[str, int]) -> None:
    with DelayShim(echo_server, delay_s=0.3) as shim:
        _, slow = round_trip(shim.port, b"x")
        shim.set_delay(0.0)
        _, fast = round_trip(shim.port, b"x")
    assert slow >= 0.3 > fast


def test_stop_closes_the_listener(echo_server: tuple[str, int]) -> None:
    shim = DelayShim(echo_server, delay_s=0.0)
    port = shim.start()
    round_trip(port, b"hello")
    shim.stop()
    with pytest.raises(OSError):
        socket.create_connection(("127.0.0.1", port), timeout=1).close()
