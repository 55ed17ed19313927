"""``make demo`` / ``make demo-stop``: PostgreSQL, a pgbalancer watchdog cluster, pgbench traffic, a summary.

``python -m pgbalancer.devtools.demo up|down|status [--workdir DIR]`` (default ``<repo>/.demo``):

- ``up`` starts PostgreSQL (primary + 2 streaming standbys) in ``.demo/pg`` and three pgbalancer
  nodes forming a watchdog (Raft) cluster on 127.0.0.1 (``.demo/node1..3/pgbalancer.conf``; node1 on
  port 5432), waits for their quorum, runs pgbench through node1, prints throughput, latency, which
  backend served what, the pool usage and each node's view of the Raft group, and leaves everything
  running so you can connect yourself. (No virtual IP: that needs interfaces of their own, see
  docs/vip.md and tests/cluster.)
- ``down`` stops the pgbalancer nodes (SIGTERM, SIGKILL after 10 s) and the cluster; safe to repeat.
- ``status`` says what runs.

This is a developer tool: it must never be imported by the node, never need a password (the demo
cluster trusts 127.0.0.1), and never touch anything outside its work directory except the processes it
started itself.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import re
import secrets
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from pgbalancer.devtools import free_tcp_ports, tcp_port_is_free, wait_for
from pgbalancer.devtools.balancer import BalancerProcess, Setting
from pgbalancer.devtools.pgcluster import (
    BENCH_DB,
    BENCH_USER,
    LOCALHOST,
    LocalPgCluster,
    PgClusterError,
    PgNode,
    postgres_can_reach,
    print_status,
)

PREFERRED_PG_PORTS = (5433, 5434, 5435)
READY_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
STATE_FILE = "demo.json"
PGBENCH_SCALE = 5


class DemoError(RuntimeError):
    """A demo step failed; the message says what to look at and what to do."""


@dataclass(frozen=True)
class Workload:
    """One pgbench run through pgbalancer."""

    title: str
    args: tuple[str, ...]


WORKLOADS = (
    Workload("select-only", ("-S", "-c", "8", "-j", "2", "-T", "8")),
    Workload("TPC-B", ("-c", "4", "-j", "2", "-T", "5")),
)


@dataclass
class RunResult:
    """What one run did: pgbench's own figures plus what the backends saw."""

    workload: Workload
    tps: float
    latency_ms: float
    transactions: int
    failed: int
    commits_per_node: dict[str, int]
    peak_server_conns: dict[str, int] = field(default_factory=dict)


@dataclass(frozen=True)
class DemoPaths:
    workdir: Path

    @property
    def pg_link(self) -> Path:
        return self.workdir / "pg"

    @property
    def pg_dir(self) -> Path:
        """The cluster's real directory (``pg`` may be a link to one the postgres user can reach)."""
        return self.pg_link.resolve()

    def node(self, name: str) -> NodePaths:
        return NodePaths(self.workdir / name)

    @property
    def state(self) -> Path:
        return self.workdir / STATE_FILE


def say(line: str) -> None:
    print(line, flush=True)


# ---- PostgreSQL -------------------------------------------------------------------------------------


def start_cluster(paths: DemoPaths) -> LocalPgCluster:
    """The demo cluster on 5433-5435, or on free ports when those are taken (and we say so)."""
    ensure_reachable_pg_dir(paths)
    if (paths.pg_dir / "cluster.json").exists():
        cluster = LocalPgCluster(paths.pg_dir, progress=_indented)
        say(f"==> PostgreSQL: reusing the demo cluster in {paths.pg_dir}")
    else:
        ports: Sequence[int] = PREFERRED_PG_PORTS
        if not all(tcp_port_is_free(port) for port in ports):
            ports = free_tcp_ports(len(PREFERRED_PG_PORTS))
            say(f"==> PostgreSQL: ports {_join(PREFERRED_PG_PORTS)} are taken, using {_join(ports)} instead")
        say(f"==> PostgreSQL: primary + 2 streaming standbys in {paths.pg_dir}")
        cluster = LocalPgCluster(paths.pg_dir, ports=ports, progress=_indented)
    cluster.start()
    return cluster


