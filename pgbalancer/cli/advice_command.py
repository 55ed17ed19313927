"""``bctl pool-advice``: gathers the facts (PostgreSQL through --dsn, pgbalancer through its API) and
prints :func:`pgbalancer.cli.advice.advise`'s recommendation with its arithmetic.

It reads the server version first, then asks only for what that version has: ``reserved_connections``
from PostgreSQL 16, ``pg_stat_database.active_time`` and ``idle_in_transaction_time`` from 14.

It must never: write to the database (the session is read-only), or print the DSN's password.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from typing import Any

from pgbalancer.cli import render
from pgbalancer.cli.advice import Advice, BalancerFacts, PoolDemand, ServerFacts, advise
from pgbalancer.cli.connection import ApiClient
from pgbalancer.cli.errors import EXIT_UNREACHABLE, EXIT_USAGE, CliError


def server_facts(dsn: str) -> ServerFacts:
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=10, autocommit=True) as conn:
            conn.read_only = True

            def one(sql: str) -> Any:
                row = conn.execute(sql).fetchone()
                return None if row is None else row[0]

            version = int(one("SELECT current_setting('server_version_num')"))
            max_connections = int(one("SELECT current_setting('max_connections')"))
            superuser = int(one("SELECT current_setting('superuser_reserved_connections')"))
            reserved = (
                int(one("SELECT current_setting('reserved_connections')")) if version >= 160000 else None
            )
            active = idle = None
            if version >= 140000:
                row = conn.execute(
                    "SELECT coalesce(sum(active_time), 0), coalesce(sum(idle_in_transaction_time), 0) "
                    "FROM pg_stat_database"
                ).fetchone()
                assert row is not None
                active, idle = float(row[0]), float(row[1])
    except psycopg.OperationalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CliError(f"cannot connect to PostgreSQL with --dsn: {first}", EXIT_UNREACHABLE) from None
    except psycopg.ProgrammingError as exc:
        raise CliError(f"--dsn is not a usable connection string: {exc}", EXIT_USAGE) from None
    except psycopg.Error as exc:
        raise CliError(
            f"PostgreSQL refused a settings query: {exc}; connect as a user that may read them"
        ) from None
    return ServerFacts(version, max_connections, superuser, reserved, active, idle)


def balancer_facts(client: ApiClient, nodes_override: int | None) -> BalancerFacts:
    settings = client.request("GET", "/config")["settings"]
    status = client.request("GET", "/status")
    pools = client.request("GET", "/pools")["pools"]
    demand: dict[tuple[str, str], int] = {}
    for pool in pools:
        key = (pool["database"], pool["user"])
        demand[key] = demand.get(key, 0) + int(pool["queries_total"])
    nodes = nodes_override or _node_count(client)
    return BalancerFacts(
        nodes=nodes,
        workers=int(status["worker"]["count"]),
        num_init_children=int(settings["num_init_children"]),
        max_pool=int(settings["max_pool"]),
        pools=tuple(PoolDemand(db, user, queries) for (db, user), queries in sorted(demand.items())),
    )


def _node_count(client: ApiClient) -> int:
    """The watchdog's member count when it runs, else the nodes given with --cluster."""
    reply = client.raw("GET", "/watchdog/info", auth=client.authorization(time.time()))
    if reply.status == 200 and isinstance(reply.body, dict) and reply.body.get("enabled"):
        return max(1, len(reply.body.get("nodes") or []))
    return len(client.endpoints)


def pool_advice(args: argparse.Namespace, client: ApiClient, json_output: bool) -> int:
    balancer = balancer_facts(client, args.nodes)  # first: without a token, fail before any connection
    advice = advise(server_facts(args.dsn), balancer)
    if json_output:
        sys.stdout.write(json.dumps(advice.as_json(), indent=2) + "\n")
    else:
        render.print_tables(advice_tables(advice))
    return 0


def advice_tables(advice: Advice) -> list[Any]:
    rows = [
        ("num_init_children", str(advice.balancer.num_init_children), str(advice.num_init_children)),
        ("max_pool", str(advice.balancer.max_pool), str(advice.max_pool)),
        (
            "server connections (cluster)",
            str(advice.current_max_server_connections),
            str(advice.max_server_connections),
        ),
    ]
    out: list[Any] = [render.table("pool advice", ("setting", "now", "recommended"), rows)]
    if advice.pools:
        out.append(
            render.table(
                "per pool",
                ("database", "user", "share", "size"),
                ([p.database, p.user, render.cell(p.share, percent=True), str(p.size)] for p in advice.pools),
            )
        )
    out.append(render.table("arithmetic", ("step",), ([line] for line in advice.explanation)))
    return out
