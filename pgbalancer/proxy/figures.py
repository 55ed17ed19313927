"""Traffic figures of a whole node, summed over its worker processes.

With ``workers > 1`` every worker accepts its own clients and holds its own pools and result
cache (whose counters travel with the figures and add up the same way), but only
worker 0 serves the REST API, ``/metrics`` and the MQTT ``stats/pools``. So each worker answers on
a private Unix socket (``pgbalancer-<port>-worker<N>-stats.sock`` in ``worker_socket_dir``, mode
0600) with a JSON copy of its figures: client counts, and per pool its gauges, counters and
latency histogram. Worker 0 asks every sibling at the moment of a request (``FiguresPeering.gather``)
and adds them up (``merge``). A sibling that does not answer in time (being restarted, say) is
named in ``NodeFigures.missing`` instead of failing the request. With one worker, ``gather`` is
just this worker's own figures, so both cases go through the same code.

Why ask at request time rather than push or share memory: figures are read rarely (a scrape every
few seconds) and written constantly (every statement), so the hot path stays untouched and no
worker ever waits for another; a restarted worker's counters start again from zero, as a
restarted process's would.

The first half is pure (dataclasses, ``read_figures`` of a ProxyServer, ``merge``, the JSON codec);
the second is the trio shell. It must never: change the state it reads; answer anything but
figures on the stats socket (it reads nothing from the peer); block the trio loop; hold a figure
longer than one request.
"""

from __future__ import annotations

import json
import logging
import socket as stdlib_socket
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

import trio

from pgbalancer.cache import CacheStats
from pgbalancer.cache.store import hit_ratio
from pgbalancer.proxy.admin_commands import ADMIN_DATABASES
from pgbalancer.proxy.latency import LatencyHistogram
from pgbalancer.proxy.peering import bind_peer_socket, unlink_if_ours
from pgbalancer.proxy.pool import PoolCounters, PoolKey

if TYPE_CHECKING:
    from pgbalancer.proxy.server import ProxyServer

log = logging.getLogger(__name__)

_INT_COUNTERS: Final = tuple(f.name for f in fields(PoolCounters) if f.name != "query_latency")
_MAX_COUNTERS: Final = frozenset({"max_wait_us"})  # the worst of the workers, not their sum
_GATHER_TIMEOUT: Final = 1.0
_MAX_REPLY: Final = 16 * 1024 * 1024


# --------------------------------------------------------------------------- pure: figures


@dataclass(frozen=True)
class ClientFigures:
    total: int = 0
    active: int = 0
    waiting: int = 0
    idle: int = 0
    logging_in: int = 0
    admin_console: int = 0
    accepted_total: int = 0

    def __add__(self, other: ClientFigures) -> ClientFigures:
        return ClientFigures(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))


@dataclass(frozen=True)
class PoolFigures:
    """One pool's gauges and counters; ``live`` is False for the counters of an evicted pool."""

    key: PoolKey
    live: bool = True
    active: int = 0
    idle: int = 0
    logging_in: int = 0
    waiting: int = 0
    max_size: int = 0
    opened_total: int = 0
    closed_total: int = 0
    prepared_statements: int = 0
    longest_wait_seconds: float = 0.0  # how long the longest-waiting client has waited so far
    counters: PoolCounters = field(default_factory=PoolCounters)


@dataclass(frozen=True)
class CacheFigures:
    """The result cache's gauges and counters (memory_cache_enabled = on)."""

    entries: int = 0
    bytes: int = 0
    limit_bytes: int = 0
    hits: int = 0
    misses: int = 0
    evictions: int = 0
    invalidations: int = 0
    invalidation_events: int = 0
    rejected: int = 0
    replication_failures: int = 0
    prefetched: int = 0
    prefetch_dropped: int = 0

    def __add__(self, other: CacheFigures) -> CacheFigures:
        return CacheFigures(*(getattr(self, f.name) + getattr(other, f.name) for f in fields(self)))

    @property
    def hit_ratio(self) -> float:
        return hit_ratio(self.hits, self.misses)


@dataclass(frozen=True)
class WorkerFigures:
    worker_index: int
    clients: ClientFigures
    pools: tuple[PoolFigures, ...]
    cache: CacheFigures | None = None  # None: the cache is off


