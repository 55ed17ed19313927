"""Server connection pools, one per backend x database x user, with bounded waiting.

Mapping of the pgpool-style settings (documented in docs/configuration.md):

* ``num_init_children``: the most server connections one pool holds (active + idle);
* ``max_pool``: how many distinct database/user pools one backend may hold, so one
  backend sees at most ``num_init_children x max_pool`` connections from a worker process;
* ``child_life_time``: an idle server connection older than this (idle time) is closed;
* ``child_max_connections``: client sessions one server connection serves before retiring;
* ``connection_life_time``: the maximum age of a server connection.

The pool lends and takes back connections; it never decides routing and never
touches the bytes a client sends.
"""

from __future__ import annotations

import contextlib
from collections import deque
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import trio

from pgbalancer.proxy.backend import ServerConnection
from pgbalancer.proxy.latency import LatencyHistogram


@dataclass(frozen=True)
class PoolKey:
    backend_id: int
    database: str
    user: str

    def __str__(self) -> str:
        return f"{self.database}/{self.user}@backend{self.backend_id}"


@dataclass(frozen=True)
class PoolLimits:
    max_size: int
    idle_timeout: float
    max_sessions_per_server: int
    max_age: float
    wait_timeout: float
    reserve_size: int = 0  # extra connections for clients that waited reserve_timeout
    reserve_timeout: float = 5.0


@dataclass(frozen=True)
class PoolStatistics:
    key: PoolKey
    active: int
    idle: int
    waiting: int
    max_size: int
    opened_total: int
    closed_total: int


class PoolExhausted(Exception):
    """No server connection could be had in time or within limits (SQLSTATE 53300)."""


class PoolKilled(PoolExhausted):
    """The database was killed (admin console KILL) while this client waited for a server."""


@dataclass(slots=True)
class PoolCounters:
    """Cumulative traffic and timings of one pool, for SHOW STATS and metrics (never reset).

    ``ServerPool.acquire`` feeds the wait fields and ``server_assignment_count``; the relay
    feeds the rest. Times are microseconds; ``query_latency`` holds the same statements as
    ``query_count`` by duration (for /metrics).
    """

    xact_count: int = 0
    query_count: int = 0
    bytes_received: int = 0
    bytes_sent: int = 0
    xact_time_us: int = 0
    query_time_us: int = 0
    wait_time_us: int = 0
    max_wait_us: int = 0
    server_assignment_count: int = 0
    query_latency: LatencyHistogram = field(default_factory=LatencyHistogram)


class PauseGate:
    """Whether clients may get a server connection now: the admin console's PAUSE, RESUME and KILL.

    A database is closed while it is paused by name or everything is paused. An acquire that
    finds it closed waits until it opens; if the database is killed meanwhile, it fails with
    PoolKilled instead (KILL drops the clients that were there, later ones wait for RESUME).
    """

    def __init__(self) -> None:
        self.all_paused = False
        self.paused_databases: set[str] = set()
        self._kills: dict[str | None, int] = {}  # kill generation per database; None = all
        self._changed = trio.Event()

    def blocks(self, database: str) -> bool:
        return self.all_paused or database in self.paused_databases

    def pause(self, database: str | None) -> None:
        if database is None:
            self.all_paused = True
        else:
            self.paused_databases.add(database)

    def resume(self, database: str | None) -> bool:
        """Open one database (or everything, None); False if it was not paused."""
        if database is None:
            was_paused = self.all_paused or bool(self.paused_databases)
            self.all_paused = False
            self.paused_databases.clear()
        else:
            was_paused = database in self.paused_databases
            self.paused_databases.discard(database)
        self._notify()
        return was_paused

    def kill(self, database: str | None) -> None:
        """Pause, and make every acquire already waiting here fail."""
        self.pause(database)
        self._kills[database] = self._kills.get(database, 0) + 1
        self._notify()

    async def wait_open(self, database: str) -> None:
        """Wait until ``database`` opens; PoolKilled if it is killed meanwhile."""
        kills_before = self._kill_generation(database)
        while self.blocks(database):
            await self._changed.wait()
            if self._kill_generation(database) != kills_before:
                raise PoolKilled(
                    f"database {database} was killed on the admin console (KILL) while this client "
                    "waited for a server connection; reconnect after RESUME"
                )

    def _kill_generation(self, database: str) -> tuple[int, int]:
        return self._kills.get(None, 0), self._kills.get(database, 0)

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()


