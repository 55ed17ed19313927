"""The cluster view: an immutable snapshot of what this node knows about its backends.

Everything that decides (routing, the balancer, the failover planner) reads a
``ClusterView``; nothing mutates one. The health checker (and later the Raft state
machine) produces a new view on every change, and readers keep whichever snapshot
they started with, as Patroni decides from snapshots. Pure: no I/O, no clock reads
(times inside are given by the producer).
"""

from __future__ import annotations

import enum
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, replace


class BackendRole(enum.StrEnum):
    PRIMARY = "primary"
    STANDBY = "standby"
    UNKNOWN = "unknown"  # never probed yet, or the probe could not tell


class BackendStatus(enum.StrEnum):
    UP = "up"
    DOWN = "down"  # confirmed down (or detached); gets no traffic
    QUARANTINED = "quarantined"  # suspected: no new traffic until a re-probe decides


@dataclass(frozen=True, slots=True)
class BackendState:
    """One backend as last observed."""

    node_id: int
    host: str
    port: int
    weight: float = 1.0
    role: BackendRole = BackendRole.UNKNOWN
    status: BackendStatus = BackendStatus.UP
    replay_lsn: int | None = None  # standbys: pg_last_wal_replay_lsn(); primary: pg_current_wal_lsn()
    lag_bytes: int | None = None  # behind the primary's current WAL position
    lag_seconds: float | None = None
    health_score: float = 1.0  # 0 (failing) .. 1 (healthy), from recent probe results
    connections: int | None = None
    max_connections: int | None = None
    checked_at: float | None = None  # trio time of the last probe (None: never probed)
    detached: bool = False  # an operator took it out; the health checker must not bring it back

    @property
    def is_up(self) -> bool:
        return self.status is BackendStatus.UP

    @property
    def address(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class ClusterView:
    """All backends, which one takes writes, and the failover epoch that view belongs to."""

    backends: tuple[BackendState, ...]
    primary_id: int | None
    epoch: int = 0

    def __iter__(self) -> Iterator[BackendState]:
        return iter(self.backends)

    def backend(self, node_id: int) -> BackendState:
        """The backend with ``node_id``; KeyError names the known ids."""
        for state in self.backends:
            if state.node_id == node_id:
                return state
        known = ", ".join(str(s.node_id) for s in self.backends)
        raise KeyError(f"no backend {node_id} (known: {known})")

    def has(self, node_id: int) -> bool:
        return any(state.node_id == node_id for state in self.backends)

    @property
    def primary(self) -> BackendState | None:
        """The backend writes go to, if it is up."""
        if self.primary_id is None:
            return None
        state = self.backend(self.primary_id)
        return state if state.is_up else None

    def readable(self) -> tuple[BackendState, ...]:
        """Backends that may serve reads: up, weight > 0 (routing adds its lag rules)."""
        return tuple(s for s in self.backends if s.is_up and s.weight > 0)

    def up_standbys(self) -> tuple[BackendState, ...]:
        return tuple(s for s in self.backends if s.is_up and s.node_id != self.primary_id)

    def with_backend(self, state: BackendState) -> ClusterView:
        """A new view with one backend replaced."""
        return replace(
            self, backends=tuple(state if s.node_id == state.node_id else s for s in self.backends)
        )

    def quarantined(self, node_id: int) -> ClusterView:
        """A new view where an up ``node_id`` takes no new traffic until a re-probe decides."""
        state = self.backend(node_id)
        if state.status is not BackendStatus.UP:
            return self
        return self.with_backend(replace(state, status=BackendStatus.QUARANTINED))

    def with_positions(self, positions: Mapping[int, int]) -> ClusterView:
        """A new view with freshly read WAL positions (``node_id`` -> replay LSN, or the current LSN
        for the primary); a standby's lag in bytes follows when the primary's position was read in
        the same pass. Nothing else changes: status, roles and the epoch are the health checker's."""
        primary_position = positions.get(self.primary_id) if self.primary_id is not None else None
        states = []
        for state in self.backends:
            position = positions.get(state.node_id)
            if position is not None:
                lag = state.lag_bytes
                if state.node_id == self.primary_id:
                    lag = 0
                elif primary_position is not None:
                    lag = max(0, primary_position - position)
                state = replace(state, replay_lsn=position, lag_bytes=lag)
            states.append(state)
        return replace(self, backends=tuple(states))

    def with_primary(self, node_id: int | None, *, new_epoch: bool = True) -> ClusterView:
        """A new view where ``node_id`` takes writes; a failover or switchover bumps the epoch."""
        return replace(self, primary_id=node_id, epoch=self.epoch + 1 if new_epoch else self.epoch)


def initial_view(backends: tuple[tuple[int, str, int, float], ...]) -> ClusterView:
    """The view before any probe: backend 0 is presumed primary until the health checker knows."""
    states = tuple(BackendState(node_id, host, port, weight) for node_id, host, port, weight in backends)
    return ClusterView(states, primary_id=states[0].node_id if states else None)
