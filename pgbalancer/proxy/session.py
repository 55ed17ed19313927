"""One client session: startup, authentication, a server connection, and the byte relay.

Session pooling: the client keeps one pooled server connection for its lifetime. When
the client leaves, the connection is reused only if the stream is provably clean (both
directions at a message boundary, every request answered, nothing half-sent); it is
then rolled back if needed and reset with ``server_reset_query`` before going back to
the pool. Anything less certain closes it, so no client ever inherits another's state.

The relay forwards bytes as received; it only scans message headers (pgwire.scan).
"""

from __future__ import annotations

import contextlib
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable
from functools import partial
from typing import TYPE_CHECKING, NoReturn

import trio

from pgbalancer.config import Config, PoolMode
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.errors import ProtocolError, SqlState, error_response
from pgbalancer.pgwire.framing import CLOSED, NEED_DATA, StartupReader
from pgbalancer.pgwire.messages import CancelRequest, GSSENCRequest, SSLRequest, StartupMessage
from pgbalancer.pgwire.scan import HeaderScanner
from pgbalancer.proxy.admin import ADMIN_DATABASES, serve_admin_console
from pgbalancer.proxy.backend import (
    BackendUnavailable,
    QuorumLost,
    ServerConnection,
    ServerCredentials,
    ServerError,
    connect_failure_message,
)
from pgbalancer.proxy.clientauth import ClientAuthFailed
from pgbalancer.proxy.netio import (
    RECV_SIZE,
    MessageChannel,
    PeerClosed,
    PgSocket,
    ReceiveBuffer,
    TcpConnection,
)
from pgbalancer.proxy.pool import PoolCounters, PoolExhausted, ServerPool
from pgbalancer.proxy.sessionstate import ClientSessionState, unreported_settings
from pgbalancer.proxy.startup import settings_to_apply, startup_rejection, startup_settings
from pgbalancer.proxy.tls import answer_ssl_request
from pgbalancer.proxy.txrelay import (
    TransactionRelay,
    has_idle_limits,
    idle_farewell,
    idle_limit,
    reset_server,
)

if TYPE_CHECKING:
    from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

# Client messages after which, once answered, a server connection is at rest.
_SYNC_POINTS = b"QSF"
_Q, _S, _F, _Z = b"QSFZ"
_RESTFUL_LAST_CLIENT_MESSAGES = frozenset(b"QSFcf") | {0}
_RESET_TIMEOUT = 5.0
_DRAIN_SECONDS = 1.0
_DRAIN_LIMIT = 16 * 1024 * 1024


class SessionEnded(Exception):
    """The session is over; the reason was already told to the client (or it is gone)."""


