"""Start and stop a real ``pgbalancer`` process from a dict of settings (tests, demo, bench).

It writes ``pgbalancer.conf``, launches the node exactly as an operator would
(``pgbalancer -f FILE``), waits until it accepts connections, and stops it with
SIGTERM. It never runs in the node itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

Setting = str | int | float | bool


def render_config(settings: Mapping[str, Setting]) -> str:
    """pgpool-style ``key = 'value'`` lines."""
    lines = []
    for key, value in settings.items():
        text = ("on" if value else "off") if isinstance(value, bool) else str(value).replace("'", "''")
        lines.append(f"{key} = '{text}'")
    return "\n".join(lines) + "\n"


PID_FILE = "pgbalancer.pid"


def _with_pid_file(settings: Mapping[str, Setting], workdir: Path) -> dict[str, Setting]:
    """The settings with ``pid_file`` in ``workdir``, where ``wait_ready`` looks for it."""
    return {**settings, "pid_file": str(workdir / PID_FILE)}


def pgbalancer_command() -> list[str]:
    """The node command from the running interpreter's environment (the venv's console script)."""
    script = Path(sys.executable).with_name("pgbalancer")
    return [str(script)] if script.exists() else [sys.executable, "-m", "pgbalancer"]


@dataclass
class BalancerProcess:
    """A running pgbalancer node and the files that belong to it."""

    config_path: Path
    log_path: Path
    host: str
    port: int
    process: subprocess.Popen[bytes]

    @classmethod
    def start(
        cls, workdir: Path, settings: Mapping[str, Setting], *, ready_timeout: float = 20.0
    ) -> BalancerProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        config_path = workdir / "pgbalancer.conf"
        config_path.write_text(render_config(_with_pid_file(settings, workdir)))
        log_path = workdir / "pgbalancer.log"
        with log_path.open("ab") as log:
            process = subprocess.Popen(
                [*pgbalancer_command(), "-f", str(config_path)],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        host = str(settings.get("listen_addresses", "127.0.0.1")).split(",")[0].strip()
        node = cls(
            config_path,
            log_path,
            "127.0.0.1" if host in ("*", "localhost") else host,
            int(settings.get("port", 5432)),
            process,
        )
        try:
            node.wait_ready(ready_timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def wait_ready(self, timeout: float) -> None:
        """Poll until this process says it is ready (its pid file names it: written once the proxy
        listens) and the port accepts TCP; fail early (with the log) if the process exits. The pid
        file matters: on a busy machine another program may take the port pgbalancer was given, and
        a bare TCP connect would then call someone else's server ready."""
        deadline = time.monotonic() + timeout
        pid_file = self.config_path.parent / PID_FILE
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbalancer exited with {self.process.returncode}:\n{self.log_tail()}")
            try:
                if pid_file.read_text().strip() == str(self.process.pid):
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
            except OSError:
                pass
            time.sleep(0.05)
        raise TimeoutError(
            f"pgbalancer did not listen on {self.host}:{self.port} in {timeout}s:\n{self.log_tail()}"
        )

    def dsn(self, user: str, dbname: str, password: str | None = None, **extra: str) -> str:
        parts = [f"host={self.host}", f"port={self.port}", f"user={user}", f"dbname={dbname}"]
        if password is not None:
            parts.append(f"password={password}")
        parts.extend(f"{key}={value}" for key, value in extra.items())
        return " ".join(parts)

    def dsn_url(self, user: str, dbname: str, password: str | None = None) -> str:
        """The same target as a postgresql:// URL (for asyncpg)."""
        secret = f":{quote(password, safe='')}" if password is not None else ""
        return f"postgresql://{quote(user, safe='')}{secret}@{self.host}:{self.port}/{quote(dbname, safe='')}"

    def reload(self, settings: Mapping[str, Setting] | None = None) -> None:
        """Rewrite the config (if given) and send SIGHUP."""
        if settings is not None:
            self.config_path.write_text(render_config(_with_pid_file(settings, self.config_path.parent)))
        self.process.send_signal(signal.SIGHUP)

    def stop(self, timeout: float = 10.0) -> int:
        """SIGTERM, then SIGKILL after ``timeout``; returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()
        return self.process.returncode

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def log_tail(self, lines: int = 40) -> str:
        return "\n".join(self.log_text().splitlines()[-lines:])
