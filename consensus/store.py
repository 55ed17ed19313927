"""The ClusterStore interface: what pgbalancer may ask of the watchdog cluster, and its snapshots.

Role: one abstract class that both the Raft-backed store (``consensus.raft.RaftClusterStore``) and
the in-memory fake (``consensus.memory.MemoryClusterStore``) implement, plus the frozen snapshots
they hand out (``WatchdogStatus``, ``MemberStatus``, ``LeaderChange``). Everything here is used
from the trio thread: reads are instant, writes are ``async`` and return once the command is
committed by a majority AND applied on this member; listeners are plain callables run in the trio
thread, in commit order, and must not block.

Leases: a member that has had no contact with a Raft majority for longer than ``lease`` seconds
must stop taking writes (DESIGN.md §4, invariant 1). The store records when it last had quorum
(``note_quorum(now)``, called by its own run loop with trio time) and answers ``lease_valid(now)``.

It must never import pgbalancer, and never block the caller's thread on the network.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

import trio

from consensus.state import (
    BackendRecord,
    CastVote,
    ClusterState,
    Command,
    CommandResult,
    CommitView,
    Invalidate,
    RecordSystemId,
    SetConfigVersion,
    SetVipHolder,
    UpdateBackends,
    majority,
)

T = TypeVar("T")

InvalidationListener = Callable[[int, frozenset[str] | None], None]


class ConsensusError(Exception):
    """A watchdog request that could not be done; the message says what to do next."""


class NoQuorumError(ConsensusError):
    """A write could not be committed: no leader, or no majority reachable in time."""


class RaftRole(enum.StrEnum):
    LEADER = "leader"
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    UNKNOWN = "unknown"  # a peer whose role this member cannot know: any peer but the leader


@dataclass(frozen=True, slots=True)
class LeaderChange:
    """Delivered to leader listeners when the known leader (or the term) changes."""

    leader: str | None
    term: int
    is_self: bool


@dataclass(frozen=True, slots=True)
class MemberStatus:
    """One watchdog member as this member sees it: of a peer, only what this member can know.

    ``role``/``term`` of a peer are known only for the leader (its term is this member's term);
    any other peer's are ``UNKNOWN``/None. A peer's ``commit_index`` is its match index, on the
    leader only."""

    id: str
    address: str
    role: RaftRole
    last_contact_s: float | None  # seconds since a live Raft connection to it was seen (0: now)
    term: int | None
    commit_index: int | None  # self: commit index; a peer, seen from the leader: its match index
    holds_vip: bool
    self: bool

    def as_json(self) -> dict[str, object]:
        return {
            "id": self.id,
            "address": self.address,
            "role": str(self.role),
            "last_contact_s": self.last_contact_s,
            "term": self.term,
            "commit_index": self.commit_index,
            "holds_vip": self.holds_vip,
            "self": self.self,
        }


@dataclass(frozen=True, slots=True)
class WatchdogStatus:
    """The watchdog status snapshot served at GET /api/v1/watchdog/info."""

    self_id: str
    leader: str | None
    term: int
    commit_index: int
    quorum: bool
    lease_valid: bool
    members: tuple[MemberStatus, ...]
    epoch: int
    primary_id: int | None

    def as_json(self) -> dict[str, object]:
        return {
            "enabled": True,
            "self_id": self.self_id,
            "leader": self.leader,
            "term": self.term,
            "commit_index": self.commit_index,
            "quorum": self.quorum,
            "lease_valid": self.lease_valid,
            "epoch": self.epoch,
            "primary_id": self.primary_id,
            "nodes": [member.as_json() for member in self.members],
        }


class _Listeners(Generic[T]):
    def __init__(self) -> None:
        self._callbacks: list[Callable[[T], None]] = []

    def add(self, callback: Callable[[T], None]) -> Callable[[], None]:
        self._callbacks.append(callback)
        return lambda: self._callbacks.remove(callback) if callback in self._callbacks else None

    def emit(self, value: T) -> None:
        for callback in list(self._callbacks):
            callback(value)


class ClusterStore(abc.ABC):
    """The watchdog cluster as one member sees it. Ids of members are their Raft "host:port"."""

    def __init__(self, self_id: str, lease: float) -> None:
        self.self_id = self_id
        self.lease = lease
        # Set by the VIP executor (pgbalancer.vip) while this member holds delegate_ip.
        self.holds_vip = False
        self._quorum_seen_at: float | None = None
        self._state = ClusterState()
        self._leader_listeners: _Listeners[LeaderChange] = _Listeners()
        self._state_listeners: _Listeners[ClusterState] = _Listeners()
        self._invalidation_listeners: _Listeners[tuple[int, frozenset[str] | None]] = _Listeners()
        self._applied = trio.Event()

    # ---- reads (instant)

    @property
    def state(self) -> ClusterState:
        """The newest state applied on this member."""
        return self._state

    @property
    def applied_generation(self) -> int:
        """The newest cache-invalidation generation applied on this member."""
        return self._state.generation

    @property
    @abc.abstractmethod
    def members(self) -> tuple[str, ...]:
        """Every member of the cluster, this one included, sorted."""

    @property
    @abc.abstractmethod
    def leader_id(self) -> str | None:
        """The leader this member knows of (None during an election or when cut off)."""

    @property
    @abc.abstractmethod
    def term(self) -> int: ...

    @property
    def is_leader(self) -> bool:
        return self.leader_id == self.self_id

    def quorum_size(self) -> int:
        """Members needed for a majority (and down votes needed for a failover)."""
        return majority(len(self.members))

    @abc.abstractmethod
    def has_quorum(self) -> bool:
        """True while this member is in contact with a majority and knows the leader."""

    def note_quorum(self, now: float) -> None:
        """Record ``now`` (trio time) as a moment of contact with the majority, if it is one."""
        if self.has_quorum():
            self._quorum_seen_at = now

    def lease_valid(self, now: float) -> bool:
        """False once this member has been cut off from the majority for longer than ``lease``."""
        if self.has_quorum():
            return True
        return self._quorum_seen_at is not None and now - self._quorum_seen_at <= self.lease

    def down_votes(self, backend_id: int) -> int:
        return self._state.down_votes(backend_id, self.members)

    @property
    def leader_fallback_timeout(self) -> float:
        """How long a leader cut off from the majority may still believe it leads (0 for the fake)."""
        return 0.0

    @property
    def vip_acquire_delay(self) -> float:
        """How long a newly elected leader must wait before taking the VIP: longer than
        ``leader_fallback_timeout``, so the old leader has stepped down (and released it) by then."""
        return 0.0

    @abc.abstractmethod
    def status(self, now: float) -> WatchdogStatus:
        """The status snapshot (``now`` is trio time)."""

    # ---- subscriptions (callbacks run in the trio thread, in commit order)

    def add_leader_listener(self, callback: Callable[[LeaderChange], None]) -> Callable[[], None]:
        """Call ``callback`` on every leader change; returns a function that unsubscribes."""
        return self._leader_listeners.add(callback)

    def add_state_listener(self, callback: Callable[[ClusterState], None]) -> Callable[[], None]:
        """Call ``callback`` with every newly applied state; returns a function that unsubscribes."""
        return self._state_listeners.add(callback)

    def add_invalidation_listener(self, callback: InvalidationListener) -> Callable[[], None]:
        """Call ``callback(generation, tables)`` for every applied invalidation (tables None: all)."""

        def deliver(item: tuple[int, frozenset[str] | None]) -> None:
            callback(*item)

        return self._invalidation_listeners.add(deliver)

    async def wait_applied(self, predicate: Callable[[ClusterState], bool]) -> ClusterState:
        """Wait until the applied state satisfies ``predicate`` (no timeout: wrap it in one)."""
        while not predicate(self._state):
            await self._applied.wait()
        return self._state

    def _set_state(self, state: ClusterState) -> None:
        """Adopt a newly applied state and tell the listeners (trio thread only)."""
        old, self._state = self._state, state
        if state.generation > old.generation:
            missed = state.invalidations_after(old.generation)
            if missed is None:  # fell behind the log's reach: everything cached must go
                self._invalidation_listeners.emit((state.generation, None))
            for invalidation in missed or ():
                self._invalidation_listeners.emit((invalidation.generation, invalidation.tables))
        self._state_listeners.emit(state)
        self._applied.set()
        self._applied = trio.Event()

    def _leader_changed(self, leader: str | None, term: int) -> None:
        self._leader_listeners.emit(LeaderChange(leader, term, leader == self.self_id))

    # ---- writes (return once committed and applied here)

    async def vote(self, backend_id: int, down: bool) -> None:
        """Record this member's view of ``backend_id``: down, or up again."""
        await self._write(CastVote(self.self_id, backend_id, down))

    async def commit_view(
        self, expected_epoch: int, epoch: int, primary_id: int | None, backends: tuple[BackendRecord, ...]
    ) -> bool:
        """Commit the leader's decision, planned from ``expected_epoch``; False if the state moved on."""
        return bool(await self._write(CommitView(expected_epoch, epoch, primary_id, backends)))

    async def update_backends(self, backends: tuple[BackendRecord, ...]) -> None:
        await self._write(UpdateBackends(backends))

    async def replicate_invalidation(self, tables: frozenset[str] | None) -> int:
        """Invalidate cached results of ``tables`` (None: all) everywhere; returns the generation once
        it is committed and applied on this member."""
        generation = await self._write(Invalidate(tables))
        if not isinstance(generation, int):
            raise ConsensusError(f"invalidation came back without a generation: {generation!r}")
        return generation

    async def set_config_version(self, version: int) -> None:
        await self._write(SetConfigVersion(version))

    async def set_vip_holder(self, holder: str | None) -> None:
        """Record who holds the virtual IP (the VIP executor calls it after acquiring or releasing)."""
        await self._write(SetVipHolder(holder))

    async def record_system_identifier(self, system_identifier: int) -> bool:
        """Record the primary's system identifier if none is yet; False if another one is recorded."""
        return bool(await self._write(RecordSystemId(system_identifier)))

    @abc.abstractmethod
    async def _write(self, command: Command) -> CommandResult:
        """Commit one command and return its result once it is applied here."""

    @abc.abstractmethod
    async def add_member(self, address: str) -> None:
        """Add a member ("host:port") to the cluster, with no votes recorded for it; it must be
        started with the new member list."""

    @abc.abstractmethod
    async def remove_member(self, address: str) -> str | None:
        """Remove a member; its votes stop counting. Returns None when all is done, or a note for
        the operator when the member is out but its recorded votes could not be cleared (they no
        longer count, and ``add_member`` clears them before it comes back)."""

    # ---- lifetime

    @abc.abstractmethod
    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Start (ready once listening), keep the lease up to date, and stop cleanly when cancelled."""
