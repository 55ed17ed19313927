"""`bench/pgbench_compare`: one side-by-side run of direct PostgreSQL, PgBouncer, Pgpool-II and pgbalancer.

Brings the shared cluster and the installed peers up, starts pgbalancer on a config written under the
results directory, runs the shared bench.sh over every target plus a single-client latency probe, then
writes compare.json and table.md and prints the table. Everything it started is stopped on the way out,
whatever happens. It never edits the shared scripts and never benchmarks a server it did not start.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import sys
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import Any

from compare import results
from compare.harness import (
    BACKEND_PORTS,
    DIRECT_PORT,
    PEERS,
    HarnessError,
    Peer,
    ProfiledLoad,
    SharedScripts,
    find_py_spy,
    install_peers,
    is_installed,
    locate_shared,
    probe_latency,
    process_tree,
    profile_under_load,
)
from compare.machine import git_state, machine_info
from compare.pgbalancer_conf import POOL_MODES, Backend, ProxyConfig, parse_extra, render
from compare.profile import parse_collapsed, render_profile, summarize_profile
from compare.proxy import running_pgbalancer

REPO_ROOT = Path(__file__).resolve().parents[2]
SCENARIOS = ("ro", "ro_connect", "lat1", "tpcb")
CANDIDATE = "pgbalancer"


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/pgbench_compare",
        description="pgbench direct PostgreSQL, PgBouncer, Pgpool-II and pgbalancer in one interleaved run.",
    )
    p.add_argument("--reps", type=int, default=2, help="repetitions per scenario and target (default 2)")
    p.add_argument(
        "--time-scale", type=float, default=1.0, help="multiply every pgbench -T by this (default 1)"
    )
    p.add_argument("--scenarios", default=" ".join(SCENARIOS), help=f"subset of: {' '.join(SCENARIOS)}")
    p.add_argument("--quick", action="store_true", help="smoke mode: --reps 1 --time-scale 0.25")
    p.add_argument(
        "--install-peers", action="store_true", help="apt-get install pgbouncer pgpool2 when missing"
    )
    p.add_argument("--shared", type=Path, help="the shared/ directory holding bench/ (default: ../shared)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results/<timestamp>)")
    p.add_argument(
        "--pool-mode",
        choices=POOL_MODES,
        default="transaction",
        help="pgbalancer pool_mode (default transaction, PgBouncer's mode in peers.sh)",
    )
    p.add_argument("--port", type=int, default=6543, help="pgbalancer's port (default 6543)")
    p.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra pgbalancer.conf line"
    )
    p.add_argument("--pgbalancer", type=Path, default=REPO_ROOT / ".venv" / "bin" / "pgbalancer")
    p.add_argument(
        "--ready-timeout", type=float, default=60.0, help="seconds to wait for pgbalancer's select 1"
    )
    p.add_argument("--skip-pgbalancer", action="store_true", help="benchmark direct and the peers only")
    p.add_argument(
        "--probe-seconds",
        type=float,
        default=10.0,
        help="single-client p50 latency probe per target and rep, scaled by --time-scale; 0 = off",
    )
    p.add_argument(
        "--profile", type=int, default=0, metavar="SECONDS", help="py-spy pgbalancer under -S -c 16 (0 = off)"
    )
    p.add_argument("--keep-up", action="store_true", help="leave the cluster and peers running at the end")
    args = p.parse_args(argv)
    if args.quick:
        args.reps, args.time_scale = 1, 0.25
    args.scenarios = args.scenarios.replace(",", " ").split()
    unknown = sorted(set(args.scenarios) - set(SCENARIOS))
    if unknown or args.reps < 1 or args.time_scale <= 0:
        p.error(f"bad --scenarios {unknown}" if unknown else "--reps must be >= 1 and --time-scale > 0")
    return args


@dataclass(frozen=True)
class Plan:
    """What one run measures, settled before anything starts."""

    out: Path
    peers: tuple[Peer, ...]
    skipped: dict[str, str]
    with_pgbalancer: bool
    git: dict[str, Any]

    def targets(self, port: int) -> dict[str, int]:
        named = {"direct": DIRECT_PORT, **{p.name: p.port for p in self.peers}}
        return {**named, CANDIDATE: port} if self.with_pgbalancer else named


def _choose_peers(install: bool) -> tuple[tuple[Peer, ...], dict[str, str]]:
    missing = [p for p in PEERS if not is_installed(p)]
    if missing and install:
        install_peers(missing)
        missing = [p for p in PEERS if not is_installed(p)]
    skipped = {p.name: f"{p.label} not installed: run with --install-peers" for p in missing}
    for reason in skipped.values():
        print(reason, flush=True)
    return tuple(p for p in PEERS if p not in missing), skipped


def _terminate_on_sigterm() -> None:
    def handler(signum: int, frame: FrameType | None) -> None:
        raise SystemExit(128 + signum)  # unwinds through the finally blocks that stop our servers

    signal.signal(signal.SIGTERM, handler)


@contextlib.contextmanager
def _cluster_and_peers(shared: SharedScripts, peers: Sequence[str], keep_up: bool) -> Iterator[None]:
    try:
        shared.cluster("up")
        shared.peers("up", peers)
        yield
    finally:
        if not keep_up:
            with contextlib.suppress(HarnessError):
                shared.peers("down", peers)
            shared.cluster("down")


def _proxy_config(args: argparse.Namespace) -> ProxyConfig:
    return ProxyConfig(
        backends=[Backend("127.0.0.1", port) for port in BACKEND_PORTS],
        port=args.port,
        pool_mode=args.pool_mode,
        extra=parse_extra(args.conf),
    )


def _bench_args(args: argparse.Namespace, plan: Plan, conf: Path) -> list[str]:
    targets = plan.targets(args.port)
    bench = ["--no-up", "--out", str(plan.out / "bench"), "--reps", str(args.reps)]
    bench += ["--time-scale", str(args.time_scale), "--scenarios", " ".join(args.scenarios)]
    bench += ["--targets", " ".join(f"{n}={p}" for n, p in targets.items() if n != CANDIDATE)]
    if CANDIDATE in targets:
        # The config path is unique to this run, so CPU of other pgbalancer processes on a shared
        # machine (tests, the demo) is not booked to the one under test.
        bench += ["--add", f"{CANDIDATE}={args.port}", "--proxy-match", str(conf)]
    return bench


def _latency_probes(plan: Plan, args: argparse.Namespace) -> list[results.LatencyProbe]:
    seconds = max(1, round(args.probe_seconds * args.time_scale))
    directory = plan.out / "latency"
    directory.mkdir(exist_ok=True)
    samples: dict[str, list[int]] = {}
    for rep in range(1, args.reps + 1):  # interleaved like bench.sh, so drift hits every target alike
        for name, port in plan.targets(args.port).items():
            print(f"latency probe {name} rep {rep}: pgbench -S -c 1 -T {seconds} -l", flush=True)
            for log in probe_latency(port, seconds, directory / f"{name}_r{rep}"):
                samples.setdefault(name, []).extend(results.parse_pgbench_log(log.read_text()))
                log.unlink()  # raw per-transaction logs are large; the summary keeps what matters
    return results.with_added_p50([results.latency_probe(n, s) for n, s in samples.items()])


def _profile(args: argparse.Namespace, plan: Plan, pid: int) -> None:
    """py-spy over pgbalancer under the ro load; writes profile.raw and profile.md."""
    py_spy = find_py_spy(args.pgbalancer.parent)
    raw = plan.out / "profile.raw"
    load = profile_under_load(py_spy, pid, args.port, args.profile, raw)
    summary = summarize_profile(parse_collapsed(raw.read_text()))
    text = render_profile(summary, _profile_title(args.profile, load))
    (plan.out / "profile.md").write_text(text + "\n")
    print(text, flush=True)


def _profile_title(seconds: int, load: ProfiledLoad) -> str:
    tps = next((ln for ln in load.pgbench_output.splitlines() if ln.startswith("tps =")), "tps = ?")
    processed = results.parse_pgbench_count(load.pgbench_output)
    cpu = ""
    if processed:
        user_us, system_us = (value / processed * 1e6 for value in (load.user_s, load.system_s))
        cpu = f"; pgbalancer CPU per transaction: {user_us:.1f} µs user + {system_us:.1f} µs system"
    return (
        f"py-spy, {seconds} s of pgbalancer ({load.processes} process(es)) under pgbench -S -c 16 -j 2"
        f" ({tps.split('(')[0].strip()} while sampled{cpu})"
    )


@dataclass(frozen=True)
class Measured:
    probes: list[results.LatencyProbe]
    pgbalancer_processes: int | None  # supervisor + forked workers, counted once the load ran


def _measure(args: argparse.Namespace, plan: Plan, shared: SharedScripts) -> Measured:
    conf = plan.out / "pgbalancer.conf"
    with contextlib.ExitStack() as stack:
        pid = None
        if plan.with_pgbalancer:
            conf.write_text(render(_proxy_config(args)))
            log = plan.out / "pgbalancer.log"
            pid = stack.enter_context(
                running_pgbalancer(args.pgbalancer, conf, args.port, log, args.ready_timeout)
            )
        if args.profile and pid is not None:
            find_py_spy(args.pgbalancer.parent)  # fail before the long part, not after it
        shared.bench(_bench_args(args, plan, conf), plan.out / "bench.log")
        probes = _latency_probes(plan, args) if args.probe_seconds > 0 else []
        processes = len(process_tree(pid)) if pid is not None else None
        if args.profile and pid is not None:
            _profile(args, plan, pid)
        return Measured(probes, processes)


def _report(args: argparse.Namespace, plan: Plan, measured: Measured, started: str) -> str:
    probes = measured.probes
    runs = results.parse_runs((plan.out / "bench" / "runs.csv").read_text())
    scenarios = results.summarize(runs)
    goals = results.evaluate_goals(scenarios, probes, CANDIDATE) if plan.with_pgbalancer else []
    document: dict[str, Any] = {
        "started": started,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["bench/pgbench_compare", *sys.argv[1:]],
        "pool_mode": args.pool_mode if plan.with_pgbalancer else None,
        "pgbalancer_processes": measured.pgbalancer_processes,
        "options": {"reps": args.reps, "time_scale": args.time_scale, "scenarios": args.scenarios},
        "targets": plan.targets(args.port),
        "skipped": plan.skipped,
        "machine": {**machine_info(), **plan.git},
        "scenarios": results.to_jsonable(scenarios),
        "latency_probe": results.to_jsonable(probes),
        "project_targets": results.to_jsonable(goals),
        "bench_dir": str(plan.out / "bench"),
    }
    (plan.out / "compare.json").write_text(json.dumps(document, indent=2) + "\n")
    table = results.render_markdown(scenarios, probes, goals, CANDIDATE)
    (plan.out / "table.md").write_text(table + "\n")
    return table


def _header(args: argparse.Namespace, plan: Plan, measured: Measured) -> str:
    lines = [f"## pgbench comparison, {args.reps} rep(s), time scale {args.time_scale}"]
    if plan.with_pgbalancer:
        processes = measured.pgbalancer_processes
        lines.append(
            f"pgbalancer ran in pool_mode = {args.pool_mode} (PgBouncer: transaction) as {processes}"
            " process(es) (a supervisor plus its workers when more than one)"
        )
    lines += [f"{name}: skipped, {reason}" for name, reason in plan.skipped.items()]
    return "\n".join(lines) + "\n"


def _plan(args: argparse.Namespace) -> Plan:
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out: Path = (args.out or REPO_ROOT / "bench" / "results" / stamp).resolve()
    out.mkdir(parents=True, exist_ok=True)
    peers, skipped = _choose_peers(args.install_peers)
    if args.skip_pgbalancer:
        skipped[CANDIDATE] = "skipped with --skip-pgbalancer"
    with_pgbalancer = not args.skip_pgbalancer
    return Plan(
        out=out, peers=peers, skipped=skipped, with_pgbalancer=with_pgbalancer, git=git_state(REPO_ROOT)
    )


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "run as root: the shared scripts start PostgreSQL and the peers as the postgres user",
            file=sys.stderr,
        )
        return 2
    _terminate_on_sigterm()
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    try:
        shared = SharedScripts(
            locate_shared(args.shared, REPO_ROOT),
            os.environ.get("PGB_BASE", "/tmp/pgb-cluster"),
            sys.executable,
        )
        plan = _plan(args)
        with _cluster_and_peers(shared, [p.name for p in plan.peers], args.keep_up):
            measured = _measure(args, plan, shared)
            table = _report(args, plan, measured, started)
    except (HarnessError, ValueError) as error:
        print(f"pgbench_compare: {error}", file=sys.stderr)
        return 1
    print("\n" + _header(args, plan, measured) + "\n" + table)
    print(f"results: {plan.out}/compare.json")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
