"""Transaction and statement pooling: a server connection per transaction (or statement).

One task reads the client. It parses whole messages, attaches a server connection when
a message must reach one, rewrites named prepared statements for that server, and sends.
A pump task per attachment reads the server, routes replies through the ResponseRouter
(synthetic and dropped replies included), and hands the server back to the pool at
``ReadyForQuery 'I'`` once every request has its answer. Session state the client
builds is tracked (sessionstate.py) so it follows the client and never leaks.

This shell holds no protocol decisions of its own: they live in pgwire.responses,
proxy.prepared and proxy.sessionstate.
"""

from __future__ import annotations

import enum
import logging
from typing import TYPE_CHECKING

import trio

from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.errors import ProtocolError, SqlState, error_response
from pgbalancer.pgwire.framing import Message, MessageReader
from pgbalancer.pgwire.responses import Piece, Request, ResponseRouter
from pgbalancer.proxy.backend import (
    BackendUnavailable,
    QuorumLost,
    ServerConnection,
    ServerCredentials,
    ServerError,
    connect_failure_message,
)
from pgbalancer.proxy.netio import PeerClosed, PgSocket, ReceiveBuffer
from pgbalancer.proxy.pool import PoolExhausted, ServerPool
from pgbalancer.proxy.prepared import BatchRewriter, ClientStatements
from pgbalancer.proxy.resultcache import RAW_REQUEST_MAX_BYTES, UNKNOWN, CachePlan, ClientCache, Unknown
from pgbalancer.proxy.routed import BatchRouting
from pgbalancer.proxy.sessionstate import (
    SESSION_SETTINGS_QUERY,
    ClientSessionState,
    CommandKind,
    SessionCommand,
    changes_settings,
    classify_session_command,
)
from pgbalancer.routing.router import RouteAction, RouteDecision, RouteReason

if TYPE_CHECKING:
    from pgbalancer.config import Config
    from pgbalancer.proxy.server import ProxyServer
    from pgbalancer.proxy.session import ClientSession

log = logging.getLogger(__name__)

_RESET_TIMEOUT = 5.0
_BOUNDARY_WAIT = 1.0
_SYNC_POINTS = frozenset(b"QSF")
_ANSWERED_LOCALLY = frozenset({CommandKind.DEALLOCATE, CommandKind.DEALLOCATE_ALL, CommandKind.DISCARD_ALL})
_NO_EFFECT = SessionCommand(CommandKind.OTHER)
# Pipelined after a batch that may commit a write, on the same primary connection: the server runs
# it after the commit, so its answer is at or past the commit record (read-your-writes by LSN).
_COMMIT_LSN_PROBE = pgmsg.query("SELECT pg_current_wal_insert_lsn()")


class _Step(enum.Enum):
    """What one read from the server led to."""

    MORE = "more replies are due"
    ANSWERED = "every request is answered; the server stays with the client (in a transaction)"
    RELEASED = "the server went back to the pool"
    ENDED = "the session is over"
    COPY_IN = "the server waits for the client's COPY data"


class RelayEnded(Exception):
    """The client session must end; what to tell the client (if anything) is attached."""

    def __init__(self, farewell: bytes | None) -> None:
        super().__init__("relay ended")
        self.farewell = farewell


class _Unreachable(RelayEnded):
    """No server connection could be opened to ``node_id`` (nothing was sent to it)."""

    def __init__(self, node_id: int, farewell: bytes) -> None:
        super().__init__(farewell)
        self.node_id = node_id


class _Attachment:
    """One server connection lent to this client, with its reply router."""

    def __init__(self, pool: ServerPool, server: ServerConnection, router: ResponseRouter) -> None:
        self.pool = pool
        self.server = server
        self.router = router
        self.lost = False
        self.pump_running = False  # a task reads this server concurrently with the client
        self.attached_at = trio.current_time()
        self.request_started_at = self.attached_at

    def count_request(self, size: int) -> None:
        if not self.router.outstanding:
            self.request_started_at = trio.current_time()
        self.pool.counters.bytes_received += size

    def count_replies(self, size: int, now: float) -> None:
        counters = self.pool.counters
        counters.bytes_sent += size
        answered = len(self.router.ready_statuses)
        if answered:
            elapsed = now - self.request_started_at
            counters.query_count += answered
            counters.query_time_us += int(elapsed * 1_000_000)
            counters.query_latency.observe(elapsed, answered)

    def count_transaction(self, now: float) -> None:
        counters = self.pool.counters
        counters.xact_count += 1
        counters.xact_time_us += int((now - self.attached_at) * 1_000_000)


