"""Per-source-address limit on failed password logins to the REST API.

A source address may fail at most ``limit`` password checks within a sliding ``window``; after
that it is refused (HTTP 429) without its password being checked, until its oldest failure leaves
the window. Successful logins do not count. Memory is bounded: at most ``max_sources`` addresses
are tracked, the stalest forgotten first.

Pure: no trio, no sockets, no clock reads (``now`` is passed in).
"""

from __future__ import annotations

from collections import OrderedDict, deque
from typing import Final

DEFAULT_WINDOW: Final = 60.0
DEFAULT_MAX_SOURCES: Final = 10_000


class LoginRateLimiter:
    """Sliding-window counter of failed logins per source address; ``limit`` 0 = unlimited."""

    def __init__(
        self, limit: int, window: float = DEFAULT_WINDOW, max_sources: int = DEFAULT_MAX_SOURCES
    ) -> None:
        self.limit = limit
        self.window = window
        self.max_sources = max_sources
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def retry_after(self, source: str, now: float) -> float:
        """Seconds until ``source`` may try a password again; 0 if it may now."""
        if self.limit <= 0:
            return 0.0
        failures = self._recent(source, now)
        if len(failures) < self.limit:
            return 0.0
        return max(0.0, failures[-self.limit] + self.window - now)

    def record_failure(self, source: str, now: float) -> None:
        if self.limit <= 0:
            return
        failures = self._recent(source, now)
        failures.append(now)
        while len(failures) > self.limit:  # older ones can no longer decide anything
            failures.popleft()
        self._failures[source] = failures
        self._failures.move_to_end(source)
        while len(self._failures) > self.max_sources:
            self._failures.popitem(last=False)

    def tracked_sources(self) -> int:
        return len(self._failures)

    def _recent(self, source: str, now: float) -> deque[float]:
        failures = self._failures.get(source, deque())
        while failures and failures[0] <= now - self.window:
            failures.popleft()
        if not failures:
            self._failures.pop(source, None)
        return failures
