"""The admin console shell: serves the virtual database ``pgbalancer`` (alias ``pgbouncer``).

An authenticated client that asked for an admin database lands here instead of getting a server
connection. Users in ``admin_users`` may run PgBouncer's console commands over the simple query
protocol (SHOW POOLS/STATS/SERVERS/CLIENTS/DATABASES/CONFIG/VERSION/LISTS/..., PAUSE, RESUME,
KILL, KILL_CLIENT, RELOAD, SHUTDOWN) and Pgpool-II's SHOW POOL_NODES. This module reads the
live proxy state into snapshots and performs the commands; parsing and every byte of the
answers come from the pure ``admin_commands``.

Never: touch a backend on behalf of the console (except the TCP probe of SHOW POOL_NODES), show
a secret (SHOW CONFIG uses the redacted settings), or let one console's error end the node.
"""

from __future__ import annotations

import contextlib
import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from pgbalancer import __version__
from pgbalancer.config import BackendConfig, redacted_settings
from pgbalancer.ha.view import BackendState, BackendStatus
from pgbalancer.pgwire import messages as pgmsg
from pgbalancer.pgwire.errors import ProtocolError, SqlState, error_response
from pgbalancer.proxy.admin_commands import (
    ADMIN_DATABASE,
    ADMIN_DATABASES,
    CONFIG_FILE_ERROR,
    OBJECT_NOT_IN_PREREQUISITE_STATE,
    UNDEFINED_OBJECT,
    AdminCommand,
    AdminCommandError,
    BackendNodeRow,
    ConnectionKind,
    ConnectionRow,
    DatabaseRow,
    PoolRow,
    Show,
    StatTotals,
    Verb,
    command_complete,
    empty_query_response,
    help_response,
    parse_admin_command,
    set_ignored_response,
    show_config,
    show_connections,
    show_databases,
    show_lists,
    show_parameter,
    show_pool_nodes,
    show_pools,
    show_state,
    show_stats,
    show_stats_averages,
    show_stats_totals,
    show_totals,
    show_version,
)
from pgbalancer.proxy.netio import MessageChannel, PeerClosed, PgSocket, connect_tcp
from pgbalancer.proxy.pool import ServerPool
from pgbalancer.proxy.tls import tls_description
from pgbalancer.routing.router import SessionRouting

if TYPE_CHECKING:
    from pgbalancer.proxy.backend import ServerConnection
    from pgbalancer.proxy.server import ProxyServer
    from pgbalancer.proxy.session import ClientSession

__all__ = ["ADMIN_DATABASES", "serve_admin_console"]

log = logging.getLogger(__name__)

_POLL_INTERVAL = 0.05  # PAUSE and KILL watch the pools this often
_KILL_GRACE = 5.0  # how long KILL waits for its sessions to finish leaving
_RELOAD_WAIT = 5.0  # how long RELOAD waits for the new config to be applied
_PROBE_TIMEOUT = 1.0  # SHOW POOL_NODES' TCP probe of each backend
_ADMIN_POOL_MODE = "statement"  # what PgBouncer shows for its console "pool"
_ADMIN_POOL_SIZE = 2
# Client messages of the extended query protocol: PgBouncer's console refuses them too.
_EXTENDED_PROTOCOL = frozenset(b"PBEDSCHFdcf")


async def serve_admin_console(proxy: ProxyServer, session: ClientSession, channel: MessageChannel) -> None:
    """Run the console for an authenticated client until it leaves (or SHUTDOWN)."""
    if session.user not in proxy.config.admin_users:
        log.info("refused admin console to user %r from %s", session.user, session.client.peer)
        await _send_quietly(
            channel,
            error_response(
                SqlState.INVALID_AUTHORIZATION_SPECIFICATION,
                "not allowed",
                severity="FATAL",
                detail=f'user "{session.user}" is not in admin_users, so it may not use the admin console',
                hint="list the user in admin_users in pgbalancer.conf and reload",
            ),
        )
        return
    await _Console(proxy, session, channel).run()


async def _send_quietly(channel: MessageChannel, data: bytes) -> None:
    # Shield first, deadline inside: the deadline must still bound the send.
    with trio.CancelScope(shield=True), trio.move_on_after(1), contextlib.suppress(PeerClosed):
        await channel.send(data)


