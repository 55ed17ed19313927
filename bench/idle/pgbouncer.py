"""Process shell for the PgBouncer this benchmark measures: peers.sh's own configuration with only the
port, max_client_conn, pid file and log file changed (peers.sh's instance takes 500 clients and
inherits the 1,024 open files PAM gives a `runuser` session), run as the postgres user with a raised
open-files limit, stopped by the pid in its own pid file.

It never touches peers.sh's running instance or files, and never signals a pid it did not start.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from compare.harness import HarnessError, SharedScripts
from compare.proxy import port_in_use

from idle.report import override_ini

PEERS_PORT = 6432
OS_USER = "postgres"


def peers_ini(shared: SharedScripts) -> str:
    """The pgbouncer.ini peers.sh writes; has peers.sh write it (up, then down) when no peer runs."""
    ini = Path(shared.base) / "peers" / "pgbouncer.ini"
    if port_in_use(PEERS_PORT):
        print(
            f"==> port {PEERS_PORT} is in use: reading the existing {ini}, not touching peers.sh", flush=True
        )
    else:
        shared.peers("up", ["pgbouncer"])  # (re)writes the ini, as on every `up`
        shared.peers("down", ["pgbouncer"])
    if not ini.is_file():
        raise HarnessError(f"{ini} is missing: peers.sh did not write PgBouncer's configuration")
    return ini.read_text()


def write_ini(base_ini: str, directory: Path, port: int, max_client_conn: int) -> Path:
    """Our variant of peers.sh's ini in `directory` (owned by the postgres user, who runs PgBouncer)."""
    directory.mkdir(parents=True, exist_ok=True)
    overrides = {
        "listen_port": str(port),
        "max_client_conn": str(max_client_conn),
        "pidfile": str(directory / "pgbouncer.pid"),
        "logfile": str(directory / "pgbouncer.log"),
    }
    ini = directory / "pgbouncer.ini"
    ini.write_text(override_ini(base_ini, "pgbouncer", overrides))
    shutil.chown(directory, OS_USER, OS_USER)
    shutil.chown(ini, OS_USER, OS_USER)
    return ini


def _read_pid(pidfile: Path) -> int | None:
    try:
        text = "".join(ch for ch in pidfile.read_text() if ch.isdigit())
    except OSError:
        return None
    return int(text) if text else None


def _alive(pid: int) -> bool:
    return Path(f"/proc/{pid}").exists()


def _wait_started(pidfile: Path, port: int, log: Path, timeout_s: float) -> int:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        pid = _read_pid(pidfile)
        if pid is not None and _alive(pid) and port_in_use(port):
            return pid
        time.sleep(0.1)
    tail = log.read_text(errors="replace").splitlines()[-10:] if log.exists() else ["(no log)"]
    raise HarnessError(f"PgBouncer did not listen on {port} within {timeout_s:.0f} s:\n" + "\n".join(tail))


def _stop(pid: int, grace_s: float = 10.0) -> None:
    os.kill(pid, signal.SIGTERM)  # PgBouncer 1.x: immediate shutdown; our clients are gone by now
    deadline = time.monotonic() + grace_s
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    if _alive(pid):
        print(f"PgBouncer (pid {pid}) ignored SIGTERM for {grace_s:.0f} s: killing it", flush=True)
        os.kill(pid, signal.SIGKILL)
    print(f"==> PgBouncer (pid {pid}) stopped", flush=True)


@contextlib.contextmanager
def running_pgbouncer(ini: Path, port: int, nofile: int, timeout_s: float = 20.0) -> Iterator[int]:
    """Yields the pid of a PgBouncer listening on `port` with `nofile` open files; stops it at the end."""
    if port_in_use(port):
        raise HarnessError(f"port {port} is already in use: pass --pgbouncer-port")
    pidfile, log = ini.parent / "pgbouncer.pid", ini.parent / "pgbouncer.log"
    pidfile.unlink(missing_ok=True)
    # runuser's PAM session resets the soft limit to 1,024; the shell raises it again before exec.
    script = f'ulimit -n {nofile} && exec pgbouncer -d -q "$1"'
    cmd = ["runuser", "-u", OS_USER, "--", "sh", "-c", script, "sh", str(ini)]
    print("==> " + " ".join(cmd), flush=True)
    done = subprocess.run(cmd, cwd="/", capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise HarnessError(f"PgBouncer did not start: {done.stderr.strip() or done.stdout.strip()}")
    try:
        pid = _wait_started(pidfile, port, log, timeout_s)
        print(f"==> PgBouncer (pid {pid}) listens on port {port}", flush=True)
        yield pid
    finally:
        started = _read_pid(pidfile)  # also when it never got to listen
        if started is not None and _alive(started):
            _stop(started)
