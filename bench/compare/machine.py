"""Process shell that records the machine a run measured: cores, kernel, CPU, memory, server and tool
versions and the repo's git commit. Every probe degrades to None; it never fails a run.
"""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
from pathlib import Path
from typing import Any

from compare.harness import DIRECT_PORT, PGBENCH, PSQL


def _output(cmd: list[str], cwd: Path | None = None) -> str | None:
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=cwd, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return None
    text = (done.stdout or done.stderr).strip()
    return text.splitlines()[0] if done.returncode == 0 and text else None


def _proc_field(path: str, key: str) -> str | None:
    try:
        with open(path) as fh:
            for line in fh:
                name, _, value = line.partition(":")
                if name.strip() == key:
                    return value.strip()
    except OSError:
        pass
    return None


def _package_version(name: str) -> str | None:
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        return None


def git_state(repo: Path) -> dict[str, Any]:
    """The commit and uncommitted tracked changes; read when pgbalancer starts, as that is what ran."""
    commit = _output(["git", "rev-parse", "HEAD"], cwd=repo)
    try:
        cmd = ["git", "status", "--porcelain", "--untracked-files=no"]
        status = subprocess.run(cmd, capture_output=True, text=True, timeout=10, cwd=repo, check=False)
        changed = status.stdout.splitlines()
    except (OSError, subprocess.TimeoutExpired):
        changed = []
    return {"git_commit": commit, "git_dirty": bool(changed), "git_modified": [line[3:] for line in changed]}


def machine_info() -> dict[str, Any]:
    server = [PSQL, "-X", "-At", "-h", "127.0.0.1", "-p", str(DIRECT_PORT), "-U", "bench", "-d", "bench"]
    return {
        "nproc": len(os.sched_getaffinity(0)),
        "kernel": platform.release(),
        "cpu_model": _proc_field("/proc/cpuinfo", "model name"),
        "mem_total": _proc_field("/proc/meminfo", "MemTotal"),
        "loadavg_at_end": _output(["cat", "/proc/loadavg"]),
        "postgresql_version": _output([*server, "-c", "select version()"]),
        "pgbench_version": _output([PGBENCH, "--version"]),
        "pgbouncer_version": _output(["pgbouncer", "--version"]),
        "pgpool_version": _output(["pgpool", "--version"]),
        "python_version": platform.python_version(),
        "trio_version": _package_version("trio"),
        "pgbalancer_version": _package_version("pgbalancer"),
    }