class _Console:
    """One admin client's command loop (simple query protocol only)."""

    def __init__(self, proxy: ProxyServer, session: ClientSession, channel: MessageChannel) -> None:
        self.proxy = proxy
        self.session = session
        self.channel = channel

    async def run(self) -> None:
        await self.channel.send(self._greeting())
        while True:
            try:
                message = await self.channel.read_message()
            except PeerClosed:
                return
            except ProtocolError as exc:
                await _send_quietly(self.channel, exc.to_response())
                return
            if message.type == b"X":
                return
            if message.type != b"Q":
                await _send_quietly(self.channel, _unsupported_message(message.type))
                return
            if not await self._answer(message.body):
                return

    def _greeting(self) -> bytes:
        parameters = {
            "server_version": f"{__version__}/pgbalancer",
            "client_encoding": "UTF8",
            "server_encoding": "UTF8",
            "DateStyle": "ISO",
            "TimeZone": "GMT",
            "standard_conforming_strings": "on",
            "is_superuser": "on",
        }
        greeting = b"".join(pgmsg.parameter_status(name, value) for name, value in parameters.items())
        greeting += pgmsg.backend_key_data(self.session.process_id, self.session.secret_key)
        return greeting + pgmsg.ready_for_query(b"I")

    async def _answer(self, body: bytes) -> bool:
        """Run one Query and send its answer; False when the session must end (SHUTDOWN)."""
        text = body[:-1].decode("utf-8", errors="replace") if body.endswith(b"\0") else ""
        if not body.endswith(b"\0") or "\0" in text:
            await _send_quietly(self.channel, ProtocolError("invalid query message").to_response())
            return False
        try:
            command = parse_admin_command(text)
            if command is not None and command.verb is Verb.SHUTDOWN:
                return await self._shutdown()
            reply = empty_query_response() if command is None else await self._execute(command)
        except AdminCommandError as exc:
            reply = exc.to_response()
        await self.channel.send(reply + pgmsg.ready_for_query(b"I"))
        return True

    async def _execute(self, command: AdminCommand) -> bytes:
        if command.verb is not Verb.SHOW:
            log.info("admin console: %s %s by user %r", command.verb, command.argument, self.session.user)
        match command.verb:
            case Verb.SHOW:
                return await self._show(Show(command.argument))
            case Verb.SHOW_PARAMETER:
                return show_parameter(command.argument).encode()
            case Verb.SET_PARAMETER:
                return set_ignored_response()
            case Verb.PAUSE:
                return await self._pause(command.database)
            case Verb.RESUME:
                return self._resume(command.database)
            case Verb.KILL:
                return await self._kill(command.database)
            case Verb.KILL_CLIENT:
                return await self._kill_client(int(command.argument))
            case Verb.RELOAD:
                return await self._reload()
        raise AssertionError(f"unhandled admin command {command}")

    # ------------------------------------------------------------------ SHOW

    async def _show(self, subject: Show) -> bytes:
        proxy = self.proxy
        if subject is Show.HELP:
            return help_response()
        if subject is Show.POOL_NODES:
            return show_pool_nodes(await _backend_rows(proxy)).encode()
        if subject in (Show.STATS, Show.STATS_TOTALS, Show.STATS_AVERAGES, Show.TOTALS):
            return _show_stats(proxy, subject)
        if subject is Show.POOLS:
            return show_pools(_pool_rows(proxy)).encode()
        if subject is Show.CLIENTS:
            return show_connections(_client_rows(proxy, _Clock.now())).encode()
        if subject is Show.SERVERS:
            return show_connections(_server_rows(proxy, _Clock.now())).encode()
        if subject is Show.DATABASES:
            return show_databases(_database_rows(proxy)).encode()
        if subject is Show.CONFIG:
            return show_config(redacted_settings(proxy.config)).encode()
        if subject is Show.VERSION:
            return show_version(f"pgbalancer {__version__}").encode()
        if subject is Show.LISTS:
            return show_lists(_list_counts(proxy)).encode()
        assert subject is Show.STATE
        return show_state(paused=proxy.pools.pause_gate.all_paused).encode()

    # ------------------------------------------------------------------ PAUSE / RESUME / KILL

    async def _pause(self, database: str | None) -> bytes:
        _refuse_admin_database("pause", database)
        pools = self.proxy.pools
        if database is None and pools.pause_gate.all_paused:
            raise AdminCommandError("already suspended/paused", OBJECT_NOT_IN_PREREQUISITE_STATE)
        pools.pause(database)
        # As PgBouncer: PAUSE returns once every server connection is released (and closed).
        while pools.busy_server_count(database) > 0:
            await trio.sleep(_POLL_INTERVAL)
            if not _is_paused(self.proxy, database):
                raise AdminCommandError(
                    "PAUSE was interrupted: a RESUME reopened the pools before they drained",
                    SqlState.QUERY_CANCELED,
                )
            pools.close_idle_of(database)
        pools.close_idle_of(database)
        return command_complete("PAUSE")

    def _resume(self, database: str | None) -> bytes:
        _refuse_admin_database("resume", database)
        gate = self.proxy.pools.pause_gate
        if self.proxy.pools.resume(database):
            return command_complete("RESUME")
        if database is None:
            raise AdminCommandError("pooler is not paused/suspended", OBJECT_NOT_IN_PREREQUISITE_STATE)
        hint = "everything is paused: RESUME without a database name reopens it" if gate.all_paused else None
        raise AdminCommandError(
            f"database {database} is not paused", OBJECT_NOT_IN_PREREQUISITE_STATE, hint=hint
        )

    async def _kill(self, database: str | None) -> bytes:
        """Drop the database's clients and server connections now; new clients wait for RESUME."""
        _refuse_admin_database("kill", database)
        self.proxy.pools.kill(database)
        targets = [s for s in self.proxy.sessions.values() if _is_pooled_client(s, database)]
        remaining = await _stop_sessions(self.proxy, targets)
        self.proxy.pools.close_idle_of(database)
        if remaining:
            log.warning("KILL %s: %d sessions still starting could not be stopped", database, remaining)
        return command_complete("KILL")

    async def _kill_client(self, client_id: int) -> bytes:
        session = self.proxy.sessions.get(client_id)
        if session is None:
            raise AdminCommandError("client not found", UNDEFINED_OBJECT, hint="see SHOW CLIENTS")
        if session.database in ADMIN_DATABASES:
            raise AdminCommandError(
                "cannot kill an admin console connection", OBJECT_NOT_IN_PREREQUISITE_STATE
            )
        if await _stop_sessions(self.proxy, [session]):
            raise AdminCommandError(
                f"client {client_id} is still logging in or waiting for a server connection; try again",
                OBJECT_NOT_IN_PREREQUISITE_STATE,
            )
        return command_complete("KILL_CLIENT")

    # ------------------------------------------------------------------ RELOAD / SHUTDOWN

    async def _reload(self) -> bytes:
        """Exactly what SIGHUP does; answered once this process runs the new config."""
        reload = self.proxy.reload_callback
        if reload is None:
            raise _not_wired("RELOAD")
        before = self.proxy.config
        reload()
        # A worker's reload arrives as a signal from its supervisor, so wait for it (bounded);
        # a reload that fails keeps the running config object.
        with trio.move_on_after(_RELOAD_WAIT):
            while self.proxy.config is before:
                await trio.sleep(_POLL_INTERVAL)
        if self.proxy.config is before:
            raise AdminCommandError("RELOAD failed, see logs for additional details", CONFIG_FILE_ERROR)
        return command_complete("RELOAD")

    async def _shutdown(self) -> bool:
        shutdown = self.proxy.shutdown_callback
        if shutdown is None:
            await self.channel.send(_not_wired("SHUTDOWN").to_response() + pgmsg.ready_for_query(b"I"))
            return True
        log.info("admin console: SHUTDOWN by user %r", self.session.user)
        await _send_quietly(self.channel, command_complete("SHUTDOWN") + pgmsg.ready_for_query(b"I"))
        shutdown()
        return False  # the console closes at once so the node need not wait for it


