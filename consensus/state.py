"""The replicated cluster state and its commands: the pure state machine Raft replicates.

Role: ``ClusterState`` is an immutable snapshot of what the watchdog cluster agreed on (backends,
``primary_id`` and ``epoch``, each watchdog member's down votes, ``config_version``, the VIP holder
and the cache-invalidation generation log). ``apply_command(state, command)`` is the only way it
changes; every member applies the same committed commands in the same order and so holds the same
state. Commands travel as plain tuples (``encode_command``/``decode_command``) so a log written by
one version is read by the next without unpickling our classes.

Invariants (tests/unit/test_consensus_state.py checks them):

* the epoch never falls, and rises whenever ``primary_id`` changes after the first commit;
* a view is committed only on the epoch it was planned from (compare-and-set), so two leaders
  planning the same failover promote at most one standby: the second commit is refused;
* a new epoch clears every down vote: votes describe the cluster as it was before the failover;
* the invalidation generation rises by one per invalidation, and the log keeps the newest ones.

It must never do I/O, read a clock, import pysyncobj or trio, or hold mutable state.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Final

# How many recent invalidations the state keeps (a member that fell further behind drops everything).
INVALIDATION_LOG_LENGTH: Final = 256


class CommandError(ValueError):
    """A log entry that is not a command this version understands."""


@dataclass(frozen=True, slots=True)
class BackendRecord:
    """One PostgreSQL backend as the cluster agreed on it (role/status use the cluster view's words)."""

    node_id: int
    address: str  # "host:port"
    role: str = "unknown"  # primary | standby | unknown
    status: str = "up"  # up | down | quarantined
    weight: float = 1.0


@dataclass(frozen=True, slots=True)
class Invalidation:
    """One replicated cache invalidation: ``tables`` None drops every cached result."""

    generation: int
    tables: frozenset[str] | None


def _empty_votes() -> Mapping[int, frozenset[str]]:
    # A plain dict (picklable into pysyncobj's full dump); it is never mutated once built.
    return {}


@dataclass(frozen=True)
class ClusterState:
    """What the watchdog cluster committed. ``initialized`` is False until a leader committed a view."""

    backends: tuple[BackendRecord, ...] = ()
    primary_id: int | None = None
    epoch: int = 0
    initialized: bool = False
    votes: Mapping[int, frozenset[str]] = field(
        default_factory=_empty_votes
    )  # backend -> members voting down
    config_version: int = 0
    vip_holder: str | None = None
    # The PostgreSQL cluster's system identifier, as first seen on the primary by any member: lets a
    # leader that never reached the primary itself still check its standbys belong to that cluster.
    system_identifier: int | None = None
    generation: int = 0  # cache invalidations applied so far
    invalidations: tuple[Invalidation, ...] = ()  # the newest ones, oldest first

    def voters(self, backend_id: int) -> frozenset[str]:
        """The watchdog members that currently vote ``backend_id`` down."""
        return self.votes.get(backend_id, frozenset())

    def down_votes(self, backend_id: int, members: Iterable[str]) -> int:
        """How many of ``members`` vote ``backend_id`` down (votes of former members do not count)."""
        return len(self.voters(backend_id) & frozenset(members))

    def backend(self, node_id: int) -> BackendRecord | None:
        return next((b for b in self.backends if b.node_id == node_id), None)

    def invalidations_after(self, generation: int) -> tuple[Invalidation, ...] | None:
        """The invalidations newer than ``generation``; None when the log no longer reaches back that far."""
        newer = tuple(inv for inv in self.invalidations if inv.generation > generation)
        expected = self.generation - generation
        return newer if len(newer) == expected else None


def majority(member_count: int) -> int:
    """Votes needed out of ``member_count`` members: more than half."""
    return member_count // 2 + 1


# --------------------------------------------------------------------------- commands


@dataclass(frozen=True, slots=True)
class CastVote:
    """Member ``voter`` sees ``backend_id`` down (``down``) or up again."""

    voter: str
    backend_id: int
    down: bool


@dataclass(frozen=True, slots=True)
class CommitView:
    """The leader's decision: ``primary_id`` at ``epoch``, planned from ``expected_epoch``.

    Applied only when the state is still at ``expected_epoch`` and the epoch does not fall
    (the first commit may keep epoch 0); otherwise refused, and the result is False.
    """

    expected_epoch: int
    epoch: int
    primary_id: int | None
    backends: tuple[BackendRecord, ...]


@dataclass(frozen=True, slots=True)
class UpdateBackends:
    """New statuses, roles or weights of backends, without a change of primary."""

    backends: tuple[BackendRecord, ...]


@dataclass(frozen=True, slots=True)
class Invalidate:
    """Drop cached results that read ``tables`` (None: all of them) on every member."""

    tables: frozenset[str] | None


@dataclass(frozen=True, slots=True)
class SetConfigVersion:
    version: int


@dataclass(frozen=True, slots=True)
class SetVipHolder:
    """``holder`` (a member id) holds the virtual IP now; None: nobody."""

    holder: str | None


@dataclass(frozen=True, slots=True)
class RecordSystemId:
    """A member saw the primary's system identifier; the first one recorded stays."""

    system_identifier: int


@dataclass(frozen=True, slots=True)
class ForgetMember:
    """A member left the cluster: its votes no longer count, and it holds no VIP."""

    member: str


Command = (
    CastVote
    | CommitView
    | UpdateBackends
    | Invalidate
    | SetConfigVersion
    | SetVipHolder
    | RecordSystemId
    | ForgetMember
)
CommandResult = bool | int | None


# --------------------------------------------------------------------------- the transition function


def apply_command(state: ClusterState, command: Command) -> tuple[ClusterState, CommandResult]:
    """The state after ``command``, and its result (CommitView: accepted; Invalidate: generation)."""
    match command:
        case CastVote(voter, backend_id, down):
            return _cast_vote(state, voter, backend_id, down), None
        case CommitView():
            return _commit_view(state, command)
        case UpdateBackends(backends):
            return replace(state, backends=_merge_backends(state.backends, backends)), None
        case Invalidate(tables):
            generation = state.generation + 1
            log = (*state.invalidations, Invalidation(generation, tables))[-INVALIDATION_LOG_LENGTH:]
            return replace(state, generation=generation, invalidations=log), generation
        case SetConfigVersion(version):
            return replace(state, config_version=max(state.config_version, version)), None
        case SetVipHolder(holder):
            return replace(state, vip_holder=holder), None
        case RecordSystemId(sysid):
            if state.system_identifier is not None:
                return state, state.system_identifier == sysid
            return replace(state, system_identifier=sysid), True
        case ForgetMember(member):
            votes = {b: v - {member} for b, v in state.votes.items() if v - {member}}
            holder = None if state.vip_holder == member else state.vip_holder
            return replace(state, votes=votes, vip_holder=holder), None
    raise CommandError(f"unknown command {command!r}")


def _cast_vote(state: ClusterState, voter: str, backend_id: int, down: bool) -> ClusterState:
    current = state.voters(backend_id)
    updated = current | {voter} if down else current - {voter}
    if updated == current:
        return state
    votes = dict(state.votes)
    if updated:
        votes[backend_id] = updated
    else:
        votes.pop(backend_id, None)
    return replace(state, votes=votes)


def _commit_view(state: ClusterState, command: CommitView) -> tuple[ClusterState, bool]:
    if command.expected_epoch != state.epoch or command.epoch < state.epoch:
        return state, False
    if state.initialized and command.epoch == state.epoch and command.primary_id != state.primary_id:
        return state, False  # a new primary always comes with a new epoch
    new_epoch = command.epoch != state.epoch
    return (
        replace(
            state,
            primary_id=command.primary_id,
            epoch=command.epoch,
            initialized=True,
            backends=_merge_backends(state.backends, command.backends),
            votes=_empty_votes() if new_epoch else state.votes,
        ),
        True,
    )


def _merge_backends(
    old: tuple[BackendRecord, ...], new: tuple[BackendRecord, ...]
) -> tuple[BackendRecord, ...]:
    merged = {b.node_id: b for b in old}
    merged.update((b.node_id, b) for b in new)
    return tuple(merged[k] for k in sorted(merged))


# --------------------------------------------------------------------------- wire form


def _encode_backends(backends: tuple[BackendRecord, ...]) -> tuple[tuple[object, ...], ...]:
    return tuple((b.node_id, b.address, b.role, b.status, b.weight) for b in backends)


def _decode_backends(raw: object) -> tuple[BackendRecord, ...]:
    if not isinstance(raw, tuple):
        raise CommandError(f"backends must be a tuple, not {raw!r}")
    records = []
    for item in raw:
        node_id, address, role, status, weight = item
        records.append(BackendRecord(int(node_id), str(address), str(role), str(status), float(weight)))
    return tuple(records)


def _encode_tables(tables: frozenset[str] | None) -> tuple[str, ...] | None:
    return None if tables is None else tuple(sorted(tables))


def encode_command(command: Command) -> tuple[object, ...]:
    """A command as plain data (str, int, float, None and tuples): what the Raft log stores."""
    match command:
        case CastVote(voter, backend_id, down):
            return ("vote", voter, backend_id, down)
        case CommitView(expected, epoch, primary_id, backends):
            return ("view", expected, epoch, primary_id, _encode_backends(backends))
        case UpdateBackends(backends):
            return ("backends", _encode_backends(backends))
        case Invalidate(tables):
            return ("invalidate", _encode_tables(tables))
        case SetConfigVersion(version):
            return ("config_version", version)
        case SetVipHolder(holder):
            return ("vip", holder)
        case RecordSystemId(sysid):
            return ("sysid", sysid)
        case ForgetMember(member):
            return ("forget", member)
    raise CommandError(f"unknown command {command!r}")


def decode_command(raw: object) -> Command:
    """The command ``encode_command`` made; CommandError for anything else."""
    try:
        return _decode(raw)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, CommandError):
            raise
        raise CommandError(f"malformed command {raw!r}: {exc}") from exc


def _decode(raw: object) -> Command:
    if not isinstance(raw, tuple) or not raw:
        raise CommandError(f"a command is a non-empty tuple, not {raw!r}")
    kind, *args = raw
    match kind, args:
        case "vote", [str(voter), int(backend_id), bool(down)]:
            return CastVote(voter, backend_id, down)
        case "view", [int(expected), int(epoch), primary_id, backends] if primary_id is None or isinstance(
            primary_id, int
        ):
            return CommitView(expected, epoch, primary_id, _decode_backends(backends))
        case "backends", [backends]:
            return UpdateBackends(_decode_backends(backends))
        case "invalidate", [None]:
            return Invalidate(None)
        case "invalidate", [tuple(tables)]:
            return Invalidate(frozenset(str(t) for t in tables))
        case "config_version", [int(version)]:
            return SetConfigVersion(version)
        case "vip", [holder] if holder is None or isinstance(holder, str):
            return SetVipHolder(holder)
        case "sysid", [int(sysid)]:
            return RecordSystemId(sysid)
        case "forget", [str(member)]:
            return ForgetMember(member)
    raise CommandError(f"unknown command {raw!r}")
