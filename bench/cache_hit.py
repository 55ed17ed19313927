"""bench/cache_hit: the Python cost of one result-cache hit inside pgbalancer, in microseconds.

Runs a real ``TransactionRelay``'s client loop (cache on, one warm entry) on a stub client
socket that hands it the exact bytes ``pgbench -S`` sends, simple protocol (one Query) or
extended protocol (Parse/Bind/Describe/Execute/Sync), and accepts the replies; times the
loop per request. What is left out is only the kernel and trio's wait for the next request:
the figure is the per-hit work pgbalancer adds on top of any I/O.

Usage: bench/cache_hit [--hits 200000] [--rounds 5] [--workers N] [--baseline DIR]
(``--workers N``: also measured as one of N workers, whose hits check the invalidation
generations shared across the workers.)
(``--baseline``: another version's package, e.g. ``git archive HEAD~1 pgbalancer | tar -x -C DIR``,
measured round by round in a child process.) Prints a table and writes JSON to
bench/results/cache-hit-<time>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import struct
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import trio

from pgbalancer.cache.generations import Generations, buffer_size
from pgbalancer.config import parse_config_text
from pgbalancer.pgwire.framing import MessageReader
from pgbalancer.proxy.backend import ServerCredentials
from pgbalancer.proxy.resultcache import CacheService
from pgbalancer.proxy.sessionstate import ClientSessionState
from pgbalancer.proxy.txrelay import TransactionRelay
from pgbalancer.routing.classify import DEFAULT_POLICY

REPO = Path(__file__).resolve().parent.parent
SQL = b"SELECT id, v, note FROM cache_items WHERE id = 42"
# What PostgreSQL 15 reports at startup (the settings every key carries).
REPORTED = {
    "application_name": "pgbench",
    "client_encoding": "UTF8",
    "DateStyle": "ISO, MDY",
    "default_transaction_read_only": "off",
    "in_hot_standby": "off",
    "integer_datetimes": "on",
    "IntervalStyle": "postgres",
    "is_superuser": "on",
    "server_encoding": "UTF8",
    "server_version": "15.4",
    "session_authorization": "postgres",
    "standard_conforming_strings": "on",
    "TimeZone": "UTC",
    "search_path": '"$user", public',
}


def _msg(kind: bytes, body: bytes) -> bytes:
    return kind + struct.pack("!I", len(body) + 4) + body


SIMPLE = _msg(b"Q", SQL + b"\x00")
EXTENDED = (
    _msg(b"P", b"\x00SELECT id, v, note FROM cache_items WHERE id = $1\x00\x00\x01\x00\x00\x00\x17")
    + _msg(b"B", b"\x00\x00\x00\x00\x00\x01\x00\x00\x00\x0242\x00\x00")
    + _msg(b"D", b"P\x00")
    + _msg(b"E", b"\x00\x00\x00\x00\x00")
    + _msg(b"S", b"")
)
ROW = _msg(b"D", b"\x00\x03\x00\x00\x00\x0242\x00\x00\x00\x011\x00\x00\x00\x05hello")
DESCRIPTION = _msg(b"T", b"\x00\x03" + (b"id\x00" + b"\x00" * 18) * 3)
ANSWERS = {
    "simple": DESCRIPTION + ROW + _msg(b"C", b"SELECT 1\x00") + _msg(b"Z", b"I"),
    "extended": _msg(b"1", b"")
    + _msg(b"2", b"")
    + DESCRIPTION
    + ROW
    + _msg(b"C", b"SELECT 1\x00")
    + _msg(b"Z", b"I"),
}


class _Client:
    """Hands the relay the same request ``limit`` times, then closes; accepts the replies."""

    peer = "bench"

    def __init__(self, request: bytes = b"", limit: int = 0) -> None:
        self.request = request
        self.limit = limit
        self.received = 0
        self.sent = 0

    async def recv_into(self, buffer: bytearray | memoryview) -> int:
        if self.received >= self.limit:
            return 0
        self.received += 1
        size = len(self.request)
        buffer[:size] = self.request
        return size

    async def send_all(self, data: bytes | bytearray | memoryview) -> None:
        self.sent += 1

    def looks_idle_and_open(self) -> bool:
        return True

    def close(self) -> None:
        pass


def _relay(workers: int) -> tuple[TransactionRelay, CacheService]:
    config = parse_config_text(
        "backend_hostname0 = '127.0.0.1'\nauth_type = trust\nworkers = 1\nmemory_cache_enabled = on\n"
    )
    service = CacheService(config)
    if workers > 1:
        service.share_with_workers(Generations(bytearray(buffer_size(workers)), workers, 0))
    router = SimpleNamespace(settings=SimpleNamespace(functions=DEFAULT_POLICY))
    proxy = SimpleNamespace(cache=service, router=router, config=config)
    session = SimpleNamespace(
        proxy=proxy, client=_Client(), database="bench", user="postgres", last_request_at=0.0
    )
    state = ClientSessionState(REPORTED, {})
    relay = TransactionRelay(
        session,  # type: ignore[arg-type]
        ServerCredentials("postgres"),
        MessageReader(),
        state,
        statement_mode=False,
    )
    return relay, service


async def _measure(kind: str, request: bytes, hits: int, workers: int = 1) -> float:
    relay, service = _relay(workers)
    cache = relay.cache
    assert cache is not None
    # Fill: plan the request once (a miss), then store the answer under its key.
    relay.reader.receive_data(request)
    plan = cache.plan(relay._drain_client_messages())
    assert plan is not None and plan.hit is None, "the request must be cacheable"
    since, stamp = service.begin_fill(), service.stamp(plan.reads)
    assert service.finish_fill(plan.key, ANSWERS[kind], plan.reads, since, None, stamp=stamp)
    relay.session.client = relay.client = client = _Client(request, hits)
    started = time.perf_counter()
    await relay._client_loop()
    elapsed = time.perf_counter() - started
    assert client.sent == hits and service.store.hits == hits, "every request must hit"
    return elapsed / hits * 1e6


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--hits", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another version's pgbalancer package (e.g. from `git archive`): "
        "measured in a child process, round by round with this one",
    )
    parser.add_argument(
        "--workers", type=int, default=1, help="also measure this version as one of N workers (N > 1)"
    )
    parser.add_argument("--one-round", action="store_true", help=argparse.SUPPRESS)  # the baseline's child
    args = parser.parse_args()
    requests = {"simple": SIMPLE, "extended": EXTENDED}
    if args.one_round:
        print(
            json.dumps(
                {kind: trio.run(_measure, kind, request, args.hits) for kind, request in requests.items()}
            )
        )
        return
    multi = f"this, {args.workers} workers"
    versions = ["this"] + ([multi] if args.workers > 1 else []) + (["baseline"] if args.baseline else [])
    samples: dict[str, dict[str, list[float]]] = {v: {kind: [] for kind in requests} for v in versions}
    for _ in range(args.rounds):
        for kind, request in requests.items():
            samples["this"][kind].append(trio.run(_measure, kind, request, args.hits))
            if args.workers > 1:
                samples[multi][kind].append(trio.run(_measure, kind, request, args.hits, args.workers))
        if args.baseline is not None:
            child = subprocess.run(
                [sys.executable, __file__, "--one-round", "--hits", str(args.hits)],
                env={**os.environ, "PYTHONPATH": str(args.baseline)},
                check=True,
                capture_output=True,
                text=True,
            )
            for kind, value in json.loads(child.stdout).items():
                samples["baseline"][kind].append(value)
    results: dict[str, Any] = {
        version: {kind: {"median_us": statistics.median(v), "samples_us": v} for kind, v in by_kind.items()}
        for version, by_kind in samples.items()
    }
    args.results.mkdir(parents=True, exist_ok=True)
    out = args.results / f"cache-hit-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.write_text(json.dumps(results, indent=2))
    print("| version | protocol | µs per hit (median) | samples |")
    print("|---|---|---:|---|")
    for version, by_kind in results.items():
        for kind, result in by_kind.items():
            listed = ", ".join(f"{value:.2f}" for value in result["samples_us"])
            print(f"| {version} | {kind} | {result['median_us']:.2f} | {listed} |")
    print(f"JSON: {out}")


if __name__ == "__main__":
    main()
