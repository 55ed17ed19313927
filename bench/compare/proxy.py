"""Process shell for the pgbalancer under test: start `pgbalancer -f CONF`, wait until it serves
`select 1`, stop it with SIGTERM (SIGKILL after a grace period) however the run ends.

It signals only the process it started (by pid), and it refuses to start when something else
already listens on the port, so that a stray server is never benchmarked in pgbalancer's name.
"""

from __future__ import annotations

import contextlib
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

from compare.harness import HarnessError, answers_select_1


def port_in_use(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        return probe.connect_ex((host, port)) == 0


def _log_tail(log: Path, lines: int = 20) -> str:
    try:
        return "\n".join(log.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def _wait_ready(proc: subprocess.Popen[bytes], port: int, log: Path, timeout_s: float) -> float:
    """Seconds until `select 1` worked through the proxy; raises if it exits or the deadline passes."""
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        if proc.poll() is not None:
            raise HarnessError(
                f"pgbalancer exited with {proc.returncode} before serving; log {log}:\n{_log_tail(log)}"
            )
        if answers_select_1(port, timeout_s=2.0):
            return time.monotonic() - started
        time.sleep(0.2)
    raise HarnessError(
        f"pgbalancer gave no `select 1` on port {port} within {timeout_s:.0f} s; log {log}:\n{_log_tail(log)}"
    )


def _stop(proc: subprocess.Popen[bytes], grace_s: float = 10.0) -> None:
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        print(f"pgbalancer (pid {proc.pid}) ignored SIGTERM for {grace_s:.0f} s: killing it", flush=True)
        proc.kill()
        proc.wait()
    print(f"==> pgbalancer (pid {proc.pid}) stopped, exit code {proc.returncode}", flush=True)


@contextlib.contextmanager
def running_pgbalancer(
    executable: Path, conf: Path, port: int, log: Path, ready_timeout_s: float
) -> Iterator[int]:
    """Yields the pid of a pgbalancer that answers `select 1` on `port`; stops it on the way out."""
    if not executable.exists():
        raise HarnessError(
            f"{executable} does not exist: run `make venv`, or --skip-pgbalancer for the peers only"
        )
    if port_in_use(port):
        raise HarnessError(f"port {port} is already in use: stop whatever listens there, or pass --port")
    print(f"==> {executable} -f {conf}  (log {log})", flush=True)
    with log.open("ab") as sink:
        # A session of its own: a Ctrl-C on the terminal reaches us, and we stop it in order.
        proc = subprocess.Popen(
            [str(executable), "-f", str(conf)], stdout=sink, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        waited = _wait_ready(proc, port, log, ready_timeout_s)
        print(
            f"==> pgbalancer (pid {proc.pid}) serves select 1 on port {port} after {waited:.1f} s", flush=True
        )
        yield proc.pid
    finally:
        _stop(proc)
