"""The MQTT thread: one daemon thread running one asyncio loop that hosts the event sink.

Role: the sink (the embedded amqtt broker, or the client of an external broker) is built and
started inside this thread's own loop, as amqtt requires; ``start`` blocks the caller until it
listens or connected (or re-raises why it could not), so the node calls it through
``trio.to_thread.run_sync``. A pump task moves messages from the :class:`EventHandoff` into the
sink, one small batch at a time, at most ``rate`` messages a second (a :class:`TokenBucket`,
bursts of a quarter of a second's worth): the sink's own pace or the rate, whichever is slower,
decides how fast the queue drains; when the producers are faster, the hand-off fills and counts
drops. The bound keeps a flood from costing the trio loop more than a small, fixed share of the GIL.

How the threads meet (DESIGN §1): trio only *offers* to the hand-off (a lock held for a few
instructions) and, on an empty-to-non-empty transition, wakes this loop with
``loop.call_soon_threadsafe``; everything else happens on this thread. ``call_soon`` runs a
function on this loop (a credentials swap on reload); ``stop`` ends the loop and joins the thread.

It must never: call into trio; block the caller of ``offer``; outlive ``stop`` (the loop is closed
and the thread joined, or a timeout says so in the log); let amqtt log below WARNING (its DEBUG
lines carry the external broker's password).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import logging
import threading
from collections.abc import Callable
from typing import Final, Protocol

from pgbalancer.events.handoff import EventHandoff, TokenBucket
from pgbalancer.events.payloads import EventMessage

log = logging.getLogger("pgbalancer.events")

_BATCH: Final = 64
_MIN_NAP, _MAX_NAP = 0.02, 0.1  # out of tokens: a few wake-ups a second; a new rate applies soon
DEFAULT_RATE: Final = 200.0


def burst_for(rate: float) -> float:
    """The bucket's depth: a quarter of a second's worth, at least one message."""
    return max(1.0, rate / 4)


class Sink(Protocol):
    """Where the pump delivers: started and closed on the MQTT thread's loop."""

    async def start(self) -> None: ...

    async def deliver(self, message: EventMessage) -> bool: ...

    async def close(self) -> None: ...


class MqttThread:
    """Runs ``make_sink()`` in a daemon thread with its own asyncio loop, fed by ``handoff``."""

    def __init__(
        self,
        make_sink: Callable[[], Sink],
        handoff: EventHandoff,
        name: str = "pgbalancer-mqtt",
        *,
        rate: float = DEFAULT_RATE,
    ) -> None:
        self._make_sink = make_sink
        self.handoff = handoff
        self._rate = rate
        self._bucket: TokenBucket | None = None
        self.sink: Sink | None = None
        self._name = name
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stopping: asyncio.Event | None = None
        self._started: concurrent.futures.Future[None] = concurrent.futures.Future()

    def start(self, timeout: float) -> None:
        """Start the thread and wait until the sink is up; re-raise its startup error (e.g. OSError)."""
        self._thread = threading.Thread(target=self._run, name=self._name, daemon=True)
        self._thread.start()
        try:
            self._started.result(timeout)
        except concurrent.futures.TimeoutError:
            self.stop(timeout)
            raise TimeoutError(f"the MQTT {self._name} did not start within {timeout:g}s") from None
        except BaseException:
            self._thread.join(timeout)
            raise

    def call_soon(self, function: Callable[[], None]) -> None:
        """Run ``function`` on the MQTT loop (no-op once stopped)."""
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(function)

    def set_rate(self, rate: float) -> None:
        """Change the delivery bound (a reload); takes effect on the MQTT loop."""

        def apply() -> None:
            self._rate = rate
            loop, bucket = self._loop, self._bucket
            if loop is not None and bucket is not None:
                bucket.set_rate(rate, burst_for(rate), loop.time())

        self.call_soon(apply)

    def stop(self, timeout: float) -> None:
        """End the loop (closing the sink) and join the thread; idempotent."""
        self.handoff.set_wake(None)
        loop, stopping = self._loop, self._stopping
        if loop is not None and stopping is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # the loop closed in between
                loop.call_soon_threadsafe(stopping.set)
        thread = self._thread
        if thread is not None and thread is not threading.current_thread():
            thread.join(timeout)
            if thread.is_alive():
                log.warning("the MQTT thread did not stop within %gs; leaving it (daemon) behind", timeout)

    def _run(self) -> None:
        try:
            asyncio.run(self._main())
        except BaseException as exc:  # the thread must report, not die silently
            if not self._started.done():
                self._started.set_exception(exc)
            else:
                log.exception("the MQTT thread failed")

    async def _main(self) -> None:
        _quiet_library_loggers()
        self._loop = asyncio.get_running_loop()
        self._stopping = asyncio.Event()
        sink = self._make_sink()  # inside the loop: amqtt's Broker binds to the running loop
        await sink.start()
        self.sink = sink
        wakeup = asyncio.Event()
        loop = self._loop
        self.handoff.set_wake(lambda: _wake_loop(loop, wakeup))
        self._started.set_result(None)
        pump = asyncio.create_task(self._pump(sink, wakeup))
        try:
            await self._stopping.wait()
        finally:
            self.handoff.set_wake(None)
            pump.cancel()
            await asyncio.gather(pump, return_exceptions=True)
            await sink.close()

    async def _pump(self, sink: Sink, wakeup: asyncio.Event) -> None:
        loop = asyncio.get_running_loop()
        bucket = self._bucket = TokenBucket(self._rate, burst_for(self._rate), loop.time())
        while True:
            allowed = min(_BATCH, bucket.available(loop.time()))
            if allowed < 1:
                await asyncio.sleep(min(_MAX_NAP, max(_MIN_NAP, bucket.wait(loop.time()))))
                continue
            batch = self.handoff.take(allowed)
            if not batch:
                wakeup.clear()
                batch = self.handoff.take(allowed)  # an offer may have landed before the clear
                if not batch:
                    await wakeup.wait()
                    continue
            bucket.spend(len(batch))
            for message in batch:
                try:
                    delivered = await sink.deliver(message)
                except Exception:
                    log.exception("could not publish event %s on %s", message.event_id, message.topic)
                    delivered = False
                if delivered:
                    self.handoff.record_delivered()
                else:
                    self.handoff.record_failed()


def _wake_loop(loop: asyncio.AbstractEventLoop, wakeup: asyncio.Event) -> None:
    """Set ``wakeup`` from another thread; harmless once the loop has closed (the offer still counts)."""
    with contextlib.suppress(RuntimeError):
        loop.call_soon_threadsafe(wakeup.set)


def _quiet_library_loggers() -> None:
    """amqtt logs every connection and state change at INFO, and at DEBUG the external broker's
    whole URL, password included ("Connecting to: mqtt://user:password@...", amqtt/client.py), and
    the packets it handles: keep its loggers at WARNING even when the node logs at DEBUG. Our own
    lines (``pgbalancer.events``) say what matters, with the password redacted."""
    for name in ("amqtt", "transitions", "pgbalancer.mqtt"):  # the last: amqtt's plugin manager
        logging.getLogger(name).setLevel(logging.WARNING)
