"""One client's read/write routing in transaction and statement pooling (no I/O).

Glue between the relay and the pure ``routing`` package: it classifies each batch (a Query,
or an extended-protocol batch up to Sync, remembering what named statements are), asks the
worker's Router where the batch goes, keeps the client's routing state, builds the replies
pgbalancer gives itself (a held lazy BEGIN, an empty transaction's COMMIT, a refusal), and
reports each read's outcome back to the balancer. The relay performs the I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from pgbalancer.ha.view import ClusterView
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.errors import SqlState, error_response
from pgbalancer.pgwire.framing import Message
from pgbalancer.routing.classify import Classification, StatementKind, classify, combine
from pgbalancer.routing.router import (
    RouteAction,
    RouteDecision,
    Router,
    RouteReason,
    SessionRouting,
    parse_lsn,
)

# Refusals of a batch no node could take: it never ran, and the caller may retry it once a node is up.
_NOT_RUN = frozenset({RouteReason.NO_PRIMARY, RouteReason.NO_NODE})
_UNKNOWN_STATEMENT = Classification(StatementKind.UNKNOWN, problem="a statement prepared before it was seen")
# What the server would answer to each message of a batch pgbalancer answers itself.
_LOCAL_REPLY = {
    ord("P"): b"1\x00\x00\x00\x04",
    ord("B"): b"2\x00\x00\x00\x04",
    ord("D"): b"n\x00\x00\x00\x04",
    ord("C"): b"3\x00\x00\x00\x04",
}


class BatchRouting:
    """The routing state of one client, and the decision for the batch in flight."""

    def __init__(self, router: Router) -> None:
        self.router = router
        self.session = SessionRouting()
        self.decision: RouteDecision | None = None  # the batch in flight, until its ReadyForQuery
        self.held_begin: str | None = None  # the SQL of a BEGIN held back by lazy_begin
        self._session_before = self.session  # before the last decision: to route its batch again
        self._statements: dict[bytes, Classification] = {}  # named statements, by client name

    def decide(
        self,
        batch: Sequence[Message],
        view: ClusterView,
        now: float,
        *,
        attached: int | None,
        standard_conforming_strings: bool,
    ) -> RouteDecision:
        classification = self._classify(batch, standard_conforming_strings)
        decision = self.router.route(classification, self.session, view, now, attached=attached)
        if decision.action is RouteAction.REFUSE and decision.reason in _NOT_RUN:
            return decision  # nothing ran: the session stays as it was, so the batch can be routed again
        self._session_before, self.session = self.session, decision.session
        if decision.action is RouteAction.HOLD_BEGIN:
            self.held_begin = _statement_sql(batch) or "BEGIN"
        elif decision.action is RouteAction.REPLY_LOCALLY:
            self.held_begin = None
        if decision.action in (RouteAction.SEND, RouteAction.MIGRATE):
            if self.decision is not None:
                # A pipelined batch (or one whose ReadyForQuery was not reported, e.g. during a
                # rollback) is replaced: its read must leave the in-flight count, or the node looks
                # busier for ever and the balancer starves it.
                self.router.abandon(self.decision)
            self.decision = decision
        return decision

    def decide_elsewhere(
        self,
        batch: Sequence[Message],
        view: ClusterView,
        unreachable: int,
        now: float,
        *,
        standard_conforming_strings: bool,
    ) -> RouteDecision:
        """Route the last decided batch again: its node ``unreachable`` refused the connection before
        anything was sent, so the batch goes where it would have gone had that node been quarantined
        (the primary stays readable), from the routing state it had before."""
        self.session = self._session_before
        if self.decision is not None:
            self.router.abandon(self.decision)
            self.decision = None
        return self.decide(
            batch,
            view.quarantined(unreachable),
            now,
            attached=None,
            standard_conforming_strings=standard_conforming_strings,
        )

    def take_held_begin(self, decision: RouteDecision) -> str | None:
        """The held BEGIN to send ahead of this batch, if the decision asks for it."""
        if not decision.send_held_begin:
            return None
        held, self.held_begin = self.held_begin, None
        return held or "BEGIN"

    def local_replies(
        self, batch: Sequence[Message], decision: RouteDecision, *, waited: float = 0.0
    ) -> bytes:
        """What the server would have answered, for a batch pgbalancer answers itself. ``waited``:
        how long a refused batch waited for a primary (or any node) to come up first."""
        if decision.action is RouteAction.REFUSE:
            if decision.reason is RouteReason.HELD_TRANSACTION_FAILED:
                error = error_response(SqlState.IN_FAILED_SQL_TRANSACTION, decision.reason.value)
                return error + pgmsg.ready_for_query(b"E")
            return _refusal(decision.reason, waited) + pgmsg.ready_for_query(b"I")
        if decision.action is RouteAction.HOLD_BEGIN:
            return _replies(batch, "BEGIN", b"T")
        return _replies(batch, decision.local_tag or "COMMIT", b"I")

    def ready(
        self, status: bytes, *, ok: bool, latency: float, now: float, commit_lsn: bytes | None = None
    ) -> None:
        """The batch in flight got its last ReadyForQuery; ``commit_lsn``: what the pipelined
        ``pg_current_wal_insert_lsn()`` answered, when the batch asked for it."""
        lsn = parse_lsn(commit_lsn) if commit_lsn is not None else None
        self.session = self.router.on_ready(self.session, status, now, commit_lsn=lsn)
        decision, self.decision = self.decision, None
        if decision is not None and decision.query_class is not None:
            self.router.observe(decision, latency, ok, now)

    def failed(self, *, latency: float, now: float) -> None:
        """The node serving the batch in flight failed (its connection broke): the balancer learns it."""
        decision, self.decision = self.decision, None
        if decision is not None and decision.query_class is not None:
            self.router.observe(decision, latency, False, now)

    def abandon(self) -> None:
        """The client left with a batch in flight."""
        decision, self.decision = self.decision, None
        if decision is not None:
            self.router.abandon(decision)

    def forget_statements(self) -> None:
        self._statements.clear()

    def _classify(self, batch: Sequence[Message], standard_conforming_strings: bool) -> Classification:
        policy = self.router.settings.functions
        if len(batch) == 1 and batch[0].type == b"Q":  # the common case: one simple Query
            return classify(
                batch[0].body[:-1], policy=policy, standard_conforming_strings=standard_conforming_strings
            )
        parts: list[Classification] = []
        unnamed: Classification | None = None
        for message in batch:
            kind = message.type
            if kind == b"Q":
                parts.append(
                    classify(
                        message.body[:-1],
                        policy=policy,
                        standard_conforming_strings=standard_conforming_strings,
                    )
                )
            elif kind == b"P":
                name, sql = _parse_name_and_sql(message.body)
                statement = classify(
                    sql, policy=policy, standard_conforming_strings=standard_conforming_strings
                )
                if name:
                    self._statements[name] = statement
                else:
                    unnamed = statement
            elif kind == b"B":
                name = message.body[message.body.find(b"\x00") + 1 :].split(b"\x00", 1)[0]
                bound = self._statements.get(name) if name else unnamed
                parts.append(bound or _UNKNOWN_STATEMENT)
            elif kind == b"F":
                parts.append(_UNKNOWN_STATEMENT)  # a function call by OID may write
        return parts[0] if len(parts) == 1 else combine(parts)


def _refusal(reason: RouteReason, waited: float) -> bytes:
    """08006 for a batch no node could take, saying how long it waited and what to do."""
    message = f"{reason.value}" + (f" (waited {waited:.1f}s for one)" if waited > 0 else "")
    if reason is RouteReason.NO_PRIMARY:
        hint = (
            "The statement was not run. Retry once a primary is up: check the backends (SHOW POOL_NODES in "
            "the pgbalancer admin database, or bctl), or promote a standby; server_connect_timeout sets "
            "how long writes wait during a failover."
        )
    else:
        hint = "The statement was not run. Check the backends (SHOW POOL_NODES in the pgbalancer database)."
    return error_response(SqlState.CONNECTION_FAILURE, message, hint=hint)


def _parse_name_and_sql(body: bytes) -> tuple[bytes, bytes]:
    name_end = body.find(b"\x00")
    sql_end = body.find(b"\x00", name_end + 1)
    if name_end < 0 or sql_end < 0:
        return b"", b""
    return body[:name_end], body[name_end + 1 : sql_end]


def _statement_sql(batch: Sequence[Message]) -> str | None:
    for message in batch:
        if message.type == b"Q":
            return message.body[:-1].decode("utf-8", "replace")
        if message.type == b"P":
            return _parse_name_and_sql(message.body)[1].decode("utf-8", "replace")
    return None


def _replies(batch: Sequence[Message], tag: str, status: bytes) -> bytes:
    """A reply per message as the server would give for a statement with ``tag`` and no rows."""
    out = bytearray()
    complete = pgmsg.encode_message(b"C", tag.encode() + b"\x00")
    for message in batch:
        kind = message.type[0]
        if kind == ord("Q"):
            out += complete + pgmsg.ready_for_query(status)
        elif kind == ord("E"):
            out += complete
        elif kind == ord("S"):
            out += pgmsg.ready_for_query(status)
        else:
            out += _LOCAL_REPLY.get(kind, b"")
    return bytes(out)
