"""bctl: the operator's command-line client of pgbalancer's REST API (docs/bctl.md).

This module is the entry point only: the argument parser, the choice of output format and the
mapping of every failure to one message and an exit code (0 ok, 1 refused, 2 usage, 3 unreachable).
The commands live in :mod:`pgbalancer.cli.commands` and are imported only once a command runs, so
``bctl --help`` and usage errors stay fast (start-up budget 300 ms; bench/bctl_startup.py).

It must never: import an HTTP, terminal-UI, MQTT or PostgreSQL library at module level; print a
traceback (unexpected errors become one line, with the traceback only under --verbose); talk to
PostgreSQL or to the Raft group, except ``pool-advice``, which reads the server's own settings.
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

from pgbalancer import __version__
from pgbalancer.cli.errors import EXIT_REFUSED, EXIT_USAGE, CliError

NODE_ACTIONS = ("attach", "detach", "promote", "rejoin")

_EPILOG = """\
environment:
  PGBALANCER_URL       http(s)://host:port of the REST API (default http://localhost:8080)
  PGBALANCER_USER      API user for `bctl login` and automatic re-login
  PGBALANCER_PASSWORD  its password (never on the command line)
  PGBALANCER_TOKEN     a JWT to use instead of the stored one
exit codes: 0 ok, 1 refused by the server, 2 usage error, 3 cluster unreachable
"""


def _output_options(*, table: bool = True) -> argparse.ArgumentParser:
    """--json/--table/--verbose, accepted before or after the command (SUPPRESS keeps the global value)."""
    parent = argparse.ArgumentParser(add_help=False)
    group = parent.add_argument_group("output")
    formats = [("json", "print the documented JSON (the default when stdout is not a terminal)")]
    if table:
        formats.append(("table", "print box-drawing tables (the default on a terminal)"))
    for name, help_text in formats:
        group.add_argument(
            f"--{name}",
            dest="output",
            action="store_const",
            const=name,
            default=argparse.SUPPRESS,
            help=help_text,
        )
    group.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=argparse.SUPPRESS,
        help="show each HTTP request with its status and timing on stderr",
    )
    return parent


def _confirm_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-y",
        "--yes",
        action="store_true",
        help="do not ask for confirmation (required when not on a terminal)",
    )


def _digits(text: str) -> bool:
    """ASCII digits only: str.isdigit() alone accepts '²', which int() refuses."""
    return text.isascii() and text.isdigit()


def _node_id(text: str) -> int:
    if not _digits(text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a backend id (a number, as in backend_hostnameN)")
    return int(text)


def _tcp_port(text: str) -> int:
    if not _digits(text) or not 0 < int(text) < 65536:
        raise argparse.ArgumentTypeError(f"{text!r} is not a TCP port (1-65535)")
    return int(text)


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0 < value < 3600:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds between 0 and 3600")
    return value


def _count(text: str) -> int:
    if not _digits(text) or int(text) == 0:
        raise argparse.ArgumentTypeError(f"{text!r} is not a positive whole number")
    return int(text)


def build_parser() -> argparse.ArgumentParser:
    out = _output_options()
    parser = argparse.ArgumentParser(
        prog="bctl",
        description="Look at and drive a pgbalancer cluster through its REST API.",
        epilog=_EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        parents=[out],
    )
    parser.add_argument("--version", action="version", version=f"bctl {__version__}")
    where = parser.add_argument_group("connection")
    where.add_argument("--host", help="REST API host (default: PGBALANCER_URL's, else localhost)")
    where.add_argument("--port", type=_tcp_port, help="REST API port (default: PGBALANCER_URL's, else 8080)")
    where.add_argument(
        "--cluster",
        metavar="H:P,...",
        help="several nodes: tried in turn; control commands go to the watchdog leader",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    def command(name: str, help_text: str) -> argparse.ArgumentParser:
        return commands.add_parser(name, help=help_text, description=help_text, parents=[out])

    commands.add_parser("version", help="print the bctl version")
    login = command("login", "log in and store the token in ~/.config/pgbalancer/token (mode 0600)")
    login.add_argument("--user", "-u", help="API user (default: PGBALANCER_USER)")
    login.add_argument("--password-stdin", action="store_true", help="read the password from stdin")
    command("logout", "forget the stored token")
    command("status", "node status: version, uptime, clients, servers, backends, queries per second")
    nodes = command("nodes", "every backend, or one in detail")
    nodes.add_argument("id", nargs="?", type=_node_id, help="backend id")
    command("health", "health-check history and success rate per backend")
    command("pools", "every pool: active, idle, waiting, max wait, prepared statements")
    command("ai-stats", "the adaptive read balancer's scores, shares and learned latencies")

    cache = command("cache", "the query result cache").add_subparsers(dest="cache_command", metavar="ACTION")
    cache.required = True
    cache.add_parser("stats", help="hit ratio, entries, bytes, evictions", parents=[out])
    invalidate = cache.add_parser(
        "invalidate",
        help="drop cached results, all or of one table",
        parents=[_output_options(table=False)],
        description="Drop cached results, all or of one table. (Write `bctl --table cache invalidate` "
        "for table output: here --table names a table.)",
    )
    invalidate.add_argument("--table", dest="table_name", metavar="T", help="only results reading table T")
    _confirm_option(invalidate)

    command("watchdog-status", "the watchdog (Raft) view: leader, term, quorum, members, VIP holder")
    watchdog = command("watchdog", "change the watchdog membership").add_subparsers(
        dest="watchdog_command", metavar="ACTION"
    )
    watchdog.required = True
    for verb, what in (("add", "add a member"), ("remove", "remove a member")):
        member = watchdog.add_parser(verb, help=what, parents=[out])
        member.add_argument("address", metavar="HOST:PORT", help="the member's watchdog (Raft) address")
        _confirm_option(member)

    config = command("config", "the effective configuration").add_subparsers(
        dest="config_command", metavar="ACTION"
    )
    config.required = True
    config.add_parser("show", help="every setting, secrets redacted", parents=[out])

    node = command("node", "act on one backend").add_subparsers(dest="node_command", metavar="ACTION")
    node.required = True
    for action, what in (
        ("attach", "put a backend back in service"),
        ("detach", "take a backend out of service"),
        ("promote", "make a standby the primary"),
        ("rejoin", "rejoin a failed old primary as a standby (pg_rewind)"),
    ):
        sub = node.add_parser(action, help=what, parents=[out])
        sub.add_argument("id", type=_node_id, help="backend id")
        _confirm_option(sub)
    switchover = command("switchover", "planned switchover to a standby, without losing a commit")
    switchover.add_argument(
        "--to", dest="to", type=_node_id, required=True, metavar="ID", help="the new primary"
    )
    _confirm_option(switchover)
    command("reload", "reload the configuration (as SIGHUP)")
    pause = command("pause", "pause like PgBouncer: wait until server connections are released")
    pause.add_argument("--database", help="only this database")
    pause.add_argument("--timeout", type=_positive, help="seconds to wait for the release (max 60)")
    resume = command("resume", "resume after a pause")
    resume.add_argument("--database", help="only this database")

    events = command("events", "stream the cluster's MQTT events live")
    events.add_argument("--topic", default="pgbalancer/#", help="MQTT topic filter (default pgbalancer/#)")
    events.add_argument("--count", type=_count, help="stop after this many events")
    events.add_argument("--mqtt-host", help="broker host (default: the API node's host)")
    events.add_argument("--mqtt-port", type=_tcp_port, help="broker port (default: the node's mqtt_port)")
    events.add_argument(
        "--mqtt-user", help="broker user (default PGBALANCER_MQTT_USER; password PGBALANCER_MQTT_PASSWORD)"
    )

    advice = command("pool-advice", "size the pools from the database's own limits and load")
    advice.add_argument("--dsn", required=True, help="libpq connection string of a backend (read-only use)")
    advice.add_argument(
        "--nodes", type=_count, help="pgbalancer nodes (default: the watchdog's, else --cluster's)"
    )

    top = command("top", "live view of nodes, pools, QPS and balancer shares (q quits)")
    top.add_argument("--interval", type=_positive, default=1.0, help="seconds between refreshes (default 1)")

    completion = commands.add_parser("completion", help="print a shell completion script")
    completion.add_argument("shell", choices=("bash", "zsh"))
    return parser


def _wants_json(args: argparse.Namespace) -> bool:
    output = getattr(args, "output", None)
    if output is not None:
        return bool(output == "json")
    return not sys.stdout.isatty()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 with the usage on a bad command line
    verbose = bool(getattr(args, "verbose", False))
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    if args.command == "version":
        print(f"bctl {__version__}")
        return 0
    if args.command == "completion":
        from pgbalancer.cli.completion import completion_script

        sys.stdout.write(completion_script(parser, args.shell))
        return 0
    try:
        from pgbalancer.cli.commands import run

        return run(args, json_output=_wants_json(args), verbose=verbose, env=os.environ)
    except CliError as exc:
        print(f"bctl: {exc.message}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("bctl: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:  # `bctl ... | head`: the reader left; not an error of ours
        sys.stderr.close()
        return 0
    except Exception as exc:
        if verbose:
            import traceback

            traceback.print_exc()
        print(
            f"bctl: unexpected error ({type(exc).__name__}: {exc}); rerun with --verbose and report it",
            file=sys.stderr,
        )
        return EXIT_REFUSED


if __name__ == "__main__":
    raise SystemExit(main())
