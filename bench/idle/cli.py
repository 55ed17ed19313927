"""`bench/idle_clients`: PgBouncer and pgbalancer each holding N mostly idle client connections
(N = 0, 1,000, 5,000) while `pgbench -S -c 4` runs through the same port: the pooler's RSS per idle
client and the TPS the few active clients get, as ratios to PgBouncer (and to direct at N = 0).

Every pooler is started fresh for each N, so no N inherits another's memory. Everything it started
is stopped on the way out, whatever happens. It never benchmarks a server it did not start, and it
waits for (or refuses) a shared cluster that is already up, since that is someone else's run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from compare.harness import (
    BACKEND_PORTS,
    DIRECT_PORT,
    PEERS,
    PGBENCH,
    PSQL,
    HarnessError,
    SharedScripts,
    answers_select_1,
    install_peers,
    is_installed,
    locate_shared,
)
from compare.machine import git_state, machine_info
from compare.pgbalancer_conf import Backend, ProxyConfig, parse_extra, render
from compare.proxy import port_in_use, running_pgbalancer
from compare.results import to_jsonable

from idle import report
from idle.clients import IdleClients, open_idle_clients
from idle.pgbouncer import peers_ini, running_pgbouncer, write_ini
from idle.procfs import Memory, nofile_soft_limit, own_nofile_soft, raise_own_nofile, tree_memory

REPO_ROOT = Path(__file__).resolve().parents[2]
PGBOUNCER = PEERS[0]
CANDIDATE = "pgbalancer"  # workers = 1: one process, so its RSS is the figure the goal is about


def parse_args(argv: Sequence[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        prog="bench/idle_clients",
        description="RSS per idle client and TPS with N idle clients held: pgbalancer vs PgBouncer.",
    )
    p.add_argument("--idle", default="1000 5000", help="idle client counts (default '1000 5000'; 0 is added)")
    p.add_argument("--workers", default="1 2", help="pgbalancer `workers` values to measure (default '1 2')")
    p.add_argument("--pgbench-seconds", type=int, default=10, help="pgbench -T (default 10)")
    p.add_argument("--pgbench-clients", type=int, default=4, help="pgbench -c, the few active (default 4)")
    p.add_argument("--max-client-conn", type=int, default=6000, help="both poolers' max_client_conn")
    p.add_argument("--port", type=int, default=6553, help="pgbalancer's port (default 6553)")
    p.add_argument("--pgbouncer-port", type=int, default=6452, help="our PgBouncer's port (default 6452)")
    p.add_argument("--settle-seconds", type=float, default=2.0, help="pause before each RSS reading")
    p.add_argument("--in-flight", type=int, default=100, help="handshakes in progress at once (default 100)")
    p.add_argument(
        "--pgbalancer-nofile",
        type=int,
        metavar="N",
        help="start pgbalancer with this soft open-files limit (e.g. 1024, what PAM gives a login)",
    )
    p.add_argument(
        "--conf", action="append", default=[], metavar="KEY=VALUE", help="extra pgbalancer.conf line"
    )
    p.add_argument("--install-peers", action="store_true", help="apt-get install pgbouncer when missing")
    p.add_argument("--skip-pgbouncer", action="store_true", help="measure pgbalancer only")
    p.add_argument("--shared", type=Path, help="the shared/ directory holding bench/ (default: ../shared)")
    p.add_argument("--out", type=Path, help="results directory (default bench/results/<timestamp>)")
    p.add_argument("--pgbalancer", type=Path, default=REPO_ROOT / ".venv" / "bin" / "pgbalancer")
    p.add_argument("--ready-timeout", type=float, default=60.0, help="seconds to wait for select 1")
    p.add_argument(
        "--wait-cluster",
        type=float,
        default=1800.0,
        help="seconds to wait for an already running shared cluster (someone else's run) to go down",
    )
    p.add_argument(
        "--use-running-cluster",
        action="store_true",
        help="measure on a shared cluster that is already up (yours); it is left running",
    )
    p.add_argument("--keep-up", action="store_true", help="leave the cluster running at the end")
    args = p.parse_args(argv)
    try:
        args.idle = sorted({0, *(int(n) for n in args.idle.replace(",", " ").split())})
        args.workers = [int(w) for w in args.workers.replace(",", " ").split()]
    except ValueError:
        p.error("--idle and --workers take whole numbers")
    if min(args.idle) < 0 or not args.workers or min(args.workers) < 1:
        p.error("--idle counts must be >= 0 and --workers values >= 1")
    if max(args.idle) >= args.max_client_conn:
        p.error("--max-client-conn must exceed the largest --idle count")
    return args


def _target_name(workers: int) -> str:
    return CANDIDATE if workers == 1 else f"{CANDIDATE}_w{workers}"


# --- the shared cluster -------------------------------------------------------------------------


def _wait_for_free_cluster(wait_s: float) -> None:
    """Someone else's benchmark holds the shared cluster while 5433 answers: wait for it to end."""
    deadline = time.monotonic() + wait_s
    if port_in_use(DIRECT_PORT):
        print(f"==> the shared cluster (port {DIRECT_PORT}) is up: another run uses it; waiting", flush=True)
    while port_in_use(DIRECT_PORT):
        if time.monotonic() > deadline:
            raise HarnessError(
                f"the shared cluster on port {DIRECT_PORT} was still up after {wait_s:.0f} s: another"
                " engineer's benchmark is using it. Retry later, or pass --use-running-cluster if it is yours"
            )
        time.sleep(10)


