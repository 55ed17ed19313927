"""`bench/routing_skew` (issue 4): every load_balance_algorithm on a skewed and on a uniform cluster,
and how fast the adaptive balancer moves traffic when the skew goes away and comes back.

One run builds a fresh local cluster (primary + 2 streaming standbys, free ports, under /tmp) and
puts standby1 behind a DelayShim (always, so every scenario has the same path). Scenarios:

- ``delay``: the shim holds every reply of standby1 for ``--delay-ms`` (2 ms: one delay per round trip);
- ``cpu``: ``--burners`` sessions on standby1 itself run CPU-bound queries, and standby1's
  processes (burners included) share a CPU cgroup budget of ``--cpu-quota`` cores (cpubox.py):
  background CPU load on that node only, as on a machine of its own;
- ``uniform``: no skew, the same path.

``ideal`` in ``--algorithms`` is not an algorithm but a reference: round_robin with standby1 at
weight 0, i.e. perfect shedding of the slow node (skewed scenarios only). An entry may carry
settings, ``NAME:KEY=VALUE,...``, to compare tuning variants in one interleaved run.

For each scenario and each algorithm a fresh ``pgbalancer -f`` (transaction pooling, 1 worker) runs
in front of [primary, shim, standby2]; a read-heavy pgbench mix (workload.py) warms up and then is
measured: TPS, mean latency and p99 from pgbench's per-transaction log. Then, for each scenario in
``--recovery``, adaptive runs once more under continuous load while the skew is removed and later
re-applied; standby1's share of the standbys' transactions (pg_stat_database.xact_commit read on
each standby) is sampled twice a second, and the seconds until it reached ``--fair-fraction`` of an
even share (and after the skew returns, until it fell to half of that) are reported.

Writes ``skew.json`` and ``table.md`` into ``--out`` (default bench/results/skew-<time>), with each
pgbalancer's log. Everything started is stopped and the cluster removed on every exit path.
Runs are interleaved over ``--reps`` repetitions (rep 1 of every scenario and algorithm, then rep
2, ...) and the table shows medians, so a noisy minute on a shared machine hits every algorithm.
Run as root from the repo root: ``bench/routing_skew`` (about 25 minutes with the defaults).
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import math
import os
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

import psycopg

from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.demo import initialize_bench
from pgbalancer.devtools.pgcluster import BENCH_DB, BENCH_USER, LOCALHOST, LocalPgCluster, PgNode
from skew.cpubox import CpuBox
from skew.recovery import Sample, SharePoint, seconds_until, shares
from skew.shim import DelayShim
from skew.workload import (
    RunResult,
    latencies_ms,
    medians,
    parse_summary,
    percentile,
    ratio_medians,
    table,
    write_scripts,
)

REPO_ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("round_robin", "weighted", "least_connections", "random", "adaptive", "ideal")
# The reference no balancer can beat by shedding: round_robin with the slow standby at weight 0.
# It shows how far the skew itself moves TPS and p99 on this machine (skewed scenarios only).
IDEAL = "ideal"
SCENARIOS = ("delay", "cpu", "uniform")
SAMPLE_INTERVAL_S = 0.5
SHARE_WINDOW_S = 2.0
HOLD_WINDOWS = 3  # a crossing counts once a window wholly after the change crossed, and the next two did


class BenchError(RuntimeError):
    """A step of the run failed; the message says which and where its log is."""


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/routing_skew", description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", default=" ".join(ALGORITHMS), help="algorithms to run, in order")
    p.add_argument("--scenarios", default=" ".join(SCENARIOS), help="any of: delay cpu uniform")
    p.add_argument("--recovery", default="delay cpu", help="scenarios whose skew is removed and re-added")
    p.add_argument("--delay-ms", type=float, default=2.0, help="delay per reply of standby1 (default 2)")
    p.add_argument("--burners", type=int, default=2, help="CPU-bound sessions on standby1 (default 2)")
    p.add_argument(
        "--cpu-quota",
        type=float,
        default=0.5,
        help="cpu scenario: standby1's CPU budget in cores, burners included (default 0.5)",
    )
    p.add_argument("--seconds", type=int, default=15, help="measured pgbench -T per run (default 15)")
    p.add_argument("--warmup", type=int, default=5, help="seconds of the same load first (default 5)")
    p.add_argument(
        "--reps", type=int, default=3, help="interleaved repetitions; medians reported (default 3)"
    )
    p.add_argument("--clients", type=int, default=4, help="reader sessions, pgbench -c (default 4)")
    p.add_argument(
        "--writes",
        type=int,
        default=50,
        help="UPDATE commits per second from one writer session (default 50)",
    )
    p.add_argument(
        "--phase", type=int, default=40, help="seconds per recovery phase: skewed, fixed, skewed (default 40)"
    )
    p.add_argument(
        "--fair-fraction",
        type=float,
        default=0.8,
        help="recovered = standby1 back at this fraction of an even share of standby reads (default 0.8)",
    )
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/...)")
    return p.parse_args(argv)


# ---- skews ------------------------------------------------------------------------------------------


def _descendants(pid: int) -> list[int]:
    """pid and every process below it (from /proc), e.g. a postmaster and its backends."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        children.setdefault(ppid, []).append(int(entry.name))
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        todo.extend(children.get(current, []))
    return found


