"""Where a statement goes: the routing decision, from a classification, the session's routing
state and a cluster-view snapshot.

Rules (issue 4):

* writes, DDL, function calls that may write, utilities and anything unknown go to the primary;
* reads in autocommit go to any candidate node — up, weight > 0, healthy enough, not lagging
  beyond ``delay_threshold`` (bytes) / ``delay_threshold_by_time``, and (read-your-writes)
  having replayed the session's last write commit — picked by the balancer; no candidate
  means the primary;
* an explicit transaction goes to the primary, unless it is declared READ ONLY (BEGIN READ
  ONLY, or SET TRANSACTION READ ONLY as its first statement, or the session's default), or
  ``lazy_begin`` is on and its first statement is a read: then the BEGIN is held back
  (answered by pgbalancer) and sent with that first statement to the chosen node. The whole
  transaction stays on that node. A write arriving in a lazily balanced transaction that has
  only read so far moves it to the primary (MIGRATE: safe at READ COMMITTED, the only
  isolation lazily balanced); otherwise it stays and PostgreSQL refuses it;
* hints: ``/* pgbalancer: primary|standby|any */`` on the statement, ``SET [LOCAL]
  pgbalancer.route = primary|standby|any`` for the session (or transaction). A hint never
  sends a write to a standby.

The shell's side of the contract (proxy/txrelay.py):

1. ``decision = router.route(classification, session, view, now, attached=node_or_None)``
   for every batch it would send (``classify`` a Query, ``combine`` an extended batch up to
   Sync; remember the classification of named statements for their later Bind/Execute);
   store ``decision.session`` as the client's new routing state; act on ``decision.action``.
2. When the batch's last ReadyForQuery arrives: ``session = router.on_ready(session, status,
   now, commit_lsn=...)``; and, when ``decision.query_class`` is set, report the read with
   ``router.observe(decision, latency, ok, now)`` exactly once (``router.abandon(decision)``
   if the client left first).
3. ``commit_lsn``: when ``decision.wants_commit_lsn`` (a batch to the primary that may commit
   a write, not a COPY), the shell pipelines ``SELECT pg_current_wal_insert_lsn()`` right after
   the client's batch on the same primary connection (no extra round trip; the server runs it
   after the commit, so it is at or past the commit record) and passes ``parse_lsn(value)``.
   Without it, the commit time is the token: a standby then qualifies once it has replayed past
   a primary WAL position probed after the commit (the health checker's ``replay_lsn`` of the
   primary).

Pure: no I/O, no clock (``now`` is the caller's monotonic clock, the same one the health
checker stamps ``checked_at`` with). The only mutable state is the balancer's learning.
"""

from __future__ import annotations

import enum
import operator
import random
from collections.abc import Sequence
from dataclasses import dataclass, field, fields, replace
from typing import TYPE_CHECKING

from pgbalancer.ha.view import BackendRole, BackendState, BackendStatus, ClusterView
from pgbalancer.routing.balancer import (
    Algorithm,
    Balancer,
    BalancerSettings,
    BalancerStatistics,
    QueryClass,
    ReadKind,
)
from pgbalancer.routing.classify import (
    DEFAULT_POLICY,
    Classification,
    FunctionPolicy,
    RouteHint,
    StatementInfo,
    StatementKind,
    TransactionOp,
)
from pgbalancer.routing.complexity import ComplexityBucket

if TYPE_CHECKING:
    from pgbalancer.config import Config

_ROUTE_SETTING = "pgbalancer.route"
# Isolation levels a lazily begun transaction may run at on a standby and still move to the
# primary: each statement takes a fresh snapshot, so nothing the client saw is contradicted.
_MOVABLE_ISOLATION = (None, "read committed", "read uncommitted")


