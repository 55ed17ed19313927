"""External mode: publish pgbalancer's events to a broker that is already running (e.g. Mosquitto).

Role: a sink for :class:`pgbalancer.events.mqttthread.MqttThread` that keeps one amqtt client
connected to ``mqtt_broker_url`` (``mqtt://[user:password@]host[:port]`` or ``mqtts://…``) and
publishes each event at QoS 0 with its retain flag. The node starts even when the broker is down:
the client reconnects in the background with a growing pause, events offered meanwhile are counted
as failed, and ``on_connect`` runs after every (re)connection so the node can republish its
retained state (cluster health, backend statuses) to a broker that may have lost it.

It must never: block the node's start on an unreachable broker; log the password of the URL;
wait on a broker acknowledgement (QoS 0 only); run outside the MQTT thread's loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from typing import Final
from urllib.parse import urlsplit, urlunsplit

from amqtt.client import MQTTClient

from pgbalancer.events.payloads import EventMessage

log = logging.getLogger("pgbalancer.events")

_CONNECT_TIMEOUT: Final = 5.0
_PUBLISH_TIMEOUT: Final = 5.0
_FIRST_RETRY: Final = 0.5
_MAX_RETRY: Final = 30.0
_SCHEMES: Final = ("mqtt", "mqtts")


def redacted_url(url: str) -> str:
    """The broker URL without its password, fit for a log line."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = f"{parts.username}:********@{parts.hostname}" + (f":{parts.port}" if parts.port else "")
    return urlunsplit(parts._replace(netloc=netloc))


def check_broker_url(url: str) -> None:
    """Raise ValueError naming the fix when ``url`` cannot be a broker address."""
    parts = urlsplit(url)
    if parts.scheme not in _SCHEMES or not parts.hostname:
        raise ValueError(
            f"mqtt_broker_url = {redacted_url(url)!r} is not mqtt://host[:port] or mqtts://host[:port]; "
            "write it like 'mqtt://user:password@broker.example.com:1883'"
        )


class ExternalBrokerClient:
    """Keeps a connection to an external broker and publishes events through it."""

    def __init__(self, url: str, client_id: str, on_connect: Callable[[], None] | None = None) -> None:
        check_broker_url(url)
        self.url = url
        self.client_id = client_id
        self.on_connect = on_connect
        self.connections = 0
        self._client: MQTTClient | None = None
        self._connected = asyncio.Event()
        self._lost = asyncio.Event()
        self._keeper: asyncio.Task[None] | None = None

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    async def start(self) -> None:
        self._keeper = asyncio.create_task(self._keep_connected())

    async def deliver(self, message: EventMessage) -> bool:
        client = self._client
        if client is None or not self._connected.is_set():
            return False
        try:
            await asyncio.wait_for(
                client.publish(message.topic, message.payload, qos=0, retain=message.retain), _PUBLISH_TIMEOUT
            )
        except Exception as exc:
            reason = exc or type(exc).__name__
            log.warning("lost the external MQTT broker %s: %s", redacted_url(self.url), reason)
            self._mark_lost()
            return False
        return True

    async def close(self) -> None:
        if self._keeper is not None:
            self._keeper.cancel()
            await asyncio.gather(self._keeper, return_exceptions=True)
        await self._disconnect()

    def _mark_lost(self) -> None:
        self._connected.clear()
        self._lost.set()

    async def _keep_connected(self) -> None:
        pause = _FIRST_RETRY
        while True:
            if await self._connect():
                pause = _FIRST_RETRY
                await self._watch()
            await asyncio.sleep(pause)
            pause = min(pause * 2, _MAX_RETRY)

    async def _connect(self) -> bool:
        await self._disconnect()
        config = {"auto_reconnect": False, "keep_alive": 30, "default_qos": 0, "plugins": {}}
        client = MQTTClient(client_id=self.client_id, config=config)
        try:
            await asyncio.wait_for(client.connect(self.url), _CONNECT_TIMEOUT)
        except Exception as exc:
            log.warning(
                "cannot reach the external MQTT broker %s (%s); retrying in the background",
                redacted_url(self.url),
                exc or type(exc).__name__,
            )
            return False
        self._client = client
        self.connections += 1
        self._lost.clear()
        self._connected.set()
        log.info("publishing events to the external MQTT broker %s", redacted_url(self.url))
        if self.on_connect is not None:
            self.on_connect()
        return True

    async def _watch(self) -> None:
        """Return when the connection is lost (a failed publish, or the client saw it close)."""
        while not self._lost.is_set():
            client = self._client
            session = client.session if client is not None else None
            if session is None or not session.transitions.is_connected():
                log.warning("the external MQTT broker %s closed the connection", redacted_url(self.url))
                self._mark_lost()
                break
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._lost.wait(), 1.0)

    async def _disconnect(self) -> None:
        client, self._client = self._client, None
        self._connected.clear()
        if client is not None:
            with contextlib.suppress(Exception):
                await asyncio.wait_for(client.disconnect(), 2.0)