@dataclass(frozen=True)
class NodeFigures:
    """The node's figures: per pool, summed over the workers that answered."""

    worker_count: int
    workers: tuple[WorkerFigures, ...]
    missing: tuple[int, ...]
    clients: ClientFigures
    pools: tuple[PoolFigures, ...]
    cache: CacheFigures | None = None  # summed over the workers that answered; None: the cache is off

    def live_pools(self) -> list[PoolFigures]:
        return [pool for pool in self.pools if pool.live]

    def servers(self) -> dict[str, int]:
        live = self.live_pools()
        active = sum(p.active for p in live)
        idle = sum(p.idle for p in live)
        login = sum(p.logging_in for p in live)
        return {"total": active + idle + login, "active": active, "idle": idle, "logging_in": login}

    def totals_by_backend(self) -> dict[int, PoolCounters]:
        by_backend: dict[int, list[PoolCounters]] = defaultdict(list)
        for pool in self.pools:
            by_backend[pool.key.backend_id].append(pool.counters)
        return {backend: add_counters(counters) for backend, counters in by_backend.items()}

    def server_connections_to(self, backend_id: int) -> int:
        return sum(p.active + p.idle for p in self.live_pools() if p.key.backend_id == backend_id)

    def query_total(self) -> int:
        return sum(pool.counters.query_count for pool in self.pools)

    def transaction_total(self) -> int:
        return sum(pool.counters.xact_count for pool in self.pools)


def add_counters(many: Iterable[PoolCounters]) -> PoolCounters:
    total = PoolCounters()
    for counters in many:
        for name in _INT_COUNTERS:
            mine, theirs = getattr(total, name), getattr(counters, name)
            setattr(total, name, max(mine, theirs) if name in _MAX_COUNTERS else mine + theirs)
        total.query_latency.add(counters.query_latency)
    return total


def _add_pools(a: PoolFigures, b: PoolFigures) -> PoolFigures:
    return replace(
        a,
        live=a.live or b.live,
        active=a.active + b.active,
        idle=a.idle + b.idle,
        logging_in=a.logging_in + b.logging_in,
        waiting=a.waiting + b.waiting,
        max_size=a.max_size + b.max_size,  # the node's capacity: every worker holds its own pool
        opened_total=a.opened_total + b.opened_total,
        closed_total=a.closed_total + b.closed_total,
        prepared_statements=a.prepared_statements + b.prepared_statements,
        longest_wait_seconds=max(a.longest_wait_seconds, b.longest_wait_seconds),
        counters=add_counters((a.counters, b.counters)),
    )


def merge(worker_count: int, reports: Sequence[WorkerFigures]) -> NodeFigures:
    """Add the workers' figures up per pool; workers that did not report are ``missing``."""
    reports = sorted(reports, key=lambda r: r.worker_index)
    pools: dict[PoolKey, PoolFigures] = {}
    clients = ClientFigures()
    cache: CacheFigures | None = None
    for report in reports:
        clients += report.clients
        if report.cache is not None:
            cache = report.cache if cache is None else cache + report.cache
        for pool in report.pools:
            pools[pool.key] = _add_pools(pools[pool.key], pool) if pool.key in pools else pool
    reported = {r.worker_index for r in reports}
    return NodeFigures(
        worker_count=worker_count,
        workers=tuple(reports),
        missing=tuple(i for i in range(worker_count) if i not in reported),
        clients=clients,
        pools=tuple(sorted(pools.values(), key=lambda p: (p.key.backend_id, p.key.database, p.key.user))),
        cache=cache,
    )


