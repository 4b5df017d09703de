"""``rsft stats RUN_OR_ROUND_DIR``: the Best-of-N curve of a scored round (``rsft.bon.report``)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from rsft.cli.options import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("path", type=Path, metavar="RUN_OR_ROUND_DIR",
                        help="a round folder (runs/x/round-000), or a run folder: its latest scored round")
    parser.add_argument("--round", type=int, metavar="K", dest="round_index",
                        help="with a run folder: use round-K instead of the latest scored one")
    parser.add_argument("--threshold", type=float, default=1.0,
                        help="a reward >= this counts as a pass for pass@n (default 1.0, as rsft rm-check: "
                             "reasoning-gym gives wrong answers partial credit)")
    parser.add_argument("--plot", type=Path, metavar="PATH.png", help="also draw the curve into this PNG file")
    parser.add_argument("--json", action="store_true", help="print the curve as JSON instead of a table")


def main(args: argparse.Namespace) -> None:
    from rsft.bon.report import find_round, format_report, plot, report

    rep = report(find_round(args.path, args.round_index), args.threshold)
    if args.plot is not None:
        plot(rep, args.plot)
        rep["plot"] = str(args.plot)
    if args.json:
        print(json.dumps(rep, indent=2))
    else:
        print(format_report(rep))
        if args.plot is not None:
            print(f"plot: {args.plot}")


COMMANDS = {"stats": Command("Best-of-N curve of a scored round: E[max reward], pass@n and KL per n",
                             add_arguments, main)}
