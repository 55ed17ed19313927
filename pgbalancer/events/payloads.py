"""Event topics and JSON payloads, pure: what pgbalancer tells MQTT subscribers, and when.

Role: build the bytes of every event message from plain inputs (a cluster view, a config diff,
pool samples) and decide, from two cluster views, which events a change produces. Every payload
carries ``event``, ``node`` (the publishing pgbalancer node), ``ts`` (RFC 3339, UTC), ``epoch``
(the failover epoch of the view it describes) and ``event_id`` (for de-duplication); the fields of
each topic are described by the JSON Schemas in :mod:`pgbalancer.events.schemas` and
``docs/events.md``.

It must never: import trio, asyncio, threads or sockets; read a clock or draw randomness (the
shell passes the time and the event ids in); raise on odd ``details`` values (anything not JSON
becomes its ``str``).
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Final

from pgbalancer.ha.view import BackendState, ClusterView

TOPIC_PREFIX: Final = "pgbalancer"
TOPIC_CLUSTER_HEALTH: Final = "pgbalancer/cluster/health"
TOPIC_CLUSTER_FAILOVER: Final = "pgbalancer/cluster/failover"
TOPIC_CLUSTER_CONFIG: Final = "pgbalancer/cluster/config"
TOPIC_NODE_STATUS: Final = "pgbalancer/nodes/{id}/status"
TOPIC_WATCHDOG_LEADER: Final = "pgbalancer/watchdog/leader"
TOPIC_WATCHDOG_VIP: Final = "pgbalancer/watchdog/vip"
TOPIC_STATS_POOLS: Final = "pgbalancer/stats/pools"
TOPIC_CACHE_INVALIDATE: Final = "pgbalancer/cache/invalidate"

# Retained topics: a subscriber that connects late still learns the current state at once.
RETAINED_TOPICS: Final = frozenset(
    {TOPIC_CLUSTER_HEALTH, TOPIC_NODE_STATUS, TOPIC_WATCHDOG_LEADER, TOPIC_WATCHDOG_VIP}
)

NextId = Callable[[], str]


@dataclass(frozen=True, slots=True)
class EventMessage:
    """One MQTT message ready to publish: topic, JSON bytes, retain flag, and its event id."""

    topic: str
    payload: bytes
    retain: bool
    event_id: str

    def decoded(self) -> dict[str, Any]:
        decoded: dict[str, Any] = json.loads(self.payload)
        return decoded


@dataclass(frozen=True, slots=True)
class Stamp:
    """Who publishes, when (Unix seconds, wall clock), with which id, about which failover epoch."""

    node: str
    ts: float
    event_id: str
    epoch: int


@dataclass(frozen=True, slots=True)
class PoolSample:
    """One server pool's numbers at publish time (gauges and never-reset counters)."""

    backend_id: int
    database: str
    user: str
    active: int
    idle: int
    waiting: int
    max_size: int
    opened_total: int
    closed_total: int
    xact_count: int
    query_count: int
    bytes_received: int
    bytes_sent: int
    wait_time_us: int


