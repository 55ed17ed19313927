"""Process shell over /proc and RLIMIT_NOFILE: a pooler's memory (VmRSS and Pss summed over its
process tree) and open-files limit, and this process's own limit (raised to hold thousands of sockets).

It only reads /proc and changes this process's own limits; it never signals any process.
"""

from __future__ import annotations

import contextlib
import resource
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from compare.harness import HarnessError, process_tree

from idle.report import parse_kib_field, parse_nofile_soft_limit


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text()
    except OSError:
        return None


@dataclass(frozen=True)
class Memory:
    rss_kib: int | None  # VmRSS summed over the tree (pages shared by forked workers count twice)
    pss_kib: int | None  # Pss summed: shared pages split between the processes sharing them
    processes: int


def _sum(values: list[int | None]) -> int | None:
    return None if not values or any(v is None for v in values) else sum(v for v in values if v is not None)


def tree_memory(pid: int) -> Memory:
    """Memory of `pid` and its descendants (pgbalancer's forked workers)."""
    pids = process_tree(pid)
    rss = [parse_kib_field(_read(f"/proc/{p}/status") or "", "VmRSS") for p in pids]
    pss = [parse_kib_field(_read(f"/proc/{p}/smaps_rollup") or "", "Pss") for p in pids]
    return Memory(_sum(rss), _sum(pss), len(pids))


def nofile_soft_limit(pid: int) -> int | None:
    return parse_nofile_soft_limit(_read(f"/proc/{pid}/limits") or "")


def raise_own_nofile(needed: int) -> int:
    """Raise this process's soft open-files limit to its hard limit; fail clearly if that is too low."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise HarnessError(
            f"the open-files hard limit is {hard}, below the {needed} this run needs: raise it (ulimit -Hn)"
        )
    if soft != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        print(f"==> raised this process's open-files limit from {soft} to {hard}", flush=True)
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@contextlib.contextmanager
def own_nofile_soft(soft: int | None) -> Iterator[None]:
    """This process's soft open-files limit set to `soft` inside the block (children inherit it),
    then restored; None leaves it alone. Used to start a pooler under a deployment-like limit."""
    if soft is None:
        yield
        return
    previous = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (soft, previous[1]))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, previous)