def read_figures(proxy: ProxyServer, worker_index: int, now: float) -> WorkerFigures:
    """This worker's figures, read from its live sessions and pools (``now`` is trio time)."""
    sessions = list(proxy.sessions.values())
    logged_in = [s for s in sessions if s.user]
    pooled = [s for s in logged_in if s.database not in ADMIN_DATABASES]
    prepared: dict[PoolKey, int] = defaultdict(int)
    for session in sessions:
        server = session.server
        if server is not None:
            key = PoolKey(server.address.node_id, server.database, server.user)
            prepared[key] += len(server.statements)
    pools: list[PoolFigures] = []
    live_keys = set()
    for pool in proxy.pools.pools():
        live_keys.add(pool.key)
        started = pool.longest_wait_started()
        pools.append(
            PoolFigures(
                key=pool.key,
                active=pool.active,
                idle=pool.idle_count,
                logging_in=pool.logging_in,
                waiting=pool.waiting_clients,
                max_size=pool.limits.max_size,
                opened_total=pool.opened_total,
                closed_total=pool.closed_total,
                prepared_statements=prepared[pool.key] + sum(len(s.statements) for s in pool.idle_servers()),
                longest_wait_seconds=round(now - started, 6) if started is not None else 0.0,
                counters=add_counters((pool.counters,)),  # a copy: the relays keep counting
            )
        )
    for key, counters in proxy.pools.counters_by_pool():
        if key not in live_keys:
            pools.append(PoolFigures(key=key, live=False, counters=add_counters((counters,))))
    active = sum(1 for s in pooled if s.server is not None)
    waiting = sum(p.waiting for p in pools)
    clients = ClientFigures(
        total=len(sessions),
        active=active,
        waiting=waiting,
        idle=max(0, len(pooled) - active - waiting),
        logging_in=len(sessions) - len(logged_in),
        admin_console=len(logged_in) - len(pooled),
        accepted_total=proxy.accepted_total,
    )
    return WorkerFigures(worker_index, clients, tuple(pools), _cache_figures(proxy))


_STORE_STATS: Final = frozenset(f.name for f in fields(CacheStats))
_FROM_STORE: Final = tuple(f.name for f in fields(CacheFigures) if f.name in _STORE_STATS)


def _cache_figures(proxy: ProxyServer) -> CacheFigures | None:
    cache = proxy.cache
    if cache is None:
        return None
    stats = cache.store.stats()
    from_store = {name: getattr(stats, name) for name in _FROM_STORE}  # the store's own figures, by name
    return CacheFigures(
        **from_store,
        replication_failures=cache.replication_failures,
        prefetched=cache.prefetched,
        prefetch_dropped=cache.prefetch_dropped,
    )


# --------------------------------------------------------------------------- pure: JSON codec


def figures_to_json(figures: WorkerFigures) -> dict[str, Any]:
    return {
        "worker_index": figures.worker_index,
        "clients": {f.name: getattr(figures.clients, f.name) for f in fields(ClientFigures)},
        "pools": [_pool_to_json(pool) for pool in figures.pools],
        "cache": None
        if figures.cache is None
        else {f.name: getattr(figures.cache, f.name) for f in fields(CacheFigures)},
    }


def _pool_to_json(pool: PoolFigures) -> dict[str, Any]:
    document: dict[str, Any] = {
        f.name: getattr(pool, f.name) for f in fields(PoolFigures) if f.name not in ("key", "counters")
    }
    document["key"] = [pool.key.backend_id, pool.key.database, pool.key.user]
    counters = {name: getattr(pool.counters, name) for name in _INT_COUNTERS}
    counters["latency_counts"] = pool.counters.query_latency.counts
    counters["latency_sum_seconds"] = pool.counters.query_latency.sum_seconds
    document["counters"] = counters
    return document


class FiguresError(ValueError):
    """A sibling's reply is not a figures document."""


def figures_from_json(document: object) -> WorkerFigures:
    """Parse what ``figures_to_json`` produced; FiguresError for anything else."""
    try:
        assert isinstance(document, dict)
        clients = ClientFigures(**{f.name: int(document["clients"][f.name]) for f in fields(ClientFigures)})
        pools = tuple(_pool_from_json(pool) for pool in document["pools"])
        raw_cache = document.get("cache")
        cache = (
            None
            if raw_cache is None
            else CacheFigures(**{f.name: int(raw_cache[f.name]) for f in fields(CacheFigures)})
        )
        return WorkerFigures(int(document["worker_index"]), clients, pools, cache)
    except (AssertionError, KeyError, TypeError, ValueError) as exc:
        raise FiguresError(f"not a worker figures document: {exc!r}") from None