@dataclass(frozen=True, slots=True)
class RoutingSettings:
    load_balance_mode: bool = True
    lazy_begin: bool = True
    read_your_writes: bool = True
    delay_threshold: int = 0  # bytes of replay lag beyond which a standby gets no reads; 0 = no limit
    delay_threshold_by_time: float = 0.0  # seconds of replay lag, likewise
    min_health_score: float = 0.5  # below it a node gets no balanced reads
    functions: FunctionPolicy = DEFAULT_POLICY
    balancer: BalancerSettings = field(default_factory=BalancerSettings)

    @classmethod
    def from_config(cls, config: Config) -> RoutingSettings:
        return cls(
            load_balance_mode=config.load_balance_mode,
            lazy_begin=config.lazy_begin,
            read_your_writes=config.read_your_writes,
            # Declared with the failover work (health checks use them too); 0 = no limit until then.
            delay_threshold=getattr(config, "delay_threshold", 0),
            delay_threshold_by_time=getattr(config, "delay_threshold_by_time", 0.0),
            functions=FunctionPolicy(config.read_only_function_list, config.write_function_list),
            balancer=BalancerSettings(
                algorithm=Algorithm(str(config.load_balance_algorithm)),
                learning_rate=config.ai_learning_rate,
                exploration_rate=config.ai_exploration_rate,
                exploration_floor=config.ai_exploration_floor,
            ),
        )


class TxnPhase(enum.StrEnum):
    IDLE = "idle"  # autocommit
    BEGIN_HELD = "begin held"  # lazy begin: BEGIN answered by pgbalancer, no server yet
    OPEN = "open"  # ReadyForQuery 'T'
    FAILED = "failed"  # ReadyForQuery 'E': still pinned until ROLLBACK


@dataclass(frozen=True, slots=True)
class SessionRouting:
    """One client's routing state. Immutable: each decision carries the next one."""

    phase: TxnPhase = TxnPhase.IDLE
    node_id: int | None = None  # node of the open transaction, or of the batch in flight
    balanced: bool = False  # the open transaction was balanced (read only, or lazily begun)
    read_only: bool = False  # the open transaction is READ ONLY
    movable: bool = False  # lazily balanced and only read so far: a write may move it to the primary
    wrote: bool = False  # the open transaction (or the autocommit batch in flight) may have written
    held_read_only: bool | None = None  # modes of the held BEGIN
    held_isolation: str | None = None
    held_failed: bool = False  # a statement after the held BEGIN was refused: only ROLLBACK is left
    route_hint: RouteHint | None = None  # SET pgbalancer.route
    local_route_hint: RouteHint | None = None  # SET LOCAL pgbalancer.route (this transaction only)
    default_read_only: bool = False  # SET SESSION CHARACTERISTICS / default_transaction_read_only
    default_isolation: str | None = None
    commit_lsn: int | None = None  # read-your-writes token: WAL position at or past the last write commit
    committed_at: float | None = None  # ... or, without a position, when that commit happened

    @property
    def in_transaction(self) -> bool:
        return self.phase is not TxnPhase.IDLE


# Copies of SessionRouting with changes, for the hot path (two or more per statement).
# dataclasses.replace reads fields() and getattr()s each of the 15 fields, then runs the frozen
# __init__ (one object.__setattr__ per field): about 3.5 µs. ``_evolve`` reads every field at once
# (attrgetter, in C) and fills a bare instance through the slots' own descriptors: about 1 µs, and
# nothing at all when no field changes. SessionRouting stays frozen to everyone else.
_SESSION_FIELDS = tuple(f.name for f in fields(SessionRouting))
_FIELD_INDEX = {name: index for index, name in enumerate(_SESSION_FIELDS)}
_session_values = operator.attrgetter(*_SESSION_FIELDS)
_new_object = object.__new__
# Unpacking fails at import if a field is added or removed without updating _session_from.
(
    _set_phase,
    _set_node_id,
    _set_balanced,
    _set_read_only,
    _set_movable,
    _set_wrote,
    _set_held_read_only,
    _set_held_isolation,
    _set_held_failed,
    _set_route_hint,
    _set_local_route_hint,
    _set_default_read_only,
    _set_default_isolation,
    _set_commit_lsn,
    _set_committed_at,
) = (getattr(SessionRouting, name).__set__ for name in _SESSION_FIELDS)


