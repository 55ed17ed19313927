"""Read the live proxy state into the JSON documents the REST API and /metrics serve.

Every figure comes from the running objects (sessions, pools and their counters, the cluster
view, the config), read at the moment of the request; nothing is cached or made up. Traffic
figures (clients, servers, pools, queries) are the whole node's: with several worker processes
worker 0 gathers and adds up every worker's (``pgbalancer.proxy.figures``). The cluster view, the
health history and the balancer's statistics are those of worker 0, which runs the health checks.

It must never: change anything it reads; touch a backend or a socket; show a secret.
"""

from __future__ import annotations

import math
import time
from collections import defaultdict, deque
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from enum import StrEnum
from typing import TYPE_CHECKING, Any, Final

import trio

from pgbalancer import __version__
from pgbalancer.ha.view import BackendState, ClusterView
from pgbalancer.proxy.figures import NodeFigures, PoolFigures
from pgbalancer.proxy.pool import PoolCounters

if TYPE_CHECKING:
    from pgbalancer.proxy.server import ProxyServer

Json = dict[str, Any]

_RATE_WINDOW: Final = 60.0  # queries_per_second covers about the last minute
_SAMPLE_SPACING: Final = 1.0
_HISTORY_LENGTH: Final = 50  # status changes kept per backend for /health/stats


@dataclass(frozen=True)
class NodeInfo:
    """Who serves the API: the node's id and which worker process the figures belong to."""

    node_id: str
    worker_index: int = 0
    worker_count: int = 1


@dataclass(frozen=True)
class Clock:
    """Converts trio times (what pools, sessions and views record) to wall-clock epoch seconds."""

    wall: float
    trio_now: float

    @classmethod
    def now(cls) -> Clock:
        return cls(time.time(), trio.current_time())

    def to_wall(self, trio_time: float | None) -> float | None:
        return None if trio_time is None else round(self.wall - (self.trio_now - trio_time), 3)


class QueryRate:
    """Queries per second over roughly the last minute, from samples taken whenever it is read."""

    def __init__(self, window: float = _RATE_WINDOW) -> None:
        self.window = window
        self._samples: deque[tuple[float, int]] = deque()

    def per_second(self, now: float, total: int, since: float) -> float:
        """Rate up to ``now`` (monotonic); without a sample a second old yet, the average since ``since``."""
        samples = self._samples
        if not samples or now - samples[-1][0] >= _SAMPLE_SPACING:  # bounded: one sample a second
            samples.append((now, total))
        # Keep one sample at or before the window start, so the rate spans the whole window.
        while len(samples) > 1 and samples[1][0] <= now - self.window:
            samples.popleft()
        oldest_time, oldest_total = samples[0]
        start_time, start_total = (
            (oldest_time, oldest_total) if now - oldest_time >= _SAMPLE_SPACING else (since, 0)
        )
        elapsed = now - start_time
        return round((total - start_total) / elapsed, 3) if elapsed > 0 else 0.0


class ViewChange(StrEnum):
    """What a cluster-view update changed: the fixed label set of the view-change counter. The
    reason text that comes with an update (planner notes, probe errors, epoch numbers) differs with
    every failover, so as a label it would make a new metric series each time; this set cannot grow."""

    FAILOVER = "failover"  # another primary (a failover, switchover or promote)
    EPOCH = "epoch"  # a new epoch with the same primary
    MEMBERSHIP = "membership"  # backends added or removed
    DETACH = "detach"  # an operator detached or attached a backend
    STATUS = "status"  # a backend went up, down or into quarantine
    ROLE = "role"  # a backend's role (primary/standby) was learned or changed
    HEALTH = "health"  # only figures: health scores, lag, connections, probe times, weights


def classify_view_change(old: ClusterView, new: ClusterView) -> ViewChange:
    """The most significant thing that changed from ``old`` to ``new`` (pure)."""
    if new.primary_id != old.primary_id:
        return ViewChange.FAILOVER
    if new.epoch != old.epoch:
        return ViewChange.EPOCH
    before = {state.node_id: state for state in old.backends}
    after = {state.node_id: state for state in new.backends}
    if before.keys() != after.keys():
        return ViewChange.MEMBERSHIP
    pairs = [(before[node_id], state) for node_id, state in after.items()]
    if any(a.detached != b.detached for a, b in pairs):
        return ViewChange.DETACH
    if any(a.status != b.status for a, b in pairs):
        return ViewChange.STATUS
    if any(a.role != b.role for a, b in pairs):
        return ViewChange.ROLE
    return ViewChange.HEALTH


@dataclass
class _BackendHistory:
    checks: int = 0
    successes: int = 0
    changes: deque[Json] = field(default_factory=lambda: deque(maxlen=_HISTORY_LENGTH))