def is_retired(server: ServerConnection, limits: PoolLimits, now: float) -> bool:
    """Whether a returned or idle server connection must be closed rather than lent."""
    if limits.max_sessions_per_server and server.sessions_served >= limits.max_sessions_per_server:
        return True
    if limits.max_age and now - server.created_at >= limits.max_age:
        return True
    return bool(limits.idle_timeout and now - server.last_used >= limits.idle_timeout)


OpenServer = Callable[[], Awaitable[ServerConnection]]


class ServerPool:
    """Connections for one PoolKey. ``acquire`` waits in a bounded queue; ``release`` returns."""

    def __init__(self, key: PoolKey, limits: PoolLimits, pause_gate: PauseGate | None = None) -> None:
        self.key = key
        self.limits = limits
        self.pause_gate = pause_gate if pause_gate is not None else PauseGate()
        self.counters = PoolCounters()
        self._waiting_since: dict[object, float] = {}  # lease -> when its client began to wait
        self._idle: deque[ServerConnection] = deque()
        self._slots = trio.CapacityLimiter(limits.max_size)
        self._reserve = trio.CapacityLimiter(max(1, limits.reserve_size))
        self._leases: dict[int, object] = {}
        self._limiter_of: dict[object, trio.CapacityLimiter] = {}  # lease -> the limiter it holds
        self.opened_total = 0
        self.closed_total = 0

    def set_limits(self, limits: PoolLimits) -> None:
        self.limits = limits
        self._slots.total_tokens = limits.max_size
        self._reserve.total_tokens = max(1, limits.reserve_size)

    @property
    def active(self) -> int:
        return len(self._leases)

    @property
    def idle_count(self) -> int:
        return len(self._idle)

    @property
    def waiting(self) -> int:
        return self._slots.statistics().tasks_waiting

    async def acquire(self, open_server: OpenServer) -> ServerConnection:
        """Lend a live connection, opening one if below the limit; PoolExhausted on timeout."""
        lease = object()
        queued_at = trio.current_time()
        if self._took_free_slot(lease):  # the common case: no queue, no timers
            wait = None
        else:
            with self._queued(lease, queued_at), trio.move_on_after(self.limits.wait_timeout) as wait:
                if self.pause_gate.blocks(self.key.database):
                    await self.pause_gate.wait_open(self.key.database)
                self._limiter_of[lease] = await self._take_slot(lease)
        if wait is not None:
            self._raise_if_timed_out(wait)
        now = queued_at if wait is None else trio.current_time()  # no wait: still the same instant
        try:
            server = self._take_idle(now)
            server_was_idle = server is not None
            if server is None:
                server = await open_server()
                self.opened_total += 1
        except BaseException:
            self._limiter_of.pop(lease).release_on_behalf_of(lease)
            raise
        self._leases[id(server)] = lease
        self._count_assignment(queued_at, now if server_was_idle else trio.current_time())
        return server

    def _took_free_slot(self, lease: object) -> bool:
        """Take a regular slot at once if one is free and nothing holds clients back."""
        if self.pause_gate.blocks(self.key.database) or self._waiting_since:
            return False  # keep the queue fair: waiters go first
        try:
            self._slots.acquire_on_behalf_of_nowait(lease)
        except trio.WouldBlock:
            return False
        self._limiter_of[lease] = self._slots
        return True

    def _raise_if_timed_out(self, wait: trio.CancelScope) -> None:
        if wait.cancelled_caught and self.pause_gate.blocks(self.key.database):
            raise PoolExhausted(
                f"database {self.key.database} stayed paused (PAUSE on the admin console) for "
                f"{self.limits.wait_timeout:g}s while this client waited; RESUME it, then reconnect"
            )
        if wait.cancelled_caught:
            raise PoolExhausted(
                f"no server connection free in pool {self.key} after waiting {self.limits.wait_timeout:g}s "
                f"(all {self.limits.max_size} in use); raise num_init_children or reduce client concurrency"
            )

    async def _take_slot(self, lease: object) -> trio.CapacityLimiter:
        """A regular slot; once the client has waited reserve_timeout, a reserve slot will do."""
        if not self.limits.reserve_size:
            await self._slots.acquire_on_behalf_of(lease)
            return self._slots
        with trio.move_on_after(self.limits.reserve_timeout):
            await self._slots.acquire_on_behalf_of(lease)
            return self._slots
        won: list[trio.CapacityLimiter] = []

        async def race(limiter: trio.CapacityLimiter, scope: trio.CancelScope) -> None:
            await limiter.acquire_on_behalf_of(lease)
            won.append(limiter)
            scope.cancel()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(race, self._slots, nursery.cancel_scope)
            nursery.start_soon(race, self._reserve, nursery.cancel_scope)
        for extra in won[1:]:  # both were granted in the same tick: keep one
            extra.release_on_behalf_of(lease)
        return won[0]

    @contextlib.contextmanager
    def _queued(self, lease: object, since: float) -> Iterator[None]:
        self._waiting_since[lease] = since
        try:
            yield
        finally:
            del self._waiting_since[lease]

    def _count_assignment(self, queued_at: float, now: float) -> None:
        waited_us = int((now - queued_at) * 1_000_000)
        counters = self.counters
        counters.server_assignment_count += 1
        counters.wait_time_us += waited_us
        counters.max_wait_us = max(counters.max_wait_us, waited_us)

    @property
    def waiting_clients(self) -> int:
        """Clients waiting for a server connection: queued for a slot, or held by a pause."""
        return len(self._waiting_since)

    def longest_wait_started(self) -> float | None:
        """When the longest-waiting client began to wait (trio time), or None if nobody waits."""
        return min(self._waiting_since.values(), default=None)

    @property
    def logging_in(self) -> int:
        """Server connections being opened right now (slots taken, not yet lent)."""
        borrowed = self._slots.borrowed_tokens + (
            self._reserve.borrowed_tokens if self.limits.reserve_size else 0
        )
        return max(0, borrowed - len(self._leases))

    def idle_servers(self) -> tuple[ServerConnection, ...]:
        return tuple(self._idle)

    def _take_idle(self, now: float) -> ServerConnection | None:
        while self._idle:
            server = self._idle.pop()  # most recently used first: warm caches, fewer live conns
            if is_retired(server, self.limits, now) or not server.socket.looks_idle_and_open():
                self._discard(server)
                continue
            return server
        return None

    def release(self, server: ServerConnection, *, reusable: bool, now: float | None = None) -> None:
        """Take a connection back; close it unless it is clean and within its limits. ``now``: the
        current trio time, if the caller has just read it."""
        lease = self._leases.pop(id(server), None)
        if lease is not None:
            self._limiter_of.pop(lease).release_on_behalf_of(lease)
        if now is None:
            now = trio.current_time()
        server.sessions_served += 1
        server.last_used = now
        if reusable and not is_retired(server, self.limits, now):
            self._idle.append(server)
        else:
            self._discard(server)

    def close_expired_idle(self) -> None:
        now = trio.current_time()
        keep = deque(s for s in self._idle if not is_retired(s, self.limits, now))
        for server in self._idle:
            if server not in keep:
                self._discard(server)
        self._idle = keep

    def close_idle(self) -> None:
        while self._idle:
            self._discard(self._idle.pop())

    def _discard(self, server: ServerConnection) -> None:
        self.closed_total += 1
        server.close()

    def statistics(self) -> PoolStatistics:
        return PoolStatistics(
            key=self.key,
            active=self.active,
            idle=self.idle_count,
            waiting=self.waiting,
            max_size=self.limits.max_size,
            opened_total=self.opened_total,
            closed_total=self.closed_total,
        )