def _session_from(values: Sequence[object]) -> SessionRouting:
    """A SessionRouting holding ``values`` in field order (already valid: taken from one, with changes)."""
    session: SessionRouting = _new_object(SessionRouting)
    _set_phase(session, values[0])
    _set_node_id(session, values[1])
    _set_balanced(session, values[2])
    _set_read_only(session, values[3])
    _set_movable(session, values[4])
    _set_wrote(session, values[5])
    _set_held_read_only(session, values[6])
    _set_held_isolation(session, values[7])
    _set_held_failed(session, values[8])
    _set_route_hint(session, values[9])
    _set_local_route_hint(session, values[10])
    _set_default_read_only(session, values[11])
    _set_default_isolation(session, values[12])
    _set_commit_lsn(session, values[13])
    _set_committed_at(session, values[14])
    return session


def _evolve(session: SessionRouting, /, **changes: object) -> SessionRouting:
    """``dataclasses.replace(session, **changes)``, cheaper; ``session`` itself when every field
    already holds the very object it would be given (the copy would be equal in every field)."""
    values = list(_session_values(session))
    changed = False
    for name, value in changes.items():
        index = _FIELD_INDEX.get(name)
        if index is None:
            raise TypeError(f"SessionRouting has no field {name!r}")
        if values[index] is not value:
            values[index] = value
            changed = True
    return _session_from(values) if changed else session


class RouteAction(enum.StrEnum):
    SEND = "send"  # attach to node_id (unless attached) and send; held BEGIN first if send_held_begin
    HOLD_BEGIN = "hold begin"  # reply CommandComplete BEGIN + ReadyForQuery 'T' locally; keep the BEGIN
    REPLY_LOCALLY = "reply locally"  # BEGIN was held: reply CommandComplete local_tag + ReadyForQuery 'I'
    MIGRATE = "migrate"  # roll back the pinned standby's transaction; send held BEGIN + batch to node_id
    REFUSE = "refuse"  # no node can take it: send the client an error naming reason


class RouteReason(enum.StrEnum):
    WRITE = "needs the primary"
    BALANCED = "balanced read"
    PINNED = "inside a transaction pinned to its node"
    ATTACHED = "replies of the previous batch are still due from that node"
    LOAD_BALANCE_OFF = "load_balance_mode is off"
    HINT_PRIMARY = "hinted to the primary"
    READ_YOUR_WRITES = "no standby has replayed the session's last write yet"
    NO_CANDIDATE = "no standby qualifies (down, weight 0, unhealthy or lagging)"
    READ_WRITE_TRANSACTION = "read-write transaction"
    READ_ONLY_TRANSACTION = "read-only transaction"
    LAZY_BEGIN = "BEGIN held until the first statement"
    LAZY_READ = "transaction begun lazily with a read"
    EMPTY_TRANSACTION = "transaction with no statement: answered by pgbalancer"
    MOVED_TO_PRIMARY = "a write in a lazily balanced transaction moves it to the primary"
    WRITE_IN_READ_TRANSACTION = "a write in a transaction held on a standby: PostgreSQL refuses it there"
    NO_PRIMARY = "no primary is up"
    NO_NODE = "no node is up to serve this read"
    HELD_TRANSACTION_FAILED = (
        "current transaction is aborted, commands ignored until end of transaction block"
    )


@dataclass(frozen=True, slots=True)
class RouteDecision:
    action: RouteAction
    node_id: int | None
    reason: RouteReason
    session: SessionRouting  # the client's routing state after this batch is sent
    send_held_begin: bool = False  # SEND/MIGRATE: prepend the held BEGIN
    query_class: QueryClass | None = None  # a read: report its outcome with Router.observe (in flight now)
    local_tag: str = ""  # REPLY_LOCALLY: the CommandComplete tag ("COMMIT" or "ROLLBACK")
    wants_commit_lsn: bool = False  # this batch may commit a write: a commit LSN sharpens read-your-writes