def ensure_reachable_pg_dir(paths: DemoPaths) -> None:
    """Link ``.demo/pg`` to /var/tmp when the postgres OS user cannot reach the repository.

    A repository under /root (mode 0700) is the usual case on a fresh machine: PostgreSQL runs as
    ``postgres`` and could not open its own data directory there.
    """
    if paths.pg_link.exists() or paths.pg_link.is_symlink() or postgres_can_reach(paths.workdir):
        return
    digest = hashlib.sha256(str(paths.workdir).encode()).hexdigest()[:10]
    outside = Path("/var/tmp") / f"pgbalancer-demo-{digest}"
    outside.mkdir(mode=0o755, exist_ok=True)
    paths.pg_link.symlink_to(outside, target_is_directory=True)
    say(f"==> the postgres OS user cannot reach {paths.workdir}; the cluster lives in {outside}")


def _indented(line: str) -> None:
    say(f"    {line}")


def _join(ports: Sequence[int]) -> str:
    return ", ".join(str(port) for port in ports)


# ---- pgbalancer: a three-node watchdog cluster ----------------------------------------------------


DEMO_NODES = ("node1", "node2", "node3")
# node1 keeps 5432, the port an application would use; the Raft group and the REST APIs beside them.
PREFERRED_PORTS = {
    "proxy": (5432, 5442, 5452),
    "raft": (9000, 9001, 9002),
    "api": (8080, 8081, 8082),
    "mqtt": (1883, 1884, 1885),  # each node's embedded broker
}
DEMO_POOL_SIZE = 4  # a watchdog member runs one worker process, so this is each backend's limit
QUORUM_TIMEOUT = 30.0


@dataclass(frozen=True)
class NodePaths:
    """Where one pgbalancer node of the demo keeps its config, log and pid file."""

    directory: Path

    @property
    def config(self) -> Path:
        return self.directory / "pgbalancer.conf"

    @property
    def log(self) -> Path:
        return self.directory / "pgbalancer.log"

    @property
    def pid_file(self) -> Path:
        return self.directory / "pgbalancer.pid"


@dataclass(frozen=True)
class DemoNode:
    name: str
    proxy_port: int
    raft_port: int
    api_port: int
    mqtt_port: int

    @property
    def raft_address(self) -> str:
        return f"{LOCALHOST}:{self.raft_port}"


def balancer_settings(
    cluster: LocalPgCluster, node: DemoNode, nodes: Sequence[DemoNode], secret: str, paths: NodePaths
) -> dict[str, Setting]:
    settings: dict[str, Setting] = {
        "listen_addresses": LOCALHOST,
        "port": node.proxy_port,
        # Transaction pooling: pgbench's 8 clients share at most 4 server connections per backend.
        "pool_mode": "transaction",
        "auth_type": "trust",
        "num_init_children": DEMO_POOL_SIZE,
        "max_pool": 4,
        "pid_file": str(paths.pid_file),
        "api_port": node.api_port,
        "mqtt_port": node.mqtt_port,
        "watchdog_nodes": ",".join(member.raft_address for member in nodes),
        "watchdog_port": node.raft_port,
        "watchdog_listen_address": LOCALHOST,
        "watchdog_secret": secret,
        "watchdog_data_dir": str(paths.directory / "raft"),
    }
    for index, backend in enumerate(cluster.nodes):
        settings[f"backend_hostname{index}"] = backend.host
        settings[f"backend_port{index}"] = backend.port
        settings[f"backend_weight{index}"] = 1
    return settings


def pick_ports() -> list[DemoNode]:
    """Each node's proxy, Raft and API port: the preferred ones when all are free, else free ones."""
    wanted = [port for ports in PREFERRED_PORTS.values() for port in ports]
    chosen: Mapping[str, Sequence[int]] = PREFERRED_PORTS
    if not all(tcp_port_is_free(port) for port in wanted):
        spare = iter(free_tcp_ports(len(wanted)))
        chosen = {kind: tuple(next(spare) for _ in ports) for kind, ports in PREFERRED_PORTS.items()}
        instead = [port for ports in chosen.values() for port in ports]
        say(f"    some of ports {_join(wanted)} are taken: using {_join(instead)}")
    return [
        DemoNode(name, *(chosen[kind][index] for kind in ("proxy", "raft", "api", "mqtt")))
        for index, name in enumerate(DEMO_NODES)
    ]


