"""How a repetition benchmark leaves its results: ``<name>.json`` and ``<name>.md`` side by side.

bench/failover_time and bench/watchdog_failover write the same pair the same way through this: the
JSON holds the run's options (all but ``--out``), the summary and every repetition; the markdown is
the table the benchmark rendered, also printed. It measures nothing and writes only those two files.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


def write_results(
    out: Path,
    name: str,
    args: argparse.Namespace,
    reps: Sequence[DataclassInstance],
    totals: dict[str, object],
    table: str,
) -> None:
    config = {key: value for key, value in vars(args).items() if key != "out"}
    result = {"config": config, "summary": totals, "repetitions": [asdict(rep) for rep in reps]}
    (out / f"{name}.json").write_text(json.dumps(result, indent=2) + "\n")
    (out / f"{name}.md").write_text(table)
    print(table)
    print(f"written to {out}")
