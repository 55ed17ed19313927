"""Prometheus metrics of one pgbalancer node, served as text on ``GET /metrics``.

A custom collector reads the live state (sessions, pools, pool counters, the cluster view and the
view-change listener) at scrape time, so the hot path does no metrics work at all. The API's own
requests are measured with an ordinary Counter and Histogram. Everything lives in a registry of
this node (never prometheus-client's global one), so several nodes can share a test process.

Statement latencies are Prometheus histograms per route (backend, database, user), filled by the
relays into fixed buckets (``pgbalancer.proxy.latency``). Traffic figures are the whole node's: the
``/metrics`` route hands the collector the figures of every worker (``pgbalancer.proxy.figures``)
before each scrape; ``pgbalancer_worker_reporting`` says which workers answered.

It must never: change the state it reads; put a secret in a label.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Final

import trio
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    InfoMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.registry import Collector

from pgbalancer import __version__
from pgbalancer.api import snapshots
from pgbalancer.api.control import WatchdogControl
from pgbalancer.api.snapshots import ClusterEvents, NodeInfo
from pgbalancer.proxy.figures import NodeFigures, merge, read_figures

if TYPE_CHECKING:
    from pgbalancer.events.service import EventStatistics
    from pgbalancer.proxy.server import ProxyServer

_POOL_LABELS: Final = ["backend", "database", "user"]
_US: Final = 1_000_000


class ProxyCollector(Collector):
    """Reads the proxy's state into metric families at every scrape."""

    def __init__(self, proxy: ProxyServer, node: NodeInfo, events: ClusterEvents) -> None:
        self.proxy = proxy
        self.node = node
        self.events = events
        self.figures: NodeFigures | None = None  # set by GET /metrics just before each scrape
        self.watchdog: WatchdogControl | None = None  # the node's watchdog, when watchdog_nodes is set
        # The MQTT event service's counters, on the process that runs it (mqtt_mode not off; worker 0).
        self.event_statistics: Callable[[], EventStatistics] | None = None

    def _figures(self) -> NodeFigures:
        if self.figures is not None:
            return self.figures
        return merge(1, [read_figures(self.proxy, self.node.worker_index, trio.current_time())])

    def collect(self) -> Iterator[Metric]:
        figures = self._figures()
        yield from self._node(figures)
        yield from self._clients(figures)
        yield from self._pools(figures)
        yield from self._traffic(figures)
        yield from self._backends(figures)
        yield from self._cluster()
        yield from self._balancer()
        yield from self._cache(figures)
        yield from self._raft()
        yield from self._mqtt()

    def _node(self, figures: NodeFigures) -> Iterator[Metric]:
        info = InfoMetricFamily("pgbalancer", "pgbalancer version and node identity")
        info.add_metric(
            [],
            {
                "version": __version__,
                "node_id": self.node.node_id,
                "worker": str(self.node.worker_index),
                "workers": str(self.node.worker_count),
            },
        )
        yield info
        reporting = GaugeMetricFamily(
            "pgbalancer_worker_reporting",
            "1 if the worker's figures are in this scrape, 0 if it did not answer in time",
            labels=["worker"],
        )
        answered = {report.worker_index for report in figures.workers}
        for index in range(figures.worker_count):
            reporting.add_metric([str(index)], int(index in answered))
        yield reporting
        yield GaugeMetricFamily(
            "pgbalancer_start_time_seconds",
            "When this process started (Unix time)",
            value=self.proxy.started_at,
        )
        yield GaugeMetricFamily(
            "pgbalancer_paused",
            "1 while every database is paused (PAUSE / POST /control/pause)",
            value=int(self.proxy.pools.pause_gate.all_paused),
        )

    def _clients(self, figures: NodeFigures) -> Iterator[Metric]:
        counts = snapshots.client_counts(figures)
        clients = GaugeMetricFamily("pgbalancer_clients", "Client connections by state", labels=["state"])
        for state in ("active", "waiting", "idle", "logging_in", "admin_console"):
            clients.add_metric([state], counts[state])
        yield clients
        yield CounterMetricFamily(
            "pgbalancer_clients_accepted", "Client connections accepted", value=counts["accepted_total"]
        )

    def _pools(self, figures: NodeFigures) -> Iterator[Metric]:
        servers = GaugeMetricFamily(
            "pgbalancer_pool_server_connections",
            "Server connections by pool and state",
            labels=[*_POOL_LABELS, "state"],
        )
        waiting = GaugeMetricFamily(
            "pgbalancer_pool_waiting_clients", "Clients waiting for a server connection", labels=_POOL_LABELS
        )
        max_size = GaugeMetricFamily(
            "pgbalancer_pool_max_size", "Server connections a pool may hold", labels=_POOL_LABELS
        )
        opened = CounterMetricFamily(
            "pgbalancer_pool_servers_opened", "Server connections opened", labels=_POOL_LABELS
        )
        closed = CounterMetricFamily(
            "pgbalancer_pool_servers_closed", "Server connections closed", labels=_POOL_LABELS
        )
        for pool in figures.live_pools():
            labels = _pool_labels(pool.key.backend_id, pool.key.database, pool.key.user)
            servers.add_metric([*labels, "active"], pool.active)
            servers.add_metric([*labels, "idle"], pool.idle)
            servers.add_metric([*labels, "logging_in"], pool.logging_in)
            waiting.add_metric(labels, pool.waiting)
            max_size.add_metric(labels, pool.max_size)
            opened.add_metric(labels, pool.opened_total)
            closed.add_metric(labels, pool.closed_total)
        yield from (servers, waiting, max_size, opened, closed)

    def _traffic(self, figures: NodeFigures) -> Iterator[Metric]:
        queries = CounterMetricFamily(
            "pgbalancer_queries", "Statements answered, by route (backend) and pool", labels=_POOL_LABELS
        )
        xacts = CounterMetricFamily("pgbalancer_transactions", "Transactions finished", labels=_POOL_LABELS)
        received = CounterMetricFamily(
            "pgbalancer_received_bytes", "Bytes received from clients", labels=_POOL_LABELS
        )
        sent = CounterMetricFamily("pgbalancer_sent_bytes", "Bytes sent to clients", labels=_POOL_LABELS)
        query_time = SummaryMetricFamily(
            "pgbalancer_query_duration_seconds", "Time statements spent on a server", labels=_POOL_LABELS
        )
        xact_time = SummaryMetricFamily(
            "pgbalancer_transaction_duration_seconds", "Time transactions held a server", labels=_POOL_LABELS
        )
        wait_time = SummaryMetricFamily(
            "pgbalancer_client_wait_seconds",
            "Time clients waited for a server connection",
            labels=_POOL_LABELS,
        )
        latency = HistogramMetricFamily(
            "pgbalancer_statement_duration_seconds",
            "Statement latency by route: from the request going to its server to its ReadyForQuery",
            labels=_POOL_LABELS,
        )
        for pool in figures.pools:
            key, c = pool.key, pool.counters
            labels = _pool_labels(key.backend_id, key.database, key.user)
            latency.add_metric(labels, c.query_latency.cumulative(), sum_value=c.query_latency.sum_seconds)
            queries.add_metric(labels, c.query_count)
            xacts.add_metric(labels, c.xact_count)
            received.add_metric(labels, c.bytes_received)
            sent.add_metric(labels, c.bytes_sent)
            query_time.add_metric(labels, count_value=c.query_count, sum_value=c.query_time_us / _US)
            xact_time.add_metric(labels, count_value=c.xact_count, sum_value=c.xact_time_us / _US)
            wait_time.add_metric(
                labels, count_value=c.server_assignment_count, sum_value=c.wait_time_us / _US
            )
        yield from (queries, xacts, received, sent, query_time, xact_time, wait_time, latency)

    def _backends(self, figures: NodeFigures) -> Iterator[Metric]:
        labels = ["backend", "host", "port"]
        up = GaugeMetricFamily(
            "pgbalancer_backend_up", "1 if the cluster view has the backend up", labels=labels
        )
        primary = GaugeMetricFamily(
            "pgbalancer_backend_primary", "1 for the backend that takes writes", labels=labels
        )
        score = GaugeMetricFamily("pgbalancer_backend_health_score", "Health score, 0 to 1", labels=labels)
        weight = GaugeMetricFamily("pgbalancer_backend_weight", "Configured balancing weight", labels=labels)
        share = GaugeMetricFamily(
            "pgbalancer_backend_traffic_share", "Share of all statements this backend answered", labels=labels
        )
        lag_bytes = GaugeMetricFamily(
            "pgbalancer_backend_replication_lag_bytes", "Replication lag behind the primary", labels=labels
        )
        lag_seconds = GaugeMetricFamily(
            "pgbalancer_backend_replication_lag_seconds", "Replication lag behind the primary", labels=labels
        )
        view = self.proxy.cluster_view
        totals = figures.totals_by_backend()
        all_queries = sum(c.query_count for c in totals.values())
        for state in view:
            values = [str(state.node_id), state.host, str(state.port)]
            up.add_metric(values, int(state.is_up))
            primary.add_metric(values, int(state.node_id == view.primary_id))
            score.add_metric(values, state.health_score)
            weight.add_metric(values, state.weight)
            answered = totals[state.node_id].query_count if state.node_id in totals else 0
            share.add_metric(values, answered / all_queries if all_queries else 0.0)
            if state.lag_bytes is not None:
                lag_bytes.add_metric(values, state.lag_bytes)
            if state.lag_seconds is not None:
                lag_seconds.add_metric(values, state.lag_seconds)
        yield from (up, primary, score, weight, share, lag_bytes, lag_seconds)

    def _cluster(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "pgbalancer_cluster_epoch",
            "Failover epoch of the cluster view",
            value=self.proxy.cluster_view.epoch,
        )
        yield CounterMetricFamily(
            "pgbalancer_failovers",
            "Times the primary changed since this process started",
            value=self.events.failovers,
        )
        changes = CounterMetricFamily(
            "pgbalancer_cluster_view_changes",
            "Cluster view updates adopted, by what changed: failover, epoch, membership, detach, status, "
            "role or health",
            labels=["reason"],
        )
        for change, count in self.events.view_changes.items():
            changes.add_metric([str(change)], count)
        yield changes

    def _balancer(self) -> Iterator[Metric]:
        stats = self.proxy.router.statistics(trio.current_time())
        yield GaugeMetricFamily(
            "pgbalancer_balancer_exploration_rate",
            "Share of adaptive picks that explore",
            value=_finite_or_zero(stats.exploration_rate),
        )
        yield CounterMetricFamily(
            "pgbalancer_balancer_decisions", "Reads the balancer placed", value=stats.decisions
        )
        share = GaugeMetricFamily(
            "pgbalancer_balancer_share", "Share of recent reads placed on the backend", labels=["backend"]
        )
        score = GaugeMetricFamily(
            "pgbalancer_balancer_score",
            "Relative score at the last adaptive pick (1 = best)",
            labels=["backend"],
        )
        latency = GaugeMetricFamily(
            "pgbalancer_balancer_latency_seconds", "Learned read latency estimate", labels=["backend"]
        )
        errors = GaugeMetricFamily(
            "pgbalancer_balancer_error_rate", "Learned read error rate", labels=["backend"]
        )
        for node in stats.nodes:
            backend = [str(node.node_id)]
            share.add_metric(backend, _finite_or_zero(node.share))
            score.add_metric(backend, _finite_or_zero(node.score))
            latency.add_metric(backend, _finite_or_zero(node.latency_ms / 1000.0))
            errors.add_metric(backend, _finite_or_zero(node.error_rate))
        yield from (share, score, latency, errors)

    def _cache(self, figures: NodeFigures) -> Iterator[Metric]:
        stats = figures.cache  # every worker's, added up
        yield GaugeMetricFamily(
            "pgbalancer_cache_enabled", "1 when memory_cache_enabled = on", value=int(stats is not None)
        )
        if stats is None:
            return
        yield GaugeMetricFamily("pgbalancer_cache_entries", "Results held by the cache", value=stats.entries)
        yield GaugeMetricFamily("pgbalancer_cache_bytes", "Memory the cache holds", value=stats.bytes)
        yield GaugeMetricFamily(
            "pgbalancer_cache_limit_bytes", "memqcache_total_size", value=stats.limit_bytes
        )
        for name, value, what in (
            ("hits", stats.hits, "Reads answered from the cache"),
            ("misses", stats.misses, "Cacheable reads not in the cache"),
            ("evictions", stats.evictions, "Entries evicted to stay within memqcache_total_size"),
            ("invalidations", stats.invalidations, "Entries dropped by invalidations"),
            ("invalidation_events", stats.invalidation_events, "Invalidations applied"),
            ("rejected", stats.rejected, "Answers not stored (too big, an error, a raced write)"),
            ("replication_failures", stats.replication_failures, "Invalidations not replicated in time"),
            ("prefetched", stats.prefetched, "Dropped hot results re-run and stored (memqcache_prefetch)"),
            ("prefetch_dropped", stats.prefetch_dropped, "Prefetches skipped by memqcache_prefetch_rate"),
        ):
            yield CounterMetricFamily(f"pgbalancer_cache_{name}", what, value=value)

    def _raft(self) -> Iterator[Metric]:
        watchdog = self.watchdog
        yield GaugeMetricFamily(
            "pgbalancer_raft_enabled",
            "1 when this node runs the watchdog (Raft)",
            value=int(watchdog is not None),
        )
        if watchdog is None:
            return
        info = watchdog.info()
        yield GaugeMetricFamily(
            "pgbalancer_raft_term", "Raft term this node is in", value=_number(info["term"])
        )
        yield GaugeMetricFamily(
            "pgbalancer_raft_commit_index", "Raft log index committed", value=_number(info["commit_index"])
        )
        yield GaugeMetricFamily(
            "pgbalancer_raft_quorum",
            "1 while this node is in contact with a majority",
            value=int(bool(info["quorum"])),
        )
        leader = info["leader"]
        yield GaugeMetricFamily(
            "pgbalancer_raft_is_leader",
            "1 while this node is the Raft leader",
            value=int(leader == info["self_id"]),
        )
        known = InfoMetricFamily("pgbalancer_raft_leader", "The Raft leader this node knows (empty: none)")
        known.add_metric([], {"leader": str(leader or "")})
        yield known

    def _mqtt(self) -> Iterator[Metric]:
        source = self.event_statistics
        yield GaugeMetricFamily(
            "pgbalancer_mqtt_enabled",
            "1 when this process publishes MQTT events",
            value=int(source is not None),
        )
        if source is None:
            return
        stats = source()
        queue = stats.queue
        for name, value, what in (
            ("events_offered", queue.offered, "Events offered to the MQTT hand-off queue"),
            ("events_dropped", queue.dropped, "Events dropped because the queue was full (MQTT side behind)"),
            (
                "events_delivered",
                queue.delivered,
                "Events handed to the broker or the external broker client",
            ),
            ("events_failed", queue.failed, "Events taken from the queue that could not be delivered"),
            ("connections_refused", stats.connections_refused, "MQTT clients refused by the embedded broker"),
            ("publishes_refused", stats.publishes_refused, "Client publishes refused (pgbalancer/# topics)"),
            (
                "slow_subscriber_skips",
                stats.slow_subscriber_skips,
                "Events not sent to a subscriber that is not reading",
            ),
        ):
            yield CounterMetricFamily(f"pgbalancer_mqtt_{name}", what, value=value)
        for name, value, what in (
            ("event_queue_depth", queue.depth, "Events waiting in the hand-off queue now"),
            ("event_queue_high_water", queue.high_water, "The most events that ever waited at once"),
            ("event_queue_capacity", queue.capacity, "Events the queue holds before it drops"),
        ):
            yield GaugeMetricFamily(f"pgbalancer_mqtt_{name}", what, value=value)


def _number(value: object) -> float:
    return float(value) if isinstance(value, int | float) else 0.0


def _finite_or_zero(value: float) -> float:
    return value if math.isfinite(value) else 0.0


def _pool_labels(backend_id: int, database: str, user: str) -> list[str]:
    return [str(backend_id), database, user]


class ApiMetrics:
    """The node's registry: the proxy collector plus the API's own request metrics."""

    def __init__(self, proxy: ProxyServer, node: NodeInfo, events: ClusterEvents) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.collector = ProxyCollector(proxy, node, events)
        self.registry.register(self.collector)
        self.requests = Counter(
            "pgbalancer_api_requests",
            "REST API requests by endpoint, method and status",
            ["endpoint", "method", "status"],
            registry=self.registry,
        )
        self.request_duration = Histogram(
            "pgbalancer_api_request_duration_seconds",
            "REST API request latency",
            ["endpoint"],
            registry=self.registry,
        )
        self.login_failures = Counter(
            "pgbalancer_api_login_failures", "Failed API password logins", registry=self.registry
        )
        self.login_refusals = Counter(
            "pgbalancer_api_login_rate_limited",
            "API logins refused by api_login_rate_limit",
            registry=self.registry,
        )