class ClientSession:
    """Serves one client connection from accept to close."""

    def __init__(self, proxy: ProxyServer, client: PgSocket, process_id: int) -> None:
        self.proxy = proxy
        self.client = client
        self.process_id = process_id
        self.secret_key = secrets.randbits(31)
        self.server: ServerConnection | None = None
        self.user = ""
        self.database = ""
        self._relay_scope: trio.CancelScope | None = None
        self._relay_result: _Relay | None = None
        self.end_reason = "pgbalancer shutdown"
        self._nothing_left_to_read = False
        self.connected_at = trio.current_time()
        self.last_request_at: float | None = None  # the relays update it per client request
        self.application_name = ""

    async def run(self) -> None:
        try:
            await self._serve()
        except SessionEnded as exc:
            log.debug("session %d ended: %s", self.process_id, exc)
        except (PeerClosed, trio.BrokenResourceError, trio.ClosedResourceError) as exc:
            log.debug("session %d: client connection closed: %s", self.process_id, exc)
        except Exception:
            # A bug must cost one client its connection, never the node.
            log.exception("internal error in session %d (user %r)", self.process_id, self.user)
            await self._send_quietly(
                error_response(
                    SqlState.INTERNAL_ERROR, "pgbalancer internal error; see its log", severity="FATAL"
                )
            )
        finally:
            if isinstance(self.client, TcpConnection):
                self.client.finish_sending()  # TLS has no half-close: its client waits for the drain
            if not self._nothing_left_to_read:
                await self._drain_client()  # returns at once if the client already closed
            self.client.close()

    async def _drain_client(self) -> None:
        """Read what the client still sends for a moment, so closing does not reset the
        connection (a TCP RST would destroy the FATAL error we just sent before it is read)."""
        buffer = bytearray(RECV_SIZE)
        with trio.CancelScope(shield=True), trio.move_on_after(_DRAIN_SECONDS):
            drained = 0
            while drained < _DRAIN_LIMIT:
                received = await self.client.recv_into(buffer)
                if received == 0:
                    return
                drained += received

    def request_shutdown(self, reason: str = "pgbalancer shutdown") -> None:
        """End the session; the client is told ``terminating connection due to <reason>``."""
        self.end_reason = reason
        if self._relay_scope is not None:
            self._relay_scope.cancel()

    async def _serve(self) -> None:
        login = None
        with trio.move_on_after(self.proxy.config.client_login_timeout) as login_scope:
            login = await self._login()
        if login_scope.cancelled_caught:
            await self._fail(SqlState.CANNOT_CONNECT_NOW, "client did not finish logging in in time")
        if login is None:
            return
        startup, credentials, channel = login
        if self.database in ADMIN_DATABASES:
            await serve_admin_console(self.proxy, self, channel)
            return
        mode = self.proxy.config.pool_mode_for(self.database, self.user)
        pool, server = await self._acquire_server(credentials, pooled=mode is not PoolMode.SESSION)
        if mode is not PoolMode.SESSION:
            await self._serve_pooled_transactions(pool, server, startup, credentials, channel, mode)
            return
        self.server = server
        try:
            await self._greet(server, startup)
            await self._relay(server, channel, pool.counters)
        finally:
            self.server = None
            await self._return_server(pool, server)

    async def _serve_pooled_transactions(
        self,
        pool: ServerPool,
        server: ServerConnection,
        startup: StartupMessage,
        credentials: ServerCredentials,
        channel: MessageChannel,
        mode: PoolMode,
    ) -> None:
        """Transaction/statement pooling: the greeting's server goes back to the pool at once."""
        try:
            await self._greet(server, startup)
        except BaseException:
            pool.release(server, reusable=False)
            raise
        unreported = unreported_settings(startup_settings(startup.parameters), server.parameters)
        state = ClientSessionState(reported=server.parameters, unreported=unreported)
        reusable = True
        if unreported:  # the greeting applied settings other clients must not inherit
            reusable = await reset_server(
                server, rollback=False, reset_query=self.proxy.config.server_reset_query
            )
        pool.release(server, reusable=reusable)
        relay = TransactionRelay(
            self, credentials, channel.reader, state, statement_mode=mode is PoolMode.STATEMENT
        )
        farewell = None
        with trio.CancelScope() as scope:
            self._relay_scope = scope
            farewell = await relay.run()
        self._relay_scope = None
        if scope.cancelled_caught and relay.client_at_boundary:
            farewell = error_response(
                SqlState.ADMIN_SHUTDOWN, f"terminating connection due to {self.end_reason}", severity="FATAL"
            )
        if farewell is not None:
            await self._send_quietly(farewell)

    async def _login(self) -> tuple[StartupMessage, ServerCredentials, MessageChannel] | None:
        """Startup packet and client authentication: no backend is touched yet."""
        startup, leftover = await self._read_startup()
        if startup is None:
            return None
        self.user, self.database = startup.user, startup.database
        self.application_name = startup.parameters.get("application_name", "")
        limit = self.proxy.config.max_client_conn
        if len(self.proxy.sessions) > limit:  # this session is already counted
            await self._fail(
                SqlState.TOO_MANY_CONNECTIONS,
                f"no more connections allowed (max_client_conn = {limit})",
                hint="raise max_client_conn, or pool connections in the application",
            )
        channel = MessageChannel(self.client, self.proxy.config.max_message_size)
        if leftover:  # (an empty feed would mean EOF to the reader)
            channel.reader.receive_data(leftover)
        return startup, await self._authenticate(channel), channel

    async def _read_startup(self) -> tuple[StartupMessage | None, bytes]:
        reader = StartupReader()
        buffer = bytearray(1024)
        while True:
            try:
                event = reader.next_event()
            except ProtocolError as exc:
                await self._fail(exc.sqlstate, exc.message)
            if isinstance(event, StartupMessage):
                rejection = self.proxy.tls.client.plaintext_rejection(self.client) or startup_rejection(event)
                if rejection is not None:
                    await self._fail(*rejection)
                return event, reader.take_buffered()
            if isinstance(event, SSLRequest):
                try:  # any byte already read here came unencrypted: answer_ssl_request refuses it
                    self.client = await answer_ssl_request(
                        self.client, self.proxy.tls.client, reader.take_buffered()
                    )
                except ProtocolError as exc:
                    await self._fail(exc.sqlstate, exc.message)
            elif isinstance(event, GSSENCRequest):
                await self.client.send_all(b"N")
            elif isinstance(event, CancelRequest):
                await self.proxy.forward_cancel(event)
                self._nothing_left_to_read = True  # the canceller waits for us to close, at once
                return None, b""
            elif event is CLOSED:
                return None, b""
            else:
                assert event is NEED_DATA
                received = await self.client.recv_into(buffer)
                reader.receive_data(memoryview(buffer)[:received])

    async def _authenticate(self, channel: MessageChannel) -> ServerCredentials:
        try:
            credentials = await self.proxy.authenticator.authenticate(channel, self.user, self.database)
        except ClientAuthFailed as exc:
            log.info("authentication failed for user %r from %s", self.user, self.client.peer)
            await self._fail(exc.sqlstate, exc.message)
        except ProtocolError as exc:
            await self._fail(exc.sqlstate, exc.message)
        await self.client.send_all(pgmsg.authentication_ok())
        return credentials

    async def _acquire_server(
        self, credentials: ServerCredentials, *, pooled: bool
    ) -> tuple[ServerPool, ServerConnection]:
        try:
            if pooled:  # the greeting may come from a standby when only reads are served here
                return await self.proxy.acquire_for_login(self.database, credentials)
            return await self.proxy.acquire_primary(self.database, credentials)
        except QuorumLost as exc:
            await self._fail(exc.sqlstate, str(exc), hint=exc.hint)
        except BackendUnavailable as exc:
            await self._fail(
                SqlState.CONNECTION_FAILURE,
                connect_failure_message(exc, self.proxy.cluster_view.primary_id),
                hint="check that the backend is running and reachable from pgbalancer",
            )
        except ServerError as exc:
            await self._send_server_error(exc)
        except PoolExhausted as exc:
            await self._fail(SqlState.TOO_MANY_CONNECTIONS, str(exc))

    async def _greet(self, server: ServerConnection, startup: StartupMessage) -> None:
        wanted = settings_to_apply(startup_settings(startup.parameters), server.parameters)
        if wanted:
            try:
                await server.run_query(wanted)
            except ServerError as exc:
                await self._send_server_error(exc)
        greeting = bytearray()
        for name, value in server.parameters.items():
            greeting += pgmsg.parameter_status(name, value)
        greeting += pgmsg.backend_key_data(self.process_id, self.secret_key)
        greeting += pgmsg.ready_for_query(b"I")
        greeting += server.take_unrelayed_bytes()
        await self.client.send_all(greeting)

    async def _relay(self, server: ServerConnection, channel: MessageChannel, counters: PoolCounters) -> None:
        proxy = self.proxy  # its config is read at each wait: a reload applies to running sessions too
        relay = _Relay(self.client, server, counters, lambda: proxy.config)
        pending_from_client = channel.reader.take_buffered()
        with trio.CancelScope() as scope:
            self._relay_scope = scope
            await relay.run(pending_from_client)
        self._relay_scope = None
        self._relay_result = relay
        farewell = self._farewell(relay, shutting_down=scope.cancelled_caught)
        if farewell is not None and relay.server_scanner.at_boundary:  # never inject mid-message
            await self._send_quietly(farewell)

    def _farewell(self, relay: _Relay, *, shutting_down: bool) -> bytes | None:
        """The FATAL error that tells the client why the relay ended, if it did not choose to."""
        if relay.idle_farewell is not None:
            return relay.idle_farewell
        if relay.protocol_error is not None:
            return error_response(
                relay.protocol_error.sqlstate, relay.protocol_error.message, severity="FATAL"
            )
        if shutting_down:
            return error_response(
                SqlState.ADMIN_SHUTDOWN, f"terminating connection due to {self.end_reason}", severity="FATAL"
            )
        if relay.server_closed:
            self.proxy.suspect_backend(relay.server.address.node_id, "server closed the connection")
            return error_response(
                SqlState.CONNECTION_FAILURE,
                f"server connection lost: {relay.server.address} closed the connection",
                severity="FATAL",
                hint="the backend may have restarted; reconnect",
            )
        return None

    async def _return_server(self, pool: ServerPool, server: ServerConnection) -> None:
        relay = self._relay_result
        reusable = relay is not None and relay.left_server_at_rest()
        if reusable and relay is not None:
            with trio.CancelScope(shield=True), trio.move_on_after(_RESET_TIMEOUT) as reset:
                reusable = await self._reset(server, relay.transaction_status)
            reusable = reusable and not reset.cancelled_caught
        pool.release(server, reusable=reusable)

    async def _reset(self, server: ServerConnection, transaction_status: bytes) -> bool:
        try:
            if transaction_status != b"I":
                await server.run_query("ROLLBACK")
            reset_query = self.proxy.config.server_reset_query
            if reset_query:
                await server.run_query(reset_query)
        except (ServerError, BackendUnavailable, PeerClosed) as exc:
            log.warning("closing server connection to %s: reset failed: %s", server.address, exc)
            return False
        return True

    async def _send_server_error(self, exc: ServerError) -> NoReturn:
        fields = exc.fields
        await self._fail(
            fields.get("C", SqlState.INTERNAL_ERROR),
            fields.get("M", "server error"),
            detail=fields.get("D"),
            hint=fields.get("H"),
        )

    async def _fail(
        self, sqlstate: str, message: str, *, detail: str | None = None, hint: str | None = None
    ) -> NoReturn:
        await self._send_quietly(
            error_response(sqlstate, message, severity="FATAL", detail=detail, hint=hint)
        )
        raise SessionEnded(message)

    async def _send_quietly(self, data: bytes) -> None:
        with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(PeerClosed):
            await self.client.send_all(data)