def _not_wired(command: str) -> AdminCommandError:
    return AdminCommandError(
        f"{command} is not available: this proxy runs without a pgbalancer node",
        SqlState.FEATURE_NOT_SUPPORTED,
    )


def _unsupported_message(message_type: bytes) -> bytes:
    if message_type[0] in _EXTENDED_PROTOCOL:
        return error_response(
            SqlState.FEATURE_NOT_SUPPORTED,
            "extended query protocol not supported by admin console",
            severity="FATAL",
            hint="use the simple query protocol (psql, or psycopg's ClientCursor)",
        )
    return error_response(
        SqlState.PROTOCOL_VIOLATION,
        f"unsupported packet type for admin console: {message_type!r}",
        severity="FATAL",
    )


def _refuse_admin_database(verb: str, database: str | None) -> None:
    if database in ADMIN_DATABASES:
        raise AdminCommandError(f"cannot {verb} admin db: {database}", OBJECT_NOT_IN_PREREQUISITE_STATE)


def _is_paused(proxy: ProxyServer, database: str | None) -> bool:
    gate = proxy.pools.pause_gate
    return gate.all_paused if database is None else gate.blocks(database)


def _is_pooled_client(session: ClientSession, database: str | None) -> bool:
    """A client that uses (or will use) pools: logged-in, not a console, of ``database`` if given."""
    if not session.user or session.database in ADMIN_DATABASES:
        return False
    return database is None or session.database == database


