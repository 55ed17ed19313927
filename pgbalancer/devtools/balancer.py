"""Start and stop a real ``pgbalancer`` process from a dict of settings (tests, demo, bench).

It writes ``pgbalancer.conf``, launches the node exactly as an operator would
(``pgbalancer -f FILE``), waits until that very process reports ready (its pid in its
``pid_file``, written once every listener is bound) and its port accepts connections,
and stops it with SIGTERM. It never runs in the node itself.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
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
    # Where the node writes its pid once it serves (None: pid_file = '' was asked for, so only the port
    # is polled), and the settings added to the caller's for that (kept on a reload).
    pid_path: Path | None = None
    added_settings: Mapping[str, Setting] = field(default_factory=dict)

    @classmethod
    def start(
        cls, workdir: Path, settings: Mapping[str, Setting], *, ready_timeout: float = 20.0
    ) -> BalancerProcess:
        workdir.mkdir(parents=True, exist_ok=True)
        added: dict[str, Setting] = {} if "pid_file" in settings else {"pid_file": "pgbalancer.pid"}
        pid_file = str({**settings, **added}["pid_file"])
        pid_path = workdir / pid_file if pid_file else None  # relative: against the config's directory
        if pid_path is not None:
            pid_path.unlink(missing_ok=True)  # a killed node's file must not pass for this one's
        config_path = workdir / "pgbalancer.conf"
        config_path.write_text(render_config({**settings, **added}))
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
            pid_path,
            added,
        )
        try:
            node.wait_ready(ready_timeout)
        except BaseException:
            node.stop()
            raise
        return node

    def wait_ready(self, timeout: float) -> None:
        """Poll until this process reports ready and its port accepts TCP; fail early (with the log)
        if it exits.

        A port that accepts is not enough on its own: when two port picks collide, the port may be
        another node's listener while this process is about to exit with "Address already in use".
        """
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"pgbalancer exited with {self.process.returncode}:\n{self.log_tail()}")
            if self.reported_ready():
                try:
                    with socket.create_connection((self.host, self.port), timeout=0.5):
                        return
                except OSError:
                    pass
            time.sleep(0.05)
        raise TimeoutError(
            f"pgbalancer did not listen on {self.host}:{self.port} in {timeout}s:\n{self.log_tail()}"
        )

    def reported_ready(self) -> bool:
        """True once the node wrote its own pid to its pid file (after binding every listener)."""
        if self.pid_path is None:
            return True
        try:
            return self.pid_path.read_text().strip() == str(self.process.pid)
        except OSError:
            return False

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
            self.config_path.write_text(render_config({**settings, **self.added_settings}))
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