@contextlib.contextmanager
def _cluster(shared: SharedScripts, owned: bool, keep_up: bool) -> Iterator[None]:
    if not owned:
        yield
        return
    try:
        shared.cluster("up")
        yield
    finally:
        if not keep_up:
            shared.cluster("down")


def _psql(sql: str) -> str | None:
    cmd = [PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(DIRECT_PORT), "-U", "bench", "-d", "bench"]
    done = subprocess.run([*cmd, "-c", sql], capture_output=True, text=True, check=False)
    return done.stdout.strip() if done.returncode == 0 else None


def _ensure_pgbench_data() -> None:
    """pgbench -S needs its tables; bench.sh initialises scale 10, so do the same when they are missing."""
    if _psql("select count(*) from pgbench_branches") is not None:
        return
    cmd = [PGBENCH, "-h", "127.0.0.1", "-p", str(DIRECT_PORT), "-U", "bench", "-i", "-s", "10", "-q", "bench"]
    print("==> " + " ".join(cmd), flush=True)
    if subprocess.run(cmd, capture_output=True, check=False).returncode != 0:
        raise HarnessError("pgbench -i -s 10 on the primary failed")


# --- one measurement ----------------------------------------------------------------------------


@dataclass(frozen=True)
class PgbenchRun:
    tps: float | None
    error: str | None


def _pgbench(port: int, args: argparse.Namespace, log: Path) -> PgbenchRun:
    cmd = [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-S", "-n"]
    cmd += ["-c", str(args.pgbench_clients), "-j", "2", "-T", str(args.pgbench_seconds), "bench"]
    print("==> " + " ".join(cmd), flush=True)
    # A pooler that stopped accepting leaves pgbench's connect waiting forever: bound it.
    env = {**os.environ, "PGCONNECT_TIMEOUT": "30"}
    limit_s = args.pgbench_seconds + 90
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=limit_s, check=False)
    except subprocess.TimeoutExpired:
        log.write_text(f"pgbench did not finish within {limit_s} s\n")
        return PgbenchRun(None, f"pgbench did not finish within {limit_s} s")
    log.write_text(done.stdout + done.stderr)
    tps = report.parse_pgbench_tps(done.stdout)
    if done.returncode != 0 or tps is None:
        lines = (done.stderr.strip() or done.stdout.strip() or f"exit code {done.returncode}").splitlines()
        return PgbenchRun(None, lines[-1])
    return PgbenchRun(tps, None)


def _settled_memory(pid: int, seconds: float) -> Memory:
    time.sleep(seconds)  # let the pooler finish the work the last event gave it
    return tree_memory(pid)