async def _stop_sessions(proxy: ProxyServer, sessions: list[ClientSession]) -> int:
    """Ask sessions to end and wait (bounded) until they are gone; how many are still there."""
    deadline = trio.current_time() + _KILL_GRACE
    while True:
        alive = [s for s in sessions if proxy.sessions.get(s.process_id) is s]
        if not alive or trio.current_time() >= deadline:
            return len(alive)
        for session in alive:  # again each round: one may have reached its relay meanwhile
            session.request_shutdown("administrator command (KILL)")
        await trio.sleep(_POLL_INTERVAL)


# --------------------------------------------------------------------------- snapshots


@dataclass(frozen=True)
class _Clock:
    """Converts trio times (what pools and connections record) to wall-clock epoch seconds."""

    wall: float
    trio_now: float

    @classmethod
    def now(cls) -> _Clock:
        return cls(time.time(), trio.current_time())

    def to_wall(self, trio_time: float | None) -> float | None:
        return None if trio_time is None else self.wall - (self.trio_now - trio_time)


def _logged_in_sessions(proxy: ProxyServer) -> list[ClientSession]:
    return [s for s in proxy.sessions.values() if s.user]


def _console_sessions(proxy: ProxyServer) -> list[ClientSession]:
    return [s for s in _logged_in_sessions(proxy) if s.database in ADMIN_DATABASES]


def _pool_rows(proxy: ProxyServer) -> list[PoolRow]:
    clients: dict[tuple[str, str], int] = defaultdict(int)
    for session in _logged_in_sessions(proxy):
        if session.database not in ADMIN_DATABASES:
            clients[session.database, session.user] += 1
    grouped: dict[tuple[str, str], list[ServerPool]] = defaultdict(list)
    for pool in proxy.pools.pools():
        grouped[pool.key.database, pool.key.user].append(pool)
    now = trio.current_time()
    rows = [
        PoolRow(
            ADMIN_DATABASE, ADMIN_DATABASE, len(_console_sessions(proxy)), 0, 0, 0, 0, 0, _ADMIN_POOL_MODE
        )
    ]
    for database, user in sorted(clients.keys() | grouped.keys()):
        pools = grouped.get((database, user), [])
        waiting = sum(p.waiting_clients for p in pools)
        started = [t for p in pools if (t := p.longest_wait_started()) is not None]
        rows.append(
            PoolRow(
                database=database,
                user=user,
                cl_active=max(0, clients.get((database, user), 0) - waiting),
                cl_waiting=waiting,
                sv_active=sum(p.active for p in pools),
                sv_idle=sum(p.idle_count for p in pools),
                sv_login=sum(p.logging_in for p in pools),
                maxwait_us=int((now - min(started)) * 1_000_000) if started else 0,
                pool_mode=str(proxy.config.pool_mode_for(database, user)),
            )
        )
    return rows


def _split_peer(peer: str) -> tuple[str, int]:
    host, _, port = peer.rpartition(":")
    return (host.strip("[]"), int(port)) if port.isdigit() else (peer, 0)


def _local_address(sock: PgSocket) -> tuple[str, int]:
    raw = getattr(sock, "sock", None)  # plain TCP exposes its socket; TLS does not (yet)
    try:
        name = raw.getsockname() if raw is not None else None
    except OSError:
        name = None
    return (str(name[0]), int(name[1])) if isinstance(name, tuple) else ("", 0)


def _ptr(obj: object) -> str:
    return f"{id(obj):#x}"


