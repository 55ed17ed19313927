"""The proxy server: listeners, the session registry, pools, and cancel forwarding.

It binds only ``listen_addresses``:``port``, spawns one ClientSession per connection,
owns the PoolManager and the client authenticator, and applies reloadable settings.
Which backend is the primary is decided elsewhere (today: backend 0; the failover
issue replaces it with the cluster view); this class only asks.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Protocol

import trio

from pgbalancer.config import Config, ConfigError
from pgbalancer.ha.view import ClusterView, initial_view
from pgbalancer.pgwire.messages import CancelRequest
from pgbalancer.proxy.admin_commands import STATS_PERIOD, StatsHistory
from pgbalancer.proxy.authquery import AuthQuerySettings, AuthQuerySource
from pgbalancer.proxy.backend import (
    BackendAddress,
    BackendUnavailable,
    QuorumLost,
    ServerConnection,
    ServerCredentials,
    open_server_connection,
)
from pgbalancer.proxy.clientauth import ClientAuthenticator
from pgbalancer.proxy.netio import TcpConnection, configure_socket, connect_tcp
from pgbalancer.proxy.peering import CancelPeering, ProcessIdAllocator, open_reuseport_listeners
from pgbalancer.proxy.pool import PoolKey, PoolLimits, PoolManager, ServerPool
from pgbalancer.proxy.resultcache import CacheService
from pgbalancer.proxy.session import ClientSession
from pgbalancer.proxy.tls import TlsContexts
from pgbalancer.routing.router import Router, RoutingSettings

log = logging.getLogger(__name__)

ViewListener = Callable[[ClusterView, ClusterView, str, Mapping[str, object]], None]


class HaHooks(Protocol):
    """What the proxy asks of the health checker (pgbalancer.health.controller.HaController)."""

    def suspect_backend(self, node_id: int | None, reason: str = "") -> None: ...

    def request_probe(self) -> None: ...

    async def wait_for_primary(self, failed_node_id: int | None, deadline: float) -> bool: ...

    @property
    def holding_writes(self) -> bool: ...

    async def wait_writes_open(self, deadline: float) -> None: ...


_ACCEPT_BACKOFF = 0.05


def pool_limits(config: Config) -> PoolLimits:
    return PoolLimits(
        max_size=config.num_init_children,
        idle_timeout=config.child_life_time,
        max_sessions_per_server=config.child_max_connections,
        max_age=config.connection_life_time,
        wait_timeout=config.query_wait_timeout,
        reserve_size=config.reserve_pool_size,
        reserve_timeout=config.reserve_pool_timeout,
    )


@dataclass(frozen=True)
class ListenAddress:
    host: str
    port: int


def bind_hosts(listen_addresses: tuple[str, ...]) -> list[str | None]:
    """Hosts to bind: '*' means every interface (None for trio), otherwise each address."""
    if "*" in listen_addresses:
        return [None]
    return list(dict.fromkeys(listen_addresses))


class ProxyServer:
    """Accepts clients and serves them; one instance per node process."""

    def __init__(
        self, config: Config, userlist: Mapping[str, str], peering: CancelPeering | None = None
    ) -> None:
        self.config = config
        self.peering = peering  # set in a worker process of a multi-worker node
        self.tls = TlsContexts.from_config(config)  # built once: sessions only read it
        self.auth_query = self._auth_query_source(config, userlist)
        self.authenticator = ClientAuthenticator(config.auth_type, userlist, self.auth_query)
        self.pools = PoolManager(pool_limits(config), config.max_pool)
        self.router = Router(RoutingSettings.from_config(config))  # read/write split and balancer
        # The result cache (memory_cache_enabled; a restart-only switch): None keeps the relay's
        # hot path free of it.
        self.cache = CacheService(config) if config.memory_cache_enabled else None
        # Until the health checker reports, backend 0 is presumed primary.
        self.view_listeners: list[ViewListener] = [self._fence_on_view_change]
        self.ha: HaHooks | None = None  # set by the node when health checking runs
        # Set by the watchdog: (write?) -> why this node may not serve it now (lost quorum), or None.
        self.partition_gate: Callable[[bool], str | None] | None = None
        self.cluster_view = initial_view(
            tuple((b.node_id, b.hostname, b.port, b.weight) for b in config.backends)
        )
        self.sessions: dict[int, ClientSession] = {}
        # A worker's index sits in the top bits of its process ids, so a cancel key names its worker.
        worker_index = peering.worker_index if peering is not None else 0
        self._process_ids = ProcessIdAllocator(worker_index, start=secrets.randbelow(1 << 20) + 1)
        self.listening: list[ListenAddress] = []
        self.accepted_total = 0
        # Wired by the node, read by the admin console: RELOAD = SIGHUP, SHUTDOWN = SIGTERM.
        self.reload_callback: Callable[[], None] | None = None
        self.shutdown_callback: Callable[[], None] | None = None
        self.started_at = time.time()  # wall clock, shown by the admin console
        self.stats_history = StatsHistory(STATS_PERIOD, time.monotonic())  # SHOW STATS' avg_* window

    async def serve(
        self, *, task_status: trio.TaskStatus[list[ListenAddress]] = trio.TASK_STATUS_IGNORED
    ) -> None:
        listeners: list[trio.SocketListener] = []
        for host in bind_hosts(self.config.listen_addresses):
            if self.peering is None:
                listeners.extend(await trio.open_tcp_listeners(self.config.port, host=host))
            else:  # sibling workers bind the same port
                listeners.extend(await open_reuseport_listeners(self.config.port, host=host))
        self.listening = [ListenAddress(*listener.socket.getsockname()[:2]) for listener in listeners]
        log.info("proxy listening on %s", ", ".join(f"{a.host}:{a.port}" for a in self.listening))
        try:
            async with trio.open_nursery() as nursery:
                for listener in listeners:
                    nursery.start_soon(self._accept_loop, listener.socket, nursery)
                nursery.start_soon(self._maintain_pools)
                task_status.started(self.listening)
        finally:
            for listener in listeners:
                listener.socket.close()

    async def _accept_loop(self, listen_socket: trio.socket.SocketType, nursery: trio.Nursery) -> None:
        while True:
            try:
                sock, address = await listen_socket.accept()
            except OSError as exc:  # EMFILE and friends: back off instead of spinning
                log.warning("accept failed: %s", exc)
                await trio.sleep(_ACCEPT_BACKOFF)
                continue
            configure_socket(sock)
            self.accepted_total += 1
            peer = f"{address[0]}:{address[1]}" if isinstance(address, tuple) else str(address)
            session = ClientSession(self, TcpConnection(sock, peer), self._process_ids.next_id(self.sessions))
            nursery.start_soon(self._run_session, session)

    async def _run_session(self, session: ClientSession) -> None:
        self.sessions[session.process_id] = session
        try:
            await session.run()
        finally:
            del self.sessions[session.process_id]

    async def _maintain_pools(self) -> None:
        while True:
            await trio.sleep(1)
            self.pools.close_expired_idle()
            if self.auth_query is not None:
                self.auth_query.close_expired_idle()

    def primary_address(self) -> BackendAddress:
        """Where writes go now, from the current cluster view; BackendUnavailable if no primary is up."""
        primary = self.cluster_view.primary
        if primary is None:
            if self.ha is not None:  # so a primary that came back is noticed without waiting a period
                self.ha.request_probe()
            raise BackendUnavailable(
                f"no primary is up (cluster view epoch {self.cluster_view.epoch}); "
                "check the backends, or promote a standby"
            )
        return BackendAddress(primary.node_id, primary.host, primary.port)

    def update_cluster_view(
        self, view: ClusterView, reason: str = "", details: Mapping[str, object] | None = None
    ) -> None:
        """Adopt a newer snapshot (from the health checker, later from Raft); readers keep theirs.

        Listeners (events, metrics) hear (old, new, reason, details) and must not block.
        """
        old, self.cluster_view = self.cluster_view, view
        for listener in self.view_listeners:
            listener(old, view, reason, details or {})

    def refresh_positions(self, epoch: int, primary_id: int | None, positions: Mapping[int, int]) -> None:
        """Adopt WAL positions read between health rounds (health/positions.py), quietly: listeners
        hear nothing. Dropped if a failover or switchover changed the cluster while they were read."""
        view = self.cluster_view
        if positions and view.epoch == epoch and view.primary_id == primary_id:
            self.cluster_view = view.with_positions(positions)

    def suspect_backend(self, node_id: int, reason: str = "") -> None:
        """A server connection to ``node_id`` failed at connect or died mid-stream: have it re-probed."""
        if self.ha is not None:
            self.ha.suspect_backend(node_id, reason)

    async def acquire_backend(
        self, node_id: int, database: str, credentials: ServerCredentials, *, read_only: bool = False
    ) -> tuple[ServerPool, ServerConnection]:
        """A server connection to the backend the router chose (the primary's path waits out failovers).
        ``read_only``: the batch is a read, so a node cut off from its watchdog quorum serves it from
        the primary too under partition_read_policy = stale.

        A standby that cannot be reached is suspected at once, so it leaves the view without waiting
        for the next health round; the caller may route its read elsewhere."""
        if node_id == self.cluster_view.primary_id:
            return await self.acquire_primary(database, credentials, read_only=read_only)
        self.check_partition(write=False)
        state = self.cluster_view.backend(node_id)
        try:
            return await self._acquire_from(
                BackendAddress(state.node_id, state.host, state.port), database, credentials
            )
        except BackendUnavailable as exc:
            self.suspect_backend(node_id, f"connect failed: {exc}")
            raise

    async def acquire_primary(
        self, database: str, credentials: ServerCredentials, *, read_only: bool = False
    ) -> tuple[ServerPool, ServerConnection]:
        """A server connection to the primary. During a switchover, and when the primary cannot be
        reached (the health checker re-probes it and fails over if it is down), this waits up to
        server_connect_timeout, so a client idle between transactions continues on the new primary
        without reconnecting. Without ``read_only`` it is refused on a node cut off from its quorum."""
        self.check_partition(write=not read_only)
        deadline = trio.current_time() + self.config.server_connect_timeout
        if self.ha is not None and self.ha.holding_writes:  # a switchover: continue on the new primary
            await self.ha.wait_writes_open(deadline)
        while True:
            address: BackendAddress | None = None
            try:
                address = self.primary_address()
                return await self._acquire_from(address, database, credentials)
            except BackendUnavailable:
                failed = address.node_id if address is not None else self.cluster_view.primary_id
                if self.ha is None or trio.current_time() >= deadline:
                    raise
                if not await self.ha.wait_for_primary(failed, deadline):
                    raise

    async def acquire_for_login(
        self, database: str, credentials: ServerCredentials
    ) -> tuple[ServerPool, ServerConnection]:
        """The server connection a pooled session logs in and is greeted with: the primary's, or,
        on a node cut off from its watchdog quorum that still serves reads, a readable standby's,
        else the primary's all the same (its transactions are routed one by one afterwards, and the
        relay refuses every write then)."""
        try:
            return await self.acquire_primary(database, credentials)
        except QuorumLost as refusal:
            read_refusal = self.partition_gate(False) if self.partition_gate is not None else None
            if read_refusal is not None:  # partition_read_policy = refuse: say so, not just "writes"
                raise QuorumLost(read_refusal) from None
            view = self.cluster_view
            for standby in (s for s in view.readable() if s.node_id != view.primary_id):
                try:  # acquire_backend suspects a standby it cannot reach
                    return await self.acquire_backend(standby.node_id, database, credentials, read_only=True)
                except BackendUnavailable:  # a cut-off node's view may be stale: try the next one
                    continue
            if view.primary is not None:  # a login writes nothing; the relay gates each write
                with contextlib.suppress(BackendUnavailable):
                    return await self._acquire_from(self.primary_address(), database, credentials)
            raise refusal  # nothing answers: the client gets the quorum refusal, not a connect error

    def check_partition(self, *, write: bool) -> None:
        """QuorumLost when the watchdog says this node is cut off from the majority for too long."""
        refusal = self.partition_gate(write) if self.partition_gate is not None else None
        if refusal is not None:
            raise QuorumLost(refusal)

    async def _acquire_from(
        self, address: BackendAddress, database: str, credentials: ServerCredentials
    ) -> tuple[ServerPool, ServerConnection]:
        pool = self.pools.pool_for(PoolKey(address.node_id, database, credentials.user))

        async def open_server() -> ServerConnection:
            return await open_server_connection(
                address,
                database,
                credentials,
                timeout=self.config.server_connect_timeout,
                now=trio.current_time(),
                tls=self.tls.server,
            )

        return pool, await pool.acquire(open_server)

    async def forward_cancel(self, request: CancelRequest) -> None:
        """Act on a client's CancelRequest: cancel here, or pass it to the worker that owns the key."""
        if self.peering is None:
            await self.cancel_here(request)
        else:  # the owner's own server cancel may take up to server_connect_timeout
            await self.peering.dispatch(request, self.cancel_here, 2 * self.config.server_connect_timeout)

    async def cancel_here(self, request: CancelRequest) -> None:
        """Send the server-side cancel for this process's session that owns this (pid, key), if any."""
        session = self.sessions.get(request.process_id)
        if session is None or session.secret_key != request.secret_key:
            return  # PostgreSQL also ignores unknown cancel keys silently
        server = session.server
        if server is None:
            return
        cancel = CancelRequest(server.backend_pid, server.backend_secret).encode()
        try:
            with trio.fail_after(self.config.server_connect_timeout):
                sock = await connect_tcp(
                    server.address.host, server.address.port, self.config.server_connect_timeout
                )
                try:
                    await sock.send_all(cancel)
                    await sock.recv_into(bytearray(1))  # the server closes after reading it
                finally:
                    sock.close()
        except (OSError, BackendUnavailable, trio.TooSlowError) as exc:
            log.warning("could not forward cancel to %s: %s", server.address, exc)

    def _fence_on_view_change(
        self, old: ClusterView, new: ClusterView, reason: str, details: Mapping[str, object]
    ) -> None:
        del reason, details
        if old.primary_id is not None and new.primary_id != old.primary_id:
            self.fence_backend(old.primary_id, f"failover: backend {old.primary_id} is no longer the primary")
        for state in new:
            if not state.is_up and old.has(state.node_id) and old.backend(state.node_id).is_up:
                self._close_idle_servers_of(state.node_id)

    def fence_backend(self, node_id: int, reason: str) -> None:
        """Stop using a backend now: close its idle server connections and end the sessions holding
        one (their clients get 57P01 with ``reason``). Never blocks."""
        self._close_idle_servers_of(node_id)
        for session in list(self.sessions.values()):
            server = session.server
            if server is not None and server.address.node_id == node_id:
                session.request_shutdown(reason)

    def _close_idle_servers_of(self, node_id: int) -> None:
        for pool in self.pools.pools():
            if pool.key.backend_id == node_id:
                pool.close_idle()

    def apply_config(self, config: Config, userlist: Mapping[str, str]) -> None:
        """Apply reloadable settings; listeners and backends need a restart."""
        try:
            self.tls = TlsContexts.from_config(config)
        except ConfigError as exc:  # load_config checked the files, but they may have changed since
            log.error("keeping the previous TLS settings: %s", exc)
        self.config = config
        self.router.configure(RoutingSettings.from_config(config))
        if self.auth_query is not None:
            self.auth_query.close()  # auth_user, its password or the query may have changed
        self.auth_query = self._auth_query_source(config, userlist)
        self.authenticator = ClientAuthenticator(config.auth_type, userlist, self.auth_query)
        self.pools.set_limits(pool_limits(config), config.max_pool)
        if self.cache is not None:
            self.cache.apply_config(config)

    def _auth_query_source(self, config: Config, userlist: Mapping[str, str]) -> AuthQuerySource | None:
        if not config.auth_user:
            return None
        return AuthQuerySource(
            AuthQuerySettings.from_config(config), userlist, self.primary_address, self._open_for_auth_query
        )

    async def _open_for_auth_query(
        self, address: BackendAddress, database: str, credentials: ServerCredentials
    ) -> ServerConnection:
        return await open_server_connection(
            address,
            database,
            credentials,
            timeout=self.config.server_connect_timeout,
            now=trio.current_time(),
            tls=self.tls.server,
        )

    def request_shutdown(self) -> None:
        for session in list(self.sessions.values()):
            session.request_shutdown()

    def statistics(self) -> dict[str, object]:
        return {
            "clients": len(self.sessions),
            "accepted_total": self.accepted_total,
            "pools": [stats.__dict__ for stats in self.pools.statistics()],
        }