def start_balancers(cluster: LocalPgCluster, paths: DemoPaths) -> list[DemoNode]:
    """Start the three watchdog members (or keep them running); return them once each says it is
    ready (a backend reachable, a Raft quorum) and ``SELECT 1`` works through node1."""
    state = _read_state(paths)
    nodes = _nodes_in(state)
    if nodes and all(_running_balancer_pid(paths.node(n.name), state.get(n.name)) for n in nodes):
        say(f"==> pgbalancer watchdog cluster already running (ports {_join([n.proxy_port for n in nodes])})")
    else:
        say(f"==> pgbalancer: a watchdog cluster of {len(DEMO_NODES)} nodes (Raft on 127.0.0.1)")
        stop_balancers(paths)  # whatever is left of an earlier, partial start
        nodes = pick_ports()
        secret = secrets.token_hex(16)
        pids: dict[str, object] = {}
        for node in nodes:
            node_paths = paths.node(node.name)
            settings = balancer_settings(cluster, node, nodes, secret, node_paths)
            try:
                process = BalancerProcess.start(node_paths.directory, settings, ready_timeout=READY_TIMEOUT)
            except (RuntimeError, TimeoutError) as exc:
                raise DemoError(f"{node.name} did not come up: {exc}\n{_balancer_hints(node_paths)}") from exc
            pids[node.name] = process.process.pid
            _write_state(paths, {"nodes": [asdict(n) for n in nodes], **pids})
            say(f"    {node.name}: pid {process.process.pid}, port {node.proxy_port}, log {node_paths.log}")
    for node in nodes:
        _wait_ready(node, paths.node(node.name))
    _wait_select_one(cluster, nodes[0].proxy_port, paths.node(nodes[0].name), timeout=READY_TIMEOUT)
    say(f"    the three nodes have a Raft quorum; SELECT 1 through 127.0.0.1:{nodes[0].proxy_port} works")
    return nodes


def _nodes_in(state: Mapping[str, object]) -> list[DemoNode]:
    recorded = state.get("nodes")
    if not isinstance(recorded, list):
        return []
    try:
        return [DemoNode(**item) for item in recorded]
    except TypeError:
        return []


def _wait_ready(node: DemoNode, paths: NodePaths) -> None:
    """Until the node's /api/v1/readyz says 200: a backend reachable and a Raft quorum."""
    url = f"http://{LOCALHOST}:{node.api_port}/api/v1/readyz"

    def ready() -> bool:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)

    try:
        wait_for(
            ready, timeout=QUORUM_TIMEOUT, interval=0.2, message=f"{node.name} ready", retry_on=(OSError,)
        )
    except TimeoutError as exc:
        raise DemoError(f"{exc} ({url})\n{_balancer_hints(paths)}") from exc


