"""Process shell around the shared benchmark scripts (`shared/bench/`): peers' installation, cluster and
peers up/down, bench.sh itself and the single-client latency probe.

It only calls those scripts and the PostgreSQL client binaries; it never re-implements them, never
parses their output (that is `results`) and never stops a process it did not start through them.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

PG_BIN = Path(os.environ.get("PGBIN", "/usr/lib/postgresql/15/bin"))
PGBENCH = os.environ.get("PGBENCH", str(PG_BIN / "pgbench"))
PSQL = os.environ.get("PSQL", str(PG_BIN / "psql"))
DIRECT_PORT = 5433
BACKEND_PORTS = (5433, 5434, 5435)


class HarnessError(RuntimeError):
    """A step of the benchmark failed; the message says which and what to do."""


@dataclass(frozen=True)
class Peer:
    name: str  # target name in bench.sh and peers.sh
    label: str
    binary: str
    package: str
    port: int


PEERS = (
    Peer("pgbouncer", "PgBouncer", "pgbouncer", "pgbouncer", 6432),
    Peer("pgpool", "Pgpool-II", "pgpool", "pgpool2", 9999),
)


def is_installed(peer: Peer) -> bool:
    # The Debian packages put both daemons in /usr/sbin, which a non-login PATH may lack.
    search = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/sbin"])
    return shutil.which(peer.binary, path=search) is not None


def install_peers(peers: Sequence[Peer]) -> None:
    packages = [p.package for p in peers]
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    run([*sudo, "apt-get", "update"], env=env)
    run([*sudo, "apt-get", "install", "-y", *packages], env=env)


def run(cmd: Sequence[str], env: Mapping[str, str] | None = None, cwd: Path | None = None) -> None:
    """Run a command with its output on our terminal; raise HarnessError naming it when it fails."""
    print("==> " + " ".join(cmd), flush=True)
    result = subprocess.run(list(cmd), env=dict(env) if env is not None else None, cwd=cwd, check=False)
    if result.returncode != 0:
        raise HarnessError(f"`{' '.join(cmd)}` exited with {result.returncode}")


def locate_shared(explicit: Path | None, repo_root: Path) -> Path:
    """The directory holding bench.sh: --shared DIR (or DIR/bench), else ../shared/bench beside the repo."""
    candidates = [explicit, explicit / "bench"] if explicit else [repo_root.parent / "shared" / "bench"]
    for candidate in candidates:
        if candidate is not None and (candidate / "bench.sh").is_file():
            return candidate.resolve()
    raise HarnessError(f"no bench.sh in {' or '.join(str(c) for c in candidates)}: pass --shared DIR")


@dataclass(frozen=True)
class SharedScripts:
    """The shared scripts, all run with the same PGB_BASE and the repo venv's python."""

    directory: Path
    base: str
    python: str

    def env(self) -> dict[str, str]:
        return {**os.environ, "PGB_BASE": self.base, "PYTHON": self.python}

    def cluster(self, action: str) -> None:
        run([str(self.directory / "pgcluster.sh"), action, self.base], env=self.env())

    def peers(self, action: str, names: Sequence[str]) -> None:
        if names:
            run([str(self.directory / "peers.sh"), action, *names], env=self.env())

    def bench(self, args: Sequence[str], log: Path) -> None:
        """bench.sh with our terminal and `log` both receiving its output."""
        cmd = [str(self.directory / "bench.sh"), *args]
        print("==> " + " ".join(cmd), flush=True)
        with (
            subprocess.Popen(cmd, env=self.env(), stdout=subprocess.PIPE, text=True) as proc,
            log.open("w") as sink,
        ):
            assert proc.stdout is not None  # stdout=PIPE guarantees it
            for line in proc.stdout:
                sys.stdout.write(line)
                sys.stdout.flush()
                sink.write(line)
        if proc.returncode != 0:
            raise HarnessError(f"bench.sh exited with {proc.returncode}; its output is in {log}")


