"""The OpenAPI 3.0 description of the REST API, served at ``GET /api/v1/openapi.json``.

It is the contract the schema-fuzzing test holds the implementation to: every route, every status
it can answer and the exact shape of every JSON body. Pure data: no I/O.

It must never: describe a field the API does not send, or leave out a status the API can answer.
"""

from __future__ import annotations

import copy
from typing import Any, Final

from pgbalancer import __version__
from pgbalancer.proxy.admin_commands import ADMIN_DATABASES

API_PREFIX: Final = "/api/v1"

Schema = dict[str, Any]


def _obj(properties: dict[str, Schema], *, optional: tuple[str, ...] = (), extra: bool = False) -> Schema:
    """An object schema whose properties are all required except ``optional``."""
    return {
        "type": "object",
        "properties": properties,
        "required": [name for name in properties if name not in optional],
        "additionalProperties": extra,
    }


def _nullable(schema: Schema) -> Schema:
    return {**schema, "nullable": True}


def _ref(name: str) -> Schema:
    return {"$ref": f"#/components/schemas/{name}"}


_INT: Final[Schema] = {"type": "integer"}
_COUNT: Final[Schema] = {"type": "integer", "minimum": 0}
_NUMBER: Final[Schema] = {"type": "number"}
_SECONDS: Final[Schema] = {"type": "number", "minimum": 0}
_STRING: Final[Schema] = {"type": "string"}
_BOOL: Final[Schema] = {"type": "boolean"}
_SHARE: Final[Schema] = {"type": "number", "minimum": 0, "maximum": 1}
# A NUL can never be part of a user or database name: the API refuses it with 400, so the schema says so.
_NAME: Final[Schema] = {"type": "string", "minLength": 1, "maxLength": 256, "pattern": "^[^\\x00]*$"}
_STRINGS: Final[Schema] = {"type": "array", "items": _STRING}
# The admin console's databases are never paused (the API answers 400): not a valid pause target.
_PAUSABLE: Final[Schema] = {**_NAME, "not": {"enum": sorted(ADMIN_DATABASES)}}
# A watchdog member's host:port (IPv4, a host name or [IPv6]; port 1-65535, ASCII only): the API checks
# an address against exactly this, so a schema-valid address is never refused with 400.
MEMBER_ADDRESS_PATTERN: Final = (
    r"^[A-Za-z0-9._\[\]:-]+:0*"
    r"(?:6553[0-5]|655[0-2][0-9]|65[0-4][0-9]{2}|6[0-4][0-9]{3}|[1-5][0-9]{4}|[1-9][0-9]{0,3})$"
)
_MEMBER_ADDRESS: Final[Schema] = {
    "type": "string",
    "minLength": 3,
    "maxLength": 300,
    "pattern": MEMBER_ADDRESS_PATTERN,
}

_POOL: Final = _obj(
    {
        "backend_id": _INT,
        "database": _STRING,
        "user": _STRING,
        "pool_mode": {"type": "string", "enum": ["session", "transaction", "statement"]},
        "active": _COUNT,
        "idle": _COUNT,
        "logging_in": _COUNT,
        "waiting": _COUNT,
        "max_size": _COUNT,
        "max_wait_seconds": _SECONDS,
        "max_wait_seconds_ever": _SECONDS,
        "prepared_statements": _COUNT,
        "paused": _BOOL,
        "opened_total": _COUNT,
        "closed_total": _COUNT,
        "queries_total": _COUNT,
        "transactions_total": _COUNT,
    }
)

_NODE_FIELDS: Final[dict[str, Schema]] = {
    "node_id": _INT,
    "host": _STRING,
    "port": _INT,
    "role": {"type": "string", "enum": ["primary", "standby", "unknown"]},
    "is_primary": _BOOL,
    "status": {"type": "string", "enum": ["up", "down", "quarantined"]},
    "detached": _BOOL,
    "weight": {"type": "number", "minimum": 0},
    "replication_lag_bytes": _nullable(_COUNT),
    "replication_lag_seconds": _nullable(_SECONDS),
    "health_score": _SHARE,
    "checked_at": _nullable(_NUMBER),
    "queries_total": _COUNT,
    "traffic_share": _SHARE,
    "read_share": _SHARE,
    "server_connections": _COUNT,
}

