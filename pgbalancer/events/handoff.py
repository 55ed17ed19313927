"""The bounded, never-blocking hand-off of event messages from the trio loop to the MQTT thread.

Role: ``offer`` is called on the trio thread (and from view listeners, which must not block): it
appends under a lock held for a few instructions, or counts a drop when the queue is full, and
never waits for the MQTT side. The MQTT thread takes batches with ``take``. A wake-up callback
(set by the consumer, e.g. ``loop.call_soon_threadsafe``) runs only when the queue goes from empty
to non-empty, so a burst costs one wake-up, not one per message.

It must never: block or wait on the consumer; grow past ``capacity``; import trio or asyncio.
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from pgbalancer.events.payloads import EventMessage

DEFAULT_CAPACITY = 1000


@dataclass(frozen=True, slots=True)
class HandoffStatistics:
    capacity: int
    depth: int  # messages waiting now
    high_water: int  # the most that ever waited at once (never above capacity)
    offered: int  # every offer, accepted or not
    accepted: int
    dropped: int  # refused because the queue was full (the MQTT side is slow or stuck)
    delivered: int  # handed to the broker or the external client
    failed: int  # taken but could not be delivered (external broker unreachable, ...)


class EventHandoff:
    """A bounded thread-safe FIFO of EventMessage with drop and delivery counters."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"the event queue needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[EventMessage] = deque()
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._high_water = 0
        self._offered = 0
        self._dropped = 0
        self._delivered = 0
        self._failed = 0

    def set_wake(self, wake: Callable[[], None] | None) -> None:
        """Called (outside the lock) whenever the queue stops being empty; None to stop waking."""
        self._wake = wake

    def offer(self, message: EventMessage) -> bool:
        """Queue ``message`` unless full; False (and one more drop) when it had to be dropped."""
        with self._lock:
            self._offered += 1
            if len(self._items) >= self.capacity:
                self._dropped += 1
                return False
            was_empty = not self._items
            self._items.append(message)
            self._high_water = max(self._high_water, len(self._items))
        wake = self._wake
        if was_empty and wake is not None:
            wake()
        return True

    def take(self, limit: int) -> list[EventMessage]:
        """Up to ``limit`` messages, oldest first ([] when empty)."""
        with self._lock:
            count = min(limit, len(self._items))
            return [self._items.popleft() for _ in range(count)]

    def record_delivered(self, count: int = 1) -> None:
        with self._lock:
            self._delivered += count

    def record_failed(self, count: int = 1) -> None:
        with self._lock:
            self._failed += count

    def statistics(self) -> HandoffStatistics:
        with self._lock:
            accepted = self._offered - self._dropped
            return HandoffStatistics(
                capacity=self.capacity,
                depth=len(self._items),
                high_water=self._high_water,
                offered=self._offered,
                accepted=accepted,
                dropped=self._dropped,
                delivered=self._delivered,
                failed=self._failed,
            )
