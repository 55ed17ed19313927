"""The bounded, never-blocking hand-off of event messages from the trio loop to the MQTT thread.

Role: ``offer`` is called on the trio thread (and from view listeners, which must not block): it
appends under a lock held for a few instructions, or counts a drop when the queue is full, and
never waits for the MQTT side. The MQTT thread takes batches with ``take``. A wake-up callback
(set by the consumer, e.g. ``loop.call_soon_threadsafe``) runs only when the queue goes from empty
to non-empty, so a burst costs one wake-up, not one per message.

A retained message (the state of a topic, such as ``cluster/health``) is coalesced rather than
queued behind its predecessor: a newer one for the same topic replaces the waiting one (counted as
``coalesced``), so a flood never costs a late subscriber the newest state. Retained messages are
taken before the others. :class:`TokenBucket` is the pure rate bound the MQTT thread's pump applies
(``mqtt_max_event_rate``), so a flood of events costs the broker thread, and therefore the GIL the
trio loop needs, a bounded amount of work a second; the excess waits in (and overflows out of) this
queue, where dropping costs the trio side one lock and one counter.

It must never: block or wait on the consumer; grow past ``capacity``; import trio or asyncio;
read a clock (the bucket is given the time).
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
    coalesced: int = 0  # retained messages replaced by a newer one for their topic before delivery


class EventHandoff:
    """A bounded thread-safe FIFO of EventMessage with drop and delivery counters."""

    def __init__(self, capacity: int = DEFAULT_CAPACITY) -> None:
        if capacity < 1:
            raise ValueError(f"the event queue needs a capacity of at least 1, got {capacity}")
        self.capacity = capacity
        self._items: deque[EventMessage] = deque()
        self._retained: dict[str, EventMessage] = {}  # topic -> newest waiting, oldest topic first
        self._lock = threading.Lock()
        self._wake: Callable[[], None] | None = None
        self._high_water = 0
        self._offered = 0
        self._dropped = 0
        self._delivered = 0
        self._failed = 0
        self._coalesced = 0

    def set_wake(self, wake: Callable[[], None] | None) -> None:
        """Called (outside the lock) whenever the queue stops being empty; None to stop waking."""
        self._wake = wake

    def offer(self, message: EventMessage) -> bool:
        """Queue ``message`` unless full; False (and one more drop) when it had to be dropped."""
        with self._lock:
            self._offered += 1
            depth = len(self._items) + len(self._retained)
            if message.retain and message.topic in self._retained:
                del self._retained[message.topic]  # re-inserted last: it is the newest now
                self._retained[message.topic] = message
                self._coalesced += 1
                return True
            if depth >= self.capacity:
                self._dropped += 1
                return False
            if message.retain:
                self._retained[message.topic] = message
            else:
                self._items.append(message)
            self._high_water = max(self._high_water, depth + 1)
        wake = self._wake
        if depth == 0 and wake is not None:
            wake()
        return True

    def take(self, limit: int) -> list[EventMessage]:
        """Up to ``limit`` messages ([] when empty): the waiting retained states, then the others,
        each oldest first."""
        with self._lock:
            taken: list[EventMessage] = []
            while self._retained and len(taken) < limit:
                topic = next(iter(self._retained))
                taken.append(self._retained.pop(topic))
            count = min(limit - len(taken), len(self._items))
            taken.extend(self._items.popleft() for _ in range(count))
            return taken

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
                depth=len(self._items) + len(self._retained),
                high_water=self._high_water,
                offered=self._offered,
                accepted=accepted,
                dropped=self._dropped,
                delivered=self._delivered,
                failed=self._failed,
                coalesced=self._coalesced,
            )


class TokenBucket:
    """At most ``rate`` a second on average, bursts of up to ``burst``; the caller passes the time."""

    def __init__(self, rate: float, burst: float, now: float) -> None:
        self._rate = rate
        self._burst = burst
        self._tokens = burst
        self._at = now

    def set_rate(self, rate: float, burst: float, now: float) -> None:
        self._refill(now)
        self._rate, self._burst = rate, burst
        self._tokens = min(self._tokens, burst)

    def available(self, now: float) -> int:
        """Whole tokens that may be spent now."""
        self._refill(now)
        return int(self._tokens)

    def spend(self, count: int) -> None:
        self._tokens -= count

    def wait(self, now: float) -> float:
        """Seconds until one whole token is there (0 when one is)."""
        self._refill(now)
        return max(0.0, (1.0 - self._tokens) / self._rate)

    def _refill(self, now: float) -> None:
        self._tokens = min(self._burst, self._tokens + max(0.0, now - self._at) * self._rate)
        self._at = now
