"""bench/cache: a read-mostly workload through pgbalancer with its result cache on and off, and
through PgBouncer and Pgpool-II (with its memqcache on), in one run, with a stale-read validator.

Workload (pgbench, simple protocol, -c CLIENTS -j 2): 95% point SELECTs over a hot set of
HOT rows of ``cache_items`` and 5% UPDATEs of ``cache_counters`` (a different table: the cache
invalidates per table, as Pgpool-II's does, so updates of the hot table itself would flush the
hot set 19 reads out of 20; the validator below writes the hot table instead). Every target
runs the same script for --time seconds per rep; reps are interleaved.
``--writes relayed-read`` (the 5% are uncacheable reads) and ``--writes none`` (only cacheable
reads) take the figure apart: what the relay costs without a commit, and the hit path's ceiling.
They are diagnostics; the workload is the default, ``--writes update``.

Validator (runs during every run that caches): a thread writes ``cache_items`` through the
target twice a second and, after each acknowledged write, reads the written row and random hot
rows through the target (simple protocol, the same text pgbench sends, so it reads what pgbench
gets cached) and directly from the primary; any difference is a stale read.

Output: results/cache-<time>/cache.json and a markdown table on stdout. Uses the shared
cluster script (shared/bench/pgcluster.sh) on its own base and ports, so it never touches a
cluster another benchmark is using; PgBouncer and Pgpool-II get configs of their own here.
Run as root from the repo root: bench/cache [--reps 3] [--time 20] [--clients 16] [--workers 2].
``--workers N`` (default 2) adds a row for pgbalancer with the cache on and N worker processes
(each with its own store, invalidating across the workers); the 1-worker row stays.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import random
import re
import shutil
import signal
import socket
import statistics
import subprocess
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import psycopg
from cpu_budget import CpuPerTransaction, per_transaction, snapshot

REPO = Path(__file__).resolve().parents[1]
BASE = "/tmp/pgb-cache-bench"
PRIMARY, REPLICAS = 5633, (5634, 5635)
BASELINE = "pgbalancer (cache on, baseline)"  # --baseline: another checkout's code, same config
MULTI = "pgbalancer (cache on, {} workers)"  # --workers N: the same config with N worker processes
PORTS = {
    "pgbouncer": 6632,
    "pgpool": 9899,
    "pgbalancer (cache off)": 6643,
    "pgbalancer (cache on)": 6644,
    BASELINE: 6645,
}
API_PORTS = {"pgbalancer (cache off)": 6653, "pgbalancer (cache on)": 6654, BASELINE: 6655}
MULTI_PORT, MULTI_API_PORT = 6646, 6656
CACHING = ("pgbalancer (cache on)", BASELINE, "pgpool")  # and MULTI: names with "cache on" in them
PCP_PORT = 9897
ROWS, HOT = 10_000, 200
PGBIN = "/usr/lib/postgresql/15/bin"


def add_multi_worker_target(workers: int) -> str:
    """A pgbalancer target with the cache on and ``workers`` worker processes; its name."""
    name = MULTI.format(workers)
    PORTS[name], API_PORTS[name] = MULTI_PORT, MULTI_API_PORT
    return name


def _workers_of(name: str) -> int:
    found = re.search(r"(\d+) workers", name)
    return int(found.group(1)) if found else 1


def caches(name: str) -> bool:
    return name in CACHING or name.startswith(MULTI.split("{")[0])


def run(cmd: list[str], env: dict[str, str] | None = None) -> str:
    return subprocess.run(cmd, check=True, text=True, env=env, capture_output=True).stdout


def as_postgres(cmd: list[str], log: Path | None = None) -> subprocess.Popen[bytes]:
    sink = log.open("ab") if log is not None else None
    return subprocess.Popen(["runuser", "-u", "postgres", "--", *cmd], cwd="/", stdout=sink, stderr=sink)


def wait_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), timeout=0.5):
            return
        time.sleep(0.1)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port} after {timeout}s")


def port_free(port: int) -> bool:
    with socket.socket() as sock:
        return sock.connect_ex(("127.0.0.1", port)) != 0


def primary_dsn(dbname: str = "bench") -> str:
    return f"host=127.0.0.1 port={PRIMARY} user=bench dbname={dbname}"


# ---- the targets


def write_pgbouncer(work: Path) -> Path:
    ini = work / "pgbouncer.ini"
    ini.write_text(
        f"""[databases]
