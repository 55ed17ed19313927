"""Developer tooling: local PostgreSQL clusters, test backends, the demo, and small polling helpers.

Nothing in ``pgbalancer.devtools`` is imported by the proxy at run time; it serves tests, ``make demo``
and the benchmarks. This package module holds the two helpers everything else shares: picking free
TCP ports and polling for a condition with a deadline (tests never sleep to wait, they poll).

It must never import trio at module level (the cluster launcher is blocking and trio-free); the async
poller imports trio lazily.
"""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Awaitable, Callable
from typing import Protocol, TypeVar

T = TypeVar("T")

__all__ = [
    "AsyncPoll",
    "FreePort",
    "Poll",
    "free_tcp_port",
    "free_tcp_ports",
    "tcp_port_is_free",
    "wait_for",
    "wait_for_async",
]


class Poll(Protocol):
    """The type of :func:`wait_for` (what the ``poll`` test fixture returns)."""

    def __call__(
        self,
        predicate: Callable[[], T],
        timeout: float = ...,
        interval: float = ...,
        message: str = ...,
        *,
        retry_on: tuple[type[BaseException], ...] = ...,
    ) -> T: ...


class AsyncPoll(Protocol):
    """The type of :func:`wait_for_async` (what the ``apoll`` test fixture returns)."""

    async def __call__(
        self,
        predicate: Callable[[], T | Awaitable[T]],
        timeout: float = ...,
        interval: float = ...,
        message: str = ...,
        *,
        retry_on: tuple[type[BaseException], ...] = ...,
    ) -> T: ...


class FreePort(Protocol):
    """The type of :func:`free_tcp_port` (what the ``free_port`` test fixture returns)."""

    def __call__(self, host: str = ...) -> int: ...


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    All sockets stay bound until every port is picked, so the ports are distinct; another process may
    still take one before the caller binds it (unavoidable without passing the socket itself).
    """
    with contextlib.ExitStack() as stack:
        ports: list[int] = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_tcp_port(host: str = "127.0.0.1") -> int:
    """Return one TCP port that was free on ``host`` a moment ago."""
    return free_tcp_ports(1, host)[0]


def tcp_port_is_free(port: int, host: str = "127.0.0.1") -> bool:
    """True when nothing listens on ``host:port`` and we could bind it."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
        return True


def wait_for(
    predicate: Callable[[], T],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy, and return that value.

    Exceptions listed in ``retry_on`` count as "not yet" (e.g. ``psycopg.OperationalError`` while a
    server starts); any other exception propagates at once. On timeout raises ``TimeoutError`` naming
    ``message``, the last falsy value and the last retried exception.
    """
    deadline = time.monotonic() + timeout
    last: object = None
    last_error: BaseException | None = None
    while True:
        try:
            value = predicate()
        except retry_on as exc:
            last_error = exc
        else:
            if value:
                return value
            last = value
        if time.monotonic() >= deadline:
            raise TimeoutError(_timeout_text(message, timeout, last, last_error)) from last_error
        time.sleep(interval)


async def wait_for_async(
    predicate: Callable[[], T | Awaitable[T]],
    timeout: float = 10.0,
    interval: float = 0.05,
    message: str = "condition",
    *,
    retry_on: tuple[type[BaseException], ...] = (),
) -> T:
    """Trio version of :func:`wait_for`: yields to the event loop between attempts.

    ``predicate`` may be a plain function or return an awaitable. Use this inside trio tests whose
    condition depends on tasks of the same event loop (a blocking poll would starve them).
    """
    import inspect

    import trio

    deadline = trio.current_time() + timeout
    last: object = None
    last_error: BaseException | None = None
    while True:
        try:
            outcome = predicate()
            value: T = await outcome if inspect.isawaitable(outcome) else outcome
        except retry_on as exc:
            last_error = exc
        else:
            if value:
                return value
            last = value
        if trio.current_time() >= deadline:
            raise TimeoutError(_timeout_text(message, timeout, last, last_error)) from last_error
        await trio.sleep(interval)


def _timeout_text(message: str, timeout: float, last: object, last_error: BaseException | None) -> str:
    text = f"timed out after {timeout:g}s waiting for {message} (last value: {last!r})"
    if last_error is not None:
        text += f"; last error: {type(last_error).__name__}: {last_error}"
    return text