class PoolManager:
    """All pools of this node, capped at ``max_pool`` distinct pools per backend."""

    def __init__(self, limits: PoolLimits, max_pools_per_backend: int) -> None:
        self.limits = limits
        self.max_pools_per_backend = max_pools_per_backend
        self._pools: dict[PoolKey, ServerPool] = {}
        self._evicted_counters: dict[PoolKey, PoolCounters] = {}  # of pools dropped to honour max_pool
        self.pause_gate = PauseGate()

    def pool_for(self, key: PoolKey) -> ServerPool:
        """The pool for ``key``, creating it (and evicting an unused one) if needed."""
        pool = self._pools.get(key)
        if pool is not None:
            return pool
        same_backend = [p for p in self._pools.values() if p.key.backend_id == key.backend_id]
        if len(same_backend) >= self.max_pools_per_backend:
            self._evict_one_unused(same_backend, key)
        pool = ServerPool(key, self.limits, self.pause_gate)
        pool.counters = self._evicted_counters.pop(key, pool.counters)  # totals never go down
        self._pools[key] = pool
        return pool

    def _evict_one_unused(self, candidates: list[ServerPool], wanted: PoolKey) -> None:
        for pool in candidates:
            if pool.active == 0 and pool.waiting == 0:
                pool.close_idle()
                del self._pools[pool.key]
                self._evicted_counters[pool.key] = pool.counters
                return
        raise PoolExhausted(
            f"backend {wanted.backend_id} already has {self.max_pools_per_backend} busy database/user pools, "
            f"so pool {wanted} cannot be created; raise max_pool"
        )

    def set_limits(self, limits: PoolLimits, max_pools_per_backend: int) -> None:
        self.limits = limits
        self.max_pools_per_backend = max_pools_per_backend
        for pool in self._pools.values():
            pool.set_limits(limits)

    def close_expired_idle(self) -> None:
        for pool in self._pools.values():
            pool.close_expired_idle()

    def close_all_idle(self) -> None:
        for pool in self._pools.values():
            pool.close_idle()

    def statistics(self) -> list[PoolStatistics]:
        return [pool.statistics() for pool in self._pools.values()]

    def counters_by_pool(self) -> list[tuple[PoolKey, PoolCounters]]:
        """Counters of every pool ever used, including ones evicted for max_pool."""
        live = [(pool.key, pool.counters) for pool in self._pools.values()]
        return live + [
            (key, counters) for key, counters in self._evicted_counters.items() if key not in self._pools
        ]

    def server_connections_to(self, backend_id: int) -> int:
        return sum(p.active + p.idle_count for p in self._pools.values() if p.key.backend_id == backend_id)

    def pools(self, database: str | None = None) -> list[ServerPool]:
        """Every pool, or those of one database."""
        return [p for p in self._pools.values() if database is None or p.key.database == database]

    def pause(self, database: str | None) -> None:
        """Stop lending server connections of ``database`` (None: all) and close its idle ones."""
        self.pause_gate.pause(database)
        self.close_idle_of(database)

    def resume(self, database: str | None) -> bool:
        """Lend again; False if nothing matching was paused."""
        return self.pause_gate.resume(database)

    def kill(self, database: str | None) -> None:
        """Pause, fail the clients waiting for a server, and close the idle server connections."""
        self.pause_gate.kill(database)
        self.close_idle_of(database)

    def close_idle_of(self, database: str | None) -> None:
        for pool in self.pools(database):
            pool.close_idle()

    def busy_server_count(self, database: str | None) -> int:
        """Server connections lent to clients or being opened (what PAUSE waits for)."""
        return sum(p.active + p.logging_in for p in self.pools(database))