def _measure_pooler(
    target: str, pid: int, port: int, idle: int, args: argparse.Namespace
) -> report.Measurement:
    nofile = nofile_soft_limit(pid)
    if nofile is not None and nofile < idle + 50:
        print(f"!! {target}'s open-files soft limit is {nofile}: it cannot hold {idle:,} clients", flush=True)
    if not answers_select_1(port):  # the same warm-up for every pooler: one server connection open
        raise HarnessError(f"{target} on port {port} does not answer select 1")
    before = _settled_memory(pid, args.settle_seconds)
    clients: IdleClients | None = None
    try:
        if idle:
            print(f"==> opening {idle:,} idle clients on port {port}", flush=True)
            clients = open_idle_clients(port, idle, in_flight=args.in_flight)
            print(
                f"    {len(clients.sockets):,} held, {clients.failed:,} failed, {clients.seconds:.1f} s",
                flush=True,
            )
        with_idle = _settled_memory(pid, args.settle_seconds)
        run = _pgbench(port, args, args.out / f"pgbench_{target}_{idle}.log")
        after = tree_memory(pid)
        return report.Measurement(
            target=target,
            idle_requested=idle,
            idle_open=len(clients.sockets) if clients else 0,
            idle_failures=clients.failures if clients else {},
            idle_open_seconds=clients.seconds if clients else None,
            idle_still_open_after_load=clients.still_open() if clients else None,
            processes=after.processes,
            nofile_soft_limit=nofile,
            rss_before_kib=before.rss_kib,
            rss_idle_kib=with_idle.rss_kib,
            rss_after_load_kib=after.rss_kib,
            pss_before_kib=before.pss_kib,
            pss_idle_kib=with_idle.pss_kib,
            tps=run.tps,
            pgbench_error=run.error,
        )
    finally:
        if clients is not None:
            clients.close()


def _measure_direct(args: argparse.Namespace) -> report.Measurement:
    run = _pgbench(DIRECT_PORT, args, args.out / "pgbench_direct_0.log")
    return report.Measurement(target=report.DIRECT, idle_requested=0, tps=run.tps, pgbench_error=run.error)


# --- the poolers ----------------------------------------------------------------------------------

Pooler = Callable[[], contextlib.AbstractContextManager[int]]


def _pgbalancer(args: argparse.Namespace, workers: int) -> Pooler:
    extra = {"workers": str(workers), "max_client_conn": str(args.max_client_conn), "api_port": "0"}
    config = ProxyConfig(
        backends=[Backend("127.0.0.1", port) for port in BACKEND_PORTS],
        port=args.port,
        pool_mode="transaction",
        extra={**extra, **parse_extra(args.conf)},
    )
    conf = args.out / f"pgbalancer_w{workers}.conf"
    conf.write_text(render(config))

    @contextlib.contextmanager
    def start() -> Iterator[int]:
        with contextlib.ExitStack() as stack:
            log = args.out / f"pgbalancer_w{workers}.log"
            with own_nofile_soft(args.pgbalancer_nofile):  # inherited by pgbalancer, then restored
                pid = stack.enter_context(
                    running_pgbalancer(args.pgbalancer, conf, args.port, log, args.ready_timeout)
                )
            yield pid

    return start


def _pgbouncer(args: argparse.Namespace, shared: SharedScripts) -> Pooler:
    ini = write_ini(peers_ini(shared), args.out / "pgbouncer", args.pgbouncer_port, args.max_client_conn)
    nofile = args.max_client_conn + 1000  # clients plus server connections plus PgBouncer's own

    def start() -> contextlib.AbstractContextManager[int]:
        return running_pgbouncer(ini, args.pgbouncer_port, nofile)

    return start


def _poolers(
    args: argparse.Namespace, shared: SharedScripts, notes: list[str]
) -> dict[str, tuple[Pooler, int]]:
    poolers: dict[str, tuple[Pooler, int]] = {}
    if args.skip_pgbouncer:
        notes.append("PgBouncer skipped with --skip-pgbouncer")
    elif not is_installed(PGBOUNCER):
        notes.append("PgBouncer not installed: run with --install-peers")
    else:
        poolers["pgbouncer"] = (_pgbouncer(args, shared), args.pgbouncer_port)
    for workers in args.workers:
        poolers[_target_name(workers)] = (_pgbalancer(args, workers), args.port)
    return poolers