_HEALTH_HISTORY: Final[dict[str, Schema]] = {
    "checks_observed": _COUNT,
    "success_rate": _nullable(_SHARE),
    "status_changes": {
        "type": "array",
        "items": _obj({"at": _NUMBER, "from": _STRING, "to": _STRING, "reason": _STRING}),
    },
}

SCHEMAS: Final[dict[str, Schema]] = {
    "Error": _obj({"error": _STRING, "message": _STRING}, extra=True),
    "LoginRequest": _obj({"username": _NAME, "password": {"type": "string", "maxLength": 4096}}),
    "LoginResponse": _obj(
        {
            "token": _STRING,
            "token_type": {"type": "string", "enum": ["Bearer"]},
            "expires_in": {"type": "integer", "minimum": 1},
            "role": {"type": "string", "enum": ["admin", "viewer"]},
        }
    ),
    "Healthz": _obj({"status": {"type": "string", "enum": ["ok"]}, "uptime_seconds": _SECONDS}),
    "Readyz": _obj(
        {
            "ready": _BOOL,
            "reachable_backends": {"type": "array", "items": _INT},
            "quorum": _BOOL,
            "reasons": _STRINGS,
        }
    ),
    "Status": _obj(
        {
            "version": _STRING,
            "node_id": _STRING,
            "worker": _obj(
                {
                    "index": _COUNT,
                    "count": {"type": "integer", "minimum": 1},
                    "reporting": {"type": "array", "items": _COUNT},
                    "missing": {"type": "array", "items": _COUNT},
                }
            ),
            "workers": {
                "type": "array",
                "items": _obj(
                    {
                        "index": _COUNT,
                        "clients": _COUNT,
                        "accepted_total": _COUNT,
                        "queries_total": _COUNT,
                        "cache_hits": _COUNT,
                    },
                    optional=("cache_hits",),  # with memory_cache_enabled = on
                ),
            },
            "started_at": _NUMBER,
            "uptime_seconds": _SECONDS,
            "pool_mode": {"type": "string", "enum": ["session", "transaction", "statement"]},
            "paused": _BOOL,
            "paused_databases": _STRINGS,
            "clients": _obj(
                {
                    "total": _COUNT,
                    "active": _COUNT,
                    "waiting": _COUNT,
                    "idle": _COUNT,
                    "logging_in": _COUNT,
                    "admin_console": _COUNT,
                    "accepted_total": _COUNT,
                }
            ),
            "servers": _obj({"total": _COUNT, "active": _COUNT, "idle": _COUNT, "logging_in": _COUNT}),
            "backends": _obj({"up": _COUNT, "total": _COUNT}),
            "primary_id": _nullable(_INT),
            "epoch": _COUNT,
            "queries_total": _COUNT,
            "transactions_total": _COUNT,
            "queries_per_second": _SECONDS,
        }
    ),
    "Node": _obj(_NODE_FIELDS),
    "NodeList": _obj(
        {"primary_id": _nullable(_INT), "epoch": _COUNT, "nodes": {"type": "array", "items": _ref("Node")}}
    ),
    "NodeDetail": _obj(
        {
            **_NODE_FIELDS,
            "replay_lsn": _nullable(_STRING),
            "backend_connections": _nullable(_COUNT),
            "backend_max_connections": _nullable(_COUNT),
            "data_directory": _STRING,
            "transactions_total": _COUNT,
            "bytes_received_total": _COUNT,
            "bytes_sent_total": _COUNT,
            "pools": {"type": "array", "items": _ref("Pool")},
            "health": _obj(_HEALTH_HISTORY),
        }
    ),
    "NodeActionResult": _obj(
        {
            "node_id": _INT,
            "action": _STRING,
            "primary_id": _nullable(_INT),
            "epoch": _COUNT,
            "notes": _STRINGS,
        }
    ),
    "Pool": _POOL,
    "Pools": _obj(
        {"paused": _BOOL, "paused_databases": _STRINGS, "pools": {"type": "array", "items": _ref("Pool")}}
    ),
    "HealthStats": _obj(
        {
            "health_checks_running": _BOOL,
            "period_seconds": _SECONDS,
            "backends": {
                "type": "array",
                "items": _obj(
                    {
                        "node_id": _INT,
                        "status": {"type": "string", "enum": ["up", "down", "quarantined"]},
                        "health_score": _SHARE,
                        "checked_at": _nullable(_NUMBER),
                        **_HEALTH_HISTORY,
                    }
                ),
            },
        }
    ),
    "AiStats": _obj(
        {
            "algorithm": {
                "type": "string",
                "enum": ["adaptive", "round_robin", "weighted", "least_connections", "random"],
            },
            "load_balance_mode": _BOOL,
            "exploration_rate": _nullable(_SHARE),
            "decisions": _COUNT,
            "decisions_per_second": _nullable(_SECONDS),
            "nodes": {
                "type": "array",
                "items": _obj(
                    {
                        "node_id": _INT,
                        "score": _nullable(_NUMBER),
                        "share": _nullable(_SHARE),
                        "picks": _COUNT,
                        "in_flight": _COUNT,
                        "latency_ms": _nullable(_SECONDS),
                        "error_rate": _nullable(_SHARE),
                        "samples": _nullable(_SECONDS),
                        "classes": {
                            "type": "array",
                            "items": _obj(
                                {
                                    "class": _STRING,
                                    "latency_ms": _nullable(_SECONDS),
                                    "error_rate": _nullable(_SHARE),
                                    "samples": _nullable(_SECONDS),
                                }
                            ),
                        },
                    }
                ),
            },
        }
    ),
    "Config": _obj(
        {
            "settings": {
                "type": "object",
                "additionalProperties": {
                    "oneOf": [{"type": "string"}, {"type": "number"}, {"type": "boolean"}],
                },
            }
        }
    ),
    "ReloadResult": _obj(
        {
            "reloaded": {"type": "boolean", "enum": [True]},
            "changed": _STRINGS,
            "applied_live": _STRINGS,
            "restart_required": _STRINGS,
        }
    ),
    "EmptyRequest": _obj({}),
    "PauseRequest": _obj(
        {
            "database": _nullable(_PAUSABLE),
            "timeout": {"type": "number", "minimum": 0, "maximum": 60, "default": 30},
        },
        optional=("database", "timeout"),
    ),
    "PauseResult": _obj(
        {
            "paused": {"type": "boolean", "enum": [True]},
            "database": _nullable(_STRING),
            "drained": _BOOL,
            "busy_servers": _COUNT,
        }
    ),
    "ResumeRequest": _obj({"database": _nullable(_NAME)}, optional=("database",)),
    "ResumeResult": _obj({"resumed": {"type": "boolean", "enum": [True]}, "database": _nullable(_STRING)}),
    "SwitchoverRequest": _obj({"to": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1}}),
    "CacheInvalidateRequest": _obj({"table": _nullable(_NAME)}, optional=("table",)),
    "CacheStats": _obj(
        {
            "enabled": _BOOL,
            "entries": _COUNT,
            "bytes": _COUNT,
            "limit_bytes": _COUNT,
            "hits": _COUNT,
            "misses": _COUNT,
            "hit_ratio": _SHARE,
            "evictions": _COUNT,
            "invalidations": _COUNT,
        }
    ),
    "CacheInvalidateResult": _obj({"invalidated_entries": _COUNT, "tables": _nullable(_STRINGS)}),
    "WatchdogInfo": _obj(
        {
            "enabled": {"type": "boolean", "enum": [True]},
            "self_id": _STRING,
            "leader": _nullable(_STRING),
            "term": _COUNT,
            "commit_index": _COUNT,
            "quorum": _BOOL,
            "lease_valid": _BOOL,
            "epoch": _COUNT,
            "primary_id": _nullable(_INT),
            "nodes": {
                "type": "array",
                "items": _obj(
                    {
                        "id": _STRING,
                        "address": _STRING,
                        "role": {"type": "string", "enum": ["leader", "follower", "candidate", "unknown"]},
                        "last_contact_s": _nullable(_SECONDS),
                        "term": _nullable(_COUNT),
                        "commit_index": _nullable(_COUNT),
                        "holds_vip": _BOOL,
                        "self": _BOOL,
                    }
                ),
            },
            "vip": _obj(
                {"address": _nullable(_STRING), "interface": _nullable(_STRING), "holder": _nullable(_STRING)}
            ),
        }
    ),
    "WatchdogMemberRequest": _obj({"address": _MEMBER_ADDRESS}),
    "WatchdogMemberAdded": _obj({"added": _STRING, "members": _STRINGS}),
    "WatchdogMemberRemoved": _obj(
        {"removed": _STRING, "members": _STRINGS, "notes": _STRINGS}, optional=("notes",)
    ),
}


