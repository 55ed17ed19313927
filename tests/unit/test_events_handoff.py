"""The bounded hand-off between the trio loop and the MQTT thread: never blocks, counts every drop."""

from __future__ import annotations

import threading

import pytest

from pgbalancer.events.handoff import EventHandoff
from pgbalancer.events.payloads import EventMessage


def message(number: int) -> EventMessage:
    return EventMessage("pgbalancer/test", str(number).encode(), False, f"id{number}")


def test_offers_beyond_capacity_are_dropped_and_counted() -> None:
    handoff = EventHandoff(capacity=3)
    accepted = [handoff.offer(message(n)) for n in range(5)]
    assert accepted == [True, True, True, False, False]
    stats = handoff.statistics()
    assert (stats.depth, stats.high_water, stats.offered, stats.accepted, stats.dropped) == (3, 3, 5, 3, 2)
    assert [m.event_id for m in handoff.take(10)] == ["id0", "id1", "id2"]
    assert handoff.offer(message(9))  # room again once the consumer took them


def test_take_is_oldest_first_and_bounded_by_the_limit() -> None:
    handoff = EventHandoff(capacity=10)
    for n in range(5):
        handoff.offer(message(n))
    assert [m.event_id for m in handoff.take(2)] == ["id0", "id1"]
    assert [m.event_id for m in handoff.take(10)] == ["id2", "id3", "id4"]
    assert handoff.take(10) == []


def test_the_consumer_is_woken_only_when_the_queue_stops_being_empty() -> None:
    handoff = EventHandoff(capacity=10)
    wakes: list[int] = []
    handoff.set_wake(lambda: wakes.append(1))
    for n in range(4):
        handoff.offer(message(n))
    assert len(wakes) == 1
    handoff.take(10)
    handoff.offer(message(5))
    assert len(wakes) == 2


def test_delivery_counters() -> None:
    handoff = EventHandoff(capacity=2)
    handoff.record_delivered(3)
    handoff.record_failed()
    stats = handoff.statistics()
    assert (stats.delivered, stats.failed) == (3, 1)


def test_a_zero_capacity_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        EventHandoff(capacity=0)


def test_concurrent_producers_never_exceed_the_capacity() -> None:
    handoff = EventHandoff(capacity=100)
    taken: list[EventMessage] = []
    stop = threading.Event()

    def consume() -> None:
        while not stop.is_set():
            taken.extend(handoff.take(7))

    def produce(base: int) -> None:
        for n in range(2000):
            handoff.offer(message(base + n))

    consumer = threading.Thread(target=consume)
    producers = [threading.Thread(target=produce, args=(i * 10_000,)) for i in range(4)]
    consumer.start()
    for thread in producers:
        thread.start()
    for thread in producers:
        thread.join()
    stop.set()
    consumer.join()
    taken.extend(handoff.take(1000))
    stats = handoff.statistics()
    assert stats.offered == 8000
    assert stats.accepted + stats.dropped == 8000
    assert len(taken) == stats.accepted
    assert stats.high_water <= 100