def _pool_from_json(document: dict[str, Any]) -> PoolFigures:
    backend_id, database, user = document["key"]
    raw = document["counters"]
    counters = PoolCounters()
    for name in _INT_COUNTERS:
        setattr(counters, name, int(raw[name]))
    counters.query_latency = LatencyHistogram(
        [int(count) for count in raw["latency_counts"]], float(raw["latency_sum_seconds"])
    )
    simple = {name: cast(document[name]) for name, cast in _POOL_CASTS.items()}
    return PoolFigures(key=PoolKey(int(backend_id), str(database), str(user)), counters=counters, **simple)


_POOL_CASTS: Final[dict[str, Any]] = {
    "live": bool,
    "active": int,
    "idle": int,
    "logging_in": int,
    "waiting": int,
    "max_size": int,
    "opened_total": int,
    "closed_total": int,
    "prepared_statements": int,
    "longest_wait_seconds": float,
}


# --------------------------------------------------------------------------- shell


def stats_socket_path(socket_dir: str, port: int, worker_index: int) -> str:
    return str(Path(socket_dir) / f"pgbalancer-{port}-worker{worker_index}-stats.sock")


class FiguresPeering:
    """One worker's stats socket, and (worker 0) gathering every worker's figures."""

    def __init__(
        self, proxy: ProxyServer, worker_index: int = 0, worker_count: int = 1, socket_dir: str = ""
    ) -> None:
        self.proxy = proxy
        self.worker_index = worker_index
        self.worker_count = worker_count
        self.socket_dir = socket_dir

    def own(self) -> WorkerFigures:
        return read_figures(self.proxy, self.worker_index, trio.current_time())

    async def gather(self, timeout: float = _GATHER_TIMEOUT) -> NodeFigures:
        """Every worker's figures added up; siblings that do not answer within ``timeout`` are missing."""
        reports = [self.own()]
        if self.worker_count > 1:
            async with trio.open_nursery() as nursery:
                for index in range(self.worker_count):
                    if index != self.worker_index:
                        nursery.start_soon(self._ask, index, timeout, reports)
        return merge(self.worker_count, reports)

    async def _ask(self, index: int, timeout: float, reports: list[WorkerFigures]) -> None:
        path = stats_socket_path(self.socket_dir, self.proxy.config.port, index)
        try:
            with trio.fail_after(timeout):
                sock = trio.socket.socket(stdlib_socket.AF_UNIX, stdlib_socket.SOCK_STREAM)
                with sock:
                    await sock.connect(path)
                    reply = await _read_to_eof(sock)
            report = figures_from_json(json.loads(reply))
        except (OSError, trio.TooSlowError, ValueError) as exc:
            log.warning("worker %d's figures are missing from this answer (%s: %s)", index, path, exc)
            return
        if report.worker_index == index:
            reports.append(report)

    async def serve(self, *, task_status: trio.TaskStatus[str] = trio.TASK_STATUS_IGNORED) -> None:
        """Answer every connection on this worker's stats socket with its figures, until cancelled."""
        path = stats_socket_path(self.socket_dir, self.proxy.config.port, self.worker_index)
        sock = await bind_peer_socket(path)
        inode = Path(path).stat().st_ino
        try:
            async with trio.open_nursery() as nursery:
                task_status.started(path)
                while True:
                    peer, _ = await sock.accept()
                    nursery.start_soon(self._answer, peer)
        finally:
            sock.close()
            unlink_if_ours(path, inode)

    async def _answer(self, peer: trio.socket.SocketType) -> None:
        with peer, trio.move_on_after(_GATHER_TIMEOUT):
            data = json.dumps(figures_to_json(self.own())).encode()
            view = memoryview(data)
            try:
                while view:
                    sent = await peer.send(view)
                    view = view[sent:]
            except OSError:
                return  # the asker gave up; it reports us as missing


async def _read_to_eof(sock: trio.socket.SocketType) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while chunk := await sock.recv(65536):
        chunks.append(chunk)
        size += len(chunk)
        if size > _MAX_REPLY:
            raise ValueError(f"a worker's figures exceed {_MAX_REPLY} bytes")
    return b"".join(chunks)
