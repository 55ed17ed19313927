"""bench/failover_time: how long writes stop when the primary's postmaster is SIGKILLed, and whether
any acknowledged commit is lost (issue 5). See docs/benchmarks.md, section "Failover time".

Each repetition builds a fresh local cluster (primary + 2 streaming standbys, synchronous_commit = on,
synchronous_standby_names = 'ANY 1 (standby1, standby2)'), starts ``pgbalancer -f`` in front of it
(transaction pooling, health_check_period = 1, the other health settings at their defaults unless
given), runs one writer doing ~200 single-row INSERT commits per second through pgbalancer, SIGKILLs
the primary's postmaster and measures the time from the kill to the first commit acknowledged by the
new primary. Once writes flow again it counts the acknowledged commits missing on the new primary.
Results go to a JSON file and a markdown table, with each repetition's pgbalancer log beside them.

It only ever touches the clusters it creates under its work directory, and removes them.
Run as root from the repo root: ``bench/failover_time --reps 20``.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from rep_results import write_results

from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import BENCH_DB, BENCH_USER, LocalPgCluster

RESULTS = Path(__file__).resolve().parent / "results"
RECOVERY_TIMEOUT = 60.0


@dataclass
class Ack:
    at: float  # time.monotonic() when the commit was acknowledged
    row_id: int
    port: int  # the PostgreSQL server that took it


@dataclass
class Writer:
    """Single-row INSERT commits at ``rate`` per second on one connection, reconnecting after errors."""

    dsn: str
    rate: float
    acks: list[Ack] = field(default_factory=list)
    errors: list[tuple[float, str]] = field(default_factory=list)
    stop: threading.Event = field(default_factory=threading.Event)

    def run(self) -> None:
        conn: psycopg.Connection[tuple[int, int]] | None = None
        interval = 1.0 / self.rate
        next_at = time.monotonic()
        while not self.stop.is_set():
            now = time.monotonic()
            if now < next_at:
                time.sleep(next_at - now)
            next_at = max(next_at + interval, time.monotonic())  # no catch-up burst after a stall
            try:
                if conn is None:
                    conn = psycopg.connect(self.dsn, autocommit=True, connect_timeout=5)
                row = conn.execute(
                    "INSERT INTO ledger DEFAULT VALUES RETURNING id, inet_server_port()"
                ).fetchone()
            except psycopg.Error as exc:
                self.errors.append((time.monotonic(), f"{exc.sqlstate}: {str(exc).strip()[:160]}"))
                if conn is not None:
                    conn.close()
                conn = None
                continue
            assert row is not None
            self.acks.append(Ack(time.monotonic(), int(row[0]), int(row[1])))
        if conn is not None:
            conn.close()

    def first_ack_after(self, moment: float, not_port: int) -> Ack | None:
        return next((a for a in self.acks if a.at > moment and a.port != not_port), None)


@dataclass
class Repetition:
    index: int
    recovery_seconds: float | None  # kill -> first commit acknowledged by the new primary
    client_errors: int  # errors the writer saw (it reconnects after each)
    acknowledged: int
    lost: int  # acknowledged commits missing on the new primary
    new_primary: str
    replication: str = ""  # pg_stat_replication of the old primary just before the kill
    first_error: str = ""


def node_settings(cluster: LocalPgCluster, workdir: Path, args: argparse.Namespace) -> dict[str, Setting]:
    settings: dict[str, Setting] = {
        "listen_addresses": "127.0.0.1",
        "port": free_tcp_port(),
        "auth_type": "trust",
        "pool_mode": "transaction",
        "workers": 1,
        "api_port": 0,
        "mqtt_mode": "off",
        "log_level": "info",
        "health_check_period": args.period,
    }
    if args.max_retries is not None:
        settings["health_check_max_retries"] = args.max_retries
    if args.retry_delay is not None:
        settings["health_check_retry_delay"] = args.retry_delay
    for node_id, node in enumerate(cluster.nodes):
        settings[f"backend_hostname{node_id}"] = node.host
        settings[f"backend_port{node_id}"] = node.port
        settings[f"backend_data_directory{node_id}"] = str(node.data_dir)
    return settings


def run_repetition(index: int, workdir: Path, out: Path, args: argparse.Namespace) -> Repetition:
    names = ", ".join(f"standby{i}" for i in range(1, 3))
    cluster = LocalPgCluster(
        workdir / f"rep{index}" / "pg",
        standbys=2,
        fast=True,  # fsync off: a postmaster SIGKILL keeps the OS page cache, so nothing changes
        extra_conf={"synchronous_commit": "on"},
    )
    try:
        cluster.start()
        # Only now: set while the standbys were being cloned, it would have blocked every commit.
        for pg_node in cluster.nodes:  # the standbys too, so the new primary is synchronous as well
            cluster.psql(
                pg_node,
                f"ALTER SYSTEM SET synchronous_standby_names = 'ANY 1 ({names})';\nSELECT pg_reload_conf();",
            )
        cluster.psql(
            cluster.primary,
            "CREATE TABLE ledger (id bigserial PRIMARY KEY)",
            user=BENCH_USER,
            dbname=BENCH_DB,
        )
        node_dir = workdir / f"rep{index}" / "node"
        node = BalancerProcess.start(node_dir, node_settings(cluster, node_dir, args))
        try:
            return measure(index, cluster, node, args)
        finally:
            node.stop()
            shutil.copyfile(node.log_path, out / f"rep{index}-pgbalancer.log")  # what the node decided, when
    finally:
        cluster.destroy()


def measure(
    index: int, cluster: LocalPgCluster, node: BalancerProcess, args: argparse.Namespace
) -> Repetition:
    writer = Writer(node.dsn(BENCH_USER, BENCH_DB), args.rate)
    thread = threading.Thread(target=writer.run, name="writer", daemon=True)
    thread.start()
    try:
        time.sleep(args.settle)  # a benchmark, not a test: steady writes before the kill
        replication = cluster.psql(
            cluster.primary,
            "SELECT string_agg(application_name || ':' || sync_state, ',' ORDER BY 1) "
            "FROM pg_stat_replication",
        )
        pid = cluster.postmaster_pid(cluster.primary)
        assert pid is not None, "the primary is not running"
        killed_at = time.monotonic()
        os.kill(pid, signal.SIGKILL)
        first = None
        while first is None and time.monotonic() - killed_at < RECOVERY_TIMEOUT:
            time.sleep(0.01)
            first = writer.first_ack_after(killed_at, cluster.primary.port)
        time.sleep(args.after)
    finally:
        writer.stop.set()
        thread.join(30)
    new_primary = next((n for n in cluster.standbys if first is not None and n.port == first.port), None)
    lost = -1
    if new_primary is not None:
        ids = {int(i) for i in cluster.psql(new_primary, "SELECT id FROM ledger", dbname=BENCH_DB).split()}
        lost = sum(1 for ack in writer.acks if ack.row_id not in ids)
    return Repetition(
        index=index,
        recovery_seconds=round(first.at - killed_at, 3) if first is not None else None,
        client_errors=len(writer.errors),
        acknowledged=len(writer.acks),
        lost=lost,
        new_primary=new_primary.name if new_primary is not None else "none",
        replication=replication,
        first_error=writer.errors[0][1] if writer.errors else "",
    )


def summary(reps: list[Repetition]) -> dict[str, object]:
    times = sorted(r.recovery_seconds for r in reps if r.recovery_seconds is not None)
    return {
        "repetitions": len(reps),
        "recovered": len(times),
        "median_s": round(statistics.median(times), 3) if times else None,
        "min_s": times[0] if times else None,
        "max_s": times[-1] if times else None,
        "p90_s": times[min(len(times) - 1, int(0.9 * len(times)))] if times else None,
        "lost_total": sum(max(r.lost, 0) for r in reps),
        "unchecked": sum(1 for r in reps if r.lost < 0),
        "acknowledged_total": sum(r.acknowledged for r in reps),
    }


def table(reps: list[Repetition], totals: dict[str, object]) -> str:
    lines = [
        "| rep | kill to first commit on the new primary (s) | new primary | client errors | acked | lost "
        "| standbys before the kill |",
        "|---:|---:|---|---:|---:|---:|---|",
    ]
    for r in reps:
        seconds = f"{r.recovery_seconds:.3f}" if r.recovery_seconds is not None else "no recovery"
        lines.append(
            f"| {r.index} | {seconds} | {r.new_primary} | {r.client_errors} | {r.acknowledged} | {r.lost} "
            f"| {r.replication} |"
        )
    lines.append("")
    lines.append(
        f"median {totals['median_s']} s, p90 {totals['p90_s']} s, "
        f"min {totals['min_s']} s, max {totals['max_s']} s "
        f"over {totals['recovered']}/{totals['repetitions']} repetitions; acknowledged commits lost: "
        f"{totals['lost_total']} of {totals['acknowledged_total']}"
    )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/failover_time", description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--reps", type=int, default=20, help="repetitions, each on a fresh cluster (default 20)"
    )
    parser.add_argument("--rate", type=float, default=200.0, help="writer commits per second (default 200)")
    parser.add_argument("--period", type=float, default=1.0, help="health_check_period (default 1)")
    parser.add_argument(
        "--max-retries", type=int, default=None, help="health_check_max_retries (default: config)"
    )
    parser.add_argument(
        "--retry-delay", type=float, default=None, help="health_check_retry_delay (default: config)"
    )
    parser.add_argument("--settle", type=float, default=3.0, help="seconds of writes before the kill")
    parser.add_argument("--after", type=float, default=2.0, help="seconds of writes after recovery")
    parser.add_argument(
        "--out", type=Path, default=None, help="results directory (default bench/results/...)"
    )
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or RESULTS / time.strftime("failover-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    reps: list[Repetition] = []
    with tempfile.TemporaryDirectory(prefix="pgb-failover-", dir="/tmp") as scratch:
        workdir = Path(scratch)
        workdir.chmod(0o755)  # the postgres OS user must reach the clusters inside
        for index in range(1, args.reps + 1):
            rep = run_repetition(index, workdir, out, args)
            reps.append(rep)
            print(
                f"rep {index}: {rep.recovery_seconds} s, lost {rep.lost}, errors {rep.client_errors}",
                flush=True,
            )
    totals = summary(reps)
    write_results(out, "failover_time", args, reps, totals, table(reps, totals))


if __name__ == "__main__":
    main()