bench = host=127.0.0.1 port={PRIMARY} dbname=bench
[pgbouncer]
listen_addr = 127.0.0.1
listen_port = {PORTS["pgbouncer"]}
unix_socket_dir =
auth_type = trust
auth_file = {work}/userlist.txt
pool_mode = transaction
default_pool_size = 20
max_client_conn = 500
server_reset_query =
ignore_startup_parameters = extra_float_digits
logfile = {work}/pgbouncer.log
pidfile = {work}/pgbouncer.pid
"""
    )
    (work / "userlist.txt").write_text('"bench" ""\n')
    return ini


def write_pgpool(work: Path, load_balance: bool) -> Path:
    (work / "oiddir").mkdir(exist_ok=True)
    backends = "".join(
        f"backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {port}\nbackend_weight{i} = 1\n"
        f"backend_flag{i} = 'ALLOW_TO_FAILOVER'\n"
        for i, port in enumerate((PRIMARY, *REPLICAS))
    )
    conf = work / "pgpool.conf"
    conf.write_text(
        f"""backend_clustering_mode = 'streaming_replication'
listen_addresses = '127.0.0.1'
port = {PORTS["pgpool"]}
socket_dir = '{work}'
pcp_listen_addresses = '127.0.0.1'
pcp_port = {PCP_PORT}
pcp_socket_dir = '{work}'
{backends}enable_pool_hba = off
pool_passwd = ''
num_init_children = 32
max_pool = 4
load_balance_mode = {"on" if load_balance else "off"}
sr_check_period = 10
sr_check_user = 'postgres'
health_check_period = 5
health_check_user = 'postgres'
use_watchdog = off
logging_collector = off
pid_file_name = '{work}/pgpool.pid'
logdir = '{work}'
memory_cache_enabled = on
memqcache_method = 'shmem'
memqcache_total_size = 64MB
memqcache_max_num_cache = 100000
memqcache_expire = 0
memqcache_auto_cache_invalidation = on
memqcache_maxcache = 400kB
memqcache_cache_block_size = 1MB
memqcache_oiddir = '{work}/oiddir'
"""
    )
    (work / "pcp.conf").write_text("")
    return conf


def write_pgbalancer(work: Path, name: str, cache: bool, workers: int = 1) -> Path:
    conf = work / f"pgbalancer-{PORTS[name]}.conf"
    backends = "".join(
        f"backend_hostname{i} = '127.0.0.1'\nbackend_port{i} = {port}\n"
        for i, port in enumerate((PRIMARY, *REPLICAS))
    )
    conf.write_text(
        f"""listen_addresses = '127.0.0.1'