class Router:
    """Routing decisions for every session of one proxy worker, with the balancer they share."""

    def __init__(self, settings: RoutingSettings | None = None, *, rng: random.Random | None = None) -> None:
        self.settings = settings or RoutingSettings()
        self.balancer = Balancer(self.settings.balancer, rng)

    def configure(self, settings: RoutingSettings) -> None:
        """Apply reloaded settings; the balancer keeps what it learned."""
        self.settings = settings
        self.balancer.configure(settings.balancer)

    # ---- the decision

    def route(
        self,
        statement: Classification,
        session: SessionRouting,
        view: ClusterView,
        now: float,
        *,
        attached: int | None = None,
    ) -> RouteDecision:
        """Where this batch goes. ``attached``: the node whose server connection the client holds
        right now with replies still due (pipelining); the batch must follow it."""
        session = _note_settings(statement, session)
        if session.phase in (TxnPhase.OPEN, TxnPhase.FAILED) and session.node_id is not None:
            return self._in_transaction(statement, session, view)
        if attached is not None:
            return self._send(
                view,
                statement,
                _evolve(session, node_id=attached),
                attached,
                RouteReason.ATTACHED,
                ReadKind.STATEMENT,
            )
        if session.phase is TxnPhase.BEGIN_HELD:
            return self._after_held_begin(statement, session, view, now)
        return self._autocommit(statement, session, view, now)

    def _autocommit(
        self, statement: Classification, session: SessionRouting, view: ClusterView, now: float
    ) -> RouteDecision:
        only = statement.only
        if only is not None and only.transaction is TransactionOp.BEGIN:
            return self._begin(statement, only, session, view, now)
        if statement.is_read:
            return self._read(statement, session, view, now, ReadKind.STATEMENT)
        return self._to_primary(statement, session, view, RouteReason.WRITE)

    def _begin(
        self,
        statement: Classification,
        begin: StatementInfo,
        session: SessionRouting,
        view: ClusterView,
        now: float,
    ) -> RouteDecision:
        read_only = begin.read_only if begin.read_only is not None else session.default_read_only
        isolation = begin.isolation or session.default_isolation
        hint = _hint(statement, session)
        balancing = self.settings.load_balance_mode and hint is not RouteHint.PRIMARY
        opened = _evolve(session, phase=TxnPhase.OPEN, wrote=False, movable=False, balanced=False)
        if balancing and read_only and isolation != "serializable":  # hot standbys refuse SERIALIZABLE
            return self._balanced_transaction(statement, _evolve(opened, read_only=True), view, now)
        if balancing and self.settings.lazy_begin and isolation in _MOVABLE_ISOLATION:
            held = _evolve(
                session,
                phase=TxnPhase.BEGIN_HELD,
                node_id=None,
                held_read_only=begin.read_only,
                held_isolation=begin.isolation,
            )
            return RouteDecision(RouteAction.HOLD_BEGIN, None, RouteReason.LAZY_BEGIN, held)
        return self._to_primary(
            statement, _evolve(opened, read_only=read_only), view, RouteReason.READ_WRITE_TRANSACTION
        )

    def _after_held_begin(
        self, statement: Classification, session: SessionRouting, view: ClusterView, now: float
    ) -> RouteDecision:
        """The first statement after a held BEGIN decides where the whole transaction runs."""
        only = statement.only
        if (
            only is not None
            and only.transaction in (TransactionOp.COMMIT, TransactionOp.ROLLBACK)
            and not only.chain
        ):
            committed = only.transaction is TransactionOp.COMMIT and not session.held_failed
            tag = "COMMIT" if committed else "ROLLBACK"
            return RouteDecision(
                RouteAction.REPLY_LOCALLY, None, RouteReason.EMPTY_TRANSACTION, _idle(session), local_tag=tag
            )
        if session.held_failed:  # the client must roll back first, as PostgreSQL would insist
            return RouteDecision(RouteAction.REFUSE, None, RouteReason.HELD_TRANSACTION_FAILED, session)
        opened = _evolve(session, phase=TxnPhase.OPEN, wrote=False, held_read_only=None, held_isolation=None)
        hint = _hint(statement, session)
        declared_read_only = (
            only is not None and only.transaction is TransactionOp.SET_TRANSACTION and only.read_only
        )
        isolation = (only.isolation if only is not None else None) or session.held_isolation
        if declared_read_only and hint is not RouteHint.PRIMARY and isolation != "serializable":
            decision = self._balanced_transaction(statement, _evolve(opened, read_only=True), view, now)
        elif statement.is_read and hint is not RouteHint.PRIMARY and isolation in _MOVABLE_ISOLATION:
            lazy = _evolve(opened, balanced=True, movable=True, read_only=False)
            decision = self._read(
                statement, lazy, view, now, ReadKind.TRANSACTION, reason=RouteReason.LAZY_READ
            )
        else:
            decision = self._to_primary(statement, opened, view, RouteReason.READ_WRITE_TRANSACTION)
        if decision.action is RouteAction.REFUSE:
            # The shell replies ErrorResponse + ReadyForQuery 'E'; the transaction stays held, failed.
            return replace(decision, session=_evolve(session, held_failed=True))
        if decision.node_id == view.primary_id:  # balanced onto the primary: nothing to move later
            decision = replace(decision, session=_evolve(decision.session, balanced=False, movable=False))
        return replace(decision, send_held_begin=True)

    def _in_transaction(
        self, statement: Classification, session: SessionRouting, view: ClusterView
    ) -> RouteDecision:
        node_id = session.node_id
        assert node_id is not None
        needs_primary = _may_write(statement) or _hint(statement, session) is RouteHint.PRIMARY
        if needs_primary and session.balanced and node_id != view.primary_id:
            primary = view.primary
            # Never out of a failed transaction: the client must see it roll back first.
            if session.movable and session.phase is TxnPhase.OPEN and primary is not None:
                moved = _evolve(
                    session, node_id=primary.node_id, balanced=False, movable=False, read_only=False
                )
                decision = self._send(
                    view,
                    statement,
                    moved,
                    primary.node_id,
                    RouteReason.MOVED_TO_PRIMARY,
                    ReadKind.TRANSACTION,
                )
                return replace(decision, action=RouteAction.MIGRATE, send_held_begin=True)
            return self._send(
                view, statement, session, node_id, RouteReason.WRITE_IN_READ_TRANSACTION, ReadKind.TRANSACTION
            )
        if session.movable and _pins_transaction(statement):
            session = _evolve(session, movable=False)
        return self._send(view, statement, session, node_id, RouteReason.PINNED, ReadKind.TRANSACTION)

    def _read(
        self,
        statement: Classification,
        session: SessionRouting,
        view: ClusterView,
        now: float,
        kind: ReadKind,
        *,
        reason: RouteReason = RouteReason.BALANCED,
    ) -> RouteDecision:
        hint = _hint(statement, session)
        if not self.settings.load_balance_mode:
            return self._to_primary(statement, session, view, RouteReason.LOAD_BALANCE_OFF)
        if hint is RouteHint.PRIMARY:
            return self._to_primary(statement, session, view, RouteReason.HINT_PRIMARY)
        session = self._forget_satisfied_token(session, view)
        candidates = self.read_candidates(view, session, standby_only=hint is RouteHint.STANDBY)
        if not candidates:
            fallback = RouteReason.READ_YOUR_WRITES if _has_token(session) else RouteReason.NO_CANDIDATE
            return self._to_primary(statement, session, view, fallback, if_down=RouteReason.NO_NODE)
        query_class = _query_class(statement, kind)
        node_id = self.balancer.pick(candidates, query_class, now)
        chosen = _evolve(session, node_id=node_id)
        return RouteDecision(RouteAction.SEND, node_id, reason, chosen, query_class=query_class)

    def _balanced_transaction(
        self, statement: Classification, session: SessionRouting, view: ClusterView, now: float
    ) -> RouteDecision:
        """A READ ONLY transaction: one pick for all of it (its reads count in flight one by one)."""
        session = self._forget_satisfied_token(session, view)
        candidates = self.read_candidates(
            view, session, standby_only=_hint(statement, session) is RouteHint.STANDBY
        )
        if not candidates:
            return self._to_primary(statement, session, view, RouteReason.READ_ONLY_TRANSACTION)
        query_class = _query_class(statement, ReadKind.TRANSACTION)
        node_id = self.balancer.pick(candidates, query_class, now, in_flight=False)
        pinned = _evolve(session, node_id=node_id, balanced=True, read_only=True)
        return self._send(
            view, statement, pinned, node_id, RouteReason.READ_ONLY_TRANSACTION, ReadKind.TRANSACTION
        )

    def _to_primary(
        self,
        statement: Classification,
        session: SessionRouting,
        view: ClusterView,
        reason: RouteReason,
        *,
        if_down: RouteReason = RouteReason.NO_PRIMARY,
    ) -> RouteDecision:
        primary = view.primary
        if primary is None:
            return RouteDecision(RouteAction.REFUSE, None, if_down, session)
        kind = ReadKind.TRANSACTION if session.phase is not TxnPhase.IDLE else ReadKind.STATEMENT
        return self._send(
            view, statement, _evolve(session, node_id=primary.node_id), primary.node_id, reason, kind
        )

    def _send(
        self,
        view: ClusterView,
        statement: Classification,
        session: SessionRouting,
        node_id: int,
        reason: RouteReason,
        kind: ReadKind,
    ) -> RouteDecision:
        """SEND to ``node_id``: note a possible write (only the primary can take one, and a
        ROLLBACK undoes it), and count a read in flight."""
        if _discards_writes(statement):
            session = _evolve(session, wrote=False)
        elif node_id == view.primary_id and _may_write(statement):
            session = _evolve(session, wrote=True)
        query_class = None
        if statement.is_read:
            query_class = _query_class(statement, kind)
            self.balancer.started(node_id)
        wants_lsn = (
            self.settings.read_your_writes
            and self.settings.load_balance_mode  # otherwise reads stay on the primary anyway
            and session.wrote
            and node_id == view.primary_id
            and _may_commit(statement, session)
            and _may_carry_a_probe(statement)
            and any(backend.is_up for backend in view.backends if backend.node_id != node_id)
        )
        return RouteDecision(
            RouteAction.SEND, node_id, reason, session, query_class=query_class, wants_commit_lsn=wants_lsn
        )

    # ---- candidates and read-your-writes

    def read_candidates(
        self, view: ClusterView, session: SessionRouting, *, standby_only: bool = False
    ) -> tuple[BackendState, ...]:
        """Nodes that may serve this session's next read, in node order."""
        settings = self.settings
        min_health = settings.min_health_score
        primary_id = view.primary_id
        # Per read: the lag and read-your-writes checks only run when a threshold or token is set.
        thresholds = settings.delay_threshold > 0 or settings.delay_threshold_by_time > 0
        token = _has_token(session)
        candidates = []
        for backend in view.backends:
            if (
                backend.status is not BackendStatus.UP
                or backend.weight <= 0
                or backend.health_score < min_health
            ):
                continue
            if backend.node_id == primary_id:
                if not standby_only:
                    candidates.append(backend)
                continue
            if backend.role is BackendRole.PRIMARY:
                continue  # claims to be a primary but is not ours: an old or split-brain primary
            if (thresholds and self._lagging(backend)) or (
                token and not _has_replayed(backend, session, view)
            ):
                continue
            candidates.append(backend)
        return tuple(candidates)

    def _lagging(self, backend: BackendState) -> bool:
        """Beyond a configured delay threshold, or lag unknown while a threshold is set."""
        by_bytes = self.settings.delay_threshold
        if by_bytes > 0 and (backend.lag_bytes is None or backend.lag_bytes > by_bytes):
            return True
        by_time = self.settings.delay_threshold_by_time
        return by_time > 0 and (backend.lag_seconds is None or backend.lag_seconds > by_time)

    def _forget_satisfied_token(self, session: SessionRouting, view: ClusterView) -> SessionRouting:
        """Drop the read-your-writes token once every standby has replayed past it."""
        if not _has_token(session):
            return session
        if not self.settings.read_your_writes:
            return _evolve(session, commit_lsn=None, committed_at=None)
        standbys = view.up_standbys()
        if standbys and all(_has_replayed(standby, session, view) for standby in standbys):
            return _evolve(session, commit_lsn=None, committed_at=None)
        return session

    # ---- feedback from the shell

    def on_ready(
        self, session: SessionRouting, status: bytes | str, now: float, *, commit_lsn: int | None = None
    ) -> SessionRouting:
        """The batch's last ReadyForQuery: 'I' idle, 'T' in a transaction, 'E' in a failed one."""
        if session.phase is TxnPhase.BEGIN_HELD:
            return session  # the shell answered the BEGIN itself; no server status applies
        code = status if isinstance(status, bytes) else status.encode("ascii", "replace")
        if code == b"T":
            return _evolve(session, phase=TxnPhase.OPEN)
        if code == b"E":
            return _evolve(session, phase=TxnPhase.FAILED)
        if session.wrote and self.settings.read_your_writes:
            return _idle(session, (commit_lsn, now))
        return _idle(session)

    def observe(self, decision: RouteDecision, latency: float, ok: bool, now: float) -> None:
        """A read's outcome (only for decisions with a query_class); see Balancer.observe for ``ok``."""
        if decision.query_class is not None and decision.node_id is not None:
            self.balancer.observe(decision.node_id, decision.query_class, latency, ok, now)

    def abandon(self, decision: RouteDecision) -> None:
        if decision.query_class is not None and decision.node_id is not None:
            self.balancer.abandon(decision.node_id)

    def statistics(self, now: float) -> BalancerStatistics:
        return self.balancer.statistics(now)


