"""The host's CPU steal time, for the reports of tests that are rerun once on failure.

Role: read the aggregate ``cpu`` line of /proc/stat before and after a test attempt and say how much
of the machine's CPU time the hypervisor gave to other guests meanwhile ("steal"), so a rerun's log
says whether the host starved this VM (README.md, "Tests"). Pure apart from
:func:`read_cpu_times`; it must never decide a test's outcome, only describe the conditions.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

PROC_STAT = Path("/proc/stat")
STARVED_SHARE = 0.05  # above this share of CPU time stolen, the report calls the host starved


@dataclass(frozen=True)
class CpuTimes:
    """The aggregate /proc/stat ``cpu`` line: total and stolen time, in clock ticks."""

    total: int
    steal: int


def parse_cpu_times(stat: str) -> CpuTimes | None:
    """The ``cpu`` line of /proc/stat text (None if there is none). Guest time is already part of
    user time, so it is not added again; steal is the 8th field (absent on old kernels: 0)."""
    for line in stat.splitlines():
        fields = line.split()
        if fields and fields[0] == "cpu":
            ticks = [int(value) for value in fields[1:]]
            steal = ticks[7] if len(ticks) > 7 else 0
            return CpuTimes(total=sum(ticks[:8]), steal=steal)
    return None


def read_cpu_times() -> CpuTimes | None:
    """This machine's CPU times now; None where there is no /proc/stat."""
    try:
        return parse_cpu_times(PROC_STAT.read_text())
    except OSError:
        return None


def steal_report(
    before: CpuTimes | None,
    after: CpuTimes | None,
    ticks_per_second: int | None = None,
    over: str = "this attempt",
) -> str:
    """One line on the steal time between two readings (``over``: what they span), for a failure's report."""
    if before is None or after is None:
        return "host steal time: unknown (no /proc/stat)"
    total, steal = after.total - before.total, after.steal - before.steal
    if total <= 0:
        return "host steal time: no CPU time elapsed between the readings"
    hz = ticks_per_second or os.sysconf("SC_CLK_TCK")
    share = steal / total
    verdict = (
        "the host was starving this VM" if share > STARVED_SHARE else "the host was not starving this VM"
    )
    return (
        f"host steal time over {over}: {share:.1%} of CPU time ({steal / hz:.1f} of "
        f"{total / hz:.1f} CPU-seconds): {verdict}"
    )