class TransactionRelay:
    """Serves one authenticated client in transaction or statement pooling mode."""

    def __init__(
        self,
        session: ClientSession,
        credentials: ServerCredentials,
        reader: MessageReader,
        state: ClientSessionState,
        *,
        statement_mode: bool,
    ) -> None:
        self.session = session
        self.proxy: ProxyServer = session.proxy
        self.client: PgSocket = session.client
        self.credentials = credentials
        self.reader = reader
        self.state = state
        self.statements = ClientStatements()
        self.statement_mode = statement_mode
        self.attached: _Attachment | None = None
        self._unsynced = 0
        self._settings_touched = False  # a SET/RESET/... ran: ask the server what the session holds
        self.routing = BatchRouting(self.proxy.router)
        self._rolling_back = False  # a lazily balanced transaction is being moved off a standby
        self._server_buffer = ReceiveBuffer()
        self._nursery: trio.Nursery | None = None
        self._ended: RelayEnded | None = None
        self.client_at_boundary = True
        service = self.proxy.cache
        self.cache: ClientCache | None = None  # None with memory_cache_enabled = off: no cost
        if service is not None:
            self.cache = ClientCache(
                service,
                session.database,
                session.user,
                state,
                self.statements,
                self.proxy.router.settings.functions,
                credentials,
                self.proxy.config.server_reset_query,
            )

    async def run(self) -> bytes | None:
        """Relay until the client leaves; return a FATAL farewell that is safe to send, if any."""
        try:
            async with trio.open_nursery() as nursery:
                self._nursery = nursery
                await self._guarded_client_loop()
                await self._let_replies_reach_a_boundary()
                nursery.cancel_scope.cancel()
        finally:
            self.client_at_boundary = self.attached is None or self.attached.router.client_at_boundary
            with trio.CancelScope(shield=True):
                if self.cache is not None and self.cache.has_pending:
                    await self.cache.flush_writes()  # the client left: a COMMIT may have gone through
                await self._detach_on_exit()
        farewell = self._ended.farewell if self._ended is not None else None
        return farewell if self.client_at_boundary else None

    async def _let_replies_reach_a_boundary(self) -> None:
        """Before a FATAL is injected, let a reply being relayed finish (it is mid-message only
        because TCP split it), so the error lands between messages."""
        attachment = self.attached
        if self._ended is None or attachment is None or not attachment.pump_running:
            return
        with trio.move_on_after(_BOUNDARY_WAIT):
            while not attachment.router.client_at_boundary:
                await trio.sleep(0.005)

    async def _guarded_client_loop(self) -> None:
        try:
            await self._client_loop()
        except RelayEnded as ended:  # raised in this task only; the pump reports via _end_from_pump
            self._ended = ended

    # ---- client side ----

    async def _client_loop(self) -> None:
        buffer = ReceiveBuffer()
        pending = self._drain_client_messages()
        raw: bytes | None = None  # the bytes of ``pending``, when they came alone in one receive
        planned: CachePlan | Unknown | None = UNKNOWN
        cache = self.cache
        while True:
            if pending and await self._handle(pending, raw, planned):
                return
            if has_idle_limits(self.proxy.config):
                received = await self._receive_within_idle_limits(buffer.data)
            else:  # no idle limits (the default): one coroutine layer less on every request
                received = await self.client.recv_into(buffer.data)
            if received == 0:
                return
            raw, planned = None, UNKNOWN
            if (
                cache is not None
                and received <= RAW_REQUEST_MAX_BYTES
                and not self.reader.buffered
                and self._client_idle()
            ):
                # A request seen before, alone in this receive: a hit is one lookup by its bytes
                # and one send, with no framing and no parsing.
                raw = bytes(buffer.view[:received])
                planned = cache.plan_raw(raw)
                if isinstance(planned, CachePlan) and planned.hit is not None:
                    self.session.last_request_at = trio.current_time()
                    await self.client.send_all(cache.answer(planned))
                    buffer.grow_if_filled(received)
                    pending = []
                    continue
            self.reader.receive_data(buffer.view[:received])
            buffer.grow_if_filled(received)
            pending = self._drain_client_messages()
            if self.reader.buffered:
                raw, planned = None, UNKNOWN  # a message continues in the next receive

    async def _receive_within_idle_limits(self, buffer: bytearray) -> int:
        in_transaction = self.attached is not None
        limit = idle_limit(self.proxy.config, in_transaction=in_transaction)
        if not limit:
            return await self.client.recv_into(buffer)
        with trio.move_on_after(limit):
            return await self.client.recv_into(buffer)
        raise RelayEnded(idle_farewell(limit, in_transaction=in_transaction))

    def _drain_client_messages(self) -> list[Message]:
        messages: list[Message] = []
        try:
            while isinstance(event := self.reader.next_event(), Message):
                messages.append(event)
        except ProtocolError as exc:
            raise RelayEnded(exc.to_response()) from exc
        return messages

    async def _handle(
        self,
        messages: list[Message],
        raw: bytes | None = None,
        planned: CachePlan | Unknown | None = UNKNOWN,
    ) -> bool:
        """Process a batch; True when the client said Terminate. ``raw``: the batch's bytes when
        it came alone; ``planned``: what ``ClientCache.plan_raw`` said of them."""
        self.session.last_request_at = trio.current_time()
        terminated = False
        for index, message in enumerate(messages):
            if message.type == b"X":
                messages, terminated = messages[:index], True
                raw, planned = None, UNKNOWN
                break
        plan = None
        if self.cache is not None and messages and self._client_idle():
            # Before any other parsing: a hit costs one key lookup (a cacheable read is never a
            # session command, so nothing below would have applied to it).
            plan = self.cache.plan(messages, raw) if planned is UNKNOWN else planned
            if plan is not None and plan.hit is not None:
                await self.client.send_all(self.cache.answer(plan))
                return terminated
        batch: list[Message] = []
        effects: list[tuple[str, SessionCommand]] = []  # SQL in the batch, classified once
        for message in messages:
            sql = _statement_text(message)
            command = classify_session_command(sql) if sql is not None else _NO_EFFECT
            if (
                message.type == b"Q"
                and command.kind in _ANSWERED_LOCALLY
                and await self._answered_locally(command, batch)
            ):
                continue
            batch.append(message)
            if sql is not None:
                effects.append((sql, command))
        if batch:
            await self._send_to_server(batch, effects, plan if len(batch) == len(messages) else None)
        return terminated

    async def _answered_locally(self, command: SessionCommand, batch: list[Message]) -> bool:
        """DEALLOCATE / DISCARD ALL (_ANSWERED_LOCALLY) concern this client's statements: pgbalancer
        answers them."""
        if batch or (self.attached is not None and self.attached.router.outstanding):
            return False  # keep ordering simple: only a lone, unpipelined command is answered here
        if command.kind is CommandKind.DEALLOCATE:
            self.statements.forget(command.name.encode())
            tag = b"DEALLOCATE"
        elif command.kind is CommandKind.DEALLOCATE_ALL:
            self.statements.clear()
            tag = b"DEALLOCATE ALL"
        else:
            if self.attached is not None and self.attached.router.last_ready_status != b"I":
                return False  # inside a transaction the server must raise the error itself
            self.statements.clear()
            self.state.forget_session_settings()
            tag = b"DISCARD ALL"
        status = self.attached.router.last_ready_status if self.attached is not None else b"I"
        await self.client.send_all(pgmsg.encode_message(b"C", tag + b"\x00") + pgmsg.ready_for_query(status))
        return True

    async def _send_to_server(
        self, batch: list[Message], effects: list[tuple[str, SessionCommand]], plan: CachePlan | None = None
    ) -> None:
        self._check_pipeline_depth(batch)
        decision = self._decide(batch, self.session.last_request_at)  # set by _handle, this tick
        waited = 0.0
        if decision.action is RouteAction.REFUSE and decision.reason is RouteReason.NO_PRIMARY:
            decision, waited = await self._wait_for_primary(batch, decision)
        if decision.action not in (RouteAction.SEND, RouteAction.MIGRATE):
            await self.client.send_all(self.routing.local_replies(batch, decision, waited=waited))
            return
        if decision.action is RouteAction.MIGRATE:
            await self._roll_back_where_attached()
        attachment, decision = await self._attach_routed(batch, decision)
        assert decision.node_id is not None
        self._note_session_effects(effects, attachment.server)
        if self.cache is not None:
            await self._prepare_cache(plan, batch, attachment, decision.node_id)
        data = bytearray()
        held_begin = self.routing.take_held_begin(decision)
        if held_begin is not None:  # answered to the client already: drop the server's replies
            attachment.router.expect(Request.QUERY, forward=False)
            data += pgmsg.query(held_begin)
        rewriter = BatchRewriter(self.statements, attachment.server.statements, attachment.router)
        data += rewriter.rewrite(batch)
        if decision.wants_commit_lsn and batch[-1].type in (b"Q", b"S"):
            data += _COMMIT_LSN_PROBE
            attachment.router.expect_probe()
        attachment.count_request(len(data))
        if data:
            try:
                await attachment.server.socket.send_all(data)
            except PeerClosed as exc:
                attachment.lost = True
                self.proxy.suspect_backend(attachment.server.address.node_id, "server connection broke")
                raise RelayEnded(self._server_lost_error(attachment)) from exc
        if due := attachment.router.due_replies():  # replies answered locally (a prepared Parse...)
            await self._send_pieces(due)
        await self._collect_replies(attachment, inline=batch[-1].type[0] in _SYNC_POINTS)

    async def _attach_routed(
        self, batch: list[Message], decision: RouteDecision
    ) -> tuple[_Attachment, RouteDecision]:
        """The server connection for a routed batch, and the decision it follows. A standby that
        refuses the connection (the proxy has suspected it) costs the client nothing: the batch is
        routed once more as if that standby were quarantined, so the read runs elsewhere (the
        primary is always readable)."""
        assert decision.node_id is not None
        read = decision.query_class is not None
        try:
            return await self._attachment_on(decision.node_id, read=read), decision
        except _Unreachable as exc:
            if exc.node_id == self.proxy.cluster_view.primary_id:
                raise  # the primary's path already waited out a failover
            retry = self.routing.decide_elsewhere(
                batch,
                self.proxy.cluster_view,
                exc.node_id,
                trio.current_time(),
                standard_conforming_strings=self._standard_conforming_strings(),
            )
            if retry.action is not RouteAction.SEND or retry.node_id in (None, exc.node_id):
                raise
            log.info("backend %d unreachable: read routed to backend %d instead", exc.node_id, retry.node_id)
            return await self._attachment_on(retry.node_id, read=read), retry

    def _standard_conforming_strings(self) -> bool:
        return self.state.reported.get("standard_conforming_strings", "on") == "on"

    def _decide(self, batch: list[Message], now: float | None = None) -> RouteDecision:
        return self.routing.decide(
            batch,
            self.proxy.cluster_view,
            trio.current_time() if now is None else now,
            attached=self._node_with_replies_due(),
            standard_conforming_strings=self._standard_conforming_strings(),
        )

    async def _wait_for_primary(
        self, batch: list[Message], decision: RouteDecision
    ) -> tuple[RouteDecision, float]:
        """No primary in the view (a failover under way, or an observe-only worker that has not seen
        the promotion yet): wait for one like acquire_primary does, up to server_connect_timeout,
        then route the batch again. Returns the last decision and the seconds waited."""
        ha = self.proxy.ha
        if ha is None:
            return decision, 0.0
        started = trio.current_time()
        deadline = started + self.proxy.config.server_connect_timeout
        while decision.action is RouteAction.REFUSE and decision.reason is RouteReason.NO_PRIMARY:
            if trio.current_time() >= deadline or not await ha.wait_for_primary(None, deadline):
                break
            decision = self._decide(batch)
        return decision, trio.current_time() - started

    async def _collect_replies(self, attachment: _Attachment, *, inline: bool) -> None:
        """Read the replies in this task when the batch ends at a sync point (one task per
        transaction: fewer wake-ups); hand over to a concurrent pump for open-ended exchanges
        (pipelines without Sync, COPY from the client), where the client keeps sending."""
        if attachment.pump_running:
            return
        if inline:
            step = _Step.MORE
            while step is _Step.MORE:
                step = await self._read_server_once(attachment)
            if step is not _Step.COPY_IN:
                return
        attachment.pump_running = True
        assert self._nursery is not None
        self._nursery.start_soon(self._pump, attachment)

    def _client_idle(self) -> bool:
        """Not in a transaction block and nothing in flight: a read may be answered from cache."""
        attachment = self.attached
        if self.routing.held_begin is not None:
            return False
        return attachment is None or (
            attachment.router.last_ready_status == b"I" and not attachment.router.outstanding
        )

    async def _prepare_cache(
        self, plan: CachePlan | None, batch: list[Message], attachment: _Attachment, node_id: int
    ) -> None:
        assert self.cache is not None
        router = attachment.router
        # Only the primary's answers are stored: a standby may not have replayed the write
        # whose invalidation came before this read, and its stale answer would then stay.
        await self.cache.prepare(
            plan,
            batch,
            attachment.server,
            server_idle=not router.outstanding and not attachment.pump_running and router.at_boundary,
            from_primary=node_id == self.proxy.cluster_view.primary_id,
        )

    def _check_pipeline_depth(self, batch: list[Message]) -> None:
        for message in batch:
            if message.type[0] in _SYNC_POINTS:
                self._unsynced = 0
            else:
                self._unsynced += 1
        limit = self.proxy.config.max_unsynced_messages
        if limit and self._unsynced > limit:
            raise RelayEnded(
                error_response(
                    SqlState.PROGRAM_LIMIT_EXCEEDED,
                    f"more than {limit} protocol messages without Sync",
                    severity="FATAL",
                    hint="send Sync more often, or raise max_unsynced_messages",
                )
            )

    def _note_session_effects(
        self, effects: list[tuple[str, SessionCommand]], server: ServerConnection
    ) -> None:
        for sql, command in effects:
            if self.statement_mode and _opens_transaction(sql):
                raise RelayEnded(_statement_mode_refusal())
            if changes_settings(command):
                self._settings_touched = True
            if _leaves_session_state(command):
                server.dirty = True

    # ---- attaching and detaching servers ----

    def _node_with_replies_due(self) -> int | None:
        attachment = self.attached
        if attachment is None or not attachment.router.outstanding:
            return None
        return attachment.server.address.node_id

    async def _attachment_on(self, node_id: int, *, read: bool) -> _Attachment:
        """The server connection for this batch: the one held if it is on that node, else a new one.
        A batch that is not a read (``read`` False) on the primary passes the watchdog's write gate
        even on a held connection: a cut-off node may have served the transaction's reads there."""
        attachment = self.attached
        if attachment is not None and attachment.server.address.node_id == node_id:
            if not read and node_id == self.proxy.cluster_view.primary_id:
                try:
                    self.proxy.check_partition(write=True)
                except QuorumLost as exc:
                    raise RelayEnded(_quorum_refusal(exc)) from exc
            return attachment
        if attachment is not None:  # idle between routing decisions on another node: hand it back
            await self._release(attachment)
        return await self._attach(node_id, read=read)

    async def _roll_back_where_attached(self) -> None:
        """MIGRATE: end the lazily balanced read transaction on its standby before the write."""
        attachment = self.attached
        if attachment is None:
            return
        attachment.router.expect(Request.QUERY, forward=False)
        await attachment.server.socket.send_all(pgmsg.query("ROLLBACK"))
        self._rolling_back = True
        try:
            await self._collect_replies(attachment, inline=True)
        finally:
            self._rolling_back = False

    async def _attach(self, node_id: int, *, read: bool) -> _Attachment:
        try:
            pool, server = await self.proxy.acquire_backend(
                node_id, self.session.database, self.credentials, read_only=read
            )
        except PoolExhausted as exc:
            raise RelayEnded(
                error_response(SqlState.TOO_MANY_CONNECTIONS, str(exc), severity="FATAL")
            ) from exc
        except QuorumLost as exc:
            raise RelayEnded(_quorum_refusal(exc)) from exc
        except BackendUnavailable as exc:
            message = connect_failure_message(exc, self.proxy.cluster_view.primary_id)
            raise _Unreachable(
                node_id, error_response(SqlState.CONNECTION_FAILURE, message, severity="FATAL")
            ) from exc
        except ServerError as exc:
            raise RelayEnded(error_response(exc.sqlstate, str(exc), severity="FATAL")) from exc
        server.statements.capacity = self.proxy.config.max_prepared_statements
        try:
            await self._align_session(server)
        except BaseException:
            pool.release(server, reusable=False)
            raise
        router = ResponseRouter(
            max_message_size=self.proxy.config.max_message_size,
            on_request_lost=server.statements.request_lost,
        )
        attachment = _Attachment(pool, server, router)
        self.attached = attachment
        self.session.server = server
        return attachment

    async def _align_session(self, server: ServerConnection) -> None:
        if server.aligned_with == self.state.fingerprint:
            return  # this client had it last, unchanged since: nothing to SET
        sql, leaves_state = self.state.statements_for(server.parameters)
        if not sql:
            server.aligned_with = self.state.fingerprint
            return
        try:
            await server.run_query(sql)
        except ServerError as exc:
            raise RelayEnded(error_response(exc.sqlstate, str(exc), severity="FATAL")) from exc
        if leaves_state:
            server.dirty = True
        server.aligned_with = self.state.fingerprint

    async def _pump(self, attachment: _Attachment) -> None:
        step = _Step.MORE
        while step not in (_Step.RELEASED, _Step.ENDED):
            step = await self._read_server_once(attachment)

    async def _read_server_once(self, attachment: _Attachment) -> _Step:
        """Read one chunk from the server, route it to the client, and release if done."""
        buffer, router, server = self._server_buffer, attachment.router, attachment.server
        received = await server.socket.recv_into(buffer.data)
        if received == 0:
            attachment.lost = True
            now = trio.current_time()
            self.routing.failed(latency=now - attachment.request_started_at, now=now)  # teaches at once
            self.proxy.suspect_backend(server.address.node_id, "server closed the connection")
            await self._end_from_pump(self._server_lost_error(attachment))
            return _Step.ENDED
        try:
            pieces = router.feed(buffer.view[:received])
        except ProtocolError as exc:
            attachment.lost = True
            await self._end_from_pump(exc.to_response())
            return _Step.ENDED
        for name, value in router.parameter_changes:
            server.parameters[name] = value
            self.state.note_parameter_status(name, value)
        now = trio.current_time()
        attachment.count_replies(received, now)
        cache = self.cache
        if cache is not None and cache.has_pending and b"I" in router.ready_statuses:
            # Before the client may see its write acknowledged; kept for what the client still has in
            # flight (not for a commit LSN probe: it writes nothing, so its reply must not invalidate
            # the same write a second time).
            keep = router.last_ready_status != b"I" or bool(router.outstanding_for_client)
            await cache.flush_writes(keep=keep)
        await self._send_pieces(pieces)
        if cache is not None and cache.fill is not None and router.ready_statuses and not router.outstanding:
            cache.finish_fill()
        buffer.grow_if_filled(received)
        if router.awaits_client_data:
            return _Step.COPY_IN
        if not (router.ready_statuses and router.outstanding == 0 and router.at_boundary):
            return _Step.MORE
        if not self._rolling_back:
            ok = True  # a client's own SQL error says nothing about the node (failures: see above)
            self.routing.ready(
                router.last_ready_status,
                ok=ok,
                latency=now - attachment.request_started_at,
                now=now,
                commit_lsn=router.take_probe_value(),
            )
        if self.statement_mode and router.last_ready_status != b"I":
            await self._end_from_pump(_statement_mode_refusal())
            return _Step.ENDED
        if router.last_ready_status != b"I":
            return _Step.ANSWERED
        await self._release(attachment)  # reads the clock afresh: the flush and sends may have waited
        return _Step.RELEASED

    async def _end_from_pump(self, farewell: bytes | None) -> None:
        self._ended = RelayEnded(farewell)
        assert self._nursery is not None
        self._nursery.cancel_scope.cancel()

    async def _release(self, attachment: _Attachment) -> None:
        """Give the server connection back to its pool."""
        now = trio.current_time()
        attachment.count_transaction(now)
        self.attached = None
        self.session.server = None
        server = attachment.server
        reusable = True
        released_at: float | None = now
        if self._settings_touched or server.dirty:  # else nothing to await: no cancel scope either
            # Shielded: a session ending mid-reset must still give the pool its slot back.
            with trio.CancelScope(shield=True):
                if self._settings_touched:
                    await self._learn_session_settings(server)
                if server.dirty:
                    reusable = await reset_server(
                        server, rollback=False, reset_query=self.proxy.config.server_reset_query
                    )
            released_at = None  # the pool reads the clock: the reset took time
        attachment.pool.release(server, reusable=reusable, now=released_at)

    async def _learn_session_settings(self, server: ServerConnection) -> None:
        self._settings_touched = False
        try:
            rows = await server.fetch_rows(SESSION_SETTINGS_QUERY)
        except (ServerError, BackendUnavailable, PeerClosed) as exc:
            log.warning("could not read session settings from %s: %s", server.address, exc)
            return
        pairs = [(name, value) for name, value in rows if name is not None and value is not None]
        self.state.adopt_session_settings(pairs, server.parameters)

    async def _detach_on_exit(self) -> None:
        self.routing.abandon()
        attachment, self.attached = self.attached, None
        self.session.server = None
        if attachment is None:
            return
        router = attachment.router
        at_rest = not attachment.lost and router.outstanding == 0 and router.at_boundary
        reusable = at_rest
        if at_rest and (router.last_ready_status != b"I" or attachment.server.dirty):
            reusable = await reset_server(
                attachment.server,
                rollback=router.last_ready_status != b"I",
                reset_query=self.proxy.config.server_reset_query,
            )
        attachment.pool.release(attachment.server, reusable=reusable)

    # ---- output ----

    async def _send_pieces(self, pieces: list[Piece]) -> None:
        if not pieces:
            return
        data = pieces[0] if len(pieces) == 1 else b"".join(pieces)
        if self.cache is not None and self.cache.fill is not None:
            self.cache.capture(data)
        try:
            await self.client.send_all(data)
        except PeerClosed:
            await self._end_from_pump(None)

    def _server_lost_error(self, attachment: _Attachment) -> bytes | None:
        if not attachment.router.client_at_boundary:
            return None
        return error_response(
            SqlState.CONNECTION_FAILURE,
            f"server connection lost: {attachment.server.address} closed the connection",
            severity="FATAL",
            hint="the backend may have restarted; reconnect",
        )