def parse_lsn(text: str | bytes) -> int | None:
    """A WAL position as PostgreSQL prints it ('16/B374D848') as one integer; None if it is not one."""
    if isinstance(text, bytes):
        text = text.decode("ascii", "replace")
    high, separator, low = text.strip().partition("/")
    if not separator or not (0 < len(high) <= 8 and 0 < len(low) <= 8):
        return None
    try:
        return (int(high, 16) << 32) | int(low, 16)
    except ValueError:
        return None


# --------------------------------------------------------------------------- helpers


def _idle(session: SessionRouting, token: tuple[int | None, float] | None = None) -> SessionRouting:
    """The session back in autocommit, with nothing held; with a new read-your-writes ``token``
    (commit LSN, commit time) when given. The session itself when it is already so."""
    values = _session_values(session)
    commit_lsn, committed_at = token if token is not None else (values[13], values[14])
    idle = (
        TxnPhase.IDLE,
        None,  # node_id
        False,  # balanced
        False,  # read_only
        False,  # movable
        False,  # wrote
        None,  # held_read_only
        None,  # held_isolation
        False,  # held_failed
        values[9],  # route_hint
        None,  # local_route_hint
        values[11],  # default_read_only
        values[12],  # default_isolation
        commit_lsn,
        committed_at,
    )
    if idle == values:  # already idle (the common case of a session that did nothing in between)
        return session
    return _session_from(idle)