def watchdog_view(node: DemoNode) -> dict[str, str]:
    """What the node's /metrics says of the Raft group (no credentials needed for /metrics)."""
    try:
        with urllib.request.urlopen(f"http://{LOCALHOST}:{node.api_port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError as exc:
        return {"role": f"? ({exc})", "term": "?", "quorum": "?", "leader": "?"}

    def value(name: str) -> str:
        found = re.search(rf"^{name} (\S+)$", text, re.M)
        return found.group(1).removesuffix(".0") if found else "?"

    leader = re.search(r'^pgbalancer_raft_leader_info\{leader="([^"]*)"\}', text, re.M)
    return {
        "role": "leader" if value("pgbalancer_raft_is_leader") == "1" else "follower",
        "term": value("pgbalancer_raft_term"),
        "quorum": {"1": "yes", "0": "no"}.get(value("pgbalancer_raft_quorum"), "?"),
        "leader": leader.group(1) if leader else "?",
    }


def _wait_select_one(cluster: LocalPgCluster, port: int, paths: NodePaths, timeout: float) -> None:
    proxy = PgNode("pgbalancer", LOCALHOST, port, paths.directory, "proxy")
    try:
        wait_for(
            lambda: cluster.psql(proxy, "SELECT 1", user=BENCH_USER, dbname=BENCH_DB) == "1",
            timeout=timeout,
            interval=0.2,
            message=f"SELECT 1 through pgbalancer on port {port}",
            retry_on=(PgClusterError,),
        )
    except TimeoutError as exc:
        raise DemoError(f"{exc}\n{_balancer_hints(paths)}") from exc


def _balancer_hints(paths: NodePaths) -> str:
    tail = "\n".join(_read_text(paths.log).splitlines()[-30:]) or "(empty)"
    return (
        f"--- last lines of {paths.log} ---\n{tail}\n"
        f"Check the config with: .venv/bin/pgbalancer --check -f {paths.config}\n"
        "Then `make demo-stop` and `make demo` again."
    )


def _running_balancer_pid(paths: NodePaths, recorded: object) -> int | None:
    """The pid of this demo node's pgbalancer if it still runs (pid file first, then the recorded one)."""
    candidates: list[int] = []
    with contextlib.suppress(OSError, ValueError):
        candidates.append(int(paths.pid_file.read_text().strip()))
    if isinstance(recorded, int):
        candidates.append(recorded)
    for pid in candidates:
        if _is_demo_balancer(pid, paths):
            return pid
    return None


def _is_demo_balancer(pid: int, paths: NodePaths) -> bool:
    """True when ``pid`` is alive and runs pgbalancer with this node's config (not a reused pid)."""
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return False
    return any(b"pgbalancer" in arg for arg in argv) and str(paths.config).encode() in argv


def stop_balancers(paths: DemoPaths) -> list[str]:
    """Stop every demo node (and a single node left by an older demo layout); what happened to each."""
    state = _read_state(paths)
    outcomes = []
    nodes = [(name, paths.node(name), state.get(name)) for name in DEMO_NODES]
    nodes.append(("pgbalancer", NodePaths(paths.workdir), state.get("pid")))  # the older layout
    for name, node_paths, recorded_pid in nodes:
        outcome = stop_balancer(node_paths, recorded_pid)
        if outcome is not None:
            outcomes.append(f"{name}: {outcome}")
    return outcomes


def stop_balancer(paths: NodePaths, recorded: object) -> str | None:
    pid = _running_balancer_pid(paths, recorded)
    if pid is None:
        paths.pid_file.unlink(missing_ok=True)
        return None
    os.kill(pid, signal.SIGTERM)
    try:
        wait_for(
            lambda: not _is_demo_balancer(pid, paths), timeout=STOP_TIMEOUT, interval=0.1, message="exit"
        )
        outcome = f"pgbalancer (pid {pid}) stopped"
    except TimeoutError:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)  # it leads its own session: take its children too
        wait_for(
            lambda: not _is_demo_balancer(pid, paths), timeout=5, interval=0.1, message="exit after SIGKILL"
        )
        outcome = f"pgbalancer (pid {pid}) ignored SIGTERM for {STOP_TIMEOUT:g}s and was killed"
    paths.pid_file.unlink(missing_ok=True)
    return outcome


# ---- workload ---------------------------------------------------------------------------------------


def pgbench(cluster: LocalPgCluster, port: int, args: Sequence[str]) -> subprocess.Popen[str]:
    argv = [str(cluster.pg_bin / "pgbench"), "-h", LOCALHOST, "-p", str(port), "-U", BENCH_USER, *args]
    env = {key: value for key, value in os.environ.items() if not key.startswith("PG")}
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)


