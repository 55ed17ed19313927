"""bench/mqtt_flood: query latency through pgbalancer while 10,000+ MQTT events flood out, with and
without a stalled subscriber.

Issue 8 claims that a slow or stuck MQTT subscriber never stalls queries: publishing is
fire-and-forget into a bounded queue, and drops are counted. This measures it. One trio process
runs the proxy and the event service (embedded amqtt broker thread) as the node does, in front of
a fresh local PostgreSQL primary. A client thread times ``SELECT 1`` round trips through the
proxy in three phases, interleaved over the repetitions:

- quiet: the service runs and nothing is published;
- flood: the trio loop offers prebuilt ~1 KiB events at ``--rate`` per second (at least
  ``--events`` per phase, and on until the phase's samples are taken), with nobody subscribed;
- flood, stalled subscriber: the same, while a paho client subscribed to ``pgbalancer/#`` has
  stopped reading and keeps its TCP connection open.

Comparing the last two isolates what a stuck subscriber costs. Comparing the first two shows what
publishing that many events costs the loop and the GIL. The broker thread hands the broker at most
``--max-event-rate`` events a second (``mqtt_max_event_rate``); ``--compare-rate R`` adds the two
flood phases again with the bound set to R (e.g. 1000000: effectively unbounded, the behaviour
before the bound existed), interleaved with the others in the same run. Prints a table (median,
p95 and p99 per phase) and writes a JSON result. Run from the repo root as root (the cluster runs
as the postgres user): ``.venv/bin/python bench/mqtt_flood.py``. It only touches the cluster it
creates under a temporary directory, and removes it.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import psycopg
import trio
from paho.mqtt.enums import CallbackAPIVersion

from pgbalancer.config import Config, parse_config_text
from pgbalancer.devtools import free_tcp_port
from pgbalancer.devtools.pgcluster import BENCH_DB, BENCH_USER, LocalPgCluster
from pgbalancer.events import payloads
from pgbalancer.events.service import EventService
from pgbalancer.proxy.server import ProxyServer

RESULTS = Path(__file__).resolve().parent / "results"
MONITOR = ("monitor", "monitor-pw")


def make_config(cluster: LocalPgCluster, workdir: Path, rate: float) -> Config:
    users = workdir / "mqtt_users.txt"
    users.write_text(f'"{MONITOR[0]}" "{MONITOR[1]}"\n')
    settings = {
        "listen_addresses": "127.0.0.1",
        "port": free_tcp_port(),
        "auth_type": "trust",
        "pool_mode": "transaction",
        "workers": 1,
        "api_port": 0,
        "backend_hostname0": cluster.primary.host,
        "backend_port0": cluster.primary.port,
        "mqtt_mode": "embedded",
        "mqtt_port": free_tcp_port(),
        "mqtt_listen_addresses": "127.0.0.1",
        "mqtt_user_file": str(users),
        "mqtt_stats_interval": 3600,
        "node_name": "flood-bench",
        "mqtt_max_event_rate": rate,
    }
    return parse_config_text("".join(f"{key} = '{value}'\n" for key, value in settings.items()))


def stalled_subscriber(port: int) -> mqtt.Client:
    """Connected and subscribed to pgbalancer/#, then no longer reading (its socket stays open)."""
    client = mqtt.Client(CallbackAPIVersion.VERSION2, client_id="stalled")
    client.username_pw_set(*MONITOR)
    client.connect("127.0.0.1", port)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not client.is_connected():
        if time.monotonic() > deadline:
            raise RuntimeError("the stalled subscriber could not connect")
        time.sleep(0.01)
    result, _ = client.subscribe("pgbalancer/#", qos=1)
    if result != mqtt.MQTT_ERR_SUCCESS:
        raise RuntimeError(f"subscribe failed: {result}")
    time.sleep(0.2)  # let SUBACK arrive before we stop reading
    client.loop_stop()
    return client


def latencies(dsn: str, samples: int) -> list[float]:
    with psycopg.connect(dsn, autocommit=True) as connection:
        connection.execute("SELECT 1").fetchall()  # warm: a server connection is pooled
        measured = []
        for _ in range(samples):
            started = time.perf_counter()
            connection.execute("SELECT 1").fetchall()
            measured.append(time.perf_counter() - started)
    return measured


