"""Box-drawing tables for bctl's answers (rich), one function per kind of answer.

Each ``*_tables`` function turns an API answer (the exact JSON ``--json`` prints) into rich
renderables; ``print_tables`` writes them. Cell text is formatted here (``cell``): None is ``-``,
shares and ratios as percentages, seconds with units.

It must never: do I/O other than writing to the console it is given, or change the data it shows.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console, RenderableType
    from rich.table import Table

Json = dict[str, Any]


def console(*, file: Any = None) -> Console:
    from rich.console import Console

    return Console(file=file, highlight=False, soft_wrap=False)


def cell(value: object, *, percent: bool = False, unit: str = "") -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if percent and isinstance(value, int | float):
        return f"{value * 100:.1f}%"
    if isinstance(value, float):
        text = f"{value:.3f}".rstrip("0").rstrip(".") if abs(value) < 1e6 else f"{value:.0f}"
        return f"{text}{unit}"
    if isinstance(value, list | tuple):
        return ", ".join(cell(v) for v in value) or "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={cell(v)}" for k, v in value.items()) or "-"
    return f"{value}{unit}"


_KEEP_WHOLE = frozenset({"id", "address", "role", "status", "database", "user"})


def table(title: str | None, columns: Sequence[str], rows: Iterable[Sequence[str]]) -> Table:
    from rich import box
    from rich.table import Table

    out = Table(title=title, box=box.SQUARE, title_justify="left", header_style="bold")
    for name in columns:
        # Addresses and states stay on one line; a narrow terminal folds the figures instead.
        out.add_column(name, overflow="fold", no_wrap=name in _KEEP_WHOLE)
    for row in rows:
        out.add_row(*row)
    return out


def key_values(title: str | None, data: Mapping[str, Any], skip: Iterable[str] = ()) -> Table:
    """A two-column table; nested objects are flattened to ``parent.child``."""
    skipped = set(skip)
    rows: list[tuple[str, str]] = []

    def walk(prefix: str, value: object) -> None:
        if isinstance(value, dict) and value:
            for key, inner in value.items():
                walk(f"{prefix}.{key}" if prefix else str(key), inner)
        else:
            rows.append((prefix, cell(value)))

    for key, value in data.items():
        if key not in skipped:
            walk(key, value)
    return table(title, ("field", "value"), rows)


def print_tables(renderables: Iterable[RenderableType], out: Console | None = None) -> None:
    target = out or console()
    for item in renderables:
        target.print(item)


# --------------------------------------------------------------------------- per answer


def status_tables(data: Json) -> list[RenderableType]:
    return [key_values("status", data)]


_NODE_COLUMNS = ("id", "address", "role", "status", "weight", "lag", "lag s", "health", "share", "queries")


def _node_row(node: Json) -> list[str]:
    status = str(node["status"]) + (" (detached)" if node.get("detached") else "")
    return [
        str(node["node_id"]),
        f"{node['host']}:{node['port']}",
        str(node["role"]),
        status,
        cell(node.get("weight")),
        cell(node.get("replication_lag_bytes"), unit=" B"),
        cell(node.get("replication_lag_seconds")),
        cell(node.get("health_score"), percent=True),
        cell(node.get("traffic_share"), percent=True),
        cell(node.get("queries_total")),
    ]


def nodes_tables(data: Json) -> list[RenderableType]:
    title = f"backends (primary {cell(data.get('primary_id'))}, epoch {data.get('epoch')})"
    return [table(title, _NODE_COLUMNS, (_node_row(n) for n in data["nodes"]))]


def node_detail_tables(data: Json) -> list[RenderableType]:
    out: list[RenderableType] = [key_values(f"backend {data['node_id']}", data, skip=("pools", "health"))]
    health = data.get("health", {})
    out.append(key_values("health", health, skip=("status_changes",)))
    changes = health.get("status_changes") or []
    if changes:
        out.append(
            table(
                "status changes",
                ("at", "from", "to", "reason"),
                ([cell(c["at"]), c["from"], c["to"], c["reason"]] for c in changes),
            )
        )
    if data.get("pools"):
        out.extend(pools_tables({"pools": data["pools"], "paused": False, "paused_databases": []}))
    return out


def health_tables(data: Json) -> list[RenderableType]:
    running = "running" if data["health_checks_running"] else "off"
    title = f"health checks ({running}, every {cell(data['period_seconds'])} s)"
    rows = (
        [
            str(b["node_id"]),
            str(b["status"]),
            cell(b["health_score"], percent=True),
            cell(b["success_rate"], percent=True),
            cell(b["checks_observed"]),
            str(len(b["status_changes"])),
        ]
        for b in data["backends"]
    )
    return [table(title, ("id", "status", "health", "success", "checks", "changes"), rows)]


_POOL_COLUMNS = (
    "backend",
    "database",
    "user",
    "mode",
    "active",
    "idle",
    "waiting",
    "max",
    "max wait",
    "prepared",
)


def pools_tables(data: Json) -> list[RenderableType]:
    rows = (
        [
            str(p["backend_id"]),
            str(p["database"]),
            str(p["user"]),
            str(p["pool_mode"]) + (" (paused)" if p.get("paused") else ""),
            cell(p["active"]),
            cell(p["idle"]),
            cell(p["waiting"]),
            cell(p["max_size"]),
            cell(p["max_wait_seconds"], unit=" s"),
            cell(p["prepared_statements"]),
        ]
        for p in data["pools"]
    )
    paused = " - paused" if data.get("paused") else ""
    return [table(f"pools{paused}", _POOL_COLUMNS, rows)]


def ai_stats_tables(data: Json) -> list[RenderableType]:
    head = key_values("read balancer", data, skip=("nodes",))
    rows = (
        [
            str(n["node_id"]),
            cell(n["score"]),
            cell(n["share"], percent=True),
            cell(n["picks"]),
            cell(n["in_flight"]),
            cell(n["latency_ms"], unit=" ms"),
            cell(n["error_rate"], percent=True),
        ]
        for n in data["nodes"]
    )
    columns = ("id", "score", "share", "picks", "in flight", "latency", "errors")
    return [head, table("per backend", columns, rows)]


def cache_stats_tables(data: Json) -> list[RenderableType]:
    return [key_values("result cache", data)]


def watchdog_tables(data: Json) -> list[RenderableType]:
    head = key_values("watchdog", data, skip=("nodes",))
    rows = (
        [
            str(n.get("id")) + (" (this node)" if n.get("self") else ""),
            cell(n.get("address")),
            cell(n.get("role")),
            cell(n.get("last_contact_s"), unit=" s"),
            cell(n.get("term")),
            cell(n.get("commit_index")),
            cell(n.get("holds_vip")),
        ]
        for n in data.get("nodes", [])
    )
    columns = ("id", "address", "role", "last contact", "term", "commit", "VIP")
    return [head, table("members", columns, rows)]


def config_tables(data: Json) -> list[RenderableType]:
    settings = data["settings"]
    return [table("configuration", ("key", "value"), ([k, cell(settings[k])] for k in sorted(settings)))]


def result_tables(title: str, data: Json) -> list[RenderableType]:
    """An action's answer: its fields, notes one per row."""
    notes = data.get("notes")
    out: list[RenderableType] = [key_values(title, data, skip=("notes",))]
    if notes:
        out.append(table("notes", ("note",), ([n] for n in notes)))
    return out