def _hint(statement: Classification, session: SessionRouting) -> RouteHint | None:
    return statement.hint or session.local_route_hint or session.route_hint


# One QueryClass per (bucket, kind), shared: no construction per read, and the balancer's dicts keyed
# by class find the very same object (an identity hit skips the dataclass __eq__).
_STATEMENT_CLASSES = {bucket: QueryClass(bucket, ReadKind.STATEMENT) for bucket in ComplexityBucket}
_TRANSACTION_CLASSES = {bucket: QueryClass(bucket, ReadKind.TRANSACTION) for bucket in ComplexityBucket}


def _query_class(statement: Classification, kind: ReadKind) -> QueryClass:
    classes = _STATEMENT_CLASSES if kind is ReadKind.STATEMENT else _TRANSACTION_CLASSES
    return classes[ComplexityBucket.of(statement.complexity)]


_HARMLESS_TRANSACTION_OPS = frozenset(
    {
        TransactionOp.BEGIN,
        TransactionOp.COMMIT,
        TransactionOp.ROLLBACK,
        TransactionOp.SAVEPOINT,
        TransactionOp.RELEASE,
        TransactionOp.ROLLBACK_TO,
        TransactionOp.SET_TRANSACTION,
    }
)


def _statement_may_write(statement: StatementInfo) -> bool:
    if statement.kind in (StatementKind.READ, StatementKind.EMPTY, StatementKind.SESSION):
        return False
    if statement.kind is StatementKind.TRANSACTION:
        return statement.transaction not in _HARMLESS_TRANSACTION_OPS
    return True