def summary(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)

    def pick(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    return {
        "samples": len(values),
        "median_ms": round(statistics.median(values) * 1000, 3),
        "p95_ms": round(pick(0.95), 3),
        "p99_ms": round(pick(0.99), 3),
    }


async def flood(
    service: EventService, event: payloads.EventMessage, args: argparse.Namespace, done: trio.Event
) -> int:
    """Offer ``event`` at ``args.rate`` per second until ``args.events`` were offered and ``done`` is set."""
    per_tick = max(1, round(args.rate / 1000))
    offered = 0
    while offered < args.events or not done.is_set():
        for _ in range(per_tick):
            service.publish(event)
        offered += per_tick
        await trio.sleep(0.001)
    return offered


@dataclass(frozen=True)
class Phase:
    name: str
    flood: bool
    stalled: bool
    rate: float  # mqtt_max_event_rate during the phase


def phases(args: argparse.Namespace) -> list[Phase]:
    chosen = [
        Phase("quiet", False, False, args.max_event_rate),
        Phase("flood", True, False, args.max_event_rate),
        Phase("flood, stalled subscriber", True, True, args.max_event_rate),
    ]
    if args.compare_rate is not None:
        chosen += [
            Phase(f"flood, rate {args.compare_rate:g}", True, False, args.compare_rate),
            Phase(f"flood, stalled, rate {args.compare_rate:g}", True, True, args.compare_rate),
        ]
    return chosen


async def measure_phase(
    phase: Phase, service: EventService, event: payloads.EventMessage, dsn: str, args: argparse.Namespace
) -> tuple[list[float], int]:
    """SELECT 1 latencies during one phase; the events offered meanwhile."""
    service.set_max_event_rate(phase.rate)
    if not phase.flood:
        return await trio.to_thread.run_sync(latencies, dsn, args.samples), 0
    stalled = None
    if phase.stalled:
        stalled = await trio.to_thread.run_sync(stalled_subscriber, service.config.mqtt_port)
    done, offered = trio.Event(), [0]

    async def flood_into(box: list[int]) -> None:
        box[0] = await flood(service, event, args, done)

    try:
        async with trio.open_nursery() as flooding:
            flooding.start_soon(flood_into, offered)
            try:
                measured = await trio.to_thread.run_sync(latencies, dsn, args.samples)
            finally:
                done.set()
    finally:
        if stalled is not None:
            await trio.to_thread.run_sync(stalled.disconnect)
    return measured, offered[0]


async def run(config: Config, args: argparse.Namespace) -> dict[str, Any]:
    proxy = ProxyServer(config, {})
    service = EventService(config, proxy, capacity=1000)
    dsn = f"host=127.0.0.1 port={config.port} user={BENCH_USER} dbname={BENCH_DB}"
    # One prebuilt ~1 KiB event: the trio side of the flood costs only the offers, as in the node.
    event = payloads.cluster_config(("x" * 1000,), (), (), payloads.Stamp("flood", 0.0, "flood", 0))
    chosen = phases(args)
    measured: dict[str, list[float]] = {phase.name: [] for phase in chosen}
    offered: dict[str, list[int]] = {phase.name: [] for phase in chosen}
    async with trio.open_nursery() as nursery:
        await nursery.start(proxy.serve)
        await nursery.start(service.run)
        for rep in range(args.reps):
            for phase in chosen:  # interleaved, so the machine's load drifts over all phases alike
                values, count = await measure_phase(phase, service, event, dsn, args)
                measured[phase.name] += values
                offered[phase.name].append(count)
            print(f"rep {rep + 1}/{args.reps} done", flush=True)
        nursery.cancel_scope.cancel()
    stats = service.statistics()
    return {
        "phases": {
            phase.name: {
                **summary(measured[phase.name]),
                "events_offered": offered[phase.name],
                "rate": phase.rate,
            }
            for phase in chosen
        },
        "queue": {
            "capacity": stats.queue.capacity,
            "high_water": stats.queue.high_water,
            "offered": stats.queue.offered,
            "accepted": stats.queue.accepted,
            "dropped": stats.queue.dropped,
            "delivered": stats.queue.delivered,
            "coalesced": stats.queue.coalesced,
        },
        "slow_subscriber_skips": stats.slow_subscriber_skips,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reps", type=int, default=5)
    parser.add_argument("--samples", type=int, default=300, help="SELECT 1 round trips per phase and rep")
    parser.add_argument("--events", type=int, default=10_000, help="at least this many events per flood")
    parser.add_argument("--rate", type=int, default=20_000, help="events offered per second during a flood")
    parser.add_argument("--json", type=Path, default=RESULTS / "mqtt_flood.json")
    parser.add_argument("--max-event-rate", type=float, default=200.0, help="mqtt_max_event_rate (events/s)")
    parser.add_argument("--compare-rate", type=float, default=None, help="also flood with this rate bound")
    parser.add_argument("--switch-interval", type=float, default=None, help="sys.setswitchinterval (s)")
    args = parser.parse_args()
    if args.switch_interval is not None:
        sys.setswitchinterval(args.switch_interval)
    with tempfile.TemporaryDirectory(prefix="pgb-flood-") as tmp:
        workdir = Path(tmp)
        workdir.chmod(0o755)  # the postgres OS user must traverse it
        cluster = LocalPgCluster(workdir / "cluster", standbys=0, fast=True)
        try:
            cluster.start()
            result = trio.run(run, make_config(cluster, workdir, args.max_event_rate), args)
        finally:
            cluster.destroy()
    result |= {
        "benchmark": "mqtt_flood",
        "reps": args.reps,
        "python": platform.python_version(),
        "machine": platform.machine(),
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{'SELECT 1 through pgbalancer':<32} {'median':>9} {'p95':>9} {'p99':>9}  events offered")
    for phase, row in result["phases"].items():
        print(
            f"{phase:<32} {row['median_ms']:>6.3f} ms {row['p95_ms']:>6.3f} ms {row['p99_ms']:>6.3f} ms"
            f"  {sum(row['events_offered'])}"
        )
    queue = result["queue"]
    print(
        f"events: {queue['offered']} offered, {queue['delivered']} delivered, {queue['dropped']} dropped, "
        f"{queue['coalesced']} coalesced "
        f"(queue capacity {queue['capacity']}); {result['slow_subscriber_skips']} skipped for the stalled "
        f"subscriber. JSON: {args.json}"
    )


if __name__ == "__main__":
    main()
