"""The embedded MQTT broker: amqtt, with pgbalancer's own listeners, authentication and topic rules.

Role: inside the MQTT thread's asyncio loop (see :mod:`pgbalancer.events.mqttthread`), bind
``mqtt_listen_addresses``:``mqtt_port`` (and the TLS port when a certificate is configured), hand
each accepted connection to an amqtt ``Broker`` through its "external" listener type (so binding,
TLS and connection limits are ours, and a bind failure is a plain OSError), admit clients per
:mod:`pgbalancer.events.credentials`, and publish pgbalancer's events into it at QoS 0 (retained
ones also stored for late subscribers). Every refusal (a CONNECT without or with wrong credentials,
a PUBLISH into ``pgbalancer/#``) is logged with the client's address.

A subscriber that stops reading is skipped (and counted) while its socket's send buffer is over
its high-water mark, so one stuck client neither grows the broker's memory nor delays the others.
Only QoS 0 is used for our events: a QoS 1 delivery would wait for that client's acknowledgement.

It must never: run outside the MQTT thread's loop (amqtt's Broker binds itself to the running
loop when constructed); let amqtt load its default plugins ($SYS topics, packet logging,
anonymous access: the plugin set is given explicitly); be imported by pure code.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from dataclasses import dataclass, field
from typing import Any, Final

from amqtt.adapters import StreamReaderAdapter, StreamWriterAdapter
from amqtt.broker import Broker
from amqtt.contexts import Action
from amqtt.plugins.base import BaseAuthPlugin, BaseTopicPlugin
from amqtt.session import Session

from pgbalancer.events.credentials import BrokerCredentials, may_publish, may_subscribe
from pgbalancer.events.payloads import EventMessage

log = logging.getLogger("pgbalancer.events")

MAX_CLIENTS: Final = 1000  # connections beyond this are closed at once
_BROKER_BACKLOG_LIMIT: Final = 256  # broadcasts amqtt may hold before we wait for it
_PLAIN, _TLS = "default", "tls"


@dataclass(frozen=True)
class BrokerListen:
    """Where the embedded broker listens. ``hosts`` holds None for every interface."""

    hosts: tuple[str | None, ...]
    port: int
    tls_port: int | None = None
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass
class BrokerCounters:
    connections_refused: int = 0
    publishes_refused: int = 0
    slow_subscriber_skips: int = 0  # messages not sent to a client that is not reading


@dataclass
class BrokerPolicy:
    """Admission and topic rules, shared by the two amqtt plugins; used on the MQTT thread only.

    ``credentials`` may be replaced from another thread (a reload): the swap is one assignment.
    """

    credentials: BrokerCredentials
    counters: BrokerCounters = field(default_factory=BrokerCounters)
    transports: dict[tuple[str, int], asyncio.WriteTransport] = field(default_factory=dict)
    _behind: set[tuple[str, int]] = field(default_factory=set)

    def authenticate(self, session: Session) -> bool:
        verdict = self.credentials.check(session.username, session.password)
        who = _describe(session)
        if verdict.admitted:
            log.info("MQTT client %s %s", who, verdict.value)
            return True
        self.counters.connections_refused += 1
        log.warning("MQTT client %s %s", who, verdict.value)
        return False

    def allows(self, session: Session | None, topic: str | None, action: Action) -> bool:
        if topic is None:
            return False
        if action == Action.PUBLISH:
            return self._allows_publish(session, topic)
        if action == Action.SUBSCRIBE:
            return may_subscribe(topic)
        return not self._is_behind(session)

    def _allows_publish(self, session: Session | None, topic: str) -> bool:
        if may_publish(topic):
            return True
        self.counters.publishes_refused += 1
        log.warning(
            "MQTT client %s refused: may not publish to %r (pgbalancer/# is written by pgbalancer only)",
            _describe(session),
            topic,
        )
        return False

    def _is_behind(self, session: Session | None) -> bool:
        """True while the client's unsent bytes exceed its socket's high-water mark (it stopped reading)."""
        if session is None or session.remote_address is None or session.remote_port is None:
            return False
        peer = (session.remote_address, session.remote_port)
        transport = self.transports.get(peer)
        if transport is None or transport.is_closing():
            return False
        behind = transport.get_write_buffer_size() > transport.get_write_buffer_limits()[1]
        if behind:
            self.counters.slow_subscriber_skips += 1
            if peer not in self._behind:
                log.warning("MQTT client %s is not reading; skipping events for it", _describe(session))
                self._behind.add(peer)
        elif peer in self._behind:
            self._behind.discard(peer)
            log.info("MQTT client %s reads again", _describe(session))
        return behind


class PgbalancerAuthPlugin(BaseAuthPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt auth plugin: mqtt_user_file users, anonymous only with mqtt_allow_anonymous."""

    @dataclass
    class Config:
        policy: Any = None

    async def authenticate(self, *, session: Session) -> bool:
        policy: BrokerPolicy = self.config.policy
        return policy.authenticate(session)


