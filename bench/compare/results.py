"""Pure reading of benchmark output: bench.sh's runs.csv and pgbench per-transaction logs in, summaries,
ratios, project-goal verdicts, JSON-ready dicts and markdown out.

Never runs a process, touches a file or reads a clock: callers pass text in and write what comes out.
"""

from __future__ import annotations

import csv
import io
import math
import statistics
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from typing import Any

SCENARIO_TITLES: Mapping[str, str] = {
    "ro": "select-only, persistent connections",
    "ro_connect": "select-only, new connection per transaction",
    "lat1": "select-only, single client",
    "tpcb": "TPC-B-like (writes)",
}
CPU_GROUPS = ("postgres", "pgbouncer", "pgpool", "relay", "pgbench", "other", "idle")
# Which cpuacct.py group holds a target's proxy CPU; any target not listed is a "relay"
# (counted through bench.sh's --proxy-match), and `direct` has no proxy at all.
PROXY_CPU_GROUP: Mapping[str, str | None] = {"direct": None, "pgbouncer": "pgbouncer", "pgpool": "pgpool"}


@dataclass(frozen=True)
class Run:
    """One pgbench run as bench.sh recorded it (one row of runs.csv)."""

    scenario: str
    target: str
    rep: int
    tps: float | None
    lat_ms: float | None
    xacts: int
    failed: int
    conn_ms: float | None
    cpu_s: Mapping[str, float]
    args: str


@dataclass(frozen=True)
class TargetSummary:
    """Every rep of one scenario on one target, reduced to means and ratios."""

    target: str
    tps_per_rep: tuple[float, ...]
    tps_mean: float | None
    tps_min: float | None
    tps_max: float | None
    lat_avg_ms: float | None
    conn_avg_ms: float | None
    xacts: int
    failed: int
    proxy_cpu_us_per_tx: float | None
    postgres_cpu_us_per_tx: float | None
    pgbench_cpu_us_per_tx: float | None
    other_cpu_s_per_rep: tuple[float, ...]
    tps_vs_direct: float | None = None
    tps_vs_pgbouncer: float | None = None
    lat_added_ms_vs_direct: float | None = None


@dataclass(frozen=True)
class ScenarioSummary:
    scenario: str
    args: str
    targets: tuple[TargetSummary, ...]

    def target(self, name: str) -> TargetSummary | None:
        return next((t for t in self.targets if t.target == name), None)


@dataclass(frozen=True)
class LatencyProbe:
    """Per-transaction latency of a single-client select-only run (pgbench -l), in milliseconds."""

    target: str
    samples: int
    p50_ms: float | None
    p90_ms: float | None
    p99_ms: float | None
    mean_ms: float | None
    p50_added_ms_vs_direct: float | None = None


@dataclass(frozen=True)
class Goal:
    """One project target checked against this run; `met` is None when it could not be measured."""

    name: str
    basis: str
    threshold: float
    measured: float | None
    higher_is_better: bool
    unit: str
    met: bool | None = field(init=False)

    def __post_init__(self) -> None:
        met = None
        if self.measured is not None:
            met = (
                self.measured >= self.threshold if self.higher_is_better else self.measured <= self.threshold
            )
        object.__setattr__(self, "met", met)


def _float(text: str | None) -> float | None:
    try:
        value = float(text) if text not in (None, "") else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def _int(text: str | None) -> int:
    value = _float(text)
    return int(value) if value is not None else 0


def parse_runs(csv_text: str) -> list[Run]:
    """Rows of bench.sh's runs.csv; a run whose pgbench failed keeps tps/lat as None."""
    runs = []
    for row in csv.DictReader(io.StringIO(csv_text)):
        cpu = {g: _float(row.get(f"cpu_{g}_s")) for g in CPU_GROUPS}
        runs.append(
            Run(
                scenario=row["scenario"],
                target=row["target"],
                rep=_int(row.get("rep")),
                tps=_float(row.get("tps")),
                lat_ms=_float(row.get("lat_ms")),
                xacts=_int(row.get("xacts")),
                failed=_int(row.get("failed")),
                conn_ms=_float(row.get("conn_ms")),
                cpu_s={g: v for g, v in cpu.items() if v is not None},
                args=row.get("args") or "",
            )
        )
    return runs


def _mean(values: Iterable[float | None]) -> float | None:
    present = [v for v in values if v is not None]
    return statistics.fmean(present) if present else None


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _us_per_tx(runs: Sequence[Run], group: str | None) -> float | None:
    xacts = sum(r.xacts for r in runs)
    if group is None or not xacts or any(group not in r.cpu_s for r in runs):
        return None
    return sum(r.cpu_s[group] for r in runs) / xacts * 1e6


