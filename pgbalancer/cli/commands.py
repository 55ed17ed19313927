"""bctl's commands: each maps a parsed command line onto REST API calls and prints the answer.

``--json`` prints exactly the API's answer (the shapes of docs/api.md and openapi.json; bctl's own
``pool-advice`` shape is in docs/bctl.md), so scripts see one stable shape whatever bctl version.
Tables come from :mod:`pgbalancer.cli.render`. Acting commands ask for confirmation on a terminal,
and without ``--yes`` refuse to run when there is none to ask.

It must never: print a token or a password; act without confirmation or ``--yes``; import the MQTT,
terminal-UI or PostgreSQL libraries unless their command runs.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import sys
from collections.abc import Callable, Mapping
from typing import Any

from pgbalancer.cli import render
from pgbalancer.cli.connection import ApiClient, Endpoint, Json, path_segment, resolve_endpoints
from pgbalancer.cli.errors import EXIT_REFUSED, EXIT_USAGE, CliError

Renderer = Callable[[Json], list[Any]]


def emit(data: Any, renderer: Renderer, json_output: bool) -> None:
    if json_output:
        sys.stdout.write(json.dumps(data, indent=2, sort_keys=False) + "\n")
    else:
        render.print_tables(renderer(data))
    sys.stdout.flush()


def confirm(args: argparse.Namespace, question: str) -> None:
    if getattr(args, "yes", False):
        return
    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        raise CliError(
            f"refusing to {question} without --yes: there is no terminal to confirm on", EXIT_USAGE
        )
    try:
        answer = input(f"{question[0].upper()}{question[1:]}? [y/N] ").strip().lower()
    except EOFError:
        answer = ""
    if answer not in ("y", "yes"):
        raise CliError("aborted: nothing was changed", EXIT_REFUSED)


def _progress(text: str) -> contextlib.AbstractContextManager[object]:
    """A spinner on stderr while an action runs, when a person watches it (stderr is a terminal)."""
    if not sys.stderr.isatty():
        return contextlib.nullcontext()
    from rich.console import Console

    return Console(stderr=True).status(text)


class Commands:
    def __init__(self, args: argparse.Namespace, client: ApiClient, json_output: bool) -> None:
        self.args = args
        self.client = client
        self.json = json_output

    # ---- helpers

    def show(self, path: str, renderer: Renderer) -> int:
        emit(self.client.request("GET", path), renderer, self.json)
        return 0

    def act(self, path: str, body: Json | None, title: str, *, long: bool = False) -> int:
        target = self.client.leader()
        timeout = 180.0 if long else 75.0
        with _progress(f"{title}: waiting for {target.url} (up to {timeout:.0f} s)"):
            data = self.client.request("POST", path, body, only=target, timeout=timeout)
        emit(data, lambda d: render.result_tables(title, d), self.json)
        return 0

    # ---- session

    def login(self) -> int:
        env = self.client.env
        user = self.args.user or env.get("PGBALANCER_USER")
        if not user:
            if not sys.stdin.isatty():
                raise CliError("no user: pass --user or set PGBALANCER_USER", EXIT_USAGE)
            user = input("user: ").strip()
        if self.args.password_stdin:
            password = sys.stdin.readline().rstrip("\n")
        elif env.get("PGBALANCER_PASSWORD") is not None:
            password = env["PGBALANCER_PASSWORD"]
        elif sys.stdin.isatty():
            import getpass

            password = getpass.getpass(f"password for {user}: ")
        else:
            raise CliError("no password: use --password-stdin or set PGBALANCER_PASSWORD", EXIT_USAGE)
        token = self.client.login(user, password)
        self.client.store.save(token)
        result = {"logged_in": True, "user": user, "token_file": str(self.client.store.path)}
        emit(result, lambda d: [render.key_values("login", d)], self.json)
        return 0

    def logout(self) -> int:
        removed = self.client.store.clear()
        result = {"logged_out": True, "token_file": str(self.client.store.path), "removed": removed}
        emit(result, lambda d: [render.key_values("logout", d)], self.json)
        return 0

    # ---- reading

    def status(self) -> int:
        return self.show("/status", render.status_tables)

    def nodes(self) -> int:
        if self.args.id is None:
            return self.show("/nodes", render.nodes_tables)
        return self.show(f"/nodes/{self.args.id}", render.node_detail_tables)

    def health(self) -> int:
        return self.show("/health/stats", render.health_tables)

    def pools(self) -> int:
        return self.show("/pools", render.pools_tables)

    def ai_stats(self) -> int:
        return self.show("/ai/stats", render.ai_stats_tables)

    def watchdog_status(self) -> int:
        return self.show("/watchdog/info", render.watchdog_tables)

    def cache(self) -> int:
        if self.args.cache_command == "stats":
            return self.show("/cache/stats", render.cache_stats_tables)
        table = self.args.table_name
        confirm(
            self.args, f"drop the cached results of table {table}" if table else "drop every cached result"
        )
        return self.act("/cache/invalidate", {"table": table} if table else {}, "cache invalidated")

    def config(self) -> int:
        return self.show("/config", render.config_tables)

    # ---- acting

    def node(self) -> int:
        action, node_id = self.args.node_command, self.args.id
        confirm(self.args, f"{action} backend {node_id}")
        api_action = "recovery" if action == "rejoin" else action
        long = action in ("promote", "rejoin")
        return self.act(f"/nodes/{node_id}/{api_action}", None, f"{action} backend {node_id}", long=long)

    def switchover(self) -> int:
        confirm(self.args, f"switch the primary over to backend {self.args.to}")
        return self.act(
            "/control/switchover", {"to": self.args.to}, f"switchover to {self.args.to}", long=True
        )

    def watchdog(self) -> int:
        address = self.args.address
        if self.args.watchdog_command == "add":
            confirm(self.args, f"add {address} to the watchdog")
            return self.act("/watchdog/members", {"address": address}, f"watchdog member {address} added")
        confirm(self.args, f"remove {address} from the watchdog")
        target = self.client.leader()
        data = self.client.request("DELETE", f"/watchdog/members/{path_segment(address)}", only=target)
        emit(data, lambda d: render.result_tables(f"watchdog member {address} removed", d), self.json)
        return 0

    def reload(self) -> int:
        return self.act("/control/reload", {}, "reload")

    def pause(self) -> int:
        body: Json = {}
        if self.args.database:
            body["database"] = self.args.database
        if self.args.timeout is not None:
            if self.args.timeout > 60:
                raise CliError("--timeout is at most 60 seconds", EXIT_USAGE)
            body["timeout"] = self.args.timeout
        return self.act("/control/pause", body, "pause")

    def resume(self) -> int:
        body = {"database": self.args.database} if self.args.database else {}
        return self.act("/control/resume", body, "resume")

    # ---- the others

    def events(self) -> int:
        from pgbalancer.cli.events import stream_events

        return stream_events(self.args, self.client, self.json)

    def pool_advice(self) -> int:
        from pgbalancer.cli.advice_command import pool_advice

        return pool_advice(self.args, self.client, self.json)

    def top(self) -> int:
        from pgbalancer.cli.top import run_top

        return run_top(self.client, self.args.interval)


def run(args: argparse.Namespace, *, json_output: bool, verbose: bool, env: Mapping[str, str]) -> int:
    endpoints: tuple[Endpoint, ...] = resolve_endpoints(args.host, args.port, args.cluster, env)
    client = ApiClient(endpoints, env, verbose=verbose)
    commands = Commands(args, client, json_output)
    try:
        handler: Callable[[], int] = getattr(commands, args.command.replace("-", "_"))
        return handler()
    finally:
        client.close()
