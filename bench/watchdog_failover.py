"""bench/watchdog_failover: from SIGKILL of the watchdog leader to the first query that works through the
virtual IP (issue 6). See docs/benchmarks.md, section "Watchdog failover".

One namespace cluster (pgbalancer.devtools.netcluster: three nodes, PostgreSQL, a client, one bridge)
serves every repetition. A repetition waits until the nodes agree on a leader that alone holds the
VIP, SIGKILLs that node's pgbalancer process, and from the client namespace starts a new connection
+ ``SELECT 1`` to the VIP every ``--probe-interval`` seconds (each attempt on its own thread, libpq's
minimum connect_timeout of 2 s). The figure is the time from the kill to the completion of the first
attempt that succeeds. A second thread reads every node namespace's IPv4 addresses every 20 ms
(``HolderSampler``: ioctl(SIOCGIFCONF) on a socket made inside each namespace, the same addresses
``ip -n NS addr`` lists, without starting a process per look) and records when the VIP appeared on the
new leader and whether two nodes ever held it at once. The killed node is then
restarted and rejoins before the next repetition.

It only touches the namespaces, processes and directories it creates, and removes them.
Run as root from the repo root: ``bench/watchdog_failover --reps 10``.
"""

from __future__ import annotations

import argparse
import statistics
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import psycopg
from rep_results import write_results

from pgbalancer.devtools.netcluster import CLIENT, PROXY_PORT, VIP, NetCluster
from pgbalancer.devtools.netns import HolderSampler, call_in_netns

RESULTS = Path(__file__).resolve().parent / "results"
RECOVERY_TIMEOUT = 30.0


@dataclass
class Repetition:
    index: int
    old_leader: str
    new_leader: str | None
    first_query_s: float | None  # kill -> first successful new connection + query through the VIP
    vip_moved_s: float | None  # kill -> the VIP seen on the new holder
    failed_attempts: int
    two_holders_samples: int


class Prober:
    """New connection + SELECT 1 to the VIP from the client namespace, one attempt per interval."""

    def __init__(self, cluster: NetCluster, interval: float) -> None:
        assert cluster.lab is not None
        self.netns = cluster.lab.members[CLIENT].netns
        self.interval = interval
        self.successes: list[float] = []
        self.failures = 0
        self._lock = threading.Lock()
        self._stop = threading.Event()

    def _attempt(self) -> None:
        conninfo = f"host={VIP} port={PROXY_PORT} user=bench dbname=bench connect_timeout=2"

        def query() -> None:
            with psycopg.connect(conninfo, autocommit=True) as conn:
                conn.execute("SELECT 1").fetchall()

        try:
            call_in_netns(self.netns, query, timeout=10)
        except (psycopg.Error, OSError, TimeoutError):
            with self._lock:
                self.failures += 1
            return
        with self._lock:
            self.successes.append(time.monotonic())
        self._stop.set()

    def run_until_success(self, timeout: float) -> float | None:
        deadline = time.monotonic() + timeout
        threads: list[threading.Thread] = []
        while not self._stop.is_set() and time.monotonic() < deadline:
            thread = threading.Thread(target=self._attempt, daemon=True)
            thread.start()
            threads.append(thread)
            self._stop.wait(self.interval)
        for thread in threads:
            thread.join(timeout=15)
        return min(self.successes) if self.successes else None


def run_repetition(cluster: NetCluster, index: int, args: argparse.Namespace) -> Repetition:
    leader = cluster.wait_stable(timeout=60)
    others = [name for name in cluster.nodes if name != leader]
    assert cluster.lab is not None
    sampler = HolderSampler(cluster.lab, VIP, sorted(cluster.nodes), interval=0.02).start()
    prober = Prober(cluster, args.probe_interval)
    killed = time.monotonic()
    cluster.kill_node(leader)
    try:
        first = prober.run_until_success(RECOVERY_TIMEOUT)
        new_leader = cluster.wait_stable(timeout=RECOVERY_TIMEOUT, names=others)
    finally:
        sampler.stop()
    moved = next(
        (s.at for s in sampler.samples if s.at > killed and s.holders and leader not in s.holders), None
    )
    cluster.start_node(leader)
    cluster.wait_stable(timeout=60)
    return Repetition(
        index=index,
        old_leader=leader,
        new_leader=new_leader,
        first_query_s=round(first - killed, 3) if first is not None else None,
        vip_moved_s=round(moved - killed, 3) if moved is not None else None,
        failed_attempts=prober.failures,
        two_holders_samples=len(sampler.overlaps),
    )


def summary(reps: list[Repetition]) -> dict[str, object]:
    times = sorted(r.first_query_s for r in reps if r.first_query_s is not None)
    moves = sorted(r.vip_moved_s for r in reps if r.vip_moved_s is not None)
    return {
        "repetitions": len(reps),
        "recovered": len(times),
        "median_s": round(statistics.median(times), 3) if times else None,
        "min_s": times[0] if times else None,
        "max_s": times[-1] if times else None,
        "vip_moved_median_s": round(statistics.median(moves), 3) if moves else None,
        "two_holders_samples": sum(r.two_holders_samples for r in reps),
    }


def table(reps: list[Repetition], totals: dict[str, object]) -> str:
    lines = [
        "| rep | killed leader | new leader | kill to first query via VIP (s) "
        "| kill to VIP on new leader (s) "
        "| failed attempts | samples with two holders |",
        "|---:|---|---|---:|---:|---:|---:|",
    ]
    for r in reps:
        lines.append(
            f"| {r.index} | {r.old_leader} | {r.new_leader} | {r.first_query_s} | {r.vip_moved_s} "
            f"| {r.failed_attempts} | {r.two_holders_samples} |"
        )
    lines.append("")
    lines.append(
        f"median {totals['median_s']} s, min {totals['min_s']} s, max {totals['max_s']} s over "
        f"{totals['recovered']}/{totals['repetitions']} repetitions; VIP moved after a median "
        f"{totals['vip_moved_median_s']} s; samples with two VIP holders: {totals['two_holders_samples']}"
    )
    return "\n".join(lines) + "\n"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="bench/watchdog_failover", description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=10, help="repetitions on one cluster (default 10)")
    parser.add_argument(
        "--probe-interval", type=float, default=0.05, help="seconds between connection attempts (0.05)"
    )
    parser.add_argument("--out", type=Path, default=None, help="results dir (default bench/results/...)")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    out = args.out or RESULTS / time.strftime("watchdog-failover-%Y%m%d-%H%M%S")
    out.mkdir(parents=True, exist_ok=True)
    reps: list[Repetition] = []
    with NetCluster(progress=lambda line: print(line, flush=True)) as cluster:
        try:
            for index in range(1, args.reps + 1):
                rep = run_repetition(cluster, index, args)
                reps.append(rep)
                print(
                    f"rep {index}: killed {rep.old_leader}, first query after {rep.first_query_s} s, "
                    f"VIP on {rep.new_leader} after {rep.vip_moved_s} s",
                    flush=True,
                )
        finally:
            for name in cluster.nodes:
                (out / f"{name}.log").write_text(cluster.log_tail(name, lines=100_000))
    totals = summary(reps)
    write_results(out, "watchdog_failover", args, reps, totals, table(reps, totals))


if __name__ == "__main__":
    main()
