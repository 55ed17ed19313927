"""JSON Schemas of every event topic, and a small validator for them, pure.

Role: the one statement of what each topic's payload holds. ``docs/events.md`` shows these
schemas (a unit test checks the two agree, ``python -m pgbalancer.events.schemas`` prints the
sections to paste), and the tests validate real payloads against them with :func:`validate`, which
implements exactly the JSON Schema keywords used here (type, const, enum, properties, required,
additionalProperties, items, minimum, maximum, minLength, pattern).

It must never: import trio, asyncio, threads or sockets; accept a schema keyword it does not
implement (``validate`` raises instead of silently passing).
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from typing import Any, Final

from pgbalancer.events import payloads

Schema = Mapping[str, Any]

_RFC3339_UTC: Final = r"^[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(\.[0-9]+)?Z$"
_NULLABLE_INT: Final = {"type": ["integer", "null"], "minimum": 0}
_NULLABLE_NUMBER: Final = {"type": ["number", "null"], "minimum": 0}
_NAMES: Final = {"type": "array", "items": {"type": "string", "minLength": 1}}


def _envelope(event: str, body: Mapping[str, Any], description: str) -> dict[str, Any]:
    """Common fields of every payload plus the topic's own, all required, nothing else allowed."""
    properties: dict[str, Any] = {
        "event": {"const": event},
        "node": {"type": "string", "minLength": 1, "description": "node_name of the publishing node"},
        "ts": {"type": "string", "pattern": _RFC3339_UTC, "description": "RFC 3339 UTC time"},
        "epoch": {"type": "integer", "minimum": 0, "description": "failover epoch of the cluster view"},
        "event_id": {"type": "string", "minLength": 1, "description": "de-duplication key"},
        **body,
    }
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "description": description,
        "type": "object",
        "properties": properties,
        "required": sorted(properties),
        "additionalProperties": False,
    }


BACKEND: Final = {
    "type": "object",
    "properties": {
        "backend_id": {"type": "integer", "minimum": 0},
        "host": {"type": "string"},
        "port": {"type": "integer", "minimum": 0, "maximum": 65535},
        "role": {"enum": ["primary", "standby", "unknown"]},
        "status": {"enum": ["up", "down", "quarantined"]},
        "weight": {"type": "number", "minimum": 0},
        "lag_bytes": _NULLABLE_INT,
        "lag_seconds": _NULLABLE_NUMBER,
        "health_score": {"type": ["number", "null"], "minimum": 0, "maximum": 1},
        "replay_lsn": _NULLABLE_INT,
        "detached": {"type": "boolean"},
    },
    "required": [
        "backend_id",
        "detached",
        "health_score",
        "host",
        "lag_bytes",
        "lag_seconds",
        "port",
        "replay_lsn",
        "role",
        "status",
        "weight",
    ],
    "additionalProperties": False,
}

_POOL_COUNTS: Final = (
    "active",
    "idle",
    "waiting",
    "max_size",
    "opened_total",
    "closed_total",
    "xact_count",
    "query_count",
    "bytes_received",
    "bytes_sent",
    "wait_time_us",
)
_POOL: Final = {
    "type": "object",
    "properties": {
        "backend_id": {"type": "integer", "minimum": 0},
        "database": {"type": "string"},
        "user": {"type": "string"},
        **{name: {"type": "integer", "minimum": 0} for name in _POOL_COUNTS},
    },
    "required": sorted(["backend_id", "database", "user", *_POOL_COUNTS]),
    "additionalProperties": False,
}