def answers_select_1(port: int, timeout_s: float = 5.0) -> bool:
    cmd = [
        PSQL,
        "-X",
        "-At",
        "-h",
        "127.0.0.1",
        "-p",
        str(port),
        "-U",
        "bench",
        "-d",
        "bench",
        "-c",
        "select 1",
    ]
    env = {**os.environ, "PGCONNECT_TIMEOUT": str(max(1, int(timeout_s)))}
    try:
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, check=False)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and done.stdout.strip() == "1"


def probe_latency(port: int, seconds: int, log_prefix: Path) -> list[Path]:
    """One single-client select-only pgbench run logging every transaction; returns its log files."""
    cmd = [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-S", "-c", "1", "-j", "1"]
    cmd += ["-T", str(seconds), "-n", "-l", f"--log-prefix={log_prefix}", "bench"]
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(
            f"latency probe on port {port} failed: {done.stderr.strip() or done.stdout.strip()}"
        )
    return sorted(log_prefix.parent.glob(log_prefix.name + ".*"))


def find_py_spy(venv_bin: Path) -> Path:
    found = venv_bin / "py-spy"
    if found.exists():
        return found
    on_path = shutil.which("py-spy")
    if on_path is None:
        raise HarnessError(
            f"--profile needs py-spy: {venv_bin / 'pip'} install py-spy (not a project dependency)"
        )
    return Path(on_path)


def process_tree(pid: int) -> list[int]:
    """`pid` and its descendants (pgbalancer's forked workers), from /proc's children lists."""
    found, pending = [], [pid]
    while pending:
        current = pending.pop()
        found.append(current)
        try:
            children = Path(f"/proc/{current}/task/{current}/children").read_text().split()
        except OSError:
            continue
        pending += [int(c) for c in children]
    return found


def user_system_seconds(pids: Sequence[int]) -> tuple[float, float]:
    """CPU seconds spent in user space and in the kernel by these live processes."""
    ticks = os.sysconf("SC_CLK_TCK")
    user = system = 0
    for pid in pids:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        except OSError:
            continue
        user, system = user + int(fields[11]), system + int(fields[12])
    return user / ticks, system / ticks


@dataclass(frozen=True)
class ProfiledLoad:
    pgbench_output: str
    user_s: float  # pgbalancer's (all its processes) CPU during the whole pgbench run
    system_s: float
    processes: int


def profile_under_load(py_spy: Path, pid: int, port: int, seconds: int, raw_out: Path) -> ProfiledLoad:
    """py-spy samples pgbalancer for `seconds` while pgbench -S -c 16 loads it.

    --subprocesses follows forked workers; --nonblocking keeps py-spy from pausing the proxy at every
    sample; idle (event-loop wait) samples are left out by py-spy's default; --function aggregates
    lines into their function. py-spy samples wall time of non-idle threads, so time spent runnable
    but preempted shows up too: the user/system CPU split read from /proc is the CPU-only view.
    """
    load = [PGBENCH, "-h", "127.0.0.1", "-p", str(port), "-U", "bench", "-S", "-c", "16", "-j", "2"]
    load += ["-T", str(seconds + 6), "-n", "bench"]
    record = [str(py_spy), "record", "-p", str(pid), "-d", str(seconds), "-r", "200", "--nonblocking"]
    record += ["--function", "--subprocesses", "-f", "raw", "-o", str(raw_out)]
    print("==> " + " ".join(load) + "\n==> (after 3 s) " + " ".join(record), flush=True)
    pids = process_tree(pid)
    user_before, system_before = user_system_seconds(pids)
    with subprocess.Popen(load, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as pgbench:
        try:
            pgbench.wait(timeout=3)  # warm-up; it only returns early when pgbench failed
        except subprocess.TimeoutExpired:
            run(record)
        output, _ = pgbench.communicate()
    if pgbench.returncode != 0:
        raise HarnessError(f"pgbench under py-spy failed: {output.strip()}")
    user_after, system_after = user_system_seconds(pids)
    return ProfiledLoad(output, user_after - user_before, system_after - system_before, len(pids))