def initialize_bench(cluster: LocalPgCluster) -> None:
    """pgbench tables on the primary directly, then wait until both standbys have replayed them."""
    say(f"==> pgbench -i -s {PGBENCH_SCALE} on the primary (port {cluster.primary.port})")
    process = pgbench(cluster, cluster.primary.port, ["-i", "-q", "-s", str(PGBENCH_SCALE), BENCH_DB])
    out, err = process.communicate(timeout=600)
    if process.returncode != 0:
        raise DemoError(f"pgbench -i failed:\n{out}{err}")
    target = cluster.psql(cluster.primary, "SELECT pg_current_wal_lsn()")

    def replayed(node: PgNode) -> bool:
        return cluster.psql(node, f"SELECT pg_last_wal_replay_lsn() >= '{target}'") == "t"

    for standby in cluster.standbys:
        wait_for(
            functools.partial(replayed, standby),
            timeout=60,
            interval=0.2,
            message=f"{standby.name} replaying the pgbench tables",
        )
    say("    standbys have replayed the pgbench tables")


def run_workload(cluster: LocalPgCluster, port: int, workload: Workload) -> RunResult:
    say(f"==> pgbench {' '.join(workload.args)} through pgbalancer ({workload.title})")
    before = commits_per_node(cluster)
    process = pgbench(cluster, port, ["-n", *workload.args, BENCH_DB])
    peak: dict[str, int] = {}
    # Sample the backends while pgbench runs; waiting on the process is the sampling interval.
    while True:
        for name, count in server_connections(cluster).items():
            peak[name] = max(peak.get(name, 0), count)
        try:
            out, err = process.communicate(timeout=0.5)
            break
        except subprocess.TimeoutExpired:
            continue
    if process.returncode != 0:
        raise DemoError(
            f"pgbench ({workload.title}) failed with exit {process.returncode}:\n{out}{err}\n"
            "Look at .demo/pgbalancer.log; `make demo-stop` stops everything."
        )
    result = parse_pgbench(workload, out)
    say(f"    {result.tps:,.0f} tps, {result.latency_ms:.3f} ms average latency, {result.failed} failed")
    say("    waiting for the servers to publish their counters (idle connections flush within 10 s)…")
    result.commits_per_node = _settled_commit_deltas(cluster, before, result.transactions)
    result.peak_server_conns = peak
    return result


_TPS = re.compile(r"^tps = ([0-9.]+) \(without initial connection time\)", re.MULTILINE)
_LATENCY = re.compile(r"^latency average = ([0-9.]+) ms", re.MULTILINE)
_PROCESSED = re.compile(r"^number of transactions actually processed: (\d+)", re.MULTILINE)
_FAILED = re.compile(r"^number of failed transactions: (\d+)", re.MULTILINE)


def parse_pgbench(workload: Workload, output: str) -> RunResult:
    def number(pattern: re.Pattern[str], convert: Callable[[str], float], default: float | None) -> float:
        match = pattern.search(output)
        if match:
            return convert(match[1])
        if default is None:
            raise DemoError(f"could not read {pattern.pattern!r} from pgbench output:\n{output}")
        return default

    return RunResult(
        workload=workload,
        tps=number(_TPS, float, None),
        latency_ms=number(_LATENCY, float, None),
        transactions=int(number(_PROCESSED, int, None)),
        failed=int(number(_FAILED, int, 0)),
        commits_per_node={},
    )


def commits_per_node(cluster: LocalPgCluster) -> dict[str, int]:
    """``xact_commit`` of database bench on every node (monitoring connects to db postgres, not bench)."""
    sql = f"SELECT xact_commit FROM pg_stat_database WHERE datname = '{BENCH_DB}'"
    return {node.name: int(cluster.psql(node, sql) or 0) for node in cluster.nodes}


def _settled_commit_deltas(
    cluster: LocalPgCluster, before: Mapping[str, int], expected: int
) -> dict[str, int]:
    """Commit deltas once the servers have published them.

    PostgreSQL 15 backends flush their counters at most once a second while busy; a backend that goes
    idle right after a flush waits 10 s (PGSTAT_IDLE_INTERVAL) before flushing the rest. Pooled server
    connections stay open, so we poll until the deltas add up to at least pgbench's transaction count.
    """

    def deltas() -> dict[str, int]:
        after = commits_per_node(cluster)
        return {name: after[name] - before.get(name, 0) for name in after}

    latest: dict[str, int] = deltas()

    def settled() -> bool:
        nonlocal latest
        latest = deltas()
        return sum(latest.values()) >= expected

    try:
        wait_for(settled, timeout=15, interval=0.25, message="statistics to catch up")
    except TimeoutError:
        say("    (the counters are still catching up: the commit numbers below may be low)")
    return latest


