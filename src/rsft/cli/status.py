"""``rsft status RUN_DIR``: each round's stages of a run (``rsft.report.status``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from rsft.cli.options import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run folder (or one round folder)")
    parser.add_argument("--json", action="store_true", help="print the status as JSON")


def main(args: argparse.Namespace) -> None:
    from rsft.report.status import format_status, run_status

    status: Any = run_status(args.run_dir)
    print(json.dumps(status, indent=2) if args.json else format_status(status))


COMMANDS = {"status": Command("each round's stages of a run: done, partial (finished shards) or missing",
                              add_arguments, main)}
