"""The routing_skew workload and its report, pure: pgbench scripts, output parsing, percentiles, table.

A read-heavy mix through pgbalancer in autocommit (so every read is routed on its own): reader
sessions doing point reads and a few heavier (indexed, 500-row) range reads, beside a writer session
doing single-row UPDATEs at a fixed rate, as pgbench scripts with weights. Nothing here runs a
process or touches a file except ``write_scripts``.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

SCRIPTS = {
    "point_read": (
        "\\set aid random(1, 100000 * :scale)\nSELECT abalance FROM pgbench_accounts WHERE aid = :aid;\n"
    ),
    "range_read": (
        "\\set aid random(1, 100000 * :scale - 500)\n"
        "SELECT count(*), sum(abalance) FROM pgbench_accounts WHERE aid BETWEEN :aid AND :aid + 500;\n"
    ),
    "write": (
        "\\set aid random(1, 100000 * :scale)\n\\set delta random(-5000, 5000)\n"
        "UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;\n"
    ),
}
READ_WEIGHTS = {"point_read": 90, "range_read": 10}  # percent of the readers' transactions
WRITE_SCRIPT = "write"

_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)


def write_scripts(directory: Path) -> tuple[list[str], list[str]]:
    """Writes the scripts; returns pgbench's ``-f file@weight`` arguments for the readers and the
    ``-f file`` argument for the writer. Writes come from their own sessions: a session that wrote
    reads from the primary until the standbys have replayed its commit (read-your-writes), which
    would hide the balancer from most reads of a mixed session."""
    readers = []
    for name, body in SCRIPTS.items():
        path = directory / f"{name}.sql"
        path.write_text(body)
        if name in READ_WEIGHTS:
            readers += ["-f", f"{path}@{READ_WEIGHTS[name]}"]
    return readers, ["-f", str(directory / f"{WRITE_SCRIPT}.sql")]


@dataclass(frozen=True)
class RunResult:
    scenario: str
    algorithm: str
    tps: float
    latency_avg_ms: float
    latency_p99_ms: float
    slow_share: float = math.nan  # standby1's share of the standbys' transactions (0.5 = even)
    rep: int = 1  # which repetition; in a median (``medians``), how many there were
    primary_share: float = math.nan  # the primary's share of all reads (its commits minus the writer's)


def parse_summary(output: str) -> tuple[float, float]:
    """(TPS, average latency in ms) from pgbench's summary; ValueError names what is missing."""
    tps = _TPS.search(output)
    latency = _LATENCY.search(output)
    if tps is None or latency is None:
        raise ValueError("pgbench printed no 'tps = ... (without initial connection time)' or latency line")
    return float(tps.group(1)), float(latency.group(1))


def latencies_ms(log_lines: Iterable[str]) -> list[float]:
    """Per-transaction latencies from pgbench ``-l`` logs (third field, microseconds)."""
    values = []
    for line in log_lines:
        fields = line.split()
        if len(fields) >= 3 and fields[2].isdigit():
            values.append(int(fields[2]) / 1000.0)
    return values


def percentile(values: Sequence[float], fraction: float) -> float:
    """Nearest-rank percentile; NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(fraction * len(ordered)))
    return ordered[rank - 1]


def medians(results: Sequence[RunResult]) -> list[RunResult]:
    """One result per (scenario, algorithm), in first-seen order: the median of each figure over
    the repetitions (runs are interleaved, so a noisy minute hits every algorithm alike)."""
    groups: dict[tuple[str, str], list[RunResult]] = {}
    for result in results:
        groups.setdefault((result.scenario, result.algorithm), []).append(result)
    return [
        RunResult(
            scenario,
            algorithm,
            statistics.median(r.tps for r in runs),
            statistics.median(r.latency_avg_ms for r in runs),
            statistics.median(r.latency_p99_ms for r in runs),
            statistics.median(r.slow_share for r in runs),
            len(runs),
            statistics.median(r.primary_share for r in runs),
        )
        for (scenario, algorithm), runs in groups.items()
    ]


def ratio_medians(results: Sequence[RunResult]) -> dict[tuple[str, str], tuple[float, float]]:
    """(TPS ratio, p99 ratio) to round_robin of the same scenario AND repetition, median over the
    repetitions: a ratio taken minutes apart on a shared machine says little, one taken side by side
    in the same repetition says more."""
    baseline = {(r.scenario, r.rep): r for r in results if r.algorithm == "round_robin"}
    ratios: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for result in results:
        base = baseline.get((result.scenario, result.rep))
        if base is None or not base.tps or not base.latency_p99_ms:
            continue
        pair = (result.tps / base.tps, result.latency_p99_ms / base.latency_p99_ms)
        ratios.setdefault((result.scenario, result.algorithm), []).append(pair)
    return {
        key: (statistics.median(p[0] for p in pairs), statistics.median(p[1] for p in pairs))
        for key, pairs in ratios.items()
    }


def table(
    results: Sequence[RunResult], ratios: dict[tuple[str, str], tuple[float, float]] | None = None
) -> str:
    """Markdown: one row per scenario and algorithm, with ratios to round_robin in that scenario
    (``ratios`` when given, else from the rows themselves) and standby1's share of standby reads."""
    lines = [
        "| scenario | algorithm | TPS | vs round_robin | mean latency (ms) | p99 (ms) | p99 vs round_robin "
        "| standby1 share | primary share of reads |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    baseline = {r.scenario: r for r in results if r.algorithm == "round_robin"}
    for result in results:
        base = baseline.get(result.scenario)
        if ratios is not None and (result.scenario, result.algorithm) in ratios:
            tps_r, p99_r = ratios[(result.scenario, result.algorithm)]
            tps_ratio, p99_ratio = f"{tps_r:.2f}x", f"{p99_r:.2f}x"
        else:
            tps_ratio = f"{result.tps / base.tps:.2f}x" if base and base.tps else "-"
            p99_ratio = (
                f"{result.latency_p99_ms / base.latency_p99_ms:.2f}x" if base and base.latency_p99_ms else "-"
            )
        share = "-" if math.isnan(result.slow_share) else f"{result.slow_share:.2f}"
        primary = "-" if math.isnan(result.primary_share) else f"{result.primary_share:.2f}"
        lines.append(
            f"| {result.scenario} | {result.algorithm} | {result.tps:.0f} | {tps_ratio} | "
            f"{result.latency_avg_ms:.2f} | {result.latency_p99_ms:.2f} | {p99_ratio} | {share} | {primary} |"
        )
    return "\n".join(lines) + "\n"
