"""Pool sizing arithmetic of ``bctl pool-advice``, pure: facts in, recommendation and its reasoning out.

The formula (docs/bctl.md):

1. ``available = max_connections - superuser_reserved_connections - reserved_connections``
   (``reserved_connections`` exists from PostgreSQL 16; 0 before).
2. ``budget = available - nodes``: each pgbalancer node's health checker keeps one connection.
3. ``per_process = budget // (nodes * workers)``: every worker process of every node has its own pools.
4. ``max_pool = distinct (database, user) pools seen`` (the configured ``max_pool`` when none is seen
   yet), at most ``per_process``.
5. ``num_init_children = per_process // max_pool`` (it is the size limit of one pool here).
6. each pool seen gets ``min(num_init_children, max(1, floor(per_process * share)))`` where share is
   its fraction of the queries (equal shares before any query); when more pools are in use than
   fit (``max_pool`` was capped), the floor is 0 instead of 1 and the advice warns.
7. check: ``nodes * workers * num_init_children * max_pool + nodes <= available``.

``busy_ratio = active_time / (active_time + idle_in_transaction_time)`` from ``pg_stat_database``
(PostgreSQL 14+) says how much of a held connection's time does work; below 0.5 the advice warns
that clients hold transactions open while idle.

It must never: do I/O, read a clock, or recommend a total above ``available``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from pgbalancer.cli.errors import CliError


@dataclass(frozen=True)
class ServerFacts:
    version_num: int
    max_connections: int
    superuser_reserved_connections: int
    reserved_connections: int | None  # None before PostgreSQL 16
    active_time_ms: float | None  # None before PostgreSQL 14
    idle_in_transaction_time_ms: float | None

    @property
    def available(self) -> int:
        return self.max_connections - self.superuser_reserved_connections - (self.reserved_connections or 0)

    @property
    def busy_ratio(self) -> float | None:
        if self.active_time_ms is None or self.idle_in_transaction_time_ms is None:
            return None
        spent = self.active_time_ms + self.idle_in_transaction_time_ms
        return self.active_time_ms / spent if spent > 0 else None


@dataclass(frozen=True)
class PoolDemand:
    database: str
    user: str
    queries: int


@dataclass(frozen=True)
class BalancerFacts:
    nodes: int
    workers: int
    num_init_children: int
    max_pool: int
    pools: tuple[PoolDemand, ...]


@dataclass(frozen=True)
class PoolSize:
    database: str
    user: str
    share: float
    size: int


@dataclass(frozen=True)
class Advice:
    server: ServerFacts
    balancer: BalancerFacts
    budget: int
    per_process: int
    num_init_children: int
    max_pool: int
    pools: tuple[PoolSize, ...]
    explanation: tuple[str, ...]

    @property
    def max_server_connections(self) -> int:
        return self.balancer.nodes * self.balancer.workers * self.num_init_children * self.max_pool

    @property
    def current_max_server_connections(self) -> int:
        b = self.balancer
        return b.nodes * b.workers * b.num_init_children * b.max_pool

    def as_json(self) -> dict[str, Any]:
        s, b = self.server, self.balancer
        return {
            "server": {
                "version_num": s.version_num,
                "max_connections": s.max_connections,
                "superuser_reserved_connections": s.superuser_reserved_connections,
                "reserved_connections": s.reserved_connections,
                "available_connections": s.available,
                "active_time_ms": s.active_time_ms,
                "idle_in_transaction_time_ms": s.idle_in_transaction_time_ms,
                "busy_ratio": s.busy_ratio,
            },
            "pgbalancer": {
                "nodes": b.nodes,
                "workers": b.workers,
                "num_init_children": b.num_init_children,
                "max_pool": b.max_pool,
                "max_server_connections": self.current_max_server_connections,
                "pools": [{"database": p.database, "user": p.user, "queries": p.queries} for p in b.pools],
            },
            "recommended": {
                "health_check_connections": b.nodes,
                "budget": self.budget,
                "per_process": self.per_process,
                "num_init_children": self.num_init_children,
                "max_pool": self.max_pool,
                "max_server_connections": self.max_server_connections,
                "pools": [
                    {"database": p.database, "user": p.user, "share": p.share, "size": p.size}
                    for p in self.pools
                ],
            },
            "explanation": list(self.explanation),
        }


def advise(server: ServerFacts, balancer: BalancerFacts) -> Advice:
    nodes, workers = balancer.nodes, balancer.workers
    reserved = server.reserved_connections
    lines = [
        f"available = max_connections {server.max_connections} - superuser_reserved_connections "
        f"{server.superuser_reserved_connections}"
        + (
            f" - reserved_connections {reserved}"
            if reserved is not None
            else " (no reserved_connections before PG 16)"
        )
        + f" = {server.available}"
    ]
    budget = server.available - nodes
    lines.append(f"budget = available {server.available} - {nodes} health-check connection(s) = {budget}")
    processes = nodes * workers
    if budget < processes:
        raise CliError(
            f"PostgreSQL accepts only {server.available} connections, fewer than the {processes} pgbalancer "
            "processes plus their health checks need; raise max_connections"
        )
    per_process = budget // processes
    lines.append(
        f"per process = budget {budget} // ({nodes} node(s) x {workers} worker(s)) = {per_process} "
        "server connections"
    )
    seen = len(balancer.pools)
    max_pool = min(per_process, seen if seen else balancer.max_pool)
    lines.append(
        f"max_pool = {max_pool}: "
        + (
            f"{seen} distinct (database, user) pool(s) in use"
            if seen
            else f"no pool in use yet; kept {balancer.max_pool}"
        )
        + (f", capped at {per_process}" if max_pool < (seen or balancer.max_pool) else "")
    )
    children = per_process // max_pool
    lines.append(
        f"num_init_children = per process {per_process} // max_pool {max_pool} = {children} per pool"
    )
    total = nodes * workers * children * max_pool
    lines.append(
        f"whole cluster = {nodes} x {workers} x {children} x {max_pool} = {total} server connections "
        f"+ {nodes} health check(s) = {total + nodes} <= available {server.available}"
    )
    current = balancer.nodes * workers * balancer.num_init_children * balancer.max_pool
    verdict = (
        "fits"
        if current + nodes <= server.available
        else f"exceeds it by {current + nodes - server.available}"
    )
    lines.append(
        f"current config: {nodes} x {workers} x num_init_children {balancer.num_init_children} x max_pool "
        f"{balancer.max_pool} = {current} (+ {nodes}) {verdict}"
    )
    sizes = _pool_sizes(balancer.pools, per_process, children, max_pool)
    least = 1 if seen <= max_pool else 0
    if not least:
        lines.append(
            f"warning: only {max_pool} of the {seen} pools in use fit; raise max_connections or use fewer "
            "(database, user) pairs"
        )
    for size in sizes:
        lines.append(
            f"pool {size.database}/{size.user}: share {size.share:.3f} of queries -> "
            f"min({children}, max({least}, floor({per_process} x {size.share:.3f}))) = {size.size}"
        )
    busy = server.busy_ratio
    if busy is None:
        lines.append("busy ratio: unknown (needs PostgreSQL 14+ and some activity)")
    else:
        lines.append(
            f"busy ratio = active_time / (active_time + idle_in_transaction_time) = {busy:.3f}: "
            f"about {children * busy:.1f} of a pool's {children} connections do work at once"
        )
        if busy < 0.5:
            lines.append(
                "warning: clients keep transactions open while idle; set idle_in_transaction_session_timeout "
                "or shorten transactions before adding connections"
            )
    return Advice(server, balancer, budget, per_process, children, max_pool, tuple(sizes), tuple(lines))


def _pool_sizes(pools: tuple[PoolDemand, ...], per_process: int, cap: int, room: int) -> list[PoolSize]:
    """Sizes by share of the queries; at least 1 each only when every pool fits (``room`` pools fit)."""
    total = sum(p.queries for p in pools)
    least = 1 if len(pools) <= room else 0
    sizes = []
    for pool in pools:
        share = pool.queries / total if total else 1 / len(pools)
        size = min(cap, max(least, int(per_process * share)))
        sizes.append(PoolSize(pool.database, pool.user, round(share, 6), size))
    return sizes
