"""Unit tests of routing_skew's pure parts: pgbench output parsing, percentiles, the table.

Run with `.venv/bin/pytest bench/skew/test_workload.py -q`.
"""

from __future__ import annotations

import math
from pathlib import Path

import pytest

from skew.workload import (
    READ_WEIGHTS,
    RunResult,
    latencies_ms,
    medians,
    parse_summary,
    percentile,
    ratio_medians,
    table,
    write_scripts,
)

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
    assert "| skewed | adaptive | 1500 | 1.50x | 5.00 | 10.00 | 0.50x | - |" in text
    assert "| uniform | adaptive | 2000 | - |" in text


def test_ratios_are_taken_within_each_repetition() -> None:
    runs = [
        RunResult("delay", "round_robin", 100.0, 4.0, 10.0, 0.5, rep=1),
        RunResult("delay", "adaptive", 150.0, 3.0, 5.0, 0.1, rep=1),
        RunResult("delay", "round_robin", 1000.0, 1.0, 2.0, 0.5, rep=2),  # a quiet minute
        RunResult("delay", "adaptive", 1400.0, 1.0, 1.0, 0.2, rep=2),
    ]
    ratios = ratio_medians(runs)
    assert ratios[("delay", "adaptive")] == (1.45, 0.5)
    assert ratios[("delay", "round_robin")] == (1.0, 1.0)
    text = table(medians(runs), ratios)
    assert "| delay | adaptive | 775 | 1.45x | 2.00 | 3.00 | 0.50x | 0.15 |" in text


def test_scripts_are_written_with_their_weights(tmp_path: Path) -> None:
    readers, writer = write_scripts(tmp_path)
    assert readers[0] == "-f" and len(readers) == 2 * len(READ_WEIGHTS)
    assert sum(int(a.rsplit("@", 1)[1]) for a in readers[1::2]) == 100
    assert (tmp_path / "point_read.sql").read_text().startswith("\\set aid")
    assert writer == ["-f", str(tmp_path / "write.sql")]
    assert "UPDATE" in (tmp_path / "write.sql").read_text()


def test_medians_are_per_scenario_and_algorithm_in_first_seen_order() -> None:
    runs = [
        RunResult("delay", "round_robin", 100.0, 4.0, 9.0, 0.5, primary_share=0.3),
        RunResult("delay", "adaptive", 300.0, 2.0, 5.0, 0.1, primary_share=0.5),
        RunResult("delay", "round_robin", 120.0, 3.0, 11.0, 0.4, primary_share=0.4),
        RunResult("delay", "adaptive", 200.0, 1.0, 4.0, 0.3, primary_share=0.7),
        RunResult("delay", "round_robin", 500.0, 1.0, 10.0, 0.6, primary_share=0.2),
    ]
    assert medians(runs) == [
        RunResult("delay", "round_robin", 120.0, 3.0, 10.0, 0.5, 3, 0.3),
        RunResult("delay", "adaptive", 250.0, 1.5, 4.5, 0.2, 2, 0.6),
    ]