def _pin(pid: int, cpus: set[int]) -> None:
    for each in _descendants(pid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.sched_setaffinity(each, cpus)


class CpuLoad:
    """Background CPU load on one PostgreSQL node only: ``burners`` sessions run CPU-bound queries on
    that node, and the node's processes (burners included) share a CPU budget of ``quota`` of one
    core in a cgroup of their own (cpubox.py), as if it were a busy machine of its own; the other
    nodes keep the host's cores. Without cgroups it falls back to pinning the node to CPU 0, where it
    still competes with everything else. New backends inherit either from the postmaster, so a
    pgbalancer started later is served by confined backends too."""

    BURN_SQL = "SELECT count(*) FROM generate_series(1, 30000000)"

    def __init__(self, cluster: LocalPgCluster, node: PgNode, burners: int, box: CpuBox | None) -> None:
        self.cluster = cluster
        self.node = node
        self.burners = burners
        self.box = box
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []
        self._conns: list[psycopg.Connection[tuple[object, ...]]] = []

    def _postmaster(self) -> int:
        pid = self.cluster.postmaster_pid(self.node)
        if pid is None:
            raise BenchError(f"{self.node.name} is not running")
        return pid

    def apply(self) -> None:
        self._stop.clear()
        if self.box is not None:
            self.box.enter(_descendants(self._postmaster()))
        else:
            _pin(self._postmaster(), {0})
        for _ in range(self.burners):
            conn = psycopg.connect(self.node.dsn(), autocommit=True)  # backend forked after the pin
            self._conns.append(conn)
            thread = threading.Thread(target=self._burn, args=(conn,), daemon=True)
            self._threads.append(thread)
            thread.start()

    def _burn(self, conn: psycopg.Connection[tuple[object, ...]]) -> None:
        with contextlib.suppress(psycopg.Error):
            while not self._stop.is_set():
                conn.execute(self.BURN_SQL)

    def remove(self) -> None:
        self._stop.set()
        for conn in self._conns:
            with contextlib.suppress(psycopg.Error):
                conn.cancel_safe(timeout=5)
        for thread in self._threads:
            thread.join(30)
        for conn in self._conns:
            conn.close()
        self._threads.clear()
        self._conns.clear()
        if self.box is not None:
            self.box.leave(_descendants(self._postmaster()))
        else:
            _pin(self._postmaster(), set(range(os.cpu_count() or 1)))


@dataclass
class Skew:
    scenario: str
    shim: DelayShim
    cpu: CpuLoad
    delay_s: float

    def apply(self) -> None:
        if self.scenario == "delay":
            self.shim.set_delay(self.delay_s)
        elif self.scenario == "cpu":
            self.cpu.apply()

    def remove(self) -> None:
        if self.scenario == "delay":
            self.shim.set_delay(0.0)
        elif self.scenario == "cpu":
            self.cpu.remove()

    @contextlib.contextmanager
    def applied(self) -> Iterator[None]:
        self.apply()
        try:
            yield
        finally:
            self.remove()


# ---- pgbalancer and pgbench -------------------------------------------------------------------------


def algorithm_settings(token: str) -> dict[str, Setting]:
    """An ``--algorithms`` entry as pgbalancer settings: ``NAME`` or ``NAME:KEY=VALUE,...``, so tuning
    variants (``adaptive:ai_exploration_floor=0.005``) run interleaved with the others in one run."""
    name, _, overrides = token.partition(":")
    settings: dict[str, Setting] = {"load_balance_algorithm": name}
    if name == IDEAL:
        settings = {"load_balance_algorithm": "round_robin", "backend_weight1": 0}
    for pair in filter(None, overrides.split(",")):
        key, equals, value = pair.partition("=")
        if not equals or not key:
            raise BenchError(f"--algorithms entry {token!r}: write NAME:KEY=VALUE,KEY=VALUE")
        settings[key] = value
    return settings


def _settings(cluster: LocalPgCluster, shim_port: int, algorithm: str) -> dict[str, Setting]:
    settings: dict[str, Setting] = {
        "listen_addresses": LOCALHOST,
        "port": free_tcp_port(),
        "auth_type": "trust",
        "pool_mode": "transaction",
        "workers": 1,
        "num_init_children": 20,
        "max_pool": 4,
        "api_port": 0,
        "mqtt_mode": "off",
        "log_level": "warning",
        **algorithm_settings(algorithm),
    }
    ports = [cluster.primary.port, shim_port, cluster.standbys[1].port]
    for node_id, port in enumerate(ports):
        settings[f"backend_hostname{node_id}"] = LOCALHOST
        settings[f"backend_port{node_id}"] = port
    return settings


def _pgbench_argv(
    cluster: LocalPgCluster, port: int, clients: int, seconds: int, scripts: list[str], *extra: str
) -> list[str]:
    argv = [str(cluster.pg_bin / "pgbench"), "-n", "-h", LOCALHOST, "-p", str(port), "-U", BENCH_USER]
    return [*argv, *extra, "-c", str(clients), "-j", "1", "-T", str(seconds), *scripts, BENCH_DB]


def _pgbench_env() -> dict[str, str]:
    return {key: value for key, value in os.environ.items() if not key.startswith("PG")}


def _pgbench(argv: list[str], log_prefix: Path | None = None) -> str:
    if log_prefix is not None:
        argv = [argv[0], "-l", "--log-prefix", str(log_prefix), *argv[1:]]
    done = subprocess.run(argv, capture_output=True, text=True, check=False, env=_pgbench_env())
    if done.returncode != 0:
        raise BenchError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


@contextlib.contextmanager
def _writer(
    cluster: LocalPgCluster, port: int, args: argparse.Namespace, script: list[str]
) -> Iterator[None]:
    """One session committing ``--writes`` single-row UPDATEs per second through pgbalancer meanwhile."""
    argv = _pgbench_argv(cluster, port, 1, 24 * 3600, script, "-R", str(args.writes))
    writer = subprocess.Popen(
        argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_pgbench_env()
    )
    try:
        yield
    finally:
        exited = writer.poll()
        if exited is None:
            writer.terminate()
        _, err = writer.communicate(timeout=30)
    if exited is not None:
        raise BenchError(f"the writer pgbench exited early ({exited}): {err.strip()[-500:]}")


@contextlib.contextmanager
def _balancer(workdir: Path, out: Path, name: str, settings: dict[str, Setting]) -> Iterator[BalancerProcess]:
    node = BalancerProcess.start(workdir / name, settings)
    try:
        yield node
    finally:
        node.stop()
        (out / f"pgbalancer-{name}.log").write_text(node.log_text())


def run_one(
    cluster: LocalPgCluster,
    skew: Skew,
    algorithm: str,
    rep: int,
    args: argparse.Namespace,
    workdir: Path,
    out: Path,
) -> RunResult:
    scripts, write = write_scripts(out)
    name = f"{skew.scenario}-{algorithm}-rep{rep}"
    with (
        skew.applied(),
        _balancer(workdir, out, name, _settings(cluster, skew.shim.port, algorithm)) as node,
        _writer(cluster, node.port, args, write),
    ):
        _pgbench(_pgbench_argv(cluster, node.port, args.clients, args.warmup, scripts))  # learning time
        prefix = out / f"latency-{name}"
        before = _node_reads(cluster)
        summary = _pgbench(_pgbench_argv(cluster, node.port, args.clients, args.seconds, scripts), prefix)
        after = _node_reads(cluster)
    tps, latency_avg = parse_summary(summary)
    primary, slow, other = (b - a for a, b in zip(before, after, strict=True))
    slow_share = slow / (slow + other) if slow + other > 0 else math.nan
    primary_share = primary / (primary + slow + other) if primary + slow + other > 0 else math.nan
    lines: list[str] = []
    for path in sorted(out.glob(f"{prefix.name}.*")):
        lines += path.read_text().splitlines()
        path.unlink()  # the per-transaction logs are large; the figures below are what is kept
    p99 = percentile(latencies_ms(lines), 0.99)
    by_script = {
        script: percentile(latencies_ms(line for line in lines if line.split()[3:4] == [str(index)]), 0.99)
        for index, script in enumerate(("point", "range"))
    }
    result = RunResult(
        skew.scenario, algorithm, tps, latency_avg, p99, round(slow_share, 3), rep, round(primary_share, 3)
    )
    print(
        f"==> {name}: {tps:.0f} TPS, {latency_avg:.2f} ms mean, p99 {p99:.2f} ms, "
        f"standby1 share {slow_share:.2f}, primary share of reads {primary_share:.2f}; "
        f"p99 point reads {by_script['point']:.2f} ms, range reads {by_script['range']:.2f} ms",
        flush=True,
    )
    return result


# ---- recovery ---------------------------------------------------------------------------------------


@dataclass
class Recovery:
    scenario: str
    skew_removed_at_s: float
    skew_back_at_s: float
    recovered_after_s: float | None  # skew removed -> standby1 back at the fair fraction of its share
    shed_after_s: float | None  # skew back -> standby1 down to half of that
    share_skewed: float  # standby1's share of standby transactions over the last 10 s of each phase
    share_fixed: float
    share_skewed_again: float
    series: list[SharePoint]


def _node_reads(cluster: LocalPgCluster) -> list[int]:
    """Read transactions committed so far on the primary, standby1 and standby2 (database bench, read on
    each node directly). On the primary the writer's commits are taken out: each commits one UPDATE
    of one row, so its tup_updated counts them."""
    nodes = [cluster.primary, *cluster.standbys]
    conns = [psycopg.connect(n.dsn(), autocommit=True) for n in nodes]
    try:
        commits = _xact_commits(conns)
        row = (
            conns[0]
            .execute("SELECT tup_updated FROM pg_stat_database WHERE datname = %s", (BENCH_DB,))
            .fetchone()
        )
        commits[0] -= int(row[0]) if row else 0
        return commits
    finally:
        for conn in conns:
            conn.close()


def _xact_commits(conns: Sequence[psycopg.Connection[tuple[int]]]) -> list[int]:
    sql = "SELECT xact_commit FROM pg_stat_database WHERE datname = %s"
    values = []
    for conn in conns:
        row = conn.execute(sql, (BENCH_DB,)).fetchone()
        values.append(int(row[0]) if row else 0)
    return values


def _mean_share(points: Sequence[SharePoint], start_s: float, end_s: float) -> float:
    chosen = [p.slow_share for p in points if start_s + SHARE_WINDOW_S <= p.at_s <= end_s]
    return round(sum(chosen) / len(chosen), 3) if chosen else 0.0


def run_recovery(
    cluster: LocalPgCluster, skew: Skew, args: argparse.Namespace, workdir: Path, out: Path
) -> Recovery:
    scripts, write = write_scripts(out)
    name = f"recovery-{skew.scenario}"
    phase = float(args.phase)
    samples: list[Sample] = []
    slow, other = cluster.standbys
    with (
        _balancer(workdir, out, name, _settings(cluster, skew.shim.port, "adaptive")) as node,
        _writer(cluster, node.port, args, write),
    ):
        # In database postgres: the sampler's own transactions must not count as bench reads.
        conns = [psycopg.connect(n.dsn(), autocommit=True) for n in (slow, other)]
        argv = _pgbench_argv(cluster, node.port, args.clients, int(3 * phase) + 2, scripts)
        skew.apply()
        skewed = True
        bench = subprocess.Popen(
            argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_pgbench_env()
        )
        try:
            started = time.monotonic()
            removed_at = back_at = 0.0
            while bench.poll() is None:
                now = time.monotonic() - started
                if skewed and not removed_at and now >= phase:
                    skew.remove()
                    skewed, removed_at = False, time.monotonic() - started
                    print(f"    skew removed at {removed_at:.1f} s", flush=True)
                elif not skewed and now >= 2 * phase:
                    skew.apply()
                    skewed, back_at = True, time.monotonic() - started
                    print(f"    skew back at {back_at:.1f} s", flush=True)
                counts = _xact_commits(conns)
                samples.append(Sample(time.monotonic() - started, counts[0], counts[1]))
                time.sleep(SAMPLE_INTERVAL_S)
        finally:
            if bench.poll() is None:
                bench.terminate()
            _, err = bench.communicate(timeout=30)
            if skewed:
                skew.remove()
            for conn in conns:
                conn.close()
    if bench.returncode != 0:
        raise BenchError(f"pgbench failed during the recovery run ({bench.returncode}): {err.strip()[-500:]}")
    points = shares(samples, SHARE_WINDOW_S)
    fair = 0.5 * args.fair_fraction
    result = Recovery(
        scenario=skew.scenario,
        skew_removed_at_s=round(removed_at, 1),
        skew_back_at_s=round(back_at, 1),
        recovered_after_s=_round(
            seconds_until(points, removed_at, at_least=fair, window_s=SHARE_WINDOW_S, hold=HOLD_WINDOWS)
        ),
        shed_after_s=_round(
            seconds_until(points, back_at, at_most=fair / 2, window_s=SHARE_WINDOW_S, hold=HOLD_WINDOWS)
        ),
        share_skewed=_mean_share(points, removed_at - 10, removed_at),
        share_fixed=_mean_share(points, back_at - 10, back_at),
        share_skewed_again=_mean_share(points, samples[-1].at_s - 10, samples[-1].at_s),
        series=[SharePoint(round(p.at_s, 1), round(p.slow_share, 3)) for p in points],
    )
    print(
        f"==> {name}: share {result.share_skewed} skewed, {result.share_fixed} fixed, "
        f"{result.share_skewed_again} skewed again; back to {fair:.2f} after {result.recovered_after_s} s, "
        f"down to {fair / 2:.2f} after {result.shed_after_s} s",
        flush=True,
    )
    return result


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)