class _Relay:
    """Both directions of one session's byte relay, with the bookkeeping that decides reuse."""

    def __init__(
        self,
        client: PgSocket,
        server: ServerConnection,
        counters: PoolCounters,
        config: Callable[[], Config],
    ) -> None:
        self.client = client
        self.server = server
        self.counters = counters
        self.client_scanner = HeaderScanner(capture=b"X", count=_SYNC_POINTS)
        self.server_scanner = HeaderScanner(capture=b"ZS", count=b"Z")
        self.transaction_status = b"I"
        self.server_closed = False
        self.client_terminated = False
        self.broken = False  # something was cut mid-message
        self.protocol_error: ProtocolError | None = None
        self.awaiting_reply = False  # the client sent something the server has not answered yet
        self.request_started_at = 0.0
        self.config = config  # the node's current config (its idle limits)
        self.idle_farewell: bytes | None = None  # set when the client stayed silent too long
        self._client_wait: trio.CancelScope | None = None  # the client pump's receive, if limited
        self._armed_limit = (0.0, False)  # the limit the current receive runs under, in transaction

    async def run(self, pending_from_client: bytes) -> None:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._run_pump, self._pump_server_to_client, nursery.cancel_scope)
            await self._run_pump(
                partial(self._pump_client_to_server, pending_from_client), nursery.cancel_scope
            )

    async def _run_pump(self, pump: Callable[[], Awaitable[None]], relay_scope: trio.CancelScope) -> None:
        """Run one direction; when it ends for any reason, the whole relay ends."""
        try:
            await pump()
        except ProtocolError as exc:
            self.broken = True
            self.protocol_error = exc
        finally:
            relay_scope.cancel()

    async def _pump_client_to_server(self, pending_from_client: bytes) -> None:
        if pending_from_client:
            await self._forward_client_bytes(memoryview(pending_from_client))
        buffer = ReceiveBuffer()
        while not (self.client_terminated or self.server_closed):
            if has_idle_limits(self.config()):
                received = await self._receive_within_idle_limit(buffer.data)
            else:
                received = await self.client.recv_into(buffer.data)
            if received == 0:
                return
            await self._forward_client_bytes(buffer.view[:received])
            buffer.grow_if_filled(received)

    async def _receive_within_idle_limit(self, buffer: bytearray) -> int:
        """Receive from the client; past its idle limit, set ``idle_farewell`` and return 0. The
        limit runs only while the server owes nothing (the server pump re-arms it at each reply)."""
        with trio.CancelScope() as wait:
            self._client_wait = wait
            self.arm_idle_deadline()
            try:
                return await self.client.recv_into(buffer)
            finally:
                self._client_wait = None
        limit, in_transaction = self._armed_limit
        self.idle_farewell = idle_farewell(limit, in_transaction=in_transaction)
        return 0

    def arm_idle_deadline(self) -> None:
        """Set the waiting client receive's deadline: none while a reply is due, else the idle
        limit that fits the transaction state (inside a block: idle_transaction_timeout)."""
        wait = self._client_wait
        if wait is None:
            return
        in_transaction = self.transaction_status != b"I"
        limit = idle_limit(self.config(), in_transaction=in_transaction)
        if not limit or self.awaiting_reply or not self.server_scanner.at_boundary:
            wait.deadline = math.inf
            return
        self._armed_limit = (limit, in_transaction)
        wait.deadline = trio.current_time() + limit

    async def _forward_client_bytes(self, chunk: memoryview) -> None:
        if not self.awaiting_reply:  # a statement's latency runs from its first byte to its ReadyForQuery
            self.awaiting_reply = True
            self.request_started_at = time.monotonic()  # a sixth of trio.current_time()'s cost
        captured = self.client_scanner.feed(chunk)
        if captured:  # Terminate: forward what precedes it, never the Terminate itself
            start = captured[0].end - 5
            self.client_terminated = True
            if start < 0:
                self.broken = True  # part of the Terminate header already went out
                return
            chunk = chunk[:start]
        if chunk:
            self.counters.bytes_received += len(chunk)
            try:
                await self.server.socket.send_all(chunk)
            except PeerClosed:
                self.server_closed = True

    async def _pump_server_to_client(self) -> None:
        buffer = ReceiveBuffer()
        scanner = self.server_scanner
        while True:
            received = await self.server.socket.recv_into(buffer.data)
            if received == 0:
                self.server_closed = True
                return
            chunk = buffer.view[:received]
            self.counters.bytes_sent += received
            for message in scanner.feed(chunk):
                if message.type == b"Z":
                    self.transaction_status = message.body
                    self._count_statement(message.body == b"I")
                else:
                    name, value = pgmsg.parse_parameter_status(message.body)
                    self.server.parameters[name] = value
            if self._client_wait is not None:
                self.arm_idle_deadline()
            try:
                await self.client.send_all(chunk)
            except PeerClosed:
                return  # the client left; the server side's state is still known exactly
            buffer.grow_if_filled(received)

    def _count_statement(self, transaction_ended: bool) -> None:
        counters = self.counters
        counters.query_count += 1
        counters.xact_count += transaction_ended
        if self.awaiting_reply:  # else a ReadyForQuery nobody asked for: nothing to time
            elapsed = time.monotonic() - self.request_started_at
            counters.query_time_us += int(elapsed * 1_000_000)
            counters.query_latency.observe(elapsed)
        client = self.client_scanner.counts
        if client[_Q] + client[_S] + client[_F] == self.server_scanner.counts[_Z]:
            self.awaiting_reply = False  # every request is answered: the next one starts a new clock

    def left_server_at_rest(self) -> bool:
        """True when the server finished every request and nothing was cut mid-message."""
        client, server = self.client_scanner, self.server_scanner
        last_client = client.previous_type if self.client_terminated else client.last_type
        requests = sum(client.counts[t] for t in _SYNC_POINTS)
        return (
            not self.broken
            and not self.server_closed
            and client.at_boundary
            and server.at_boundary
            and requests == server.counts[ord("Z")]
            and last_client in _RESTFUL_LAST_CLIENT_MESSAGES
        )