def rfc3339(ts: float) -> str:
    """Unix seconds as an RFC 3339 UTC timestamp with millisecond precision: 2024-05-01T12:00:00.000Z."""
    moment = datetime.fromtimestamp(ts, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def node_status_topic(backend_id: int) -> str:
    return TOPIC_NODE_STATUS.format(id=backend_id)


def is_retained(topic: str) -> bool:
    return topic in RETAINED_TOPICS or (topic.startswith("pgbalancer/nodes/") and topic.endswith("/status"))


def failover_event_id(old_primary: int | None, new_primary: int | None, epoch: int) -> str:
    """The same on every node that publishes this failover, so subscribers can drop duplicates."""
    return f"failover:{epoch}:{_id_part(old_primary)}:{_id_part(new_primary)}"


# --------------------------------------------------------------------------- builders


def backend_fields(state: BackendState) -> dict[str, object]:
    """One backend as every payload shows it."""
    return {
        "backend_id": state.node_id,
        "host": state.host,
        "port": state.port,
        "role": state.role.value,
        "status": state.status.value,
        "weight": state.weight,
        "lag_bytes": state.lag_bytes,
        "lag_seconds": _finite_or_none(state.lag_seconds),
        "health_score": _finite_or_none(state.health_score),
        "replay_lsn": state.replay_lsn,
        "detached": state.detached,
    }


def cluster_health(view: ClusterView, stamp: Stamp, reason: str) -> EventMessage:
    """The whole cluster: every backend's status, lag and score (retained; periodic and on change)."""
    backends = [backend_fields(state) for state in view.backends]
    body = {
        "primary_id": view.primary_id,
        "backends": backends,
        "backends_up": sum(1 for state in view.backends if state.is_up),
        "backends_total": len(view.backends),
        "reason": reason,
    }
    return _message(TOPIC_CLUSTER_HEALTH, "cluster_health", stamp, body)


def node_status(
    state: BackendState, previous: BackendState | None, view: ClusterView, stamp: Stamp, reason: str
) -> EventMessage:
    """One backend's state after a change (retained per backend)."""
    body = {
        "backend": backend_fields(state),
        "is_primary": state.node_id == view.primary_id,
        "previous_status": previous.status.value if previous is not None else None,
        "previous_role": previous.role.value if previous is not None else None,
        "reason": reason,
    }
    return _message(node_status_topic(state.node_id), "node_status", stamp, body)


def cluster_failover(
    old: ClusterView, new: ClusterView, reason: str, details: Mapping[str, object], stamp: Stamp
) -> EventMessage:
    """The write target moved: old and new primary, why, and how long it took (when known)."""
    duration = details.get("duration", details.get("duration_seconds"))
    body = {
        "old_primary": old.primary_id,
        "new_primary": new.primary_id,
        "old_epoch": old.epoch,
        "kind": str(details.get("kind", _failover_kind(reason))),
        "reason": reason,
        "duration_seconds": _finite_or_none(duration) if isinstance(duration, int | float) else None,
        "details": _json_safe(dict(details)),
    }
    return _message(TOPIC_CLUSTER_FAILOVER, "cluster_failover", stamp, body)


def cluster_config(
    changed: Sequence[str],
    applied_live: Sequence[str],
    restart_required: Sequence[str],
    stamp: Stamp,
    *,
    source: str = "reload",
    config_version: int | None = None,
) -> EventMessage:
    """A config reload (or, with Raft, a new config_version): which keys changed and how they apply."""
    body = {
        "source": source,
        "changed": list(changed),
        "applied_live": list(applied_live),
        "restart_required": list(restart_required),
        "config_version": config_version,
    }
    return _message(TOPIC_CLUSTER_CONFIG, "cluster_config", stamp, body)


def pool_stats(
    pools: Iterable[PoolSample], clients: int, interval: float, events_dropped: int, stamp: Stamp
) -> EventMessage:
    """This node's pools every mqtt_stats_interval, plus how many events it had to drop so far."""
    body = {
        "interval_seconds": interval,
        "clients": clients,
        "events_dropped": events_dropped,
        "pools": [_pool_fields(sample) for sample in pools],
    }
    return _message(TOPIC_STATS_POOLS, "pool_stats", stamp, body)


def watchdog_leader(leader: str | None, term: int | None, stamp: Stamp) -> EventMessage:
    """The Raft leader changed (leader None: an election is under way)."""
    return _message(TOPIC_WATCHDOG_LEADER, "watchdog_leader", stamp, {"leader": leader, "term": term})


def watchdog_vip(holder: str | None, vip: str, interface: str, stamp: Stamp) -> EventMessage:
    """The committed VIP holder changed (holder None: nobody holds the virtual IP now)."""
    body = {"holder": holder, "vip": vip, "interface": interface}
    return _message(TOPIC_WATCHDOG_VIP, "watchdog_vip", stamp, body)


def cache_invalidate(tables: Iterable[str] | None, stamp: Stamp) -> EventMessage:
    """This node invalidated cached results of ``tables`` (None: all of them)."""
    body = {"tables": sorted(set(tables or ())), "all": tables is None}
    return _message(TOPIC_CACHE_INVALIDATE, "cache_invalidate", stamp, body)


# --------------------------------------------------------------------------- view diff


def view_change_events(
    old: ClusterView,
    new: ClusterView,
    reason: str,
    details: Mapping[str, object],
    node: str,
    ts: float,
    next_id: NextId,
) -> list[EventMessage]:
    """The events a cluster-view change produces, in the order a subscriber should see them.

    A backend whose status, role or detached flag changed gets a ``nodes/{id}/status``; a new
    primary or epoch gives a ``cluster/failover`` (with an id every node derives alike); any of
    these, or a changed set of backends, also refreshes the retained ``cluster/health``. A change
    of lag or score alone produces nothing here: the periodic health event carries it.
    """
    events: list[EventMessage] = []
    for state in new.backends:
        previous = old.backend(state.node_id) if old.has(state.node_id) else None
        if previous is None or _state_changed(previous, state):
            events.append(node_status(state, previous, new, Stamp(node, ts, next_id(), new.epoch), reason))
    if old.primary_id != new.primary_id or old.epoch != new.epoch:
        event_id = failover_event_id(old.primary_id, new.primary_id, new.epoch)
        events.append(cluster_failover(old, new, reason, details, Stamp(node, ts, event_id, new.epoch)))
    membership_changed = {s.node_id for s in old.backends} != {s.node_id for s in new.backends}
    if events or membership_changed:
        events.append(cluster_health(new, Stamp(node, ts, next_id(), new.epoch), reason))
    return events


def _state_changed(before: BackendState, after: BackendState) -> bool:
    return (before.status, before.role, before.detached) != (after.status, after.role, after.detached)


class PrimaryOutage:
    """Times how long the cluster had no working primary, to report a failover's duration.

    ``observe`` sees every view change with the time (monotonic seconds, passed in). When a change
    moves the primary while the old view had none up, that is a failover: its kind is ``failover``
    and its duration runs from the change that took the primary down (the node noticing the
    failure) to the change that brought the new one (the node adopting it). Pure: no clock is read.
    """

    def __init__(self) -> None:
        self.lost_at: float | None = None

    def observe(self, old: ClusterView, new: ClusterView, now: float) -> dict[str, object]:
        """Details to add to this change's failover event ({} when there is nothing to add)."""
        if old.primary is not None and new.primary is None and self.lost_at is None:
            self.lost_at = now
        extra: dict[str, object] = {}
        moved = old.primary_id != new.primary_id or old.epoch != new.epoch
        if moved and old.primary is None and new.primary is not None:
            extra["kind"] = "failover"
            if self.lost_at is not None:
                extra["duration_seconds"] = round(now - self.lost_at, 3)
        if new.primary is not None:
            self.lost_at = None
        return extra


# --------------------------------------------------------------------------- helpers


def _message(topic: str, event: str, stamp: Stamp, body: Mapping[str, object]) -> EventMessage:
    document = {
        "event": event,
        "node": stamp.node,
        "ts": rfc3339(stamp.ts),
        "epoch": stamp.epoch,
        "event_id": stamp.event_id,
        **body,
    }
    payload = json.dumps(document, separators=(",", ":"), sort_keys=True, allow_nan=False)
    return EventMessage(topic, payload.encode("utf-8"), is_retained(topic), stamp.event_id)


def _pool_fields(sample: PoolSample) -> dict[str, object]:
    return {
        "backend_id": sample.backend_id,
        "database": sample.database,
        "user": sample.user,
        "active": sample.active,
        "idle": sample.idle,
        "waiting": sample.waiting,
        "max_size": sample.max_size,
        "opened_total": sample.opened_total,
        "closed_total": sample.closed_total,
        "xact_count": sample.xact_count,
        "query_count": sample.query_count,
        "bytes_received": sample.bytes_received,
        "bytes_sent": sample.bytes_sent,
        "wait_time_us": sample.wait_time_us,
    }


# Word in the reason -> kind, when the producer's details do not name the kind themselves.
_KIND_WORDS: Final = (("switchover", "switchover"), ("promot", "promotion"), ("detach", "detach"))


def _failover_kind(reason: str) -> str:
    lowered = reason.lower()
    return next((kind for word, kind in _KIND_WORDS if word in lowered), "failover")


def _finite_or_none(value: float | None) -> float | None:
    return None if value is None or not math.isfinite(value) else float(value)


def _id_part(value: int | None) -> str:
    return "none" if value is None else str(value)


def _json_safe(value: object) -> object:
    """``value`` with everything JSON cannot carry replaced by its str (details come from anywhere)."""
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else str(value)
    if isinstance(value, Mapping):
        return {str(key): _json_safe(item) for key, item in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        items = sorted(value, key=str) if isinstance(value, set | frozenset) else value
        return [_json_safe(item) for item in items]
    return str(value)
