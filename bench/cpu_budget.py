"""CPU time per process group over one benchmark run: where a transaction's CPU went.

On a small machine the load generator, the pooler and PostgreSQL share the same cores, so a
throughput ratio alone cannot say whether a pooler is slow or the machine is full. This measures,
between two snapshots, the CPU (user + system) spent by:

* the load generator: pgbench, a child of the bench process (``RUSAGE_CHILDREN``: exact, and only
  the measured pgbench may run as a child between the snapshots);
* the pooler: its process tree (PgBouncer's daemon, Pgpool-II's or pgbalancer's parent and workers);
* PostgreSQL: each postmaster's tree, plus the CPU of the backends it reaped meanwhile (a backend
  that exits during the run is counted through its parent's ``children_*`` times);
* the machine: busy, idle and steal time from /proc/stat (``psutil.cpu_times``); "other" is what
  was busy beyond the three groups (the bench's own validator, kernel work, anything else).

Divided by the transactions pgbench completed, that is microseconds of CPU per transaction per
group. From it, ``ceiling_tps`` says what the run could reach if the pooler cost nothing and every
core were busy: the bound no pooler beats on this machine with this load generator.
It reads process times only: it never signals or changes a process.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterable
from dataclasses import dataclass

import psutil


def tree_cpu_seconds(roots: Iterable[int], *, reaped: bool = False, kernel_only: bool = False) -> float:
    """User + system CPU seconds of each root process and its live descendants (``kernel_only``:
    system time only); with ``reaped``, also what the roots' exited children used (their
    ``children_*`` times)."""
    total = 0.0
    for root in roots:
        try:
            top = psutil.Process(root)
            members = [top, *top.children(recursive=True)]
        except psutil.NoSuchProcess:
            continue
        for process in members:
            with contextlib.suppress(psutil.NoSuchProcess, psutil.AccessDenied):
                times = process.cpu_times()
                total += times.system + (0.0 if kernel_only else times.user)
                if reaped and process is top:
                    total += times.children_system + (0.0 if kernel_only else times.children_user)
    return total


def _children_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


@dataclass(frozen=True)
class CpuSnapshot:
    load_generator: float
    pooler: float
    pooler_kernel: float
    postgresql: float
    busy: float
    idle: float
    steal: float


def snapshot(pooler_pids: Iterable[int], postmaster_pids: Iterable[int]) -> CpuSnapshot:
    machine = psutil.cpu_times()
    idle = machine.idle + getattr(machine, "iowait", 0.0)
    steal = getattr(machine, "steal", 0.0)
    busy = sum(machine) - idle - steal - getattr(machine, "guest", 0.0) - getattr(machine, "guest_nice", 0.0)
    return CpuSnapshot(
        load_generator=_children_cpu_seconds(),
        pooler=tree_cpu_seconds(pooler_pids),
        pooler_kernel=tree_cpu_seconds(pooler_pids, kernel_only=True),
        postgresql=tree_cpu_seconds(postmaster_pids, reaped=True),
        busy=busy,
        idle=idle,
        steal=steal,
    )


@dataclass(frozen=True)
class CpuPerTransaction:
    """Microseconds of CPU per transaction by group, and the machine's idle/steal share (%)."""

    load_generator_us: float
    pooler_us: float
    pooler_kernel_us: float  # the part of pooler_us spent in the kernel (system time)
    postgresql_us: float
    other_us: float
    idle_pct: float
    steal_pct: float

    @property
    def without_pooler_us(self) -> float:
        return self.load_generator_us + self.postgresql_us + self.other_us

    def ceiling_tps(self, cpus: int) -> float:
        """Transactions per second with every core busy and the pooler costing nothing."""
        return cpus * 1e6 / self.without_pooler_us if self.without_pooler_us > 0 else float("inf")


def per_transaction(before: CpuSnapshot, after: CpuSnapshot, transactions: int) -> CpuPerTransaction:
    def delta(field: str) -> float:
        return float(getattr(after, field) - getattr(before, field))

    count = max(transactions, 1)
    groups = delta("load_generator") + delta("pooler") + delta("postgresql")
    wall = delta("busy") + delta("idle") + delta("steal")
    share = 100.0 / wall if wall > 0 else 0.0
    return CpuPerTransaction(
        load_generator_us=delta("load_generator") * 1e6 / count,
        pooler_us=delta("pooler") * 1e6 / count,
        pooler_kernel_us=delta("pooler_kernel") * 1e6 / count,
        postgresql_us=delta("postgresql") * 1e6 / count,
        other_us=max(delta("busy") - groups, 0.0) * 1e6 / count,
        idle_pct=delta("idle") * share,
        steal_pct=delta("steal") * share,
    )