def _may_write(statement: Classification) -> bool:
    kind = statement.kind
    if kind is StatementKind.READ or kind is StatementKind.EMPTY:
        return False  # a batch's kind is its most demanding statement's: all of them read
    if kind is StatementKind.UNKNOWN:
        return True
    return any(_statement_may_write(s) for s in statement.statements)


def _may_commit(statement: Classification, session: SessionRouting) -> bool:
    """Does the batch end in autocommit (so a write in it is committed when it completes)?"""
    ops = statement.transaction_ops
    if not ops:
        return session.phase is TxnPhase.IDLE
    return ops[-1] is TransactionOp.COMMIT


def _may_carry_a_probe(statement: Classification) -> bool:
    """Can a query be pipelined after this batch? Not after a COPY (the server would take it for
    COPY data) nor after text that could not be read (it might hide one)."""
    return not statement.problem and all(info.command != "COPY" for info in statement.statements)


def _discards_writes(statement: Classification) -> bool:
    """Does the batch end with a ROLLBACK that nothing after it may write past?"""
    if statement.kind is StatementKind.READ or statement.kind is StatementKind.EMPTY:
        return False  # a ROLLBACK would make the batch's kind TRANSACTION
    last_rollback = None
    for index, info in enumerate(statement.statements):
        if info.transaction is TransactionOp.ROLLBACK and not info.chain:
            last_rollback = index
    if last_rollback is None:
        return False
    return not any(_statement_may_write(info) for info in statement.statements[last_rollback + 1 :])


