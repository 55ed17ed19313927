"""The node's event service (trio shell): turns what happens in the node into MQTT messages.

Role: with ``mqtt_mode = embedded`` it runs the amqtt broker in the MQTT thread, with ``external``
a client of ``mqtt_broker_url`` there; with ``off`` it is not built at all. It listens to cluster-view
changes (``ProxyServer.view_listeners``), config reloads (``config_reloaded``) and a timer
(``mqtt_stats_interval``: ``stats/pools`` and the retained ``cluster/health``), builds the payloads
with the pure :mod:`pgbalancer.events.payloads`, and offers them to the bounded hand-off. Offering
never waits: when the MQTT side cannot keep up, the message is dropped and counted
(``statistics().dropped``, also in every ``stats/pools`` payload as ``events_dropped``).

With ``workers > 1`` only worker 0 builds an EventService (one broker per node, one port); its
``stats/pools`` add up every worker's pools and clients (``pgbalancer.proxy.figures``).

It must never: block the trio loop (no waiting on the MQTT thread except at start and stop, through
``trio.to_thread``); raise out of a view listener; publish a password.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import socket
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import trio

from pgbalancer.config import Config, ConfigDiff, MqttMode
from pgbalancer.events import payloads
from pgbalancer.events.credentials import BrokerCredentials
from pgbalancer.events.handoff import DEFAULT_CAPACITY, EventHandoff, HandoffStatistics
from pgbalancer.events.mqttthread import MqttThread, Sink
from pgbalancer.events.payloads import EventMessage, PoolSample, Stamp
from pgbalancer.ha.view import ClusterView
from pgbalancer.proxy.figures import FiguresPeering, NodeFigures
from pgbalancer.proxy.server import ProxyServer, bind_hosts
from pgbalancer.userlist import UserlistError, load_userlist

if TYPE_CHECKING:
    from pgbalancer.events.broker import EmbeddedBroker

log = logging.getLogger("pgbalancer.events")

_START_TIMEOUT: Final = 15.0
_STOP_TIMEOUT: Final = 5.0


@dataclass(frozen=True)
class EventStatistics:
    """The hand-off's counters plus the embedded broker's refusals (zeros in external mode)."""

    queue: HandoffStatistics
    connections_refused: int
    publishes_refused: int
    slow_subscriber_skips: int

    @property
    def dropped(self) -> int:
        return self.queue.dropped


def node_name(config: Config) -> str:
    return config.node_name or socket.gethostname()


def broker_credentials(config: Config) -> BrokerCredentials:
    """mqtt_user_file's users; UserlistError when the file cannot be used."""
    users = load_userlist(config.mqtt_user_file) if config.mqtt_user_file else {}
    return BrokerCredentials(users, config.mqtt_allow_anonymous)


