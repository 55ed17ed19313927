"""``bctl top``: a live view of nodes, pools, queries per second and balancer shares (rich Live).

Every ``interval`` seconds it reads /status, /nodes, /pools and /ai/stats and redraws on the
terminal's alternate screen; ``q`` (or Ctrl-C) quits and restores the terminal. A request that
fails is shown in the view and retried at the next refresh rather than ending the view.

It must never: run without a terminal (it says to use ``--json`` commands instead), leave the
terminal in cbreak mode, or act on the cluster.
"""

from __future__ import annotations

import contextlib
import select
import sys
import time
from collections.abc import Iterator
from typing import Any

from pgbalancer.cli import render
from pgbalancer.cli.connection import ApiClient
from pgbalancer.cli.errors import EXIT_USAGE, CliError


@contextlib.contextmanager
def _keys() -> Iterator[None]:
    """cbreak mode on stdin (single key presses, no echo), restored on the way out."""
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)
    try:
        tty.setcbreak(fd)
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _wait_for_quit(timeout: float) -> bool:
    """True when q arrives within ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        ready, _, _ = select.select([sys.stdin], [], [], left)
        if ready:
            key = sys.stdin.read(1)
            if key in ("q", "Q", ""):
                return True
    return False


def snapshot(client: ApiClient) -> dict[str, Any]:
    return {
        "status": client.request("GET", "/status"),
        "nodes": client.request("GET", "/nodes"),
        "pools": client.request("GET", "/pools"),
        "ai": client.request("GET", "/ai/stats"),
    }


def view(data: dict[str, Any] | None, error: str | None, where: str) -> Any:
    from rich.console import Group
    from rich.text import Text

    parts: list[Any] = []
    if data is not None:
        status = data["status"]
        clients, servers, backends = status["clients"], status["servers"], status["backends"]
        parts.append(
            Text(
                f"pgbalancer {status['version']} at {where}   up {status['uptime_seconds']:.0f} s   "
                f"QPS {status['queries_per_second']:.1f}   clients {clients['total']} "
                f"(active {clients['active']}, waiting {clients['waiting']})   servers {servers['total']}   "
                f"backends {backends['up']}/{backends['total']} up   pool mode {status['pool_mode']}"
                + ("   PAUSED" if status["paused"] else ""),
                style="bold",
            )
        )
        shares = {n["node_id"]: n for n in data["ai"]["nodes"]}
        rows = []
        for node in data["nodes"]["nodes"]:
            ai = shares.get(node["node_id"], {})
            rows.append(
                [
                    str(node["node_id"]),
                    f"{node['host']}:{node['port']}",
                    str(node["role"]),
                    str(node["status"]),
                    render.cell(node["replication_lag_bytes"], unit=" B"),
                    render.cell(node["health_score"], percent=True),
                    render.cell(node["traffic_share"], percent=True),
                    render.cell(ai.get("share"), percent=True),
                    render.cell(ai.get("latency_ms"), unit=" ms"),
                    render.cell(node["queries_total"]),
                ]
            )
        columns = (
            "id",
            "address",
            "role",
            "status",
            "lag",
            "health",
            "traffic",
            "balancer",
            "latency",
            "queries",
        )
        algorithm = data["ai"]["algorithm"]
        parts.append(render.table(f"nodes (balancer: {algorithm})", columns, rows))
        parts.extend(render.pools_tables(data["pools"]))
    if error:
        parts.append(Text(f"last refresh failed: {error}", style="red"))
    parts.append(Text("q quits", style="dim"))
    return Group(*parts)


def run_top(client: ApiClient, interval: float) -> int:
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CliError(
            "bctl top needs a terminal; in scripts use `bctl status --json` or `bctl nodes --json`",
            EXIT_USAGE,
        )
    from rich.live import Live

    data: dict[str, Any] = snapshot(client)  # a first failure (unreachable, not logged in) ends bctl
    error: str | None = None
    where = (client.current or client.endpoints[0]).url
    with _keys(), Live(view(data, None, where), screen=True, auto_refresh=False) as live:
        while not _wait_for_quit(interval):
            try:
                data, error = snapshot(client), None
            except CliError as exc:
                error = exc.message
            where = (client.current or client.endpoints[0]).url
            live.update(view(data, error, where), refresh=True)
    return 0