def _json(schema: Schema, description: str) -> Schema:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _error(description: str) -> Schema:
    return _json(_ref("Error"), description)


_AUTH_ERRORS: Final = {
    "401": _error(
        "No credentials, a bad token (forged, expired, other key or algorithm) or a wrong password"
    ),
    "429": _error("Too many failed password logins from this address (HTTP Basic); see Retry-After"),
}
_ADMIN_ERRORS: Final = {**_AUTH_ERRORS, "403": _error("The user is a viewer; this needs the admin role")}
_SECURITY: Final[list[dict[str, list[str]]]] = [{"bearerAuth": []}, {"basicAuth": []}]
_NODE_ID: Final = {
    "name": "node_id",
    "in": "path",
    "required": True,
    "schema": {"type": "integer", "minimum": 0},
    "description": "Backend number N of backend_hostnameN",
}


def _body(schema_name: str) -> Schema:
    return {"required": False, "content": {"application/json": {"schema": _ref(schema_name)}}}


def _operation(
    summary: str,
    responses: dict[str, Schema],
    *,
    role: str | None = "viewer",
    body: str | None = None,
    parameters: list[Schema] | None = None,
    tag: str = "status",
) -> Schema:
    operation: Schema = {"summary": summary, "tags": [tag], "responses": dict(responses)}
    if role is None:
        operation["security"] = []
    else:
        operation["security"] = _SECURITY
        operation["responses"].update(_ADMIN_ERRORS if role == "admin" else _AUTH_ERRORS)
        operation["description"] = (
            f"Needs the {role} role{' (viewers are refused with 403)' if role == 'admin' else ''}."
        )
    if body is not None:
        operation["requestBody"] = _body(body)
        operation["responses"].setdefault(
            "400", _error("The body is not a JSON object of the documented fields")
        )
    if parameters:
        operation["parameters"] = parameters
    return operation