class PgbalancerTopicPlugin(BaseTopicPlugin):  # type: ignore[misc]  # amqtt ships no type hints
    """amqtt topic plugin: subscribe anywhere, never publish into pgbalancer/#, skip stuck readers."""

    @dataclass
    class Config:
        policy: Any = None

    async def topic_filtering(
        self, *, session: Session | None = None, topic: str | None = None, action: Action | None = None
    ) -> bool:
        policy: BrokerPolicy = self.config.policy
        return action is not None and policy.allows(session, topic, action)


class EmbeddedBroker:
    """An amqtt broker behind our own listeners; a sink for :class:`MqttThread`."""

    def __init__(self, listen: BrokerListen, credentials: BrokerCredentials) -> None:
        self.listen = listen
        self.policy = BrokerPolicy(credentials)
        self.bound: list[tuple[str, int]] = []
        self._servers: list[asyncio.Server] = []
        self._broker: Broker | None = None

    def set_credentials(self, credentials: BrokerCredentials) -> None:
        self.policy.credentials = credentials

    async def start(self) -> None:
        """Bind every listener (OSError names the port) and start amqtt; nothing is left open on failure."""
        listeners: dict[str, dict[str, object]] = {_PLAIN: {"type": "external"}}
        if self.listen.tls_port is not None:
            listeners[_TLS] = {"type": "external"}
        plugins = {
            f"{__name__}.PgbalancerAuthPlugin": {"policy": self.policy},
            f"{__name__}.PgbalancerTopicPlugin": {"policy": self.policy},
        }
        broker = Broker({"listeners": listeners, "plugins": plugins}, plugin_namespace="pgbalancer.mqtt")
        await broker.start()
        self._broker = broker
        try:
            await self._bind(_PLAIN, self.listen.port, None)
            if self.listen.tls_port is not None:
                await self._bind(_TLS, self.listen.tls_port, self._tls_context())
        except BaseException:
            await self.close()
            raise
        log.info("MQTT broker listening on %s", ", ".join(f"{host}:{port}" for host, port in self.bound))

    def _tls_context(self) -> ssl.SSLContext:
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(self.listen.tls_cert_file, self.listen.tls_key_file)
        return context

    async def _bind(self, listener: str, port: int, tls: ssl.SSLContext | None) -> None:
        for host in self.listen.hosts:

            async def on_client(
                reader: asyncio.StreamReader, writer: asyncio.StreamWriter, name: str = listener
            ) -> None:
                await self._serve_client(reader, writer, name)

            try:
                server = await asyncio.start_server(on_client, host, port, ssl=tls, reuse_address=True)
            except OSError as exc:
                where = f"{host or '*'}:{port}"
                raise OSError(exc.errno, f"MQTT broker cannot listen on {where}: {exc.strerror}") from exc
            self._servers.append(server)
            self.bound.extend(sock.getsockname()[:2] for sock in server.sockets)

    async def _serve_client(
        self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, listener: str
    ) -> None:
        peername = writer.get_extra_info("peername")
        peer = (str(peername[0]), int(peername[1]))
        if len(self.policy.transports) >= MAX_CLIENTS or self._broker is None:
            log.warning("MQTT client %s:%d refused: %d clients already connected", *peer, MAX_CLIENTS)
            self.policy.counters.connections_refused += 1
            writer.close()
            return
        self.policy.transports[peer] = writer.transport
        try:
            await self._broker.external_connected(
                StreamReaderAdapter(reader), StreamWriterAdapter(writer), listener
            )
        finally:
            self.policy.transports.pop(peer, None)
            writer.close()

    async def deliver(self, message: EventMessage) -> bool:
        broker = self._broker
        if broker is None:
            return False
        if message.retain:
            await broker.retain_message(None, message.topic, message.payload, 0)
        await broker.internal_message_broadcast(message.topic, message.payload, 0)
        await self._wait_for_backlog(broker)
        return True

    @staticmethod
    async def _wait_for_backlog(broker: Broker) -> None:
        """Let amqtt's broadcast loop catch up, so the bounded hand-off (not amqtt) absorbs a flood."""
        # amqtt 0.12 keeps pending broadcasts in an unbounded private queue; read it defensively.
        backlog = getattr(broker, "_broadcast_queue", None)
        await asyncio.sleep(0)
        while backlog is not None and backlog.qsize() > _BROKER_BACKLOG_LIMIT:
            await asyncio.sleep(0.005)

    async def close(self) -> None:
        for server in self._servers:
            server.close()
        for transport in list(self.policy.transports.values()):
            transport.abort()
        for server in self._servers:
            with contextlib.suppress(Exception):
                await server.wait_closed()
        self._servers.clear()
        broker, self._broker = self._broker, None
        if broker is not None:
            with contextlib.suppress(Exception):
                await broker.shutdown()


def _describe(session: Session | None) -> str:
    if session is None:
        return "(unknown)"
    user = f"user {session.username!r}" if session.username is not None else "no user name"
    return f"{session.client_id!r} from {session.remote_address}:{session.remote_port} ({user})"