SCHEMAS: Final[dict[str, dict[str, Any]]] = {
    payloads.TOPIC_CLUSTER_HEALTH: _envelope(
        "cluster_health",
        {
            "primary_id": _NULLABLE_INT,
            "backends": {"type": "array", "items": BACKEND},
            "backends_up": {"type": "integer", "minimum": 0},
            "backends_total": {"type": "integer", "minimum": 0},
            "reason": {"type": "string", "description": "'periodic', 'startup' or the view change's reason"},
        },
        "Every backend's status, lag and health score. Retained.",
    ),
    payloads.TOPIC_CLUSTER_FAILOVER: _envelope(
        "cluster_failover",
        {
            "old_primary": _NULLABLE_INT,
            "new_primary": _NULLABLE_INT,
            "old_epoch": {"type": "integer", "minimum": 0},
            "kind": {
                "enum": ["failover", "switchover", "promotion", "detach"],
                "description": "failover: the primary was down and another one took over; "
                "the others: an operator's operation",
            },
            "reason": {"type": "string"},
            "duration_seconds": {
                **_NULLABLE_NUMBER,
                "description": "failover: from this node marking the old primary down to it adopting "
                "the new one; operations: as the failover engine reports it; null when not known",
            },
            "details": {"type": "object", "description": "what the failover engine reported, as given"},
        },
        "The write target moved (primary_id or epoch changed). Not retained.",
    ),
    payloads.TOPIC_CLUSTER_CONFIG: _envelope(
        "cluster_config",
        {
            "source": {"enum": ["reload", "raft"]},
            "changed": _NAMES,
            "applied_live": _NAMES,
            "restart_required": _NAMES,
            "config_version": _NULLABLE_INT,
        },
        "A config reload (SIGHUP, admin RELOAD, REST reload): the keys that changed. Not retained.",
    ),
    payloads.TOPIC_NODE_STATUS: _envelope(
        "node_status",
        {
            "backend": BACKEND,
            "is_primary": {"type": "boolean"},
            "previous_status": {"enum": ["up", "down", "quarantined", None]},
            "previous_role": {"enum": ["primary", "standby", "unknown", None]},
            "reason": {"type": "string"},
        },
        "One backend's state after it changed ({id} is backend_id). Retained per backend.",
    ),
    payloads.TOPIC_WATCHDOG_LEADER: _envelope(
        "watchdog_leader",
        {"leader": {"type": ["string", "null"]}, "term": _NULLABLE_INT},
        "The Raft leader changed (leader null: an election is under way). Every node publishes it "
        "with event_id leader:<term> (leader:<term>:none while no leader is known). Retained.",
    ),
    payloads.TOPIC_WATCHDOG_VIP: _envelope(
        "watchdog_vip",
        {
            "holder": {"type": ["string", "null"]},
            "vip": {"type": "string"},
            "interface": {"type": "string"},
        },
        "The committed VIP holder changed (holder: its Raft member id; null: nobody holds it). Every "
        "node publishes it with event_id vip:<holder or none>:<term>. Retained.",
    ),
    payloads.TOPIC_STATS_POOLS: _envelope(
        "pool_stats",
        {
            "interval_seconds": {"type": "number", "minimum": 0},
            "clients": {"type": "integer", "minimum": 0},
            "events_dropped": {"type": "integer", "minimum": 0},
            "pools": {"type": "array", "items": _POOL},
        },
        "This node's server pools, every mqtt_stats_interval. Not retained.",
    ),
    payloads.TOPIC_CACHE_INVALIDATE: _envelope(
        "cache_invalidate",
        {"tables": _NAMES, "all": {"type": "boolean", "description": "every cached result was dropped"}},
        "The node invalidated cached results: of the tables a write reached (or all of them, after "
        "DDL on unknown targets, ALTER ROLE, GRANT, a function that may write anything, or the REST "
        "API). Informational: with watchdog_nodes set, nodes invalidate each other through Raft, "
        "before the write is acknowledged. Not retained.",
    ),
}


def schema_for_topic(topic: str) -> dict[str, Any]:
    """The schema of a concrete topic (pgbalancer/nodes/3/status uses the nodes/{id}/status one)."""
    if topic in SCHEMAS:
        return SCHEMAS[topic]
    parts = topic.split("/")
    if len(parts) == 4 and parts[:2] == ["pgbalancer", "nodes"] and parts[3] == "status":
        return SCHEMAS[payloads.TOPIC_NODE_STATUS]
    raise KeyError(f"no schema for topic {topic!r}; known: {', '.join(SCHEMAS)}")


# --------------------------------------------------------------------------- validator

