"""bench/bctl_startup: how long a bctl command takes from exec to exit (issue 10's 300 ms budget).

It builds a throwaway primary-only PostgreSQL cluster and one pgbalancer node with its REST API, logs
bctl in (token in a temporary HOME), then runs each command ``--reps`` times as a real subprocess of
the console script, interleaved, and records wall time and CPU time (user + sys of the child). For
reference it times ``python -c pass`` (the interpreter alone) and ``python -c "import httpx"`` (the
HTTP library bctl does not use, to show why). Results: a JSON file and a markdown table under
bench/results/. See docs/benchmarks.md, section "bctl start-up".

It only touches the cluster and node it creates under its work directory, and removes them.
Run as root from the repo root: ``bench/bctl_startup --reps 30``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import LocalPgCluster

RESULTS = Path(__file__).resolve().parent / "results"
PYTHON = sys.executable
BCTL = str(Path(sys.executable).with_name("bctl"))
ADMIN, PASSWORD = "bench_admin", "bench-admin-password"


def commands(url: str) -> dict[str, list[str]]:
    return {
        "python -c pass (interpreter only)": [PYTHON, "-c", "pass"],
        'python -c "import httpx" (reference)': [PYTHON, "-c", "import httpx"],
        "bctl --help": [BCTL, "--help"],
        "bctl version": [BCTL, "version"],
        "bctl status --json": [BCTL, "status", "--json"],
        "bctl nodes --table": [BCTL, "--table", "nodes"],
        "bctl status (unreachable, exit 3)": [
            BCTL,
            "--port",
            str(free_tcp_port()),
            "--host",
            "127.0.0.1",
            "status",
        ],
    }


def timed(argv: list[str], env: dict[str, str]) -> tuple[float, float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    done = subprocess.run(argv, env=env, capture_output=True, check=False)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return wall * 1000, cpu * 1000, done.returncode


def measure(url: str, home: Path, reps: int) -> dict[str, dict[str, object]]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PGBALANCER_")}
    env.update(HOME=str(home), XDG_CONFIG_HOME=str(home / ".config"), PGBALANCER_URL=url, COLUMNS="160")
    login = subprocess.run(
        [BCTL, "login", "--user", ADMIN, "--password-stdin"],
        input=PASSWORD,
        text=True,
        env=env,
        check=False,
        capture_output=True,
    )
    if login.returncode != 0:
        raise SystemExit(f"bctl login failed: {login.stderr}")
    runs = commands(url)
    samples: dict[str, list[tuple[float, float, int]]] = {name: [] for name in runs}
    for _ in range(reps):  # interleaved: machine noise spreads over every command alike
        for name, argv in runs.items():
            samples[name].append(timed(argv, env))
    report: dict[str, dict[str, object]] = {}
    for name, rows in samples.items():
        walls, cpus = sorted(r[0] for r in rows), sorted(r[1] for r in rows)
        report[name] = {
            "wall_ms_median": round(statistics.median(walls), 1),
            "wall_ms_p90": round(walls[int(0.9 * (len(walls) - 1))], 1),
            "cpu_ms_median": round(statistics.median(cpus), 1),
            "exit_codes": sorted({r[2] for r in rows}),
        }
    return report


def table(report: dict[str, dict[str, object]]) -> str:
    lines = ["| command | wall median ms | wall p90 ms | CPU median ms | exit |", "|---|---|---|---|---|"]
    for name, row in report.items():
        codes = ",".join(str(c) for c in row["exit_codes"])  # type: ignore[attr-defined]
        wall = f"{row['wall_ms_median']} | {row['wall_ms_p90']}"
        lines.append(f"| `{name}` | {wall} | {row['cpu_ms_median']} | {codes} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=30, help="runs per command (default 30)")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="bctl-startup-", dir="/tmp") as tmp:
        work = Path(tmp)
        os.chmod(work, 0o755)  # the postgres user must reach the cluster directory
        cluster = LocalPgCluster(work / "pg", standbys=0, fast=True)
        try:
            cluster.start()
            users = work / "api_users.txt"
            users.write_text(f'"{ADMIN}" "{PASSWORD}" "admin"\n')
            api_port = free_tcp_port()
            settings: dict[str, Setting] = {
                "listen_addresses": "127.0.0.1",
                "port": free_tcp_port(),
                "auth_type": "trust",
                "workers": 1,
                "mqtt_mode": "off",
                "api_port": api_port,
                "api_user_file": str(users),
                "backend_hostname0": cluster.primary.host,
                "backend_port0": cluster.primary.port,
            }
            node = BalancerProcess.start(work / "node", settings)
            try:
                report = measure(f"http://127.0.0.1:{api_port}", work / "home", args.reps)
            finally:
                node.stop()
        finally:
            cluster.destroy()
    stamp = time.strftime("%Y%m%d-%H%M%S")
    out = RESULTS / f"bctl_startup-{stamp}.json"
    out.write_text(json.dumps({"reps": args.reps, "load_avg": os.getloadavg(), "commands": report}, indent=2))
    print(table(report))
    print(f"\nload average at the end: {os.getloadavg()}; results in {out}")


if __name__ == "__main__":
    main()
