"""Unit tests of bench/cpu_budget's arithmetic and process-tree reading (no benchmark runs)."""

from __future__ import annotations

import os
import subprocess
import sys

import psutil
import pytest
from cpu_budget import CpuSnapshot, per_transaction, tree_cpu_seconds


def test_per_transaction_splits_cpu_by_group_and_the_rest_is_other() -> None:
    before = CpuSnapshot(1.0, 2.0, 0.5, 3.0, busy=10.0, idle=20.0, steal=1.0)
    # 2 s of wall time on 2 CPUs: 3 s busy, 0.6 s idle, 0.4 s stolen; 10,000 transactions.
    after = CpuSnapshot(1.2, 2.9, 0.8, 3.7, busy=13.0, idle=20.6, steal=1.4)
    cpu = per_transaction(before, after, 10_000)
    assert cpu.load_generator_us == pytest.approx(20.0)
    assert cpu.pooler_us == pytest.approx(90.0)
    assert cpu.pooler_kernel_us == pytest.approx(30.0)
    assert cpu.postgresql_us == pytest.approx(70.0)
    assert cpu.other_us == pytest.approx(300.0 - 20.0 - 90.0 - 70.0)
    assert (cpu.idle_pct, cpu.steal_pct) == pytest.approx((15.0, 10.0))
    assert cpu.ceiling_tps(2) == pytest.approx(2e6 / (20.0 + 70.0 + 120.0))


def test_a_process_tree_counts_its_children_and_reaped_ones_only_when_asked() -> None:
    with subprocess.Popen([sys.executable, "-c", "import time; time.sleep(5)"]) as sleeper:
        own = psutil.Process().cpu_times()
        assert tree_cpu_seconds([os.getpid()]) >= own.user + own.system  # the sleeper adds ~0
        sleeper.kill()
    subprocess.run([sys.executable, "-c", "sum(range(3_000_000))"], check=True)  # exits, is reaped
    reaped = psutil.Process().cpu_times()
    plain = tree_cpu_seconds([os.getpid()])
    # Read after ``plain``: this process' own CPU only grows in between, never shrinks the gap.
    assert tree_cpu_seconds([os.getpid()], reaped=True) - plain >= reaped.children_user - 1e-9 > 0
    assert tree_cpu_seconds([os.getpid()], kernel_only=True) <= tree_cpu_seconds([os.getpid()])
    assert tree_cpu_seconds([2**22 + 12345]) == 0.0  # no such process: nothing, no error
