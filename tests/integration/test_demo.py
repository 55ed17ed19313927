"""``make demo``'s engine end to end: PostgreSQL, a three-node watchdog cluster, pgbench, the report.

The README's front door; this runs what ``make demo`` runs (``python -m pgbalancer.devtools.demo``) in
a work directory of its own, then ``down``, and checks that nothing it started is left running.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow


def demo(command: str, workdir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "pgbalancer.devtools.demo", command, "--workdir", str(workdir)],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )


def test_demo_up_runs_traffic_through_a_three_node_watchdog_cluster_and_down_stops_it(tmp_path: Path) -> None:
    workdir = tmp_path / "demo"
    try:
        up = demo("up", workdir)
        assert up.returncode == 0, up.stdout + up.stderr
        view = up.stdout.split("The watchdog cluster", 1)[1].split("\n\n", 1)[0]
        rows = [line.split() for line in view.splitlines() if re.match(r"node\d ", line)]
        assert [row[0] for row in rows] == ["node1", "node2", "node3"]
        assert sorted(row[3] for row in rows) == ["follower", "follower", "leader"]
        assert {row[5] for row in rows} == {"yes"}  # every node in quorum
        leader = next(row[2] for row in rows if row[3] == "leader")
        assert {row[6] for row in rows} == {leader}  # and all know the same leader
        for title in ("select-only", "TPC-B"):
            run = re.search(rf"^{title}\s+([\d,]+)\s+[\d.]+\s+([\d,]+)\s+(\d+)$", up.stdout, re.M)
            assert run is not None, up.stdout
            assert int(run.group(2).replace(",", "")) > 0 and run.group(3) == "0"  # transactions, 0 failed
        status = demo("status", workdir)
        assert status.stdout.count(": running, pid") == 3, status.stdout
    finally:
        down = demo("down", workdir)
        pg_link = workdir / "pg"  # the cluster lives outside when postgres cannot reach tmp_path
        if pg_link.is_symlink():
            shutil.rmtree(pg_link.resolve(), ignore_errors=True)
    assert down.returncode == 0, down.stdout + down.stderr
    assert down.stdout.count(") stopped") == 3, down.stdout
    status = demo("status", workdir)
    assert ": running" not in status.stdout and "not running" in status.stdout, status.stdout
