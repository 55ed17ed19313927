"""What the REST API asks of the node and of the failover engine, as small interfaces.

The node implements :class:`NodeControl` (reload exactly like SIGHUP, and report what changed); the
failover engine (``pgbalancer.health.controller.HaController``) implements
:class:`BackendOperations`. The API depends only on these shapes, so it can be served (and tested)
without the rest of the node.

It must never: import the node (wiring is the top layer) or do any work itself.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from pgbalancer.config import ConfigDiff


@dataclass(frozen=True)
class ReloadOutcome:
    """What one reload did: the keys that changed, or why the running config was kept."""

    changed: tuple[str, ...] = ()
    applied_live: tuple[str, ...] = ()
    restart_required: tuple[str, ...] = ()
    error: str = ""  # non-empty: the reload failed and the running config was kept

    @classmethod
    def from_diff(cls, diff: ConfigDiff) -> ReloadOutcome:
        return cls(diff.changed, diff.applied_live, diff.restart_required)

    @property
    def ok(self) -> bool:
        return not self.error


class NodeControl(Protocol):
    async def reload(self) -> ReloadOutcome:
        """Reload the config as SIGHUP does and return what the reload did."""
        ...


class OperationOutcome(Protocol):
    """What a backend operation reports: the cluster view it left and what it did, in words."""

    @property
    def primary_id(self) -> int | None: ...

    @property
    def epoch(self) -> int: ...

    @property
    def notes(self) -> tuple[str, ...]: ...


class WatchdogControl(Protocol):
    """The node's watchdog (pgbalancer.watchdog.WatchdogService) as the API sees it.

    Refusals raise ``pgbalancer.ha.planner.HaOperationError`` (kind suits the HTTP status).
    """

    def info(self) -> dict[str, object]: ...

    def has_quorum(self) -> bool: ...

    async def add_member(self, address: str) -> dict[str, object]: ...

    async def remove_member(self, address: str) -> dict[str, object]: ...


class BackendOperations(Protocol):
    """The failover engine's operator actions on one backend (pgpool's attach/detach/promote/recovery).

    A refused operation raises ``pgbalancer.ha.planner.HaOperationError`` and changes nothing.
    """

    async def attach(self, node_id: int) -> OperationOutcome: ...

    async def detach(self, node_id: int) -> OperationOutcome: ...

    async def promote(self, node_id: int) -> OperationOutcome: ...

    async def rejoin(self, node_id: int) -> OperationOutcome: ...

    async def switchover(self, node_id: int) -> OperationOutcome:
        """Planned switchover to standby ``node_id`` (no acknowledged commit lost)."""
        ...
