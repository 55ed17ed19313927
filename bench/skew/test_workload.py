"""Unit tests of routing_skew's pure parts: pgbench output parsing, percentiles, the table.

Run with `.venv/bin/pytest bench/skew/test_workload.py -q`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skew.workload import WEIGHTS, RunResult, latencies_ms, parse_summary, percentile, table, write_scripts

SUMMARY = """\
transaction type: multiple scripts
number of clients: 8
latency average = 1.234 ms
initial connection time = 12.345 ms
tps = 6483.123456 (without initial connection time)
"""


def test_summary_is_parsed() -> None:
    assert parse_summary(SUMMARY) == (6483.123456, 1.234)


def test_a_summary_without_figures_is_refused() -> None:
    with pytest.raises(ValueError, match="tps"):
        parse_summary("pgbench: error: connection refused\n")


def test_latencies_come_from_the_third_field_in_microseconds() -> None:
    lines = ["0 1 1500 0 1700000000 1", "0 2 250 2 1700000000 2", "garbage", "1 3 skipped 0 0 0"]
    assert latencies_ms(lines) == [1.5, 0.25]


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 0.99) == 99.0
    assert percentile(values, 0.5) == 50.0
    assert percentile([3.0], 0.99) == 3.0
    assert math.isnan(percentile([], 0.99))


def test_table_shows_ratios_to_round_robin_per_scenario() -> None:
    results = [
        RunResult("skewed", "round_robin", 1000.0, 8.0, 20.0),
        RunResult("skewed", "adaptive", 1500.0, 5.0, 10.0),
        RunResult("uniform", "adaptive", 2000.0, 4.0, 8.0),
    ]
    text = table(results)
    assert "| skewed | adaptive | 1500 | 1.50x | 5.00 | 10.00 | 0.50x |" in text
    assert "| uniform | adaptive | 2000 | - |" in text


def test_scripts_are_written_with_their_weights(tmp_path: Path) -> None:
    arguments = write_scripts(tmp_path)
    assert arguments[0] == "-f" and len(arguments) == 2 * len(WEIGHTS)
    assert sum(int(a.rsplit("@", 1)[1]) for a in arguments[1::2]) == 100
    assert (tmp_path / "point_read.sql").read_text().startswith("\\set aid")