def summarize_target(target: str, runs: Sequence[Run]) -> TargetSummary:
    tps = tuple(r.tps for r in runs if r.tps is not None)
    return TargetSummary(
        target=target,
        tps_per_rep=tps,
        tps_mean=_mean(tps),
        tps_min=min(tps, default=None),
        tps_max=max(tps, default=None),
        lat_avg_ms=_mean(r.lat_ms for r in runs),
        conn_avg_ms=_mean(r.conn_ms for r in runs),
        xacts=sum(r.xacts for r in runs),
        failed=sum(r.failed for r in runs),
        proxy_cpu_us_per_tx=_us_per_tx(runs, PROXY_CPU_GROUP.get(target, "relay")),
        postgres_cpu_us_per_tx=_us_per_tx(runs, "postgres"),
        pgbench_cpu_us_per_tx=_us_per_tx(runs, "pgbench"),
        other_cpu_s_per_rep=tuple(r.cpu_s.get("other", 0.0) for r in runs),
    )


def _with_ratios(
    summary: TargetSummary, direct: TargetSummary | None, bouncer: TargetSummary | None
) -> TargetSummary:
    added = None
    if direct is not None and summary.lat_avg_ms is not None and direct.lat_avg_ms is not None:
        added = summary.lat_avg_ms - direct.lat_avg_ms
    return replace(
        summary,
        tps_vs_direct=_ratio(summary.tps_mean, direct.tps_mean if direct else None),
        tps_vs_pgbouncer=_ratio(summary.tps_mean, bouncer.tps_mean if bouncer else None),
        lat_added_ms_vs_direct=added,
    )


def summarize(runs: Sequence[Run]) -> list[ScenarioSummary]:
    """Group runs by scenario then target (both in first-seen order) and add ratios to direct/pgbouncer."""
    grouped: dict[str, dict[str, list[Run]]] = {}
    for run in runs:
        grouped.setdefault(run.scenario, {}).setdefault(run.target, []).append(run)
    scenarios = []
    for scenario, by_target in grouped.items():
        plain = {t: summarize_target(t, rs) for t, rs in by_target.items()}
        direct, bouncer = plain.get("direct"), plain.get("pgbouncer")
        targets = tuple(_with_ratios(s, direct, bouncer) for s in plain.values())
        args = next(iter(by_target.values()))[0].args
        scenarios.append(ScenarioSummary(scenario=scenario, args=args, targets=targets))
    return scenarios


def parse_pgbench_log(text: str) -> list[int]:
    """Transaction latencies in microseconds from a pgbench -l log (third column of each line)."""
    latencies = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            latencies.append(int(fields[2]))
    return latencies


def parse_pgbench_count(output: str) -> int:
    """`number of transactions actually processed: N` from pgbench's report, 0 when absent."""
    for line in output.splitlines():
        if line.startswith("number of transactions actually processed:"):
            return _int(line.partition(":")[2].split("/")[0])
    return 0


def percentile(sorted_values: Sequence[float], fraction: float) -> float | None:
    """Nearest-rank percentile of already sorted values (fraction in [0, 1])."""
    if not sorted_values:
        return None
    rank = max(1, math.ceil(fraction * len(sorted_values)))
    return sorted_values[min(rank, len(sorted_values)) - 1]


def latency_probe(target: str, latencies_us: Iterable[int]) -> LatencyProbe:
    ms = sorted(v / 1000.0 for v in latencies_us)
    return LatencyProbe(
        target=target,
        samples=len(ms),
        p50_ms=percentile(ms, 0.50),
        p90_ms=percentile(ms, 0.90),
        p99_ms=percentile(ms, 0.99),
        mean_ms=statistics.fmean(ms) if ms else None,
    )


def with_added_p50(probes: Sequence[LatencyProbe]) -> list[LatencyProbe]:
    direct = next((p for p in probes if p.target == "direct"), None)
    base = direct.p50_ms if direct else None
    return [
        replace(p, p50_added_ms_vs_direct=None if base is None or p.p50_ms is None else p.p50_ms - base)
        for p in probes
    ]


def _scenario(scenarios: Sequence[ScenarioSummary], name: str) -> ScenarioSummary | None:
    return next((s for s in scenarios if s.scenario == name), None)


def _tps_ratio(scenarios: Sequence[ScenarioSummary], scenario: str, target: str, base: str) -> float | None:
    found = _scenario(scenarios, scenario)
    mine, other = (found.target(target), found.target(base)) if found else (None, None)
    return _ratio(mine.tps_mean if mine else None, other.tps_mean if other else None)


def _added_latency(
    scenarios: Sequence[ScenarioSummary], probes: Sequence[LatencyProbe], target: str
) -> tuple[float | None, str]:
    probe = next((p for p in probes if p.target == target), None)
    if probe is not None and probe.p50_added_ms_vs_direct is not None:
        return probe.p50_added_ms_vs_direct, "p50 of pgbench -S -c 1 -l, minus direct's p50"
    lat1 = _scenario(scenarios, "lat1")
    mine = lat1.target(target) if lat1 else None
    basis = "lat1 average latency minus direct's (no p50 probe)"
    return (mine.lat_added_ms_vs_direct if mine else None), basis


