"""The MQTT thread's pump hands the sink at most mqtt_max_event_rate messages a second (a fake sink)."""

from __future__ import annotations

import time

from pgbalancer.events.handoff import EventHandoff
from pgbalancer.events.mqttthread import MqttThread, burst_for
from pgbalancer.events.payloads import EventMessage


class RecordingSink:
    def __init__(self) -> None:
        self.delivered: list[EventMessage] = []

    async def start(self) -> None:
        pass

    async def deliver(self, message: EventMessage) -> bool:
        self.delivered.append(message)
        return True

    async def close(self) -> None:
        pass


def wait_until(condition: object, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.005)


def test_a_flood_reaches_the_sink_no_faster_than_the_rate_and_the_excess_is_dropped() -> None:
    rate = 100.0
    sink = RecordingSink()
    handoff = EventHandoff(capacity=100)
    thread = MqttThread(lambda: sink, handoff, rate=rate)
    thread.start(5.0)
    try:
        started = time.monotonic()
        offered = [handoff.offer(EventMessage("pgbalancer/test", b"{}", False, str(n))) for n in range(500)]
        wait_until(lambda: len(sink.delivered) >= 60)
        elapsed = time.monotonic() - started
        # Never more than one burst plus the rate times the time since the first offer.
        assert len(sink.delivered) <= burst_for(rate) + rate * elapsed + 1
        assert elapsed >= (60 - burst_for(rate)) / rate * 0.9  # it really was held back
        stats = handoff.statistics()
        assert offered.count(False) == stats.dropped >= 400 - burst_for(rate)
        wait_until(lambda: handoff.statistics().depth == 0)
        assert len(sink.delivered) == offered.count(True)
    finally:
        thread.stop(5.0)


def test_a_new_rate_applies_to_the_running_pump() -> None:
    sink = RecordingSink()
    handoff = EventHandoff(capacity=1000)
    thread = MqttThread(lambda: sink, handoff, rate=1.0)
    thread.start(5.0)
    try:
        for n in range(300):
            handoff.offer(EventMessage("pgbalancer/test", b"{}", False, str(n)))
        wait_until(lambda: len(sink.delivered) >= 1)
        thread.set_rate(10_000.0)
        wait_until(lambda: len(sink.delivered) == 300)
    finally:
        thread.stop(5.0)
