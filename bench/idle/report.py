"""Pure reading and reporting of the idle-clients benchmark: /proc text, pgbench output and the
PgBouncer ini in; RSS per idle client, ratios to PgBouncer and direct, the 50 KiB goal and markdown out.

Never runs a process, touches a file or reads a clock: callers pass text in and write what comes out.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace

GOAL_KIB_PER_IDLE_CLIENT = 50.0
BASELINE = "pgbouncer"
DIRECT = "direct"


@dataclass(frozen=True)
class Measurement:
    """One target holding `idle_requested` idle clients while pgbench ran through the same port."""

    target: str
    idle_requested: int
    idle_open: int = 0  # clients that reached ReadyForQuery
    idle_failures: Mapping[str, int] = field(default_factory=dict)
    idle_open_seconds: float | None = None
    idle_still_open_after_load: int | None = None
    processes: int | None = None
    nofile_soft_limit: int | None = None
    rss_before_kib: int | None = None
    rss_idle_kib: int | None = None  # once every idle client completed its handshake
    rss_after_load_kib: int | None = None  # after pgbench, idle clients still held
    pss_before_kib: int | None = None
    pss_idle_kib: int | None = None
    tps: float | None = None
    pgbench_error: str | None = None
    # Derived by with_ratios:
    kib_per_idle_client: float | None = None
    pss_kib_per_idle_client: float | None = None  # the same from Pss: shared pages of forked workers split
    kib_per_idle_client_vs_pgbouncer: float | None = None
    tps_vs_pgbouncer: float | None = None
    tps_vs_direct: float | None = None


@dataclass(frozen=True)
class Goal:
    target: str
    idle_clients: int
    measured_kib: float | None
    threshold_kib: float
    met: bool | None  # None when it could not be measured


def parse_kib_field(text: str, key: str) -> int | None:
    """A `Key:   123 kB` line of /proc/<pid>/status or smaps_rollup, in KiB; None when absent."""
    match = re.search(rf"^{re.escape(key)}:\s+(\d+)\s*kB\s*$", text, re.MULTILINE)
    return int(match.group(1)) if match else None


def parse_nofile_soft_limit(limits_text: str) -> int | None:
    """The soft `Max open files` of /proc/<pid>/limits (None when unlimited or absent)."""
    match = re.search(r"^Max open files\s+(\S+)\s+(\S+)", limits_text, re.MULTILINE)
    if match is None or not match.group(1).isdigit():
        return None
    return int(match.group(1))


def parse_pgbench_tps(output: str) -> float | None:
    """`tps = 1234.5 (without initial connection time)` from pgbench's report."""
    match = re.search(r"^tps = ([0-9.]+)", output, re.MULTILINE)
    return float(match.group(1)) if match else None


def override_ini(text: str, section: str, overrides: Mapping[str, str]) -> str:
    """`text` with `key = value` lines of `[section]` replaced, missing keys appended to that section."""
    lines, pending, current = [], dict(overrides), ""
    for line in text.splitlines():
        header = re.fullmatch(r"\s*\[([^\]]+)\]\s*", line)
        if header:
            if current == section:
                lines += [f"{k} = {v}" for k, v in pending.items()]
                pending = {}
            current = header.group(1)
        elif current == section:
            key = line.split("=", 1)[0].strip()
            if "=" in line and key in pending:
                line = f"{key} = {pending.pop(key)}"
        lines.append(line)
    if pending:
        if current != section:
            lines.append(f"[{section}]")
        lines += [f"{k} = {v}" for k, v in pending.items()]
    return "\n".join(lines) + "\n"


def _ratio(numerator: float | None, denominator: float | None) -> float | None:
    return numerator / denominator if numerator is not None and denominator else None


def _per_client(m: Measurement, before_kib: int | None, with_idle_kib: int | None) -> float | None:
    if not m.idle_open or before_kib is None or with_idle_kib is None:
        return None
    return (with_idle_kib - before_kib) / m.idle_open


def kib_per_idle_client(m: Measurement) -> float | None:
    """RSS growth per idle client held (the goal's figure)."""
    return _per_client(m, m.rss_before_kib, m.rss_idle_kib)