def _node_action(verb: str, what: str) -> Schema:
    return _operation(
        what,
        {
            "200": _json(_ref("NodeActionResult"), f"The backend was {verb}; notes say what happened"),
            "404": _error("No such backend"),
            "409": _error(
                "Refused in the current cluster state (the message says what to do); nothing changed"
            ),
            "503": _error(
                "The failover engine is not running here, or the operation could not be carried out"
            ),
        },
        role="admin",
        parameters=[_NODE_ID],
        tag="nodes",
    )


def _paths() -> dict[str, Schema]:
    p = API_PREFIX
    ok = _json
    return {
        f"{p}/auth/login": {
            "post": {
                **_operation(
                    "Log in with an API user's password; get an HS256 JWT",
                    {
                        "200": ok(_ref("LoginResponse"), "A Bearer token for the Authorization header"),
                        "400": _error("The body is not {username, password}"),
                        "401": _error("Wrong user name or password"),
                        "429": _error("Too many failed logins from this address; see Retry-After"),
                    },
                    role=None,
                    tag="auth",
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("LoginRequest")}},
                },
            }
        },
        f"{p}/status": {"get": _operation("Node status", {"200": ok(_ref("Status"), "Live node status")})},
        f"{p}/nodes": {
            "get": _operation("Every backend", {"200": ok(_ref("NodeList"), "Backends")}, tag="nodes")
        },
        f"{p}/nodes/{{node_id}}": {
            "get": _operation(
                "One backend in detail",
                {"200": ok(_ref("NodeDetail"), "The backend"), "404": _error("No such backend")},
                parameters=[_NODE_ID],
                tag="nodes",
            )
        },
        f"{p}/nodes/{{node_id}}/attach": {
            "post": _node_action("attached", "Attach a backend (back into service)")
        },
        f"{p}/nodes/{{node_id}}/detach": {
            "post": _node_action("detached", "Detach a backend (no more traffic)")
        },
        f"{p}/nodes/{{node_id}}/promote": {"post": _node_action("promoted", "Promote a standby to primary")},
        f"{p}/nodes/{{node_id}}/recovery": {
            "post": _node_action("rejoined", "Rejoin a failed old primary as a standby (pg_rewind)")
        },
        f"{p}/health/stats": {
            "get": _operation(
                "Health-check history per backend", {"200": ok(_ref("HealthStats"), "Health")}, tag="nodes"
            )
        },
        f"{p}/pools": {"get": _operation("Every pool", {"200": ok(_ref("Pools"), "Pools")}, tag="pools")},
        f"{p}/ai/stats": {
            "get": _operation(
                "The read balancer's estimates, scores, traffic shares and exploration rate",
                {"200": ok(_ref("AiStats"), "Balancer statistics")},
                tag="balancer",
            )
        },
        f"{p}/cache/stats": {
            "get": _operation(
                "Result cache statistics (all zero with enabled false when memory_cache_enabled = off)",
                {"200": ok(_ref("CacheStats"), "Entries, memory, hits, misses, evictions, invalidations")},
                tag="cache",
            )
        },
        f"{p}/cache/invalidate": {
            "post": _operation(
                "Invalidate the result cache on every node, all of it or one table's entries",
                {
                    "200": ok(
                        _ref("CacheInvalidateResult"),
                        "Entries dropped on this node; tables is null when everything was dropped",
                    ),
                    "409": _error("The result cache is off (memory_cache_enabled = off)"),
                },
                role="admin",
                body="CacheInvalidateRequest",
                tag="cache",
            )
        },
        f"{p}/watchdog/info": {
            "get": _operation(
                "The watchdog cluster as this node sees it: leader, term, quorum, members, VIP",
                {
                    "200": ok(_ref("WatchdogInfo"), "Watchdog status"),
                    "503": _error("No watchdog runs on this node (watchdog_nodes is empty)"),
                },
                tag="watchdog",
            )
        },
        f"{p}/watchdog/members": {
            "post": _operation(
                "Add a watchdog member (start it with the full member list afterwards)",
                {
                    "200": ok(_ref("WatchdogMemberAdded"), "Committed: the member is part of the cluster"),
                    "409": _error("Already a member, or a membership change is still in progress"),
                    "503": _error("No watchdog here, or no majority reachable to commit the change"),
                },
                role="admin",
                body="WatchdogMemberRequest",
                tag="watchdog",
            )
        },
        f"{p}/watchdog/members/{{address}}": {
            "delete": _operation(
                "Remove a watchdog member",
                {
                    "200": ok(
                        _ref("WatchdogMemberRemoved"),
                        "Committed: the member left the cluster (notes: what was left to tidy up, harmless)",
                    ),
                    "400": _error("The address is not host:port"),
                    "404": _error("Not a member"),
                    "409": _error("The member is this node, or a membership change is still in progress"),
                    "503": _error("No watchdog here, or no majority reachable to commit the change"),
                },
                role="admin",
                parameters=[
                    {
                        "name": "address",
                        "in": "path",
                        "required": True,
                        "schema": _MEMBER_ADDRESS,
                        "description": "The member's host:port, as in watchdog_nodes",
                    }
                ],
                tag="watchdog",
            )
        },
        f"{p}/control/reload": {
            "post": _operation(
                "Reload the config (as SIGHUP)",
                {
                    "200": ok(_ref("ReloadResult"), "Which keys changed, applied live or needing a restart"),
                    "422": _error("The new config is invalid; the running one was kept"),
                    "503": _error("No node to reload"),
                },
                role="admin",
                body="EmptyRequest",
                tag="control",
            )
        },
        f"{p}/control/switchover": {
            "post": {
                **_operation(
                    "Planned switchover to a standby, without losing an acknowledged commit",
                    {
                        "200": ok(
                            _ref("NodeActionResult"), "The standby is the primary; notes say what happened"
                        ),
                        "404": _error("No such backend"),
                        "409": _error(
                            "Refused in the current cluster state (the message says what to do); "
                            "nothing changed"
                        ),
                        "503": _error(
                            "The failover engine is not running here, or the switchover could not be "
                            "carried out"
                        ),
                    },
                    role="admin",
                    body="SwitchoverRequest",
                    tag="control",
                ),
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("SwitchoverRequest")}},
                },
            }
        },
        f"{p}/control/pause": {
            "post": _operation(
                "Pause like PgBouncer: wait until server connections are released",
                {
                    "200": ok(
                        _ref("PauseResult"),
                        "Paused (drained tells whether every server was released in time)",
                    ),
                    "409": _error("Already paused, resumed while draining, or several workers"),
                },
                role="admin",
                body="PauseRequest",
                tag="control",
            )
        },
        f"{p}/control/resume": {
            "post": _operation(
                "Resume after a pause",
                {
                    "200": ok(_ref("ResumeResult"), "Resumed"),
                    "409": _error("Not paused, or several workers"),
                },
                role="admin",
                body="ResumeRequest",
                tag="control",
            )
        },
        f"{p}/config": {
            "get": _operation(
                "The effective config, secrets redacted",
                {"200": ok(_ref("Config"), "Settings")},
                tag="config",
            )
        },
        f"{p}/healthz": {
            "get": _operation(
                "Liveness", {"200": ok(_ref("Healthz"), "The node runs")}, role=None, tag="probes"
            )
        },
        f"{p}/readyz": {
            "get": _operation(
                "Readiness: a backend is reachable and the node has quorum",
                {"200": ok(_ref("Readyz"), "Ready"), "503": ok(_ref("Readyz"), "Not ready; reasons say why")},
                role=None,
                tag="probes",
            )
        },
        f"{p}/openapi.json": {
            "get": _operation(
                "This document",
                {
                    "200": {
                        "description": "OpenAPI 3.0 document",
                        "content": {"application/json": {"schema": {"type": "object"}}},
                    }
                },
                role=None,
                tag="meta",
            )
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (text exposition format)",
                "tags": ["meta"],
                "security": [{}, *_SECURITY],
                "description": "Open unless api_metrics_auth = on.",
                "responses": {
                    "200": {
                        "description": "Metrics",
                        "content": {"text/plain": {"schema": {"type": "string"}}},
                    },
                    **_AUTH_ERRORS,
                },
            }
        },
    }