class EventService:
    """Publishes the node's events; ``run`` hosts the MQTT thread for the node's lifetime."""

    def __init__(
        self,
        config: Config,
        proxy: ProxyServer,
        *,
        capacity: int = DEFAULT_CAPACITY,
        clock: Callable[[], float] = time.time,
        figures: FiguresPeering | None = None,
    ) -> None:
        self.config = config
        self.proxy = proxy
        self.figures = figures if figures is not None else FiguresPeering(proxy)
        self.node = node_name(config)
        self.handoff = EventHandoff(capacity)
        self._clock = clock
        self._boot = secrets.token_hex(4)  # event ids of this process run cannot collide with earlier ones
        self._sequence = 0
        self._thread: MqttThread | None = None
        self._broker: EmbeddedBroker | None = None  # set in embedded mode, on the MQTT thread
        self._trio_token: trio.lowlevel.TrioToken | None = None
        self._stats_changed = trio.Event()
        self._outage = payloads.PrimaryOutage()

    @classmethod
    def for_node(
        cls,
        config: Config,
        proxy: ProxyServer,
        worker_index: int | None,
        figures: FiguresPeering | None = None,
    ) -> EventService | None:
        """The node's service, or None when events are off or another worker owns the broker."""
        if config.mqtt_mode is MqttMode.OFF or (worker_index is not None and worker_index != 0):
            return None
        return cls(config, proxy, figures=figures)

    # ------------------------------------------------------------------ lifecycle

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start the MQTT thread (OSError if the broker cannot listen), then publish until cancelled."""
        self._trio_token = trio.lowlevel.current_trio_token()
        thread = MqttThread(self._make_sink, self.handoff, rate=self.config.mqtt_max_event_rate)
        await trio.to_thread.run_sync(thread.start, _START_TIMEOUT)
        self._thread = thread
        self.proxy.view_listeners.append(self.on_view_change)
        try:
            self.publish_state("startup")
            task_status.started()
            await self._publish_periodically()
        finally:
            self.proxy.view_listeners.remove(self.on_view_change)
            self._thread = None
            with trio.CancelScope(shield=True):
                await trio.to_thread.run_sync(thread.stop, _STOP_TIMEOUT)

    def _make_sink(self) -> Sink:
        """Runs on the MQTT thread, inside its loop (amqtt is imported only when events are on)."""
        config = self.config
        if config.mqtt_mode is MqttMode.EXTERNAL:
            from pgbalancer.events.external import ExternalBrokerClient

            client_id = f"pgbalancer-{self.node}"
            return ExternalBrokerClient(config.mqtt_broker_url, client_id, self._on_external_connect)
        from pgbalancer.events.broker import BrokerListen, EmbeddedBroker

        if not config.mqtt_allow_anonymous and not config.mqtt_user_file:
            log.warning(
                "MQTT broker: mqtt_user_file is empty and mqtt_allow_anonymous = off: no client can connect"
            )
        tls = bool(config.mqtt_tls_cert_file and config.mqtt_tls_key_file)
        listen = BrokerListen(
            hosts=tuple(bind_hosts(config.mqtt_listen_addresses)),
            port=config.mqtt_port,
            tls_port=config.mqtt_tls_port if tls else None,
            tls_cert_file=config.mqtt_tls_cert_file,
            tls_key_file=config.mqtt_tls_key_file,
        )
        self._broker = EmbeddedBroker(listen, broker_credentials(config))
        return self._broker

    def _on_external_connect(self) -> None:
        """On the MQTT thread after each (re)connection: republish the retained state from trio."""
        token = self._trio_token
        if token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                token.run_sync_soon(self.publish_state, "reconnect")

    async def _publish_periodically(self) -> None:
        while True:
            with trio.move_on_after(self.config.mqtt_stats_interval):
                await self._stats_changed.wait()  # a reload may shorten the interval: start over
                self._stats_changed = trio.Event()
                continue
            self.publish_pool_stats(await self.figures.gather())
            self.publish(payloads.cluster_health(self.proxy.cluster_view, self._stamp(), "periodic"))

    # ------------------------------------------------------------------ triggers

    def on_view_change(
        self, old: ClusterView, new: ClusterView, reason: str, details: Mapping[str, object]
    ) -> None:
        """A ProxyServer view listener: never blocks, never raises into the caller."""
        try:
            # What the caller knows (an operation's own kind and duration) wins over what the views show.
            details = {**self._outage.observe(old, new, trio.current_time()), **details}
            events = payloads.view_change_events(
                old, new, reason, details, self.node, self._clock(), self._next_id
            )
            for message in events:
                self.publish(message)
        except Exception:
            log.exception("could not build the events of a cluster view change (%s)", reason)

    def config_reloaded(self, diff: ConfigDiff, new_config: Config) -> None:
        """After a reload: publish cluster/config and apply the reloadable MQTT keys."""
        old = self.config
        self.config = new_config
        if new_config.mqtt_stats_interval != old.mqtt_stats_interval:
            self._stats_changed.set()
        if new_config.mqtt_max_event_rate != old.mqtt_max_event_rate:
            self.set_max_event_rate(new_config.mqtt_max_event_rate)
        self._reload_credentials(new_config)
        stamp = self._stamp()
        self.publish(payloads.cluster_config(diff.changed, diff.applied_live, diff.restart_required, stamp))

    def publish_config_version(self, version: int) -> bool:
        """The watchdog cluster committed config_version ``version``: every node publishes
        ``cluster/config`` (source raft) with the id ``config:<version>``."""
        stamp = self._stamp(f"config:{version}")
        return self.publish(payloads.cluster_config((), (), (), stamp, source="raft", config_version=version))

    def set_max_event_rate(self, rate: float) -> None:
        """Bound the events handed to the broker to ``rate`` a second (mqtt_max_event_rate)."""
        if self._thread is not None:
            self._thread.set_rate(rate)

    def _reload_credentials(self, config: Config) -> None:
        """Re-read mqtt_user_file (its content may have changed even if its path did not)."""
        broker, thread = self._broker, self._thread
        if broker is None or thread is None:
            return
        try:
            credentials = broker_credentials(config)
        except UserlistError as exc:
            log.error("keeping the previous MQTT users: %s", exc)
            return
        thread.call_soon(lambda: broker.set_credentials(credentials))

    def publish_watchdog_vip(
        self, holder: str | None, vip: str, interface: str, *, event_id: str | None = None
    ) -> bool:
        """The committed VIP holder changed (retained ``pgbalancer/watchdog/vip``); holder None: nobody.
        Every node publishes it with the same ``event_id`` (``vip:<holder>:<term>``)."""
        return self.publish(payloads.watchdog_vip(holder, vip, interface, self._stamp(event_id)))

    def publish_state(self, reason: str) -> None:
        """The retained state as it is now: every backend's status, then the cluster health."""
        view = self.proxy.cluster_view
        for state in view.backends:
            self.publish(payloads.node_status(state, None, view, self._stamp(), reason))
        self.publish(payloads.cluster_health(view, self._stamp(), reason))

    def publish_pool_stats(self, figures: NodeFigures) -> None:
        message = payloads.pool_stats(
            _pool_samples(figures),
            clients=figures.clients.total,
            interval=self.config.mqtt_stats_interval,
            events_dropped=self.handoff.statistics().dropped,
            stamp=self._stamp(),
        )
        self.publish(message)

    def publish_cache_invalidation(self, tables: frozenset[str] | None) -> None:
        """The result cache invalidated ``tables`` (None: everything); informational."""
        self.publish(payloads.cache_invalidate(tables, self._stamp()))

    def publish(self, message: EventMessage) -> bool:
        """Fire and forget: False when the queue was full and the message was dropped."""
        return self.handoff.offer(message)

    def stamp(self) -> Stamp:
        """A new stamp (node, time, event id, epoch) for a payload built elsewhere (watchdog, VIP)."""
        return self._stamp()

    def publish_watchdog_leader(self, leader: str | None, term: int | None) -> bool:
        """The Raft leader changed (retained ``pgbalancer/watchdog/leader``). Every node publishes it,
        with the id ``leader:<term>`` (``leader:<term>:none`` while no leader is known)."""
        event_id = None if term is None else f"leader:{term}" if leader else f"leader:{term}:none"
        return self.publish(payloads.watchdog_leader(leader, term, self._stamp(event_id)))

    # ------------------------------------------------------------------ reading

    def statistics(self) -> EventStatistics:
        broker = self._broker
        counters = broker.policy.counters if broker is not None else None
        return EventStatistics(
            queue=self.handoff.statistics(),
            connections_refused=counters.connections_refused if counters else 0,
            publishes_refused=counters.publishes_refused if counters else 0,
            slow_subscriber_skips=counters.slow_subscriber_skips if counters else 0,
        )

    def _stamp(self, event_id: str | None = None) -> Stamp:
        """Now, by this node; ``event_id`` for a cluster event every node publishes alike."""
        event_id = event_id if event_id is not None else self._next_id()
        return Stamp(self.node, self._clock(), event_id, self.proxy.cluster_view.epoch)

    def _next_id(self) -> str:
        self._sequence += 1
        return f"{self.node}:{self._boot}:{self._sequence}"


def _pool_samples(figures: NodeFigures) -> list[PoolSample]:
    return [
        PoolSample(
            backend_id=pool.key.backend_id,
            database=pool.key.database,
            user=pool.key.user,
            active=pool.active,
            idle=pool.idle,
            waiting=pool.waiting,
            max_size=pool.max_size,
            opened_total=pool.opened_total,
            closed_total=pool.closed_total,
            xact_count=pool.counters.xact_count,
            query_count=pool.counters.query_count,
            bytes_received=pool.counters.bytes_received,
            bytes_sent=pool.counters.bytes_sent,
            wait_time_us=pool.counters.wait_time_us,
        )
        for pool in figures.pools
    ]