port = {PORTS[name]}
{backends}auth_type = trust
pool_mode = transaction
num_init_children = 20
max_pool = 4
workers = {workers}
load_balance_mode = off
mqtt_mode = off
api_listen_addresses = '127.0.0.1'
api_port = {API_PORTS[name]}
memory_cache_enabled = {"on" if cache else "off"}
memqcache_total_size = 64MB
log_level = warning
"""
    )
    return conf


@contextlib.contextmanager
def targets(
    work: Path, only: list[str], pgpool_load_balance: bool, baseline: Path | None = None
) -> Iterator[dict[str, int]]:
    """Start every target that is not running; stop what was started, whatever happens. Yields each
    target's root process id (its CPU is its process tree's, see cpu_budget)."""
    started: list[tuple[str, subprocess.Popen[bytes] | None, Path | None]] = []
    root_pids: dict[str, int] = {}
    for name, port in PORTS.items():
        if name not in only:
            continue
        if not port_free(port):
            raise SystemExit(f"127.0.0.1:{port} is taken: {name} would not be the server measured")
    try:
        for name in only:
            if name == "pgbouncer":
                ini = write_pgbouncer(work)
                run(["chown", "-R", "postgres:", str(work)])
                as_postgres(["pgbouncer", "-d", "-q", str(ini)]).wait()
                started.append((name, None, work / "pgbouncer.pid"))
            elif name == "pgpool":
                conf = write_pgpool(work, pgpool_load_balance)
                run(["chown", "-R", "postgres:", str(work)])
                pgpool = ["pgpool", "-n", "-D", "-f", str(conf), "-F", str(work / "pcp.conf")]
                started.append((name, as_postgres(pgpool, work / "pgpool.log"), None))
            elif name.startswith("pgbalancer"):
                conf = write_pgbalancer(work, name, cache="on" in name, workers=_workers_of(name))
                env = dict(os.environ)
                if name == BASELINE and baseline is not None:  # its package shadows the installed one
                    env["PYTHONPATH"] = str(baseline)
                with (work / f"pgbalancer-{PORTS[name]}.log").open("ab") as log:
                    balancer = subprocess.Popen(
                        [str(REPO / ".venv" / "bin" / "pgbalancer"), "-f", str(conf)],
                        stdout=log,
                        stderr=log,
                        env=env,
                    )
                started.append((name, balancer, None))
            wait_port(PORTS[name])
            root_pids[name] = _root_pid(started[-1][1], started[-1][2])
            print(f"[cache bench] {name} up on 127.0.0.1:{PORTS[name]}", flush=True)
        yield root_pids
    finally:
        for name, process, pid_file in reversed(started):
            if process is not None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()
            elif pid_file is not None and pid_file.exists():
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(pid_file.read_text().strip()), signal.SIGTERM)
            print(f"[cache bench] {name} stopped", flush=True)


def _root_pid(process: subprocess.Popen[bytes] | None, pid_file: Path | None) -> int:
    if process is not None:
        return process.pid
    assert pid_file is not None
    return int(pid_file.read_text().split()[0])  # PgBouncer daemonized: up once it listens


def postmaster_pids() -> list[int]:
    """The bench cluster's postmasters (first line of each data directory's postmaster.pid)."""
    pids = []
    for data_dir in ("primary", "replica1", "replica2"):
        with contextlib.suppress(OSError, ValueError, IndexError):
            pids.append(int((Path(BASE) / data_dir / "postmaster.pid").read_text().split()[0]))
    return pids


# ---- data, workload, validator

# What the 5% that are not cacheable reads do (--writes): the workload UPDATEs; the other two
# take the result cache's part apart (diagnostics only, never the headline figure): reads that
# every target must send to PostgreSQL (the relay's cost without a commit), and no 5% at all (only
# cacheable reads: the hit path's ceiling).
OTHER_STATEMENTS = {
    "update": "UPDATE cache_counters SET n = n + 1 WHERE id = :id;",
    "relayed-read": "/* pgbalancer: nocache */ SELECT n FROM cache_counters WHERE id = :id;",
    "none": "SELECT id, v, note FROM cache_items WHERE id = :id;",
}
WORKLOADS = {
    "update": "5% UPDATE elsewhere",
    "relayed-read": "5% uncached SELECT elsewhere (nocache hint; Pgpool-II caches it)",
    "none": "no writes: 100% cacheable SELECT",
}


def script_text(writes: str) -> str:
    """The pgbench script: 95% hot point SELECTs, 5% OTHER_STATEMENTS[writes]."""
    return f"""\\set r random(1, 100)
