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
import socket
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

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


def mask_table(text: str) -> str:
    text = text.replace(socket.gethostname(), "HOST")
    text = re.sub(r"/[\w./-]+", "PATH", text)
    text = re.sub(r"\d+(\.\d+)?", "N", text)
    text = re.sub(r"N( N)+", "N", text)  # dates, versions
    text = re.sub(r"(?<=│ )-(?= )", "N", text)  # a figure not measured yet (lag before a probe)
    text = re.sub(r"─+", "─", text)
    text = re.sub(r"[ \t]+", " ", text)
    return "\n".join(line.rstrip() for line in text.splitlines()).strip() + "\n"


def check_golden(name: str, table_text: str) -> None:
    """Compare with tests/golden/<name>.txt (UPDATE_GOLDEN=1 rewrites it)."""
    path = GOLDEN / f"{name}.txt"
    masked = mask_table(table_text)
    if os.environ.get("UPDATE_GOLDEN"):
        path.parent.mkdir(exist_ok=True)
        path.write_text(masked)
    assert path.exists(), f"{path} is missing: run with UPDATE_GOLDEN=1 once and review it"
    assert masked == path.read_text(), f"{name} table differs from {path}:\n{masked}"