def evaluate_goals(
    scenarios: Sequence[ScenarioSummary], probes: Sequence[LatencyProbe], candidate: str = "pgbalancer"
) -> list[Goal]:
    """The pooling issue's performance targets, measured on `candidate`."""

    def tps_goal(name: str, scenario: str, base: str, threshold: float) -> Goal:
        basis = f"{scenario}: `pgbench {_args_of(scenarios, scenario)}`, mean tps / {base}'s"
        return Goal(name, basis, threshold, _tps_ratio(scenarios, scenario, candidate, base), True, "x")

    added, added_basis = _added_latency(scenarios, probes, candidate)
    return [
        tps_goal("tps >= 1.0x PgBouncer at -S -c 16", "ro", "pgbouncer", 1.0),
        tps_goal("tps >= 2x Pgpool-II at -S -c 16", "ro", "pgpool", 2.0),
        tps_goal("tps >= 3x direct at -S -C (connect per transaction)", "ro_connect", "direct", 3.0),
        Goal("<= 0.3 ms added p50 latency at -c 1", added_basis, 0.3, added, False, "ms"),
    ]


def _args_of(scenarios: Sequence[ScenarioSummary], name: str) -> str:
    found = _scenario(scenarios, name)
    return found.args if found else "(not run)"


def _num(value: float | None, digits: int = 0) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _scenario_table(scenario: ScenarioSummary) -> list[str]:
    title = SCENARIO_TITLES.get(scenario.scenario, scenario.scenario)
    lines = [
        f"### {scenario.scenario}: {title} (`pgbench {scenario.args}`)",
        "",
        "| target | tps per rep | mean tps | x direct | x PgBouncer | avg latency ms | added ms vs direct"
        " | proxy CPU µs/tx | postgres CPU µs/tx | other CPU s/rep |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for t in scenario.targets:
        reps = " / ".join(f"{v:,.0f}" for v in t.tps_per_rep) or "failed"
        if t.failed:
            reps += f" ({t.failed} failed tx)"
        other = " / ".join(f"{v:.1f}" for v in t.other_cpu_s_per_rep)
        cells = [
            t.target,
            reps,
            _num(t.tps_mean),
            _num(t.tps_vs_direct, 2),
            _num(t.tps_vs_pgbouncer, 2),
            _num(t.lat_avg_ms, 3),
            _num(t.lat_added_ms_vs_direct, 3),
            _num(t.proxy_cpu_us_per_tx, 1),
            _num(t.postgres_cpu_us_per_tx, 1),
            other,
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return [*lines, ""]


def _probe_table(probes: Sequence[LatencyProbe]) -> list[str]:
    lines = [
        "### latency probe: pgbench -S -c 1 -j 1 -l (per-transaction latency)",
        "",
        "| target | transactions | p50 ms | p90 ms | p99 ms | p50 added ms vs direct |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for p in probes:
        lines.append(
            f"| {p.target} | {p.samples:,} | {_num(p.p50_ms, 3)} | {_num(p.p90_ms, 3)} | {_num(p.p99_ms, 3)}"
            f" | {_num(p.p50_added_ms_vs_direct, 3)} |"
        )
    return [*lines, ""]


def _goal_table(goals: Sequence[Goal], candidate: str) -> list[str]:
    lines = [
        f"### project targets, measured on {candidate}",
        "",
        "| target | measured | met | basis |",
        "|---|---:|---|---|",
    ]
    for g in goals:
        verdict = {True: "yes", False: "no", None: "not measured"}[g.met]
        measured = _num(g.measured, 3 if g.unit == "ms" else 2) + (
            f" {g.unit}" if g.measured is not None else ""
        )
        lines.append(f"| {g.name} | {measured} | {verdict} | {g.basis} |")
    return [*lines, ""]


def render_markdown(
    scenarios: Sequence[ScenarioSummary],
    probes: Sequence[LatencyProbe],
    goals: Sequence[Goal],
    candidate: str = "pgbalancer",
) -> str:
    lines: list[str] = []
    for scenario in scenarios:
        lines += _scenario_table(scenario)
    if probes:
        lines += _probe_table(probes)
    if goals:
        lines += _goal_table(goals, candidate)
    return "\n".join(lines)


def to_jsonable(value: Any) -> Any:
    """Dataclasses, mappings and sequences as plain JSON-ready structures, floats to 6 decimals."""
    if hasattr(value, "__dataclass_fields__"):
        return to_jsonable(asdict(value))
    if isinstance(value, Mapping):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, float):
        return round(value, 6)
    return value