\\set id random(1, {HOT})
\\if :r <= 95
SELECT id, v, note FROM cache_items WHERE id = :id;
\\else
{OTHER_STATEMENTS[writes]}
\\endif
"""


def prepare_data() -> None:
    with psycopg.connect(primary_dsn(), autocommit=True) as conn:
        conn.execute("DROP TABLE IF EXISTS cache_items, cache_counters")
        conn.execute("CREATE TABLE cache_items (id int PRIMARY KEY, v int NOT NULL, note text NOT NULL)")
        conn.execute(
            f"INSERT INTO cache_items SELECT g, 0, repeat(md5(g::text), 3) FROM generate_series(1, {ROWS}) g"
        )
        conn.execute("CREATE TABLE cache_counters (id int PRIMARY KEY, n bigint NOT NULL)")
        conn.execute(f"INSERT INTO cache_counters SELECT g, 0 FROM generate_series(1, {ROWS}) g")
        conn.execute("VACUUM ANALYZE cache_items")
        conn.execute("VACUUM ANALYZE cache_counters")


@dataclass
class Validation:
    writes: int = 0
    reads_checked: int = 0
    stale: int = 0
    examples: list[str] = field(default_factory=list)


def _simple_value(conn: psycopg.Connection, sql: str) -> str | None:
    result = conn.pgconn.exec_(sql.encode())
    if result.ntuples != 1:
        raise RuntimeError(f"{sql!r}: {result.error_message.decode(errors='replace')}")
    value = result.get_value(0, 1)
    return None if value is None else value.decode()


def validate(port: int, stop: threading.Event, out: Validation) -> None:
    """Write the hot table through the target, then compare what the target and the primary say."""
    rng = random.Random(7)
    with (
        psycopg.connect(f"host=127.0.0.1 port={port} user=bench dbname=bench", autocommit=True) as target,
        psycopg.connect(primary_dsn(), autocommit=True) as primary,
    ):
        while not stop.wait(0.5):
            written = rng.randint(1, HOT)
            target.execute("UPDATE cache_items SET v = v + 1 WHERE id = %s", (written,))
            out.writes += 1
            for row in [written, *(rng.randint(1, HOT) for _ in range(5))]:
                sql = f"SELECT id, v, note FROM cache_items WHERE id = {row};"
                seen, truth = _simple_value(target, sql), _simple_value(primary, sql)
                out.reads_checked += 1
                if seen != truth:
                    out.stale += 1
                    if len(out.examples) < 5:
                        out.examples.append(f"row {row}: target said v={seen}, primary v={truth}")


# ---- measuring


def cache_counters(name: str) -> tuple[float, float]:
    """(hits, lookups) so far: pgbalancer's /metrics, Pgpool-II's SHOW pool_cache."""
    if name in API_PORTS and caches(name):
        text = (
            urllib.request.urlopen(f"http://127.0.0.1:{API_PORTS[name]}/metrics", timeout=10).read().decode()
        )
        hits = float(re.search(r"^pgbalancer_cache_hits_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        misses = float(re.search(r"^pgbalancer_cache_misses_total (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]
        return hits, hits + misses
    if name == "pgpool":
        with psycopg.connect(f"host=127.0.0.1 port={PORTS[name]} user=bench dbname=bench") as conn:
            cursor = conn.execute("SHOW pool_cache")
            columns = [c.name for c in cursor.description or ()]
            row = dict(zip(columns, cursor.fetchone() or (), strict=False))
            return float(row.get("num_cache_hits", 0)), float(row.get("num_selects", 0)) + float(
                row.get("num_cache_hits", 0)
            )
    return 0.0, 0.0


def pgbench(port: int, clients: int, seconds: int, script: Path) -> dict[str, float]:
    options = f"-n -M simple -h 127.0.0.1 -p {port} -U bench -c {clients} -j 2 -T {seconds}"
    output = run([f"{PGBIN}/pgbench", *options.split(), "-f", str(script), "bench"])
    tps = float(re.search(r"tps = ([\d.]+) \(without initial", output).group(1))  # type: ignore[union-attr]
    latency = float(re.search(r"latency average = ([\d.]+) ms", output).group(1))  # type: ignore[union-attr]
    done = float(re.search(r"actually processed: (\d+)", output).group(1))  # type: ignore[union-attr]
    return {"tps": tps, "latency_ms": latency, "transactions": done}


@dataclass
class RunResult:
    tps: float
    latency_ms: float
    hit_ratio: float | None
    validation: Validation | None
    cpu: CpuPerTransaction


def measure(name: str, args: argparse.Namespace, script: Path, pooler_pids: list[int]) -> RunResult:
    port = PRIMARY if name == "direct" else PORTS[name]
    # Warm up (fills the caches), then measure.
    pgbench(port, args.clients, max(2, args.time // 5), script)
    hits0, looked0 = cache_counters(name)
    validation = Validation()
    stop = threading.Event()
    checker = None
    if caches(name):
        checker = threading.Thread(target=validate, args=(port, stop, validation), daemon=True)
        checker.start()
    postmasters = postmaster_pids()
    before = snapshot(pooler_pids, postmasters)
    result = pgbench(port, args.clients, args.time, script)
    cpu = per_transaction(before, snapshot(pooler_pids, postmasters), int(result["transactions"]))
    stop.set()
    if checker is not None:
        checker.join(30)
    hits1, looked1 = cache_counters(name)
    looked = looked1 - looked0
    return RunResult(
        result["tps"],
        result["latency_ms"],
        (hits1 - hits0) / looked if looked else None,
        validation if checker is not None else None,
        cpu,
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--reps", type=int, default=3)
    parser.add_argument("--time", type=int, default=20, help="seconds per measured run")
    parser.add_argument("--clients", type=int, default=16)
    parser.add_argument(
        "--writes",
        choices=tuple(OTHER_STATEMENTS),
        default="update",
        help="the 5%% besides the hot reads: update (the workload), or, to take the figure apart, "
        "relayed-read (uncacheable reads) or none (only cacheable reads)",
    )
    parser.add_argument("--results", type=Path, default=REPO / "bench" / "results")
    parser.add_argument(
        "--only", action="append", default=[], help="run only this target (repeatable), e.g. pgbouncer"
    )
    parser.add_argument(
        "--pgpool-load-balance", choices=("on", "off"), default="on", help="Pgpool-II's load_balance_mode"
    )
    parser.add_argument("--shared", type=Path, help="directory of the shared bench scripts (pgcluster.sh)")
    parser.add_argument("--keep-cluster", action="store_true", help="leave the PostgreSQL cluster up")
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="also measure pgbalancer with the cache on and this many worker processes (1: not)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="a directory holding another version's pgbalancer package (e.g. from `git archive`): "
        "measured as a sixth target with the cache on, interleaved with this one",
    )
    args = parser.parse_args()
    args.load_before = os.getloadavg()  # the machine is shared: say how busy it was
    print(f"[cache bench] load average before: {args.load_before}", flush=True)
    if os.geteuid() != 0:
        raise SystemExit("run as root: PostgreSQL, PgBouncer and Pgpool-II run as the postgres user")
    candidates = [args.shared] if args.shared else [p / "shared" / "bench" for p in REPO.parents]
    shared = next((c for c in candidates if (c / "pgcluster.sh").is_file()), None)
    if shared is None:
        raise SystemExit("no shared/bench/pgcluster.sh beside the repo or above it: pass --shared DIR")
    names = ["direct", "pgbouncer", "pgpool", "pgbalancer (cache off)", "pgbalancer (cache on)"]
    if args.workers > 1:
        names.append(add_multi_worker_target(args.workers))
    if args.baseline is not None:
        if not (args.baseline / "pgbalancer" / "__init__.py").is_file():
            raise SystemExit(f"--baseline {args.baseline}: no pgbalancer package there")
        names.append(BASELINE)
    missing = [n for n in ("pgbouncer", "pgpool") if shutil.which(n) is None]
    for name in missing:
        print(f"[cache bench] {name} is not installed (apt-get install -y pgbouncer pgpool2): skipped")
    names = [n for n in names if n not in missing and (not args.only or any(o in n for o in args.only))]
    env = {
        **os.environ,
        "PGB_BASE": BASE,
        "PRIMARY_PORT": str(PRIMARY),
        "REPLICA_PORTS": " ".join(map(str, REPLICAS)),
    }
    out_dir = args.results / time.strftime("cache-%Y%m%dT%H%M%S")
    out_dir.mkdir(parents=True)
    work = Path(tempfile.mkdtemp(prefix="pgb-cache-targets-"))
    os.chmod(work, 0o755)
    script = out_dir / "read_mostly.sql"
    script.write_text(script_text(args.writes))
    os.chmod(script, 0o644)
    runs: dict[str, list[RunResult]] = {name: [] for name in names}
    try:
        run([str(shared / "pgcluster.sh"), "up", BASE], env=env)
        prepare_data()
        with targets(
            work, [n for n in names if n != "direct"], args.pgpool_load_balance == "on", args.baseline
        ) as root_pids:
            for rep in range(args.reps):
                for name in names:
                    print(f"[cache bench] rep {rep + 1}/{args.reps}: {name}", flush=True)
                    pooler = [root_pids[name]] if name in root_pids else []
                    runs[name].append(measure(name, args, script, pooler))
    finally:
        if not args.keep_cluster:
            run([str(shared / "pgcluster.sh"), "down", BASE], env=env)
        shutil.rmtree(work, ignore_errors=True)
    report = summarize(runs, args)
    (out_dir / "cache.json").write_text(json.dumps(report, indent=2))
    print(table(report))
    print()
    print(cpu_table(report))
    print(f"\n[cache bench] results in {out_dir}/cache.json")


def summarize(runs: dict[str, list[RunResult]], args: argparse.Namespace) -> dict[str, object]:
    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    bouncer = mean([r.tps for r in runs.get("pgbouncer", [])])
    cpus = os.cpu_count() or 1
    rows: dict[str, dict[str, object]] = {}
    for name, results in runs.items():
        ratios = [r.hit_ratio for r in results if r.hit_ratio is not None]
        checks = [r.validation for r in results if r.validation is not None]
        tps = mean([r.tps for r in results])
        rows[name] = {
            "tps": tps,
            "tps_median": statistics.median([r.tps for r in results]) if results else 0.0,
            "x_pgbouncer": tps / bouncer if bouncer else None,
            "latency_ms": mean([r.latency_ms for r in results]),
            "hit_ratio": mean(ratios) if ratios else None,
            "stale_reads": sum(v.stale for v in checks) if checks else None,
            "reads_checked": sum(v.reads_checked for v in checks) if checks else None,
            "validator_writes": sum(v.writes for v in checks) if checks else None,
            "cpu": cpu_summary([r.cpu for r in results], cpus, bouncer),
            "runs": [asdict(r) for r in results],
        }
    return {
        "workload": f"95% SELECT of {HOT} hot rows (of {ROWS}), {WORKLOADS[args.writes]}, pgbench -M simple",
        "writes": args.writes,
        "clients": args.clients,
        "pgbalancer_workers": args.workers,
        "load_average_before": args.load_before,
        "seconds": args.time,
        "reps": args.reps,
        "machine": {"cpus": os.cpu_count(), "uname": " ".join(os.uname())},
        "targets": rows,
    }


def cpu_summary(samples: list[CpuPerTransaction], cpus: int, bouncer_tps: float) -> dict[str, float | None]:
    """Mean CPU per transaction by group; the TPS a free pooler would allow (every core busy); and
    the pooler's budget per transaction for 3x PgBouncer's TPS with this target's other costs
    (negative: 3x is out of reach on this machine whatever the pooler does)."""

    def mean(values: list[float]) -> float:
        return sum(values) / len(values) if values else 0.0

    without_pooler = mean([s.without_pooler_us for s in samples])
    return {
        "load_generator_us": mean([s.load_generator_us for s in samples]),
        "pooler_us": mean([s.pooler_us for s in samples]),
        "pooler_kernel_us": mean([s.pooler_kernel_us for s in samples]),
        "postgresql_us": mean([s.postgresql_us for s in samples]),
        "other_us": mean([s.other_us for s in samples]),
        "idle_pct": mean([s.idle_pct for s in samples]),
        "steal_pct": mean([s.steal_pct for s in samples]),
        "ceiling_tps": cpus * 1e6 / without_pooler if without_pooler else None,
        "pooler_budget_for_3x_us": cpus * 1e6 / (3 * bouncer_tps) - without_pooler if bouncer_tps else None,
    }


CPU_GROUPS = ("load_generator_us", "pooler_us", "pooler_kernel_us", "postgresql_us", "other_us")


def _markdown(title: str, columns: list[str], rows: list[list[str]]) -> str:
    lines = [title, "", "| " + " | ".join(columns) + " |", "|---|" + "---:|" * (len(columns) - 1)]
    return "\n".join(lines + ["| " + " | ".join(row) + " |" for row in rows])


def _shown(value: object, spec: str) -> str:
    return "" if value is None else format(value, spec)


def cpu_table(report: dict[str, object]) -> str:
    machine, targets = report["machine"], report["targets"]
    assert isinstance(machine, dict) and isinstance(targets, dict)
    rows = []
    for name, row in targets.items():
        cpu = row["cpu"]
        rows.append(
            [
                name,
                *(f"{cpu[group]:.1f}" for group in CPU_GROUPS),
                f"{cpu['idle_pct']:.0f}",
                f"{cpu['steal_pct']:.0f}",
                _shown(cpu["ceiling_tps"], ".0f"),
                _shown(cpu["pooler_budget_for_3x_us"], ".1f"),
            ]
        )
    columns = ["target", "pgbench", "pooler", "of which kernel", "PostgreSQL", "other", "idle %", "steal %"]
    columns += ["TPS if the pooler were free", "pooler budget for 3x PgBouncer (us)"]
    title = f"CPU per transaction (us, user + system, means over reps; {machine['cpus']} CPUs shared by all):"
    return _markdown(title, columns, rows)


def table(report: dict[str, object]) -> str:
    targets = report["targets"]
    assert isinstance(targets, dict)
    rows = [
        [
            name,
            f"{row['tps']:.0f}",
            f"{row['tps_median']:.0f}",
            _shown(row["x_pgbouncer"], ".2f"),
            f"{row['latency_ms']:.2f}",
            _shown(row["hit_ratio"], ".1%"),
            "" if row["stale_reads"] is None else f"{row['stale_reads']} / {row['reads_checked']}",
        ]
        for name, row in targets.items()
    ]
    columns = ["target", "TPS (mean)", "TPS (median)", "x PgBouncer", "latency ms", "hit ratio"]
    columns.append("stale reads / checked")
    return _markdown(f"Workload: {report['workload']}, {report['clients']} clients", columns, rows)


if __name__ == "__main__":
    main()
