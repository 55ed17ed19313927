"""Unit tests of the benchmark's pure parts (runs.csv reading, ratios, goals, percentiles, config text).

Run with `.venv/bin/pytest bench/compare/test_results.py -q`. They never start a process.
"""

from __future__ import annotations

import json

import pytest

from compare import results
from compare.pgbalancer_conf import Backend, ProxyConfig, parse_extra, render

HEADER = (
    "scenario,target,port,rep,start,tps,lat_ms,xacts,failed,conn_ms,loadavg1,cpu_postgres_s,"
    "cpu_pgbouncer_s,cpu_pgpool_s,cpu_relay_s,cpu_pgbench_s,cpu_other_s,cpu_idle_s,args"
)


def row(scenario: str, target: str, rep: int, tps: str, lat: str, xacts: int, cpu: str) -> str:
    return f"{scenario},{target},0,{rep},00:00:00,{tps},{lat},{xacts},0,,1.0,{cpu},-S"


CSV = "\n".join(
    [
        HEADER,
        row("ro", "direct", 1, "1000", "1.0", 1000, "2.00,0.00,0.10,0.00,0.50,0.20,1.00"),
        row("ro", "pgbouncer", 1, "500", "2.0", 500, "1.00,0.50,0.10,0.00,0.50,0.20,1.00"),
        row("ro", "pgpool", 1, "250", "4.0", 250, "1.00,0.00,1.00,0.00,0.50,0.20,1.00"),
        row("ro", "pgbalancer", 1, "600", "1.5", 600, "1.00,0.00,0.10,0.60,0.50,0.20,1.00"),
        row("ro", "direct", 2, "3000", "3.0", 3000, "2.00,0.00,0.10,0.00,0.50,0.40,1.00"),
        row("ro", "pgbouncer", 2, "1500", "2.0", 1500, "1.00,0.50,0.10,0.00,0.50,0.20,1.00"),
        row("ro", "pgpool", 2, "", "", 0, "1.00,0.00,1.00,0.00,0.50,0.20,1.00"),
        row("ro", "pgbalancer", 2, "1400", "2.5", 1400, "1.00,0.00,0.10,1.40,0.50,0.20,1.00"),
    ]
)


def test_summary_means_ratios_and_target_specific_proxy_cpu() -> None:
    (ro,) = results.summarize(results.parse_runs(CSV))
    direct, bouncer, pgpool, mine = (ro.target(n) for n in ("direct", "pgbouncer", "pgpool", "pgbalancer"))
    assert direct and bouncer and pgpool and mine
    assert direct.tps_mean == 2000 and direct.tps_vs_direct == 1.0
    assert bouncer.tps_vs_direct == 0.5 and bouncer.tps_vs_pgbouncer == 1.0
    assert mine.tps_vs_pgbouncer == pytest.approx(1.0)
    assert mine.lat_added_ms_vs_direct == pytest.approx(0.0)
    # pgbalancer's proxy CPU is the relay group only: (0.6 + 1.4) s over 2000 transactions.
    assert mine.proxy_cpu_us_per_tx == pytest.approx(1000.0)
    assert bouncer.proxy_cpu_us_per_tx == pytest.approx(500.0)
    assert direct.proxy_cpu_us_per_tx is None
    # A failed rep (no tps) is left out of the mean rather than counted as zero.
    assert pgpool.tps_per_rep == (250.0,) and pgpool.tps_mean == 250.0
    assert direct.other_cpu_s_per_rep == (0.2, 0.4)


def test_goals_measure_ratios_and_fall_back_to_average_latency_without_probe() -> None:
    scenarios = results.summarize(results.parse_runs(CSV))
    goals = {g.name: g for g in results.evaluate_goals(scenarios, [])}
    bouncer = goals["tps >= 1.0x PgBouncer at -S -c 16"]
    assert bouncer.measured == pytest.approx(1.0) and bouncer.met is True
    pgpool = goals["tps >= 2x Pgpool-II at -S -c 16"]
    assert pgpool.measured == pytest.approx(4.0) and pgpool.met is True
    connect = goals["tps >= 3x direct at -S -C (connect per transaction)"]
    assert connect.measured is None and connect.met is None  # ro_connect did not run
    latency = goals["<= 0.3 ms added p50 latency at -c 1"]
    assert latency.met is None and "no p50 probe" in latency.basis


def test_latency_goal_uses_probe_p50_difference() -> None:
    probes = results.with_added_p50(
        [
            results.latency_probe("direct", [100, 200, 300]),
            results.latency_probe("pgbalancer", [500, 600, 700]),
        ]
    )
    assert probes[1].p50_ms == pytest.approx(0.6)
    assert probes[1].p50_added_ms_vs_direct == pytest.approx(0.4)
    goal = results.evaluate_goals([], probes)[-1]
    assert goal.measured == pytest.approx(0.4) and goal.met is False


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert results.percentile(values, 0.5) == 50.0
    assert results.percentile(values, 0.99) == 99.0
    assert results.percentile(values, 1.0) == 100.0
    assert results.percentile([], 0.5) is None


def test_pgbench_log_parsing_skips_malformed_lines() -> None:
    text = "0 1 275 0 1795287421 244193\n0 2 107 0 1795287421 244315\ngarbage\n"
    assert results.parse_pgbench_log(text) == [275, 107]


def test_markdown_and_json_carry_every_target() -> None:
    scenarios = results.summarize(results.parse_runs(CSV))
    goals = results.evaluate_goals(scenarios, [])
    table = results.render_markdown(scenarios, [], goals)
    for target in ("direct", "pgbouncer", "pgpool", "pgbalancer"):
        assert f"| {target} |" in table
    assert "| 250 / failed" not in table and "| 250 |" in table
    decoded = json.loads(json.dumps(results.to_jsonable(scenarios)))
    assert decoded[0]["targets"][3]["target"] == "pgbalancer"
    assert decoded[0]["targets"][1]["tps_vs_direct"] == 0.5


def test_config_text_has_backends_and_extra_keys_last() -> None:
    config = ProxyConfig(
        backends=[Backend("127.0.0.1", p) for p in (5433, 5434)],
        extra=parse_extra(["server_reset_query=''", "health_check_period=5", "log_level=warning"]),
    )
    lines = render(config).splitlines()
    assert "backend_port1 = 5434" in lines and "pool_mode = 'transaction'" in lines
    assert lines[-3:] == ["server_reset_query = ''", "health_check_period = 5", "log_level = 'warning'"]


def test_config_rejects_bad_values() -> None:
    with pytest.raises(ValueError, match="pool_mode"):
        ProxyConfig(backends=[Backend("127.0.0.1", 5433)], pool_mode="bogus")
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_extra(["no_equals_sign"])


def test_pgbench_count() -> None:
    report = "number of transactions actually processed: 290778\nlatency average = 0.5 ms\n"
    assert results.parse_pgbench_count(report) == 290778
    assert results.parse_pgbench_count("number of transactions actually processed: 120/160\n") == 120
    assert results.parse_pgbench_count("pgbench: error") == 0