def _client_rows(proxy: ProxyServer, clock: _Clock) -> list[ConnectionRow]:
    rows = []
    for session in _logged_in_sessions(proxy):
        server = session.server
        addr, port = _split_peer(session.client.peer)
        local_addr, local_port = _local_address(session.client)
        console = session.database in ADMIN_DATABASES
        rows.append(
            ConnectionRow(
                kind=ConnectionKind.CLIENT,
                user=session.user,
                database=session.database,
                state="active" if server is not None or console else "idle",
                addr=addr,
                port=port,
                local_addr=local_addr,
                local_port=local_port,
                # ClientSession does not record these yet; shown as soon as it does.
                connect_time=clock.to_wall(getattr(session, "connected_at", None)),
                request_time=clock.to_wall(getattr(session, "last_request_at", None)),
                wait_us=0,
                ptr=_ptr(session),
                link=_ptr(server) if server is not None else "",
                remote_pid=0,
                tls=tls_description(session.client),
                application_name=str(getattr(session, "application_name", "") or ""),
                id=session.process_id,
            )
        )
    return rows


def _server_rows(proxy: ProxyServer, clock: _Clock) -> list[ConnectionRow]:
    linked = {id(s.server): s for s in proxy.sessions.values() if s.server is not None}
    rows = [_server_row(session.server, "active", session, clock) for session in linked.values()]
    for pool in proxy.pools.pools():
        rows.extend(_server_row(server, "idle", None, clock) for server in pool.idle_servers())
    return rows


def _server_row(
    server: ServerConnection | None, state: str, client: ClientSession | None, clock: _Clock
) -> ConnectionRow:
    assert server is not None
    local_addr, local_port = _local_address(server.socket)
    return ConnectionRow(
        kind=ConnectionKind.SERVER,
        user=server.user,
        database=server.database,
        state=state,
        addr=server.address.host,
        port=server.address.port,
        local_addr=local_addr,
        local_port=local_port,
        connect_time=clock.to_wall(server.created_at),
        request_time=clock.to_wall(server.last_used),
        wait_us=0,
        ptr=_ptr(server),
        link=_ptr(client) if client is not None else "",
        remote_pid=server.backend_pid,
        tls=tls_description(server.socket),
        application_name=str(getattr(client, "application_name", "") or ""),
        id=server.backend_pid,
    )


def _database_names(proxy: ProxyServer) -> list[str]:
    names = {p.key.database for p in proxy.pools.pools()} | proxy.pools.pause_gate.paused_databases
    names |= {s.database for s in _logged_in_sessions(proxy) if s.database not in ADMIN_DATABASES}
    return sorted(names)


def _database_rows(proxy: ProxyServer) -> list[DatabaseRow]:
    config, pools = proxy.config, proxy.pools
    primary = proxy.cluster_view.backend(proxy.cluster_view.primary_id or 0)  # shown even when down
    sessions = _logged_in_sessions(proxy)
    rows = [
        DatabaseRow(
            name=ADMIN_DATABASE,
            host=None,
            port=config.port,
            pool_size=_ADMIN_POOL_SIZE,
            server_lifetime=0,
            current_connections=0,
            current_client_connections=len(_console_sessions(proxy)),
            paused=False,
            pool_mode=_ADMIN_POOL_MODE,
            force_user=ADMIN_DATABASE,
        )
    ]
    for name in _database_names(proxy):
        rows.append(
            DatabaseRow(
                name=name,
                host=primary.host,
                port=primary.port,
                pool_size=config.num_init_children,
                server_lifetime=config.connection_life_time,
                current_connections=sum(p.active + p.idle_count for p in pools.pools(name)),
                current_client_connections=sum(1 for s in sessions if s.database == name),
                paused=pools.pause_gate.blocks(name),
                pool_mode=_database_pool_mode(proxy, name),
                reserve_pool_size=config.reserve_pool_size,
            )
        )
    return rows


def _database_pool_mode(proxy: ProxyServer, database: str) -> str | None:
    """The database's own pool_mode override, or None (PgBouncer's NULL) when pool_mode applies."""
    override = dict(proxy.config.database_pool_mode).get(database)
    return str(override) if override is not None else None