async def reset_server(server: ServerConnection, *, rollback: bool, reset_query: str) -> bool:
    """Reset a server for the next client; False (close it) if that fails or hangs."""
    with trio.move_on_after(_RESET_TIMEOUT) as timeout:
        try:
            await server.reset(rollback=rollback, reset_query=reset_query)
        except (ServerError, BackendUnavailable, PeerClosed) as exc:
            log.warning("closing server connection to %s: reset failed: %s", server.address, exc)
            return False
    return not timeout.cancelled_caught


def has_idle_limits(config: Config) -> bool:
    return bool(config.client_idle_timeout or config.idle_transaction_timeout)


def idle_limit(config: Config, *, in_transaction: bool) -> int:
    """Seconds a silent client may wait (0 = no limit): inside a transaction block
    idle_transaction_timeout, else client_idle_timeout (every pool mode)."""
    return config.idle_transaction_timeout if in_transaction else config.client_idle_timeout


def idle_farewell(limit: float, *, in_transaction: bool) -> bytes:
    """The FATAL a client gets when it stayed silent past its idle limit (every pool mode)."""
    if in_transaction:
        return error_response(
            SqlState.IDLE_IN_TRANSACTION_SESSION_TIMEOUT,
            f"terminating connection: idle in transaction for {limit:g}s (idle_transaction_timeout)",
            severity="FATAL",
        )
    return error_response(
        SqlState.IDLE_SESSION_TIMEOUT,
        f"terminating connection: idle for {limit:g}s (client_idle_timeout)",
        severity="FATAL",
    )