def _pins_transaction(statement: Classification) -> bool:
    """Statements after which a lazily balanced transaction can no longer move to the primary."""
    return any(
        s.kind in (StatementKind.TRANSACTION, StatementKind.SESSION) or s.command == "DECLARE"
        for s in statement.statements
    )


def _has_token(session: SessionRouting) -> bool:
    return session.commit_lsn is not None or session.committed_at is not None


def _has_replayed(backend: BackendState, session: SessionRouting, view: ClusterView) -> bool:
    """Read-your-writes: has this standby replayed the session's last write commit?"""
    if session.commit_lsn is not None:
        return backend.replay_lsn is not None and backend.replay_lsn >= session.commit_lsn
    if session.committed_at is None:
        return True
    primary = (
        view.backend(view.primary_id) if view.primary_id is not None and view.has(view.primary_id) else None
    )
    if primary is None or primary.checked_at is None or primary.replay_lsn is None:
        return False
    probed_after_commit = primary.checked_at >= session.committed_at
    return probed_after_commit and backend.replay_lsn is not None and backend.replay_lsn >= primary.replay_lsn


def _note_settings(statement: Classification, session: SessionRouting) -> SessionRouting:
    """Routing-relevant session settings in the batch: pgbalancer.route, transaction defaults."""
    if statement.kind is StatementKind.READ or statement.kind is StatementKind.EMPTY:
        return session  # a setting would make the batch's kind SESSION
    for info in statement.statements:
        if info.kind is not StatementKind.SESSION:
            continue
        if info.resets_all:
            session = _evolve(
                session,
                route_hint=None,
                local_route_hint=None,
                default_read_only=False,
                default_isolation=None,
            )
        elif info.setting == _ROUTE_SETTING:
            hint = _parse_hint(info.value)
            session = (
                _evolve(session, local_route_hint=hint) if info.local else _evolve(session, route_hint=hint)
            )
        elif info.setting in ("session characteristics", "default_transaction_read_only") and not info.local:
            if info.read_only is not None:
                session = _evolve(session, default_read_only=info.read_only)
            if info.isolation is not None:
                session = _evolve(session, default_isolation=info.isolation)
        elif info.setting == "default_transaction_isolation" and not info.local:
            session = _evolve(session, default_isolation=info.isolation)
    return session


def _parse_hint(value: str | None) -> RouteHint | None:
    if value is None:
        return None
    try:
        return RouteHint(value.strip().lower())
    except ValueError:
        return None  # 'default' or anything else: no hint