_DOCUMENT: Final[Schema] = {
    "openapi": "3.0.3",
    "info": {
        "title": "pgbalancer REST API",
        "version": __version__,
        "description": (
            "Operate one pgbalancer node. Log in with POST /api/v1/auth/login and send the token as "
            "'Authorization: Bearer <token>'; HTTP Basic with the same users also works. Viewers may read, "
            "admins may also act. Errors are JSON objects {error, message}."
        ),
    },
    "paths": _paths(),
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {
            "bearerAuth": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"},
            "basicAuth": {"type": "http", "scheme": "basic"},
        },
    },
}


def openapi_document() -> Schema:
    """A fresh copy of the document (callers may not change the shared one)."""
    return copy.deepcopy(_DOCUMENT)


_REF_PREFIX: Final = "#/components/schemas/"


def component_json_schema(name: str) -> Schema:
    """Component ``name`` as plain JSON Schema (draft 4), for validators that know no OpenAPI:
    references inlined, OpenAPI 3.0's ``nullable`` turned into a ``null`` type (and enum member)."""
    plain: Schema = _plain(SCHEMAS[name])
    return plain


def _plain(schema: object) -> Any:
    if isinstance(schema, list):
        return [_plain(item) for item in schema]
    if not isinstance(schema, dict):
        return schema
    if "$ref" in schema:
        return _plain(SCHEMAS[schema["$ref"].removeprefix(_REF_PREFIX)])
    plain = {key: list(value) if key == "enum" else _plain(value) for key, value in schema.items()}
    if "properties" in schema:  # a mapping of names to schemas, not a schema (a field may be "nullable")
        plain["properties"] = {name: _plain(value) for name, value in schema["properties"].items()}
    if plain.get("required") == []:  # draft 4 wants at least one name there
        del plain["required"]
    if plain.pop("nullable", False):
        if "type" in plain:
            plain["type"] = [plain["type"], "null"]
        if "enum" in plain:
            plain["enum"].append(None)
    return plain
