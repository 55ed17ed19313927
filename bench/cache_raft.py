"""bench/cache_raft: what the cross-node invalidation barrier costs a write.

Sequential single-row UPDATEs of a cached table (one client, autocommit), measured per
statement, through: one pgbalancer node with the cache off; one with the cache on (local
invalidation only); and node 0 of a two-node pgbalancer cluster joined by Raft (pysyncobj on
loopback) with the cache on, where each write waits for its invalidation to be committed and
for memqcache_hit_lease. Between the writes, a second client keeps the row's read cached on the
other node, so every write really invalidates something there.

Uses the shared cluster script on its own base and ports (as bench/cache). Output: JSON under
bench/results/cache-raft-<time>/ and a markdown table. Run as root from the repo root:
bench/cache_raft [--writes 300] [--hit-lease 0.25]
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import psycopg

from pgbalancer.devtools import free_tcp_ports, wait_for
from pgbalancer.devtools.balancer import BalancerProcess, Setting

REPO = Path(__file__).resolve().parents[1]
BASE = "/tmp/pgb-cache-bench"
PRIMARY, REPLICAS = 5633, (5634, 5635)


def settings(port: int, api_port: int, **extra: Setting) -> dict[str, Setting]:
    return {
        "listen_addresses": "127.0.0.1",
        "port": port,
        "backend_hostname0": "127.0.0.1",
        "backend_port0": PRIMARY,
        "auth_type": "trust",
        "pool_mode": "transaction",
        "workers": 1,
        "load_balance_mode": False,
        "mqtt_mode": "off",
        "api_port": api_port,
        "log_level": "warning",
        **extra,
    }


@contextlib.contextmanager
def nodes(root: Path, configs: list[dict[str, Setting]]) -> Iterator[list[BalancerProcess]]:
    started: list[BalancerProcess] = []
    try:
        for index, config in enumerate(configs):
            started.append(BalancerProcess.start(root / f"node{index}", config, ready_timeout=60))
        yield started
    finally:
        for node in started:
            with contextlib.suppress(Exception):
                node.stop()


def connect(node: BalancerProcess) -> psycopg.Connection:
    return psycopg.connect(f"host=127.0.0.1 port={node.port} user=bench dbname=bench", autocommit=True)


def measure(writer_node: BalancerProcess, reader_node: BalancerProcess, writes: int) -> list[float]:
    def ready() -> bool:
        with connect(writer_node) as conn:
            conn.execute("SELECT 1")
        return True

    wait_for(ready, timeout=60, retry_on=(psycopg.OperationalError,), message="node never took queries")
    latencies = []
    with connect(writer_node) as writer, connect(reader_node) as reader:
        for step in range(writes):
            reader.execute("SELECT v FROM raft_bench WHERE id = 1").fetchone()
            started = time.perf_counter()
            writer.execute("UPDATE raft_bench SET v = %s WHERE id = 1", (step,))
            latencies.append((time.perf_counter() - started) * 1000)
            row = reader.execute("SELECT v FROM raft_bench WHERE id = 1").fetchone()
            assert row == (step,), f"stale read after write {step}: {row}"
    return latencies


def summary(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)
    return {
        "median_ms": statistics.median(ordered),
        "p95_ms": ordered[int(len(ordered) * 0.95) - 1],
        "max_ms": ordered[-1],
        "writes": len(ordered),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--writes", type=int, default=300)
    parser.add_argument("--hit-lease", type=float, default=0.25)
    parser.add_argument("--shared", type=Path, help="directory of the shared bench scripts (pgcluster.sh)")
    args = parser.parse_args()
    candidates = [args.shared] if args.shared else [p / "shared" / "bench" for p in REPO.parents]
    shared = next((c for c in candidates if (c / "pgcluster.sh").is_file()), None)
    if shared is None:
        raise SystemExit("no shared/bench/pgcluster.sh beside the repo or above it: pass --shared DIR")
    env = {
        **os.environ,
        "PGB_BASE": BASE,
        "PRIMARY_PORT": str(PRIMARY),
        "REPLICA_PORTS": " ".join(map(str, REPLICAS)),
    }
    out_dir = REPO / "bench" / "results" / time.strftime("cache-raft-%Y%m%dT%H%M%S")
    out_dir.mkdir(parents=True)
    root = Path(tempfile.mkdtemp(prefix="pgb-cache-raft-"))
    results: dict[str, dict[str, float]] = {}
    subprocess.run([str(shared / "pgcluster.sh"), "up", BASE], env=env, check=True, capture_output=True)
    try:
        with psycopg.connect(
            f"host=127.0.0.1 port={PRIMARY} user=bench dbname=bench", autocommit=True
        ) as conn:
            conn.execute("DROP TABLE IF EXISTS raft_bench")
            conn.execute("CREATE TABLE raft_bench (id int PRIMARY KEY, v int NOT NULL)")
            conn.execute("INSERT INTO raft_bench VALUES (1, -1)")
        ports = free_tcp_ports(8)
        with nodes(root / "off", [settings(ports[0], ports[1])]) as (node,):
            results["one node, cache off"] = summary(measure(node, node, args.writes))
        with nodes(root / "on", [settings(ports[0], ports[1], memory_cache_enabled=True)]) as (node,):
            results["one node, cache on (local invalidation)"] = summary(measure(node, node, args.writes))
        members = f"127.0.0.1:{ports[4]},127.0.0.1:{ports[5]}"
        cluster = [
            settings(
                ports[index * 2],
                ports[index * 2 + 1],
                memory_cache_enabled=True,
                memqcache_hit_lease=args.hit_lease,
                watchdog_nodes=members,
                watchdog_port=ports[4 + index],
                watchdog_secret="cache-raft-bench",
                watchdog_data_dir=str(root / "raft" / f"node{index}"),
            )
            for index in range(2)
        ]
        with nodes(root / "raft", cluster) as (first, second):
            label = f"two nodes over Raft, cache on (hit lease {args.hit_lease:g} s)"
            results[label] = summary(measure(first, second, args.writes))
    finally:
        subprocess.run(
            [str(shared / "pgcluster.sh"), "down", BASE], env=env, check=False, capture_output=True
        )
    (out_dir / "cache_raft.json").write_text(
        json.dumps({"hit_lease_s": args.hit_lease, "results": results}, indent=2)
    )
    print("| setup | median ms | p95 ms | max ms | writes |\n|---|---:|---:|---:|---:|")
    for name, row in results.items():
        figures = " | ".join(f"{row[k]:.1f}" for k in ("median_ms", "p95_ms", "max_ms"))
        print(f"| {name} | {figures} | {row['writes']:.0f} |")
    print(f"\n[cache raft bench] results in {out_dir}/cache_raft.json")


if __name__ == "__main__":
    main()
