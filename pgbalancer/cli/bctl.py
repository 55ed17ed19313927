"""bctl: the operator's command-line client.

Today it only reports its version: the REST API it drives does not exist yet, and
commands arrive together with it (the REST API and bctl issues). It must never talk
to PostgreSQL or to the Raft group directly.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence

from pgbalancer import __version__


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="bctl",
        description="pgbalancer control client. Node, pool and cluster commands arrive with the REST API.",
    )
    parser.add_argument("--version", action="version", version=f"bctl {__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.add_parser("version", help="print the bctl version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command == "version":
        print(f"bctl {__version__}")
        return 0
    parser.print_help()
    return 2


if __name__ == "__main__":
    raise SystemExit(main())
