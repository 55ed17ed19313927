"""The bounded hand-off between the trio loop and the MQTT thread: never blocks, counts every drop."""

from __future__ import annotations

import threading

import pytest
from hypothesis import given
from hypothesis import strategies as st

from pgbalancer.events.handoff import EventHandoff, TokenBucket
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


def retained(topic: str, number: int) -> EventMessage:
    return EventMessage(topic, str(number).encode(), True, f"r{number}")


def test_a_newer_retained_state_replaces_the_waiting_one_even_when_the_queue_is_full() -> None:
    handoff = EventHandoff(capacity=3)
    handoff.offer(retained("pgbalancer/cluster/health", 1))
    handoff.offer(message(1))
    handoff.offer(retained("pgbalancer/nodes/0/status", 2))
    assert not handoff.offer(message(2))  # full
    assert handoff.offer(retained("pgbalancer/cluster/health", 3))  # full, yet the newest state gets in
    assert not handoff.offer(retained("pgbalancer/nodes/1/status", 4))  # a new topic needs room
    stats = handoff.statistics()
    assert (stats.depth, stats.coalesced, stats.dropped, stats.accepted) == (3, 1, 2, 4)
    # The retained states first (oldest topic first, each at its newest), then the others.
    assert [m.event_id for m in handoff.take(10)] == ["r2", "r3", "id1"]


def test_take_honours_the_limit_across_retained_and_other_messages() -> None:
    handoff = EventHandoff(capacity=10)
    for n in range(3):
        handoff.offer(retained(f"pgbalancer/nodes/{n}/status", n))
        handoff.offer(message(n))
    assert [m.event_id for m in handoff.take(2)] == ["r0", "r1"]
    assert [m.event_id for m in handoff.take(2)] == ["r2", "id0"]
    assert [m.event_id for m in handoff.take(10)] == ["id1", "id2"]


def test_the_token_bucket_bounds_the_rate_and_the_burst() -> None:
    bucket = TokenBucket(rate=100, burst=25, now=0.0)
    assert bucket.available(0.0) == 25
    bucket.spend(25)
    assert bucket.available(0.0) == 0
    assert bucket.wait(0.0) == pytest.approx(0.01)
    assert bucket.available(0.1) == 10  # 100 a second
    assert bucket.available(60.0) == 25  # an idle minute still allows only one burst
    bucket.set_rate(10, 2.5, 60.0)
    assert bucket.available(60.0) == 2
    bucket.spend(2)
    assert bucket.wait(60.0) == pytest.approx(0.05)
    assert bucket.wait(61.0) == 0.0


@given(steps=st.lists(st.tuples(st.floats(0, 0.5), st.integers(0, 50)), max_size=60))
def test_spending_what_is_available_never_exceeds_burst_plus_rate_times_time(
    steps: list[tuple[float, int]],
) -> None:
    rate, burst = 200.0, 50.0
    bucket, now, spent = TokenBucket(rate, burst, 0.0), 0.0, 0
    for delay, wanted in steps:
        now += delay
        take = min(wanted, bucket.available(now))
        bucket.spend(take)
        spent += take
        assert spent <= burst + rate * now + 1e-6
