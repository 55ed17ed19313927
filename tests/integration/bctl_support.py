"""Run the real ``bctl`` console script in a subprocess for the bctl tests, in a private HOME.

``BctlRunner(home, url)`` runs ``bctl ARGS`` with HOME and XDG_CONFIG_HOME inside ``home`` (never the
real ones), no inherited PGBALANCER_* variables, and asserts that nothing it printed is a Python
traceback. ``mask_table`` turns a table into its golden form: every number becomes ``N``, paths
become ``PATH`` and padding collapses, so widths that move with the numbers do not matter.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pgbalancer.devtools import wait_for

BCTL = str(Path(sys.executable).with_name("bctl"))
GOLDEN = Path(__file__).resolve().parents[1] / "golden"


@dataclass(frozen=True)
class Result:
    code: int
    stdout: str
    stderr: str

    def json(self) -> Any:
        assert self.code == 0, f"bctl failed ({self.code}): {self.stderr}"
        return json.loads(self.stdout)


@dataclass
class BctlRunner:
    home: Path
    url: str | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    def env(self, **overrides: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PGBALANCER_")}
        env.update(HOME=str(self.home), XDG_CONFIG_HOME=str(self.home / ".config"), COLUMNS="200")
        if self.url is not None:
            env["PGBALANCER_URL"] = self.url
        env.update(self.extra_env)
        env.update(overrides)
        return env

    def __call__(self, *args: str, stdin: str | None = None, timeout: float = 120, **env: str) -> Result:
        done = subprocess.run(
            [BCTL, *args],
            input=stdin if stdin is not None else "",
            capture_output=True,
            text=True,
            timeout=timeout,
            env=self.env(**env),
            check=False,
        )
        for stream in (done.stdout, done.stderr):
            assert "Traceback" not in stream, stream
        return Result(done.returncode, done.stdout, done.stderr)

    @property
    def token_file(self) -> Path:
        return self.home / ".config" / "pgbalancer" / "token"


class TmuxBctl:
    """``bctl ARGS`` on a terminal: a private tmux server (``-L``) 200x50, so nothing is shared.

    The exit code lands in ``<home>/tmux-exit``; the pane stays open afterwards for capture-pane.
    """

    def __init__(self, runner: BctlRunner, *args: str) -> None:
        self.name = f"bctl-{time.monotonic_ns()}"
        self.tmux = ["tmux", "-L", self.name]
        self.exit_file = runner.home / "tmux-exit"
        self.exit_file.unlink(missing_ok=True)
        keep = ("HOME", "XDG_CONFIG_HOME", "PGBALANCER_URL")
        env = " ".join(f"{k}={shlex.quote(v)}" for k, v in runner.env().items() if k in keep)
        line = " ".join(shlex.quote(a) for a in args)
        command = f"env -u COLUMNS -u LINES {env} {BCTL} {line}; echo $? > {self.exit_file}; sleep 60"
        subprocess.run(
            [*self.tmux, "new-session", "-d", "-s", self.name, "-x", "200", "-y", "50", command], check=True
        )

    def screen(self) -> str:
        done = subprocess.run(
            [*self.tmux, "capture-pane", "-p", "-t", self.name], capture_output=True, text=True, check=True
        )
        return done.stdout

    def wait_for_screen(self, *needles: str, timeout: float = 30) -> str:
        def shown() -> str:
            text = self.screen()
            return text if all(n in text for n in needles) else ""

        try:
            return wait_for(shown, timeout, message=f"{needles} on the terminal")
        except TimeoutError as exc:
            raise AssertionError(f"the terminal never showed {needles}:\n{self.screen()}") from exc

    def keys(self, *keys: str) -> None:
        subprocess.run([*self.tmux, "send-keys", "-t", self.name, *keys], check=True)

    def exit_code(self, timeout: float = 15) -> int:
        wait_for(
            lambda: self.exit_file.exists() and self.exit_file.read_text().strip(),
            timeout,
            message="bctl to exit",
        )
        return int(self.exit_file.read_text())

    def close(self) -> None:
        kill_tmux(self.name)


def kill_tmux(name: str) -> None:
    """Stop the private tmux server ``-L name`` and remove its socket (kill-server leaves it behind)."""
    subprocess.run(["tmux", "-L", name, "kill-server"], check=False, capture_output=True)
    (Path(os.environ.get("TMUX_TMPDIR") or "/tmp") / f"tmux-{os.getuid()}" / name).unlink(missing_ok=True)


def mask_table(text: str) -> str:
    text = text.replace(socket.gethostname(), "HOST")
    text = re.sub(r"/[\w./-]+", "PATH", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    text = re.sub(r"N( N)+", "N", text)  # dates, versions
    text = re.sub(r"(?<=│ )-(?= )", "N", text)  # a figure not measured yet (lag before a probe)
    text = re.sub(r"─+", "─", text)
    text = re.sub(r"[ \t]+", " ", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def check_golden(name: str, table_text: str, also: Callable[[str], str] | None = None) -> None:
    """Compare with tests/golden/<name>.txt (UPDATE_GOLDEN=1 rewrites it); ``also`` masks further."""
    path = GOLDEN / f"{name}.txt"
    masked = mask_table(table_text)
    if also is not None:
        masked = also(masked)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(masked)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 once and review it"
    assert masked == path.read_text(), (
        f"{name} table differs from {path} (if the change is meant, e.g. a new config key, rerun with "
        f"UPDATE_GOLDEN=1 and review `git diff tests/golden`):\n{masked}"
    )