_TYPES: Final[dict[str, tuple[type, ...]]] = {
    "object": (dict,),
    "array": (list,),
    "string": (str,),
    "integer": (int,),
    "number": (int, float),
    "boolean": (bool,),
    "null": (type(None),),
}
_KNOWN_KEYWORDS: Final = frozenset(
    {
        "$schema",
        "description",
        "type",
        "const",
        "enum",
        "properties",
        "required",
        "additionalProperties",
        "items",
        "minimum",
        "maximum",
        "minLength",
        "pattern",
    }
)


def validate(instance: object, schema: Schema, path: str = "$") -> list[str]:
    """Every way ``instance`` breaks ``schema``, as 'path: problem' lines ([] when it conforms)."""
    unknown = set(schema) - _KNOWN_KEYWORDS
    if unknown:
        raise ValueError(f"{path}: schema keyword(s) {sorted(unknown)} are not implemented by validate()")
    if "type" in schema and not _has_type(instance, schema["type"]):
        return [f"{path}: {_show(instance)} is not of type {schema['type']}"]
    problems: list[str] = []
    if "const" in schema and not _same(instance, schema["const"]):
        problems.append(f"{path}: {_show(instance)} is not {schema['const']!r}")
    if "enum" in schema and not any(_same(instance, option) for option in schema["enum"]):
        problems.append(f"{path}: {_show(instance)} is not one of {schema['enum']!r}")
    problems.extend(_check_number(instance, schema, path))
    problems.extend(_check_string(instance, schema, path))
    if isinstance(instance, dict):
        problems.extend(_check_object(instance, schema, path))
    if isinstance(instance, list) and "items" in schema:
        for index, item in enumerate(instance):
            problems.extend(validate(item, schema["items"], f"{path}[{index}]"))
    return problems


def _has_type(instance: object, wanted: str | list[str]) -> bool:
    names = [wanted] if isinstance(wanted, str) else wanted
    if isinstance(instance, bool):  # bool is an int in Python but not in JSON
        return "boolean" in names
    return any(isinstance(instance, _TYPES[name]) for name in names)


def _same(left: object, right: object) -> bool:
    return type(left) is type(right) and left == right


def _check_number(instance: object, schema: Schema, path: str) -> list[str]:
    if not isinstance(instance, int | float) or isinstance(instance, bool):
        return []
    problems = []
    if "minimum" in schema and instance < schema["minimum"]:
        problems.append(f"{path}: {instance} is below the minimum {schema['minimum']}")
    if "maximum" in schema and instance > schema["maximum"]:
        problems.append(f"{path}: {instance} is above the maximum {schema['maximum']}")
    return problems


def _check_string(instance: object, schema: Schema, path: str) -> list[str]:
    if not isinstance(instance, str):
        return []
    problems = []
    if len(instance) < schema.get("minLength", 0):
        problems.append(f"{path}: {_show(instance)} is shorter than {schema['minLength']}")
    if "pattern" in schema and re.search(schema["pattern"], instance) is None:
        problems.append(f"{path}: {_show(instance)} does not match {schema['pattern']!r}")
    return problems


def _check_object(instance: dict[Any, Any], schema: Schema, path: str) -> list[str]:
    properties: Mapping[str, Schema] = schema.get("properties", {})
    problems = [f"{path}: missing {key!r}" for key in schema.get("required", ()) if key not in instance]
    for key, value in instance.items():
        if key in properties:
            problems.extend(validate(value, properties[key], f"{path}.{key}"))
        elif schema.get("additionalProperties", True) is False:
            problems.append(f"{path}: unexpected property {key!r}")
    return problems


def _show(instance: object) -> str:
    text = repr(instance)
    return text if len(text) <= 60 else text[:57] + "..."


def markdown_sections() -> str:
    """The '### topic' + schema sections of docs/events.md, in the order of SCHEMAS."""
    sections = []
    for topic, schema in SCHEMAS.items():
        block = json.dumps(schema, indent=2)
        sections.append(f"### `{topic}`\n\n{schema['description']}\n\n```json\n{block}\n```\n")
    return "\n".join(sections)


if __name__ == "__main__":
    print(markdown_sections(), end="")