def _measure_all(
    args: argparse.Namespace, shared: SharedScripts, notes: list[str]
) -> list[report.Measurement]:
    poolers = _poolers(args, shared, notes)
    measured = []
    for idle in args.idle:  # interleaved by N, so drift on a busy machine hits every target alike
        if idle == 0:
            measured.append(_measure_direct(args))
        for target, (pooler, port) in poolers.items():
            print(f"\n### {target}, {idle:,} idle clients", flush=True)
            with pooler() as pid:
                measured.append(_measure_pooler(target, pid, port, idle, args))
    return measured


# --- the run ----------------------------------------------------------------------------------------


def _notes(max_connections: str | None, args: argparse.Namespace) -> list[str]:
    biggest = max(args.idle)
    return [
        f"direct PostgreSQL is measured at N = 0 only: with max_connections = {max_connections or '?'} it"
        f" cannot hold {biggest:,} client connections (each would also be a backend process)",
        f"PgBouncer is peers.sh's configuration (transaction mode, default_pool_size 20, primary only) with"
        f" listen_port {args.pgbouncer_port} and max_client_conn {args.max_client_conn} (peers.sh's"
        " instance takes 500 clients and runs with the 1,024 open files of a runuser session)",
        "pgbalancer: pool_mode transaction, num_init_children 20, backends"
        f" {', '.join(map(str, BACKEND_PORTS))},"
        f" max_client_conn {args.max_client_conn}, api_port 0, mqtt_mode off; `{CANDIDATE}` is workers = 1"
        " (one process: its RSS is the goal's figure), `pgbalancer_wN` is workers = N (RSS summed over the"
        " supervisor and its workers; pss_* fields split the pages they share)",
        "each pooler is started fresh for every N; RSS before = after a `select 1` through it,"
        f" RSS with idle = {args.settle_seconds:g} s after the last idle handshake, before pgbench",
    ]


def _write(args: argparse.Namespace, document: dict[str, Any], table: str) -> None:
    (args.out / "idle.json").write_text(json.dumps(document, indent=2) + "\n")
    (args.out / "table.md").write_text(table + "\n")


def _run(args: argparse.Namespace, started: str) -> str:
    raise_own_nofile(max(args.idle) + 1000)
    shared = SharedScripts(
        locate_shared(args.shared, REPO_ROOT), os.environ.get("PGB_BASE", "/tmp/pgb-cluster"), sys.executable
    )
    if args.install_peers and not is_installed(PGBOUNCER):
        install_peers([PGBOUNCER])
    owned = not args.use_running_cluster
    if owned:
        _wait_for_free_cluster(args.wait_cluster)
    git = git_state(REPO_ROOT)
    notes: list[str] = []
    with _cluster(shared, owned, args.keep_up):
        _ensure_pgbench_data()
        notes += _notes(_psql("show max_connections"), args)
        measured = report.with_ratios(_measure_all(args, shared, notes))
        machine = {**machine_info(), **git}
    goals = report.evaluate_goals(measured, CANDIDATE)
    table = report.render_markdown(measured, goals)
    document = {
        "started": started,
        "finished": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "command": ["bench/idle_clients", *sys.argv[1:]],
        "options": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "notes": notes,
        "machine": machine,
        "measurements": to_jsonable(measured),
        "project_targets": to_jsonable(goals),
    }
    _write(args, document, table)
    return "\n".join(f"- {n}" for n in notes) + "\n\n" + table


def run(argv: Sequence[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print(
            "run as root: the shared scripts start PostgreSQL and PgBouncer as the postgres user",
            file=sys.stderr,
        )
        return 2
    # SIGTERM unwinds through the finally blocks that stop our servers, like Ctrl-C does.
    signal.signal(signal.SIGTERM, lambda signum, frame: sys.exit(128 + signum))
    started = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    args.out = (args.out or REPO_ROOT / "bench" / "results" / stamp).resolve()
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        text = _run(args, started)
    except (HarnessError, ValueError) as error:
        print(f"idle_clients: {error}", file=sys.stderr)
        return 1
    print("\n" + text)
    print(f"results: {args.out}/idle.json")
    return 0


def main() -> None:
    sys.exit(run(sys.argv[1:]))
