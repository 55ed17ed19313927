"""Unit tests of the idle-clients benchmark's pure reporting (/proc parsing, pgbench tps, ini override,
RSS per idle client, ratios, the 50 KiB goal, markdown).

Run with `.venv/bin/pytest bench/idle/test_report.py -q`. They never start a process.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from idle import report
from idle.report import Measurement

STATUS = "Name:\tpgbouncer\nVmPeak:\t   20000 kB\nVmRSS:\t    6144 kB\nVmSwap:\t       0 kB\n"
LIMITS = (
    "Limit                     Soft Limit           Hard Limit           Units     \n"
    "Max open files            1024                 20000                files     \n"
)


def test_kib_fields_of_proc_status_and_smaps_rollup() -> None:
    assert report.parse_kib_field(STATUS, "VmRSS") == 6144
    assert report.parse_kib_field("Rss:  900 kB\nPss:  450 kB\n", "Pss") == 450
    assert report.parse_kib_field(STATUS, "Pss") is None


def test_nofile_soft_limit() -> None:
    assert report.parse_nofile_soft_limit(LIMITS) == 1024
    unlimited = LIMITS.replace("1024                 20000", "unlimited            unlimited")
    assert report.parse_nofile_soft_limit(unlimited) is None


def test_pgbench_tps_line() -> None:
    output = (
        "number of failed transactions: 0 (0.000%)\ntps = 5321.123456 (without initial connection time)\n"
    )
    assert report.parse_pgbench_tps(output) == pytest.approx(5321.123456)
    assert report.parse_pgbench_tps("pgbench: error: connection refused") is None


INI = """[databases]
bench = host=127.0.0.1 port=5433 dbname=bench

[pgbouncer]
listen_port = 6432
max_client_conn = 500
pool_mode = transaction
"""


def test_override_ini_replaces_keys_of_the_section_only_and_appends_missing_ones() -> None:
    text = report.override_ini(
        INI + "[other]\nlisten_port = 1\n", "pgbouncer", {"listen_port": "6452", "pidfile": "/x.pid"}
    )
    assert "listen_port = 6452\n" in text
    assert "listen_port = 1\n" in text  # another section's key of the same name is left alone
    assert "max_client_conn = 500" in text
    assert text.index("pidfile = /x.pid") < text.index("[other]")
    assert "bench = host=127.0.0.1 port=5433 dbname=bench" in text


def test_override_ini_at_end_of_file_and_missing_section() -> None:
    assert report.override_ini(INI, "pgbouncer", {"logfile": "/l"}).endswith("logfile = /l\n")
    assert report.override_ini("[a]\nx = 1\n", "b", {"y": "2"}) == "[a]\nx = 1\n[b]\ny = 2\n"


def measured(
    target: str, idle: int, before: int, after: int, tps: float, held: int | None = None
) -> Measurement:
    return Measurement(
        target=target,
        idle_requested=idle,
        idle_open=idle if held is None else held,
        rss_before_kib=before,
        rss_idle_kib=after,
        tps=tps,
    )


RUNS = [
    Measurement(target="direct", idle_requested=0, tps=10000.0),
    measured("pgbouncer", 0, 5000, 5000, 4000.0),
    measured("pgbalancer", 0, 40000, 40000, 2000.0),
    measured("pgbouncer", 1000, 5000, 7000, 3800.0),
    measured("pgbalancer", 1000, 40000, 100000, 1900.0),
    measured("pgbalancer", 5000, 40000, 240000, 1000.0, held=4000),
]


def test_kib_per_idle_client_and_ratios() -> None:
    rows = {(m.target, m.idle_requested): m for m in report.with_ratios(RUNS)}
    assert rows["pgbouncer", 1000].kib_per_idle_client == pytest.approx(2.0)
    assert rows["pgbalancer", 1000].kib_per_idle_client == pytest.approx(60.0)
    assert rows["pgbalancer", 1000].kib_per_idle_client_vs_pgbouncer == pytest.approx(30.0)
    assert rows["pgbalancer", 1000].tps_vs_pgbouncer == pytest.approx(0.5)
    assert rows["pgbalancer", 0].tps_vs_direct == pytest.approx(0.2)
    assert rows["pgbalancer", 0].kib_per_idle_client is None  # no idle clients, no per-client figure
    assert rows["pgbalancer", 5000].kib_per_idle_client == pytest.approx(50.0)  # per client held
    assert rows["pgbalancer", 5000].tps_vs_pgbouncer is None  # PgBouncer was not measured at 5,000


def test_pss_per_idle_client_when_pss_was_read() -> None:
    run = replace(
        measured("pgbalancer_w2", 1000, 150000, 180000, 1.0), pss_before_kib=60000, pss_idle_kib=95000
    )
    (row,) = report.with_ratios([run])
    assert row.kib_per_idle_client == pytest.approx(30.0)
    assert row.pss_kib_per_idle_client == pytest.approx(35.0)
    assert report.with_ratios(RUNS)[1].pss_kib_per_idle_client is None


def test_goal_needs_every_idle_client_held() -> None:
    goals = {g.idle_clients: g for g in report.evaluate_goals(report.with_ratios(RUNS), "pgbalancer")}
    assert set(goals) == {1000, 5000}
    assert goals[1000].met is False and goals[1000].measured_kib == pytest.approx(60.0)
    assert goals[5000].met is None  # 1,000 clients were not held: no verdict


def test_goal_met_at_or_below_threshold() -> None:
    runs = [measured("pgbalancer", 1000, 40000, 90000, 1.0)]
    (goal,) = report.evaluate_goals(report.with_ratios(runs), "pgbalancer")
    assert goal.measured_kib == pytest.approx(50.0) and goal.met is True


def test_markdown_lists_rows_failures_and_goals() -> None:
    runs = [
        *RUNS[:-1],
        Measurement(
            target="pgbalancer",
            idle_requested=5000,
            idle_open=4000,
            idle_failures={"connect: ECONNREFUSED": 1000},
            pgbench_error="connection refused",
        ),
    ]
    rows = report.with_ratios(runs)
    text = report.render_markdown(rows, report.evaluate_goals(rows, "pgbalancer"))
    assert "| pgbalancer | 1,000/1,000 | 39.1 | 97.7 | n/a | 60.0 | 30.00 | 1,900 | 0.50 | 0.19 |" in text
    assert "- pgbalancer, N=5,000: 1,000 failed: connect: ECONNREFUSED" in text
    assert "- pgbalancer, N=5,000: pgbench failed: connection refused" in text
    assert "| pgbalancer: RSS per idle client, N=1,000 | 60.0 KiB | ≤ 50 KiB | no |" in text
    assert "| pgbalancer: RSS per idle client, N=5,000 | n/a KiB | ≤ 50 KiB | not measured |" in text
