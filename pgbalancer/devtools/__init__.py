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
import threading
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


# Ports handed out by this process, oldest first. The kernel picks a bind(0) port at random, so two
# separate picks repeat one about once in a few thousand picks of nine (a watchdog trio's proxy, API
# and Raft ports): the second node then fails to bind a port the first already serves. Remembering
# the recent picks makes every port a test process hands out distinct.
_HANDED_OUT: dict[int, None] = {}
_HANDED_OUT_LIMIT = 4096  # far below the ~14,000 ports bind(0) draws from, far above one test's needs
_HANDED_OUT_LOCK = threading.Lock()


def free_tcp_ports(count: int, host: str = "127.0.0.1") -> list[int]:
    """Return ``count`` distinct TCP ports that were free on ``host`` a moment ago.

    All sockets stay bound until every port is picked, so the ports are distinct, and none is one this
    process handed out recently (so separate calls do not collide either); another process may still
    take one before the caller binds it (unavoidable without passing the socket itself).
    """
    with contextlib.ExitStack() as stack, _HANDED_OUT_LOCK:
        ports: list[int] = []
        while len(ports) < count:
            sock = stack.enter_context(socket.socket(socket.AF_INET, socket.SOCK_STREAM))
            sock.bind((host, 0))  # a repeat stays bound, so the kernel draws another next time
            port = int(sock.getsockname()[1])
            if port not in _HANDED_OUT:
                ports.append(port)
        for port in ports:
            _HANDED_OUT[port] = None
        while len(_HANDED_OUT) > _HANDED_OUT_LIMIT:
            del _HANDED_OUT[next(iter(_HANDED_OUT))]
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
