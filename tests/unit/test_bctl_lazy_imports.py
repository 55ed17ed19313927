"""bctl's start-up budget (300 ms, bench/bctl_startup.py) rests on lazy imports: importing the entry
point and the commands module must not pull in the HTTP, terminal-UI, PostgreSQL, MQTT, trio or JWT
libraries; each is imported only when the command that needs it runs."""

from __future__ import annotations

import subprocess
import sys

HEAVY = ("rich", "psycopg", "paho", "httpx", "trio", "jwt")


def heavy_after(code: str) -> list[str]:
    """The heavy top-level modules in sys.modules after running ``code`` in a fresh interpreter."""
    probe = f"{code}\nimport sys\nprint(' '.join(sorted({{m.split('.')[0] for m in sys.modules}})))\n"
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return [name for name in done.stdout.split() if name in HEAVY]


def test_importing_bctl_and_its_commands_loads_no_heavy_library() -> None:
    assert heavy_after("import pgbalancer.cli.bctl, pgbalancer.cli.commands, sys") == []


def test_the_probe_sees_a_lazy_import_once_it_runs() -> None:
    """Drawing a table imports rich: the probe notices, so the test above can fail."""
    assert heavy_after("import pgbalancer.cli.commands\npgbalancer.cli.render.console()") == ["rich"]
