"""bench/relay_calls: the Python work pgbalancer does per transaction, counted rather than timed.

On a shared 2-vCPU VM, CPU time per transaction moves by a third from one run to the next with
the host's steal time; the number of Python function calls a transaction costs does not. This runs
pgbalancer under cProfile twice per case, once with one transaction per client and once with
--transactions per client, and reports the difference per transaction: start-up, shut-down and
the background tasks cancel out. (Profiled time is not reported: under the profiler it is
inflated, and it includes system calls that wait.) Counts include the scheduler's (trio's)
calls, which vary a little with timing (a receive that finds its bytes already there does not
wait), so compare medians.

Cases (pgbench -M simple, autocommit, transaction pooling, one worker, load balancing off):
  select, cache off   SELECT id, v, note FROM cache_items WHERE id = :id  (relayed)
  update, cache off   UPDATE cache_counters SET n = n + 1 WHERE id = :id   (relayed)
  update, cache on    the same UPDATE with the result cache on (its invalidation path)
  hit, cache on       SELECT ... WHERE id = 42 with the result cache on (answered from the cache)

--baseline DIR measures another version's package (``git archive <commit> pgbalancer | tar -x -C
DIR``) the same way, case by case beside this one.

Usage (as root, from the repo root): bench/relay_calls [--transactions 2500] [--clients 4]
[--rounds 3] [--baseline DIR] [--top 25]. Uses bench/cache's PostgreSQL cluster (its own base and ports).
Writes bench/results/relay-calls-<time>.json and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import pstats
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cache_bench as cluster

PORT, API_PORT = 6647, 6657
NAME = "pgbalancer (relay calls)"
SCRIPTS = {
    "select": "\\set id random(1, 200)\nSELECT id, v, note FROM cache_items WHERE id = :id;\n",
    "update": "\\set id random(1, 200)\nUPDATE cache_counters SET n = n + 1 WHERE id = :id;\n",
    "hit": "SELECT id, v, note FROM cache_items WHERE id = 42;\n",
}
Case = tuple[str, str, bool]  # (name, script, cache on)
CASES: tuple[Case, ...] = (
    ("select, cache off", "select", False),
    ("update, cache off", "update", False),
    ("update, cache on", "update", True),
    ("hit, cache on", "hit", True),
)


Calls = dict[str, int]  # "file:line(function)" -> calls


def counted_calls(
    work: Path, script: str, cache: bool, per_client: int, clients: int, package: Path | None
) -> Calls:
    """Run pgbalancer under cProfile for ``per_client`` transactions of each client; its calls
    by function."""
    cluster.PORTS[NAME], cluster.API_PORTS[NAME] = PORT, API_PORT
    conf = cluster.write_pgbalancer(work, NAME, cache=cache)
    output = work / "run.prof"
    output.unlink(missing_ok=True)
    env = {**os.environ, **({"PYTHONPATH": str(package)} if package is not None else {})}
    command = [sys.executable, "-m", "cProfile", "-o", str(output), "-m", "pgbalancer", "-f", str(conf)]
    with (work / "pgbalancer.log").open("ab") as log:
        # cwd: with ``-m`` the working directory comes first on sys.path, before PYTHONPATH.
        balancer = subprocess.Popen(command, stdout=log, stderr=log, env=env, cwd=work)
    try:
        cluster.wait_port(PORT)
        script_file = work / f"{script}.sql"
        script_file.write_text(SCRIPTS[script])
        options = f"-n -M simple -h 127.0.0.1 -p {PORT} -U bench -c {clients} -j 2 -t {per_client}"
        cluster.run([f"{cluster.PGBIN}/pgbench", *options.split(), "-f", str(script_file), "bench"])
    finally:
        balancer.send_signal(signal.SIGTERM)
        balancer.wait(30)
    stats = pstats.Stats(str(output)).stats  # type: ignore[attr-defined]
    return {f"{Path(file).name}:{line}({function})": row[1] for (file, line, function), row in stats.items()}


def calls_per_transaction(
    work: Path, case: Case, args: argparse.Namespace, package: Path | None
) -> dict[str, float]:
    """Calls per transaction by function (the difference between a long and a one-transaction run)."""
    _, script, cache = case
    base = counted_calls(work, script, cache, 1, args.clients, package)
    full = counted_calls(work, script, cache, args.transactions, args.clients, package)
    transactions: int = args.clients * (args.transactions - 1)
    return {name: (calls - base.get(name, 0)) / transactions for name, calls in full.items()}


def print_top(case_name: str, by_function: dict[str, float], top: int) -> None:
    print(f"\n{case_name}: the {top} functions called most per transaction (last round, this version)")
    for name, calls in sorted(by_function.items(), key=lambda item: -item[1])[:top]:
        print(f"  {calls:7.2f}  {name}")


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--transactions", type=int, default=2500, help="per client, per run")
    parser.add_argument("--clients", type=int, default=4)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--baseline", type=Path, help="another version's pgbalancer package directory")
    parser.add_argument("--results", type=Path, default=cluster.REPO / "bench" / "results")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the PostgreSQL cluster up")
    parser.add_argument("--top", type=int, default=0, help="also list the N most called functions per case")
    args = parser.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("run as root: the PostgreSQL cluster runs as the postgres user")
    if args.baseline is not None and not (args.baseline / "pgbalancer" / "__init__.py").is_file():
        raise SystemExit(f"--baseline {args.baseline}: no pgbalancer package there")
    if not cluster.port_free(PORT):
        raise SystemExit(f"127.0.0.1:{PORT} is taken: stop what listens there first")
    shared = next(p / "shared" / "bench" for p in cluster.REPO.parents if (p / "shared" / "bench").is_dir())
    env = {
        **os.environ,
        "PGB_BASE": cluster.BASE,
        "PRIMARY_PORT": str(cluster.PRIMARY),
        "REPLICA_PORTS": " ".join(map(str, cluster.REPLICAS)),
    }
    versions: dict[str, Path | None] = {
        "this": None,
        **({"baseline": args.baseline} if args.baseline else {}),
    }
    samples: dict[str, dict[str, list[float]]] = {c[0]: {v: [] for v in versions} for c in CASES}
    last_by_function: dict[str, dict[str, float]] = {}
    work = Path(tempfile.mkdtemp(prefix="pgb-relay-calls-"))
    os.chmod(work, 0o755)
    try:
        cluster.run([str(shared / "pgcluster.sh"), "up", cluster.BASE], env=env)
        cluster.prepare_data()
        for round_number in range(args.rounds):
            for case in CASES:
                for version, package in versions.items():
                    print(
                        f"[relay calls] round {round_number + 1}/{args.rounds}: {case[0]}, {version}",
                        flush=True,
                    )
                    by_function = calls_per_transaction(work, case, args, package)
                    samples[case[0]][version].append(sum(by_function.values()))
                    if version == "this":
                        last_by_function[case[0]] = by_function
    finally:
        if not args.keep_cluster:
            cluster.run([str(shared / "pgcluster.sh"), "down", cluster.BASE], env=env)
        shutil.rmtree(work, ignore_errors=True)
    report = {
        case_name: {
            version: {
                "calls_median": statistics.median(runs),
                "runs": runs,
            }
            for version, runs in by_version.items()
        }
        for case_name, by_version in samples.items()
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"relay-calls-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(
        json.dumps({"clients": args.clients, "transactions": args.transactions, "cases": report}, indent=2)
    )
    print("| case | version | Python calls per transaction (median) | rounds |")
    print("|---|---|---:|---|")
    for case_name, by_version in samples.items():
        for version, runs in by_version.items():
            rounds = ", ".join(f"{calls:.0f}" for calls in runs)
            print(f"| {case_name} | {version} | {statistics.median(runs):.0f} | {rounds} |")
    for case_name, by_function in last_by_function.items() if args.top else ():
        print_top(case_name, by_function, args.top)
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
