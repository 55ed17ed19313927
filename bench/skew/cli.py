"""`bench/routing_skew` (skeleton, issue 4): the balancing algorithms on a skewed and on a uniform cluster.

The shared cluster (primary 5433, standbys 5434 and 5435) is started; standby 5434 is reached
through a DelayShim that holds every reply for ``--delay-ms`` ("skewed"), or for 0 ms
("uniform": the same path, so the comparison is fair). For each scenario and each
``load_balance_algorithm`` a fresh pgbalancer runs in front of [5433, shim, 5435] and a read-heavy
pgbench mix (workload.py) runs through it; TPS, mean latency and p99 are reported per run, with
ratios to round_robin.

Status: the orchestration and its pure parts are here; the numbers mean something only once the
proxy routes reads through pgbalancer.routing (the integration step). Not done yet: the CPU-load
scenario and the "recovers within 30 s" phase (it needs the balancer's per-node share from the REST
API). Everything it starts is stopped on every exit path; it refuses a cluster that is already up.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict
from pathlib import Path

from compare.harness import (
    BACKEND_PORTS,
    DIRECT_PORT,
    PGBENCH,
    PSQL,
    HarnessError,
    SharedScripts,
    locate_shared,
)
from compare.pgbalancer_conf import Backend, ProxyConfig, render
from compare.proxy import port_in_use, running_pgbalancer

from skew.shim import DelayShim
from skew.workload import RunResult, latencies_ms, parse_summary, percentile, table, write_scripts

REPO_ROOT = Path(__file__).resolve().parents[2]
ALGORITHMS = ("round_robin", "weighted", "least_connections", "random", "adaptive")


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="bench/routing_skew", description=__doc__.split("\n\n")[0])
    p.add_argument("--algorithms", default=" ".join(ALGORITHMS), help="algorithms to run, in order")
    p.add_argument("--scenarios", default="skewed uniform", help="'skewed' and/or 'uniform'")
    p.add_argument(
        "--delay-ms", type=float, default=2.0, help="delay per reply of the slow standby (default 2)"
    )
    p.add_argument("--seconds", type=int, default=30, help="pgbench -T per run (default 30)")
    p.add_argument(
        "--warmup", type=int, default=10, help="seconds of the same load before each run (default 10)"
    )
    p.add_argument("--clients", type=int, default=8, help="pgbench -c (default 8)")
    p.add_argument("--port", type=int, default=6544, help="pgbalancer's port (default 6544)")
    p.add_argument("--pgbalancer", type=Path, default=REPO_ROOT / ".venv" / "bin" / "pgbalancer")
    p.add_argument("--shared", type=Path, default=None, help="the shared/ directory (default ../shared)")
    p.add_argument("--out", type=Path, default=None, help="results directory (default bench/results/<time>)")
    p.add_argument("--keep-up", action="store_true", help="leave the cluster running at the end")
    return p.parse_args(argv)


@contextlib.contextmanager
def _cluster(shared: SharedScripts, keep_up: bool) -> Iterator[None]:
    if port_in_use(DIRECT_PORT):
        raise HarnessError(f"port {DIRECT_PORT} is already up: another benchmark is using the shared cluster")
    try:
        shared.cluster("up")
        yield
    finally:
        if not keep_up:
            shared.cluster("down")


def _ensure_pgbench_data() -> None:
    cmd = [PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(DIRECT_PORT), "-U", "bench", "-d", "bench"]
    present = subprocess.run(
        [*cmd, "-c", "select 1 from pgbench_branches limit 1"], capture_output=True, check=False
    )
    if present.returncode != 0:
        subprocess.run(
            [
                PGBENCH,
                "-i",
                "-s",
                "10",
                "-q",
                "-h",
                "127.0.0.1",
                "-p",
                str(DIRECT_PORT),
                "-U",
                "bench",
                "bench",
            ],
            check=True,
        )


def _config(port: int, shim_port: int, algorithm: str) -> str:
    backends = [Backend("127.0.0.1", BACKEND_PORTS[0]), Backend("127.0.0.1", shim_port)]
    backends += [Backend("127.0.0.1", p) for p in BACKEND_PORTS[2:]]
    extra = {"load_balance_algorithm": algorithm, "workers": "1"}
    return render(ProxyConfig(backends=backends, port=port, extra=extra))


def _pgbench(
    port: int, args: argparse.Namespace, scripts: list[str], seconds: int, log_prefix: Path | None = None
) -> str:
    cmd = [PGBENCH, "-n", "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-c", str(args.clients)]
    cmd += ["-j", "2", "-T", str(seconds), *scripts, "bench"]
    if log_prefix is not None:
        cmd[1:1] = ["-l", "--log-prefix", str(log_prefix)]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"pgbench failed ({done.returncode}): {done.stderr.strip()[-500:]}")
    return done.stdout


def _run_one(args: argparse.Namespace, scenario: str, algorithm: str, shim_port: int, out: Path) -> RunResult:
    conf = out / f"pgbalancer-{scenario}-{algorithm}.conf"
    conf.write_text(_config(args.port, shim_port, algorithm))
    scripts = write_scripts(out)
    log = out / f"pgbalancer-{scenario}-{algorithm}.log"
    with running_pgbalancer(args.pgbalancer, conf, args.port, log, 60.0):
        _pgbench(args.port, args, scripts, args.warmup)  # the adaptive balancer learns here
        prefix = out / f"latency-{scenario}-{algorithm}"
        summary = _pgbench(args.port, args, scripts, args.seconds, prefix)
    tps, latency_avg = parse_summary(summary)
    lines: list[str] = []
    for path in sorted(out.glob(f"{prefix.name}.*")):
        lines += path.read_text().splitlines()
    result = RunResult(scenario, algorithm, tps, latency_avg, percentile(latencies_ms(lines), 0.99))
    p99 = result.latency_p99_ms
    print(
        f"==> {scenario} {algorithm}: {tps:.0f} TPS, {latency_avg:.2f} ms mean, p99 {p99:.2f} ms", flush=True
    )
    return result


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    started = datetime.datetime.now(datetime.UTC)
    out = args.out or REPO_ROOT / "bench" / "results" / f"skew-{started:%Y%m%dT%H%M%S}"
    out.mkdir(parents=True, exist_ok=True)
    shared = SharedScripts(
        locate_shared(args.shared, REPO_ROOT), os.environ.get("PGB_BASE", "/tmp/pgb-cluster"), sys.executable
    )
    results: list[RunResult] = []
    try:
        with _cluster(shared, args.keep_up), DelayShim(("127.0.0.1", BACKEND_PORTS[1]), 0.0) as shim:
            _ensure_pgbench_data()
            for scenario in args.scenarios.split():
                shim.set_delay(args.delay_ms / 1000.0 if scenario == "skewed" else 0.0)
                for algorithm in args.algorithms.split():
                    results.append(_run_one(args, scenario, algorithm, shim.port, out))
                    time.sleep(1)  # let the previous pgbalancer's server connections close
    except HarnessError as exc:
        print(f"routing_skew: {exc}", file=sys.stderr)
        return 1
    (out / "skew.json").write_text(json.dumps([asdict(r) for r in results], indent=2) + "\n")
    (out / "table.md").write_text(table(results))
    print(table(results))
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