def with_ratios(measurements: Sequence[Measurement]) -> list[Measurement]:
    """Each measurement with its KiB per idle client and ratios to PgBouncer (same N) and direct (N=0)."""
    per_client = [
        replace(
            m,
            kib_per_idle_client=kib_per_idle_client(m),
            pss_kib_per_idle_client=_per_client(m, m.pss_before_kib, m.pss_idle_kib),
        )
        for m in measurements
    ]
    baseline = {m.idle_requested: m for m in per_client if m.target == BASELINE}
    direct_tps = next((m.tps for m in per_client if m.target == DIRECT), None)
    out = []
    for m in per_client:
        base = baseline.get(m.idle_requested)
        out.append(
            replace(
                m,
                tps_vs_pgbouncer=_ratio(m.tps, base.tps if base else None),
                kib_per_idle_client_vs_pgbouncer=_ratio(
                    m.kib_per_idle_client, base.kib_per_idle_client if base else None
                ),
                tps_vs_direct=_ratio(m.tps, direct_tps),
            )
        )
    return out


def evaluate_goals(measurements: Sequence[Measurement], candidate: str) -> list[Goal]:
    """Issue 3's "at most 50 KiB RSS per idle client connection", for every N the candidate held."""
    goals = []
    for m in measurements:
        if m.target != candidate or m.idle_requested == 0:
            continue
        # A run where clients were refused did not show that N idle clients fit: no verdict.
        complete = m.idle_open == m.idle_requested
        measured = m.kib_per_idle_client if complete else None
        met = None if measured is None else measured <= GOAL_KIB_PER_IDLE_CLIENT
        goals.append(Goal(m.target, m.idle_requested, measured, GOAL_KIB_PER_IDLE_CLIENT, met))
    return goals


def _num(value: float | None, digits: int = 0) -> str:
    return "n/a" if value is None else f"{value:,.{digits}f}"


def _mib(kib: int | None) -> str:
    return "n/a" if kib is None else f"{kib / 1024:,.1f}"


def _held(m: Measurement) -> str:
    if m.idle_requested == 0:
        return "0"
    held = f"{m.idle_open:,}/{m.idle_requested:,}"
    if m.idle_still_open_after_load is not None and m.idle_still_open_after_load != m.idle_open:
        held += f" ({m.idle_still_open_after_load:,} still open after pgbench)"
    return held


def _row(m: Measurement) -> str:
    tps = _num(m.tps) if m.pgbench_error is None else "failed"
    cells = [
        m.target,
        _held(m),
        _mib(m.rss_before_kib),
        _mib(m.rss_idle_kib),
        _mib(m.rss_after_load_kib),
        _num(m.kib_per_idle_client, 1),
        _num(m.kib_per_idle_client_vs_pgbouncer, 2),
        tps,
        _num(m.tps_vs_pgbouncer, 2),
        _num(m.tps_vs_direct, 2),
    ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(measurements: Sequence[Measurement], goals: Sequence[Goal]) -> str:
    lines = [
        "| target | idle clients held | RSS before (MiB) | RSS with idle (MiB) | RSS after pgbench (MiB)"
        " | KiB per idle client | KiB vs PgBouncer | TPS with idle held | TPS vs PgBouncer | TPS vs direct |",
        "|---|---|--:|--:|--:|--:|--:|--:|--:|--:|",
        *(_row(m) for m in measurements),
    ]
    failures = [(m, reason, n) for m in measurements for reason, n in m.idle_failures.items()]
    if failures:
        lines += ["", "Idle clients that did not get in:"]
        lines += [f"- {m.target}, N={m.idle_requested:,}: {n:,} failed: {why}" for m, why, n in failures]
    errors = [m for m in measurements if m.pgbench_error]
    lines += [f"- {m.target}, N={m.idle_requested:,}: pgbench failed: {m.pgbench_error}" for m in errors]
    if goals:
        lines += ["", "| goal (issue 3) | measured | threshold | met |", "|---|--:|--:|---|"]
        for g in goals:
            verdict = {True: "yes", False: "no", None: "not measured"}[g.met]
            lines.append(
                f"| {g.target}: RSS per idle client, N={g.idle_clients:,} | {_num(g.measured_kib, 1)} KiB"
                f" | ≤ {g.threshold_kib:.0f} KiB | {verdict} |"
            )
    return "\n".join(lines)
