"""A CPU budget for one PostgreSQL node of the routing bench: its own "machine" on a shared host.

The cpu scenario puts background load on standby1. On one 2-core host, plain background load also
slows the other nodes (they share the cores), and taking reads off standby1 then only moves their CPU
onto the same two cores, so no balancer can show what shedding a loaded node buys on separate
machines. A CPU cgroup gives standby1 (its postmaster, every backend it forks, and the burner
sessions on it) a fixed budget, ``quota`` of one core: the burners eat it, standby1's reads wait
for what is left, and the rest of the host is untouched, as if standby1 were a busy machine of its
own.

cgroup v1 (``/sys/fs/cgroup/cpu``, ``cpu.cfs_quota_us``) or v2 (``cpu.max``); ``CpuBox.create``
returns None where neither can be written (not root, no cpu controller), and the bench falls back
to pinning standby1 to CPU 0. The group is removed on ``close``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from pathlib import Path

_V1_ROOT = Path("/sys/fs/cgroup/cpu")
_V2_ROOT = Path("/sys/fs/cgroup")
_PERIOD_US = 100_000


class CpuBox:
    """One CPU cgroup with a quota; processes moved in stay in (and their children are born in)."""

    def __init__(self, group: Path, parent: Path) -> None:
        self.group = group
        self.parent = parent

    @classmethod
    def create(cls, name: str, quota: float) -> CpuBox | None:
        """A new group limited to ``quota`` of one core, or None where cgroups cannot be used."""
        budget = max(int(quota * _PERIOD_US), 1000)
        v1 = _V1_ROOT / name
        with contextlib.suppress(OSError):
            if (_V1_ROOT / "cpu.cfs_quota_us").exists():
                v1.mkdir(exist_ok=True)
                (v1 / "cpu.cfs_period_us").write_text(f"{_PERIOD_US}\n")
                (v1 / "cpu.cfs_quota_us").write_text(f"{budget}\n")
                return cls(v1, _V1_ROOT)
        v2 = _V2_ROOT / name
        with contextlib.suppress(OSError):
            if "cpu" in (_V2_ROOT / "cgroup.controllers").read_text().split():
                v2.mkdir(exist_ok=True)
                (v2 / "cpu.max").write_text(f"{budget} {_PERIOD_US}\n")
                return cls(v2, _V2_ROOT)
        return None

    def enter(self, pids: Iterable[int]) -> None:
        _move(pids, self.group)

    def leave(self, pids: Iterable[int]) -> None:
        _move(pids, self.parent)

    def close(self) -> None:
        """Move anything left back to the parent and remove the group."""
        with contextlib.suppress(OSError):
            left = [int(line) for line in (self.group / "cgroup.procs").read_text().split()]
            _move(left, self.parent)
        with contextlib.suppress(OSError):
            os.rmdir(self.group)


def _move(pids: Iterable[int], group: Path) -> None:
    procs = group / "cgroup.procs"
    for pid in pids:
        with contextlib.suppress(OSError):  # gone meanwhile
            procs.write_text(f"{pid}\n")