def _statement_text(message: Message) -> str | None:
    """The SQL of a simple Query or of a Parse, if the message carries SQL."""
    if message.type == b"Q":
        return message.body[:-1].decode("utf-8", "replace")
    if message.type == b"P":
        name_end = message.body.find(b"\x00")
        query_end = message.body.find(b"\x00", name_end + 1)
        if name_end >= 0 and query_end > name_end:
            return message.body[name_end + 1 : query_end].decode("utf-8", "replace")
    return None


def _leaves_session_state(command: SessionCommand) -> bool:
    """Forwarded commands after which the server must be reset before anyone else uses it
    (a forwarded DEALLOCATE or DISCARD drops prepared statements other clients rely on)."""
    return command.kind is not CommandKind.OTHER


def _opens_transaction(sql: str) -> bool:
    words = sql.lstrip().split(None, 1)
    return bool(words) and words[0].rstrip(";").lower() in ("begin", "start")


def _quorum_refusal(refusal: QuorumLost) -> bytes:
    """The FATAL a client gets when this node, cut off from its watchdog quorum, refuses its batch."""
    return error_response(refusal.sqlstate, str(refusal), severity="FATAL", hint=refusal.hint)


def _statement_mode_refusal() -> bytes:
    return error_response(
        SqlState.FEATURE_NOT_SUPPORTED,
        "transaction blocks are not allowed in statement pooling mode",
        severity="FATAL",
        hint="use pool_mode = transaction for this database or user",
    )