class ClusterEvents:
    """Listens to cluster-view changes: failovers, per-backend status history and observed probes.

    Registered in ``ProxyServer.view_listeners``; called synchronously with (old, new, reason,
    details) and must not block.
    """

    def __init__(self) -> None:
        self.failovers = 0  # changes of the primary (a new epoch with another primary_id)
        self.view_changes: dict[ViewChange, int] = dict.fromkeys(ViewChange, 0)  # bounded: a fixed set
        self._backends: dict[int, _BackendHistory] = defaultdict(_BackendHistory)

    def __call__(
        self, old: ClusterView, new: ClusterView, reason: str, details: Mapping[str, object]
    ) -> None:
        self.view_changes[classify_view_change(old, new)] += 1
        if new.primary_id != old.primary_id:
            self.failovers += 1
        wall = time.time()
        for state in new.backends:
            before = old.backend(state.node_id) if old.has(state.node_id) else None
            history = self._backends[state.node_id]
            if state.checked_at is not None and (before is None or before.checked_at != state.checked_at):
                history.checks += 1
                history.successes += state.is_up
            if before is not None and before.status != state.status:
                history.changes.append(
                    {
                        "at": round(wall, 3),
                        "from": str(before.status),
                        "to": str(state.status),
                        "reason": reason,
                    }
                )

    def backend_history(self, node_id: int) -> Json:
        history = self._backends.get(node_id, _BackendHistory())
        return {
            "checks_observed": history.checks,
            "success_rate": round(history.successes / history.checks, 4) if history.checks else None,
            "status_changes": list(history.changes),
        }


# --------------------------------------------------------------------------- clients and servers


def client_counts(figures: NodeFigures) -> Json:
    return asdict(figures.clients)


def worker_summary(node: NodeInfo, figures: NodeFigures) -> Json:
    """Which worker serves the API, and which workers' figures this answer adds up."""
    return {
        "index": node.worker_index,
        "count": node.worker_count,
        "reporting": [report.worker_index for report in figures.workers],
        "missing": list(figures.missing),
    }


def per_worker(figures: NodeFigures) -> list[Json]:
    workers: list[Json] = []
    for report in figures.workers:
        worker: Json = {
            "index": report.worker_index,
            "clients": report.clients.total,
            "accepted_total": report.clients.accepted_total,
            "queries_total": sum(pool.counters.query_count for pool in report.pools),
        }
        if report.cache is not None:  # reads each worker answered from its own cache
            worker["cache_hits"] = report.cache.hits
        workers.append(worker)
    return workers


def status(proxy: ProxyServer, figures: NodeFigures, node: NodeInfo, rate: QueryRate) -> Json:
    view = proxy.cluster_view
    queries = figures.query_total()
    now = time.time()
    return {
        "version": __version__,
        "node_id": node.node_id,
        "worker": worker_summary(node, figures),
        "workers": per_worker(figures),
        "started_at": round(proxy.started_at, 3),
        "uptime_seconds": round(max(0.0, now - proxy.started_at), 3),
        "pool_mode": str(proxy.config.pool_mode),
        "paused": proxy.pools.pause_gate.all_paused,
        "paused_databases": sorted(proxy.pools.pause_gate.paused_databases),
        "clients": client_counts(figures),
        "servers": figures.servers(),
        "backends": {"up": sum(1 for b in view if b.is_up), "total": len(view.backends)},
        "primary_id": view.primary_id,
        "epoch": view.epoch,
        "queries_total": queries,
        "transactions_total": figures.transaction_total(),
        "queries_per_second": rate.per_second(time.monotonic(), queries, _monotonic_start(proxy)),
    }


def _monotonic_start(proxy: ProxyServer) -> float:
    return time.monotonic() - max(0.0, time.time() - proxy.started_at)


# --------------------------------------------------------------------------- backends


def format_lsn(lsn: int | None) -> str | None:
    """PostgreSQL's text form of a WAL position: high/low 32 bits in hex."""
    return None if lsn is None else f"{lsn >> 32:X}/{lsn & 0xFFFFFFFF:X}"


def read_shares(proxy: ProxyServer) -> dict[int, float]:
    """Each backend's share of the reads the balancer placed (its picks over all decisions, since
    start; worker 0's balancer, as /ai/stats). A backend never picked is left out (share 0)."""
    stats = proxy.router.statistics(trio.current_time())
    if not stats.decisions:
        return {}
    return {node.node_id: round(node.picks / stats.decisions, 4) for node in stats.nodes}


def backend_summary(
    proxy: ProxyServer, figures: NodeFigures, state: BackendState, clock: Clock, shares: Mapping[int, float]
) -> Json:
    totals = figures.totals_by_backend()
    all_queries = sum(c.query_count for c in totals.values())
    counters = totals.get(state.node_id, PoolCounters())
    return {
        "node_id": state.node_id,
        "host": state.host,
        "port": state.port,
        "role": str(state.role),
        "is_primary": state.node_id == proxy.cluster_view.primary_id,
        "status": str(state.status),
        "detached": state.detached,
        "weight": state.weight,
        "replication_lag_bytes": state.lag_bytes,
        "replication_lag_seconds": state.lag_seconds,
        "health_score": state.health_score,
        "checked_at": clock.to_wall(state.checked_at),
        "queries_total": counters.query_count,
        "traffic_share": round(counters.query_count / all_queries, 4) if all_queries else 0.0,
        "read_share": shares.get(state.node_id, 0.0),
        "server_connections": figures.server_connections_to(state.node_id),
    }