def server_connections(cluster: LocalPgCluster) -> dict[str, int]:
    """Client backends on db bench from 127.0.0.1 per node: the server connections pgbalancer holds.

    Best effort: while pgbench talks only to pgbalancer, every TCP client backend of db bench is one of
    pgbalancer's server connections. Our own monitoring session (db postgres, and excluded by pid
    anyway) and pgbalancer's health checks on other databases do not count.
    """
    sql = (
        "SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'client backend' "
        f"AND datname = '{BENCH_DB}' AND client_addr = '{LOCALHOST}' AND pid <> pg_backend_pid()"
    )
    counts: dict[str, int] = {}
    for node in cluster.nodes:
        try:
            counts[node.name] = int(cluster.psql(node, sql) or 0)
        except PgClusterError:
            counts[node.name] = 0
    return counts


# ---- report -----------------------------------------------------------------------------------------


def table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [max(len(str(cell)) for cell in column) for column in zip(headers, *rows, strict=True)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(
            str(cell).ljust(width) if i == 0 else str(cell).rjust(width)
            for i, (cell, width) in enumerate(zip(cells, widths, strict=True))
        )

    rule = "  ".join("-" * width for width in widths)
    return "\n".join([line(headers), rule, *(line(row) for row in rows)])


def report(cluster: LocalPgCluster, nodes: Sequence[DemoNode], results: Sequence[RunResult]) -> str:
    views = [watchdog_view(node) for node in nodes]
    cluster_view = table(
        ["node", "proxy port", "raft address", "role", "term", "quorum", "leader it knows"],
        [
            [
                node.name,
                str(node.proxy_port),
                node.raft_address,
                v["role"],
                v["term"],
                v["quorum"],
                v["leader"],
            ]
            for node, v in zip(nodes, views, strict=True)
        ],
    )
    throughput = table(
        ["run through pgbalancer", "tps", "avg latency ms", "transactions", "failed"],
        [
            [r.workload.title, f"{r.tps:,.0f}", f"{r.latency_ms:.3f}", f"{r.transactions:,}", str(r.failed)]
            for r in results
        ],
    )
    roles = {item.node.name: _role_word(item.in_recovery) for item in cluster.status()}
    served = table(
        ["backend", "port", "role", *(f"commits: {r.workload.title}" for r in results)],
        [
            [
                node.name,
                str(node.port),
                roles[node.name],
                *(f"{r.commits_per_node[node.name]:,}" for r in results),
            ]
            for node in cluster.nodes
        ],
    )
    idle_now = server_connections(cluster)
    pools = table(
        ["backend", *(f"peak server conns: {r.workload.title}" for r in results), "held now"],
        [
            [
                node.name,
                *(str(r.peak_server_conns.get(node.name, 0)) for r in results),
                str(idle_now[node.name]),
            ]
            for node in cluster.nodes
        ],
    )
    return (
        f"The watchdog cluster (each node's view, from its /metrics)\n{cluster_view}\n\n"
        f"Throughput\n{throughput}\n\n"
        f"Which backend served what (xact_commit delta in db {BENCH_DB}, from pg_stat_database)\n{served}\n\n"
        f"Pool usage (server connections on db {BENCH_DB} from 127.0.0.1, sampled every 0.5 s)\n{pools}\n\n"
        f"Transaction pooling: each pgbench run's clients ({clients_of(results)}, through {nodes[0].name}) "
        f"shared at most {DEMO_POOL_SIZE} server connections per backend (num_init_children = "
        f"{DEMO_POOL_SIZE}); a client holds one only for the length of a transaction.\n"
        "Read/write routing: reads outside transactions were balanced over the primary and the standbys; "
        "writes and the TPC-B transactions ran on the primary."
    )


def clients_of(results: Sequence[RunResult]) -> str:
    counts = []
    for result in results:
        args = result.workload.args
        counts.append(f"{args[args.index('-c') + 1]} in {result.workload.title}")
    return ", ".join(counts)


def _role_word(in_recovery: bool | None) -> str:
    return {True: "standby", False: "primary", None: "?"}[in_recovery]


# ---- commands ---------------------------------------------------------------------------------------


def up(paths: DemoPaths) -> int:
    paths.workdir.mkdir(parents=True, exist_ok=True)
    cluster = start_cluster(paths)
    nodes = start_balancers(cluster, paths)
    port = nodes[0].proxy_port
    initialize_bench(cluster)
    results = [run_workload(cluster, port, workload) for workload in WORKLOADS]
    say("")
    say(report(cluster, nodes, results))
    say("")
    say("Everything keeps running. Try it yourself (any node; they agree on the primary through Raft):")
    for node in nodes:
        say(f"    psql -h 127.0.0.1 -p {node.proxy_port} -U {BENCH_USER} {BENCH_DB}    # {node.name}")
    say(f"    logs: {paths.workdir}/node*/pgbalancer.log")
    say("Stop it all with:")
    say("    make demo-stop")
    return 0


def down(paths: DemoPaths) -> int:
    stopped = stop_balancers(paths)
    for outcome in stopped or ["pgbalancer was not running"]:
        say(f"==> {outcome}")
    if not (paths.pg_dir / "cluster.json").exists():
        say("==> no demo PostgreSQL cluster")
        return 0
    cluster = LocalPgCluster.attach(paths.pg_dir, progress=_indented)
    if not any(cluster.is_running(node) for node in cluster.nodes):
        say("==> PostgreSQL was not running")
        return 0
    say("==> stopping PostgreSQL")
    cluster.stop()
    remover = f"rm -rf {paths.pg_dir}" if paths.pg_link.is_symlink() else "`make clean`"
    say(f"    PostgreSQL stopped (data kept in {paths.pg_dir}; {remover} removes it)")
    return 0


def status(paths: DemoPaths) -> int:
    state = _read_state(paths)
    nodes = _nodes_in(state)
    for node in nodes:
        node_paths = paths.node(node.name)
        pid = _running_balancer_pid(node_paths, state.get(node.name))
        running = "not running" if pid is None else f"running, pid {pid}"
        say(f"pgbalancer {node.name}: {running}, port {node.proxy_port}, log {node_paths.log}")
    if not nodes:
        say("pgbalancer: not running")
    if (paths.pg_dir / "cluster.json").exists():
        print_status(LocalPgCluster.attach(paths.pg_dir))
    else:
        say("PostgreSQL: no demo cluster")
    return 0


def _read_state(paths: DemoPaths) -> dict[str, object]:
    try:
        state: dict[str, object] = json.loads(paths.state.read_text())
    except (OSError, ValueError):
        return {}
    return state


def _write_state(paths: DemoPaths, state: Mapping[str, object]) -> None:
    paths.state.write_text(json.dumps(dict(state), indent=2) + "\n")


def _read_text(path: Path) -> str:
    try:
        return path.read_text(errors="replace")
    except OSError:
        return ""


def default_workdir() -> Path:
    repo = Path(__file__).resolve().parents[2]
    return (repo if (repo / "pyproject.toml").exists() else Path.cwd()) / ".demo"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m pgbalancer.devtools.demo", description=__doc__.split("\n")[0]
    )
    parser.add_argument("command", choices=["up", "down", "status"])
    parser.add_argument("--workdir", type=Path, default=None, help="default: <repo>/.demo")
    args = parser.parse_args(argv)
    paths = DemoPaths((args.workdir or default_workdir()).absolute())
    commands = {"up": up, "down": down, "status": status}
    try:
        return commands[args.command](paths)
    except (DemoError, PgClusterError) as exc:
        print(f"\ndemo {args.command} failed: {exc}", file=sys.stderr)
        if args.command == "up":
            print("Whatever started is still running; `make demo-stop` stops it.", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