def _stat_totals(proxy: ProxyServer) -> dict[str, StatTotals]:
    totals: dict[str, StatTotals] = {ADMIN_DATABASE: StatTotals()}
    for key, c in proxy.pools.counters_by_pool():
        pool_totals = StatTotals(
            server_assignment_count=c.server_assignment_count,
            xact_count=c.xact_count,
            query_count=c.query_count,
            bytes_received=c.bytes_received,
            bytes_sent=c.bytes_sent,
            xact_time_us=c.xact_time_us,
            query_time_us=c.query_time_us,
            wait_time_us=c.wait_time_us,
        )
        totals[key.database] = totals.get(key.database, StatTotals()) + pool_totals
    return totals


def _show_stats(proxy: ProxyServer, subject: Show) -> bytes:
    totals = _stat_totals(proxy)
    averages = proxy.stats_history.averages(time.monotonic(), totals)
    if subject is Show.STATS:
        return show_stats(totals, averages).encode()
    if subject is Show.STATS_TOTALS:
        return show_stats_totals(totals).encode()
    if subject is Show.STATS_AVERAGES:
        return show_stats_averages(averages).encode()
    return show_totals(totals, averages).encode()


def _list_counts(proxy: ProxyServer) -> dict[str, int]:
    sessions = list(proxy.sessions.values())
    pools = proxy.pools.pools()
    users = {s.user for s in sessions if s.user} | {p.key.user for p in pools}
    return {
        "databases": len(_database_names(proxy)) + 1,  # + the console's own
        "users": len(users),
        "pools": len({(p.key.database, p.key.user) for p in pools}) + 1,
        "used_clients": len(sessions),
        "login_clients": sum(1 for s in sessions if not s.user),
        "used_servers": sum(p.active + p.idle_count for p in pools),
    }


async def _backend_rows(proxy: ProxyServer) -> list[BackendNodeRow]:
    backends = proxy.config.backends
    reachable: dict[int, bool] = {}
    async with trio.open_nursery() as nursery:
        for backend in backends:
            nursery.start_soon(_probe, backend.node_id, backend.hostname, backend.port, reachable)
    view = proxy.cluster_view
    readers = {state.node_id for state in proxy.router.read_candidates(view, SessionRouting())}
    if not proxy.config.load_balance_mode:
        readers &= {view.primary_id}
    pools_by_node: dict[int, list[ServerPool]] = defaultdict(list)
    for pool in proxy.pools.pools():
        pools_by_node[pool.key.backend_id].append(pool)
    return [
        _backend_row(
            proxy,
            b,
            view.backend(b.node_id) if view.has(b.node_id) else None,
            view.primary_id,
            reachable.get(b.node_id, False),
            b.node_id in readers,
            pools_by_node,
        )
        for b in backends
    ]


_POOLNODES_STATUS = {
    BackendStatus.UP: "up",
    BackendStatus.DOWN: "down",
    BackendStatus.QUARANTINED: "quarantine",
}


def _backend_row(
    proxy: ProxyServer,
    backend: BackendConfig,
    state: BackendState | None,
    primary_id: int | None,
    up: bool,
    reads_here: bool,
    pools_by_node: dict[int, list[ServerPool]],
) -> BackendNodeRow:
    """Pgpool-II's columns from the cluster view: ``status``/``role`` are what pgbalancer uses the
    node as (pgpool's "waiting" is up without a pooled connection yet), ``pg_role`` what the last
    health probe found, ``pg_status`` whether a TCP connect works right now, ``replication_delay``
    the lag in bytes behind the primary, ``load_balance_node`` whether reads may go there now."""
    node_id = backend.node_id
    connected = proxy.pools.server_connections_to(node_id) > 0
    status = _POOLNODES_STATUS[state.status] if state is not None else ("up" if up else "down")
    if status == "up" and not connected:
        status = "waiting"
    return BackendNodeRow(
        node_id=node_id,
        hostname=backend.hostname,
        port=backend.port,
        status=status,
        pg_status="up" if up else "down",
        weight=state.weight if state is not None else backend.weight,
        role="primary" if node_id == primary_id else "standby",
        pg_role=str(state.role) if state is not None else "unknown",
        select_cnt=sum(p.counters.query_count for p in pools_by_node.get(node_id, [])),
        load_balance_node=reads_here,
        replication_delay=(state.lag_bytes or 0) if state is not None else 0,
        last_status_change=proxy.started_at,
    )


async def _probe(node_id: int, host: str, port: int, results: dict[int, bool]) -> None:
    try:
        sock = await connect_tcp(host, port, _PROBE_TIMEOUT)
    except OSError:
        results[node_id] = False
        return
    sock.close()
    results[node_id] = True