def nodes(proxy: ProxyServer, figures: NodeFigures) -> Json:
    view, clock, shares = proxy.cluster_view, Clock.now(), read_shares(proxy)
    return {
        "primary_id": view.primary_id,
        "epoch": view.epoch,
        "nodes": [backend_summary(proxy, figures, state, clock, shares) for state in view],
    }


def node_detail(proxy: ProxyServer, figures: NodeFigures, node_id: int, events: ClusterEvents) -> Json | None:
    view, clock = proxy.cluster_view, Clock.now()
    if not view.has(node_id):
        return None
    state = view.backend(node_id)
    configured = next((b for b in proxy.config.backends if b.node_id == node_id), None)
    counters = figures.totals_by_backend().get(node_id, PoolCounters())
    return {
        **backend_summary(proxy, figures, state, clock, read_shares(proxy)),
        "replay_lsn": format_lsn(state.replay_lsn),
        "backend_connections": state.connections,
        "backend_max_connections": state.max_connections,
        "data_directory": configured.data_directory if configured is not None else "",
        "transactions_total": counters.xact_count,
        "bytes_received_total": counters.bytes_received,
        "bytes_sent_total": counters.bytes_sent,
        "pools": [pool_entry(proxy, p) for p in figures.live_pools() if p.key.backend_id == node_id],
        "health": events.backend_history(node_id),
    }


def known_node_ids(proxy: ProxyServer) -> list[int]:
    return [state.node_id for state in proxy.cluster_view]


# --------------------------------------------------------------------------- pools


def pool_entry(proxy: ProxyServer, pool: PoolFigures) -> Json:
    counters = pool.counters
    return {
        "backend_id": pool.key.backend_id,
        "database": pool.key.database,
        "user": pool.key.user,
        "pool_mode": str(proxy.config.pool_mode_for(pool.key.database, pool.key.user)),
        "active": pool.active,
        "idle": pool.idle,
        "logging_in": pool.logging_in,
        "waiting": pool.waiting,
        "max_size": pool.max_size,
        "max_wait_seconds": pool.longest_wait_seconds,
        "max_wait_seconds_ever": counters.max_wait_us / 1_000_000,
        "prepared_statements": pool.prepared_statements,
        "paused": proxy.pools.pause_gate.blocks(pool.key.database),
        "opened_total": pool.opened_total,
        "closed_total": pool.closed_total,
        "queries_total": counters.query_count,
        "transactions_total": counters.xact_count,
    }


def pools(proxy: ProxyServer, figures: NodeFigures) -> Json:
    gate = proxy.pools.pause_gate
    return {
        "paused": gate.all_paused,
        "paused_databases": sorted(gate.paused_databases),
        "pools": [pool_entry(proxy, pool) for pool in figures.live_pools()],
    }


def health_stats(proxy: ProxyServer, events: ClusterEvents) -> Json:
    view, clock = proxy.cluster_view, Clock.now()
    return {
        "health_checks_running": any(state.checked_at is not None for state in view),
        "period_seconds": proxy.config.health_check_period,
        "backends": [
            {
                "node_id": state.node_id,
                "status": str(state.status),
                "health_score": state.health_score,
                "checked_at": clock.to_wall(state.checked_at),
                **events.backend_history(state.node_id),
            }
            for state in view
        ],
    }


def _finite(value: object) -> object:
    """JSON has no Infinity or NaN: an estimate not known yet is null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {key: _finite(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_finite(item) for item in value]
    return value


def balancer_stats(proxy: ProxyServer) -> Json:
    """The read balancer's per-node estimates, scores and traffic shares (this worker's)."""
    document = proxy.router.statistics(trio.current_time()).as_dict()
    document["load_balance_mode"] = proxy.config.load_balance_mode
    finite: Json = _finite(document)  # type: ignore[assignment]
    return finite


_CACHE_OFF: Final = {
    "enabled": False,
    "entries": 0,
    "bytes": 0,
    "limit_bytes": 0,
    "hits": 0,
    "misses": 0,
    "hit_ratio": 0.0,
    "evictions": 0,
    "invalidations": 0,
}


def cache_stats(figures: NodeFigures) -> Json:
    """The result cache's counters, summed over the node's workers (zeros with enabled false when
    memory_cache_enabled = off)."""
    cache = figures.cache
    if cache is None:
        return dict(_CACHE_OFF)
    return {
        "enabled": True,
        "entries": cache.entries,
        "bytes": cache.bytes,
        "limit_bytes": cache.limit_bytes,
        "hits": cache.hits,
        "misses": cache.misses,
        "hit_ratio": round(cache.hit_ratio, 6),
        "evictions": cache.evictions,
        "invalidations": cache.invalidations,
    }