def recovery_table(recoveries: Sequence[Recovery], fair: float) -> str:
    lines = [
        "| skew | standby1 share, skewed | fixed | skewed again | skew removed: back to "
        f"{fair:.2f} after (s) | skew back: down to {fair / 2:.2f} after (s) |",
        "|---|---|---|---|---|---|",
    ]
    for r in recoveries:
        back = "never" if r.recovered_after_s is None else f"{r.recovered_after_s}"
        if r.share_skewed >= fair:
            back = f"n/a: never shed below {fair:.2f}"
        shed = "never" if r.shed_after_s is None else f"{r.shed_after_s}"
        lines.append(
            f"| {r.scenario} | {r.share_skewed:.2f} | {r.share_fixed:.2f} | {r.share_skewed_again:.2f} | "
            f"{back} | {shed} |"
        )
    return "\n".join(lines) + "\n"


# ---- the run ----------------------------------------------------------------------------------------


def _machine() -> dict[str, object]:
    return {"cpus": os.cpu_count(), "load_average": [round(v, 2) for v in os.getloadavg()]}


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or REPO_ROOT / "bench" / "results" / f"skew-{started:%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    results: list[RunResult] = []
    recoveries: list[Recovery] = []
    machine_before = _machine()
    with tempfile.TemporaryDirectory(prefix="pgb-skew-", dir="/tmp") as scratch:
        workdir = Path(scratch)
        workdir.chmod(0o755)  # the postgres OS user must reach the cluster inside
        cluster = LocalPgCluster(workdir / "pg", standbys=2, fast=True)
        try:
            cluster.start()
            initialize_bench(cluster)
            slow = cluster.standbys[0]
            box = CpuBox.create(f"pgbalancer-skew-{os.getpid()}", args.cpu_quota)
            if box is None:
                print("    no CPU cgroup available: the cpu scenario pins standby1 to CPU 0", flush=True)
            box_closer = contextlib.closing(box) if box else contextlib.nullcontext()
            with DelayShim((slow.host, slow.port), 0.0) as shim, box_closer:
                cpu = CpuLoad(cluster, slow, args.burners, box)
                for rep in range(1, args.reps + 1):
                    for scenario in args.scenarios.split():
                        skew = Skew(scenario, shim, cpu, args.delay_ms / 1000.0)
                        for algorithm in args.algorithms.split():
                            if algorithm.partition(":")[0] == IDEAL and scenario == "uniform":
                                continue  # nothing to shed
                            print(f"--- rep {rep}/{args.reps}", flush=True)
                            results.append(run_one(cluster, skew, algorithm, rep, args, workdir, out))
                for scenario in args.recovery.split():
                    skew = Skew(scenario, shim, cpu, args.delay_ms / 1000.0)
                    recoveries.append(run_recovery(cluster, skew, args, workdir, out))
        except (BenchError, subprocess.SubprocessError, psycopg.Error, OSError, TimeoutError) as exc:
            print(f"routing_skew: {exc}", file=sys.stderr)
            return 1
        finally:
            cluster.destroy()
    config = {key: str(value) for key, value in vars(args).items()}
    report = {
        "config": config,
        "machine": {"before": machine_before, "after": _machine()},
        "runs": [asdict(r) for r in results],
        "medians": [asdict(r) for r in medians(results)],
        "ratios_to_round_robin_same_rep": {
            f"{scenario}/{algorithm}": {"tps": round(tps, 3), "p99": round(p99, 3)}
            for (scenario, algorithm), (tps, p99) in ratio_medians(results).items()
        },
        "recovery": [asdict(r) for r in recoveries],
    }
    (out / "skew.json").write_text(json.dumps(report, indent=2) + "\n")
    fair = 0.5 * args.fair_fraction
    text = table(medians(results), ratio_medians(results)) + "\n" + recovery_table(recoveries, fair)
    (out / "table.md").write_text(text)
    print(text)
    print(f"written to {out}")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
