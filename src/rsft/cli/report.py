"""``rsft report RUN_DIR``: the HTML report of a run and its table (``rsft.report.runs``)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rsft.cli.options import Command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="the run folder, e.g. runs/x")
    parser.add_argument("--output", type=Path, metavar="PATH.html",
                        help="where to write the page (default RUN_DIR/report.html)")
    parser.add_argument("--no-terminal", action="store_true", help="do not print the table")


def main(args: argparse.Namespace) -> None:
    from rsft.report.runs import format_table, write_report

    run, output = write_report(args.run_dir, args.output)
    if not args.no_terminal:
        print(format_table(run))
    print(f"report: {output}")


COMMANDS = {"report": Command("HTML report of an RSFT run: rewards, kept set, eval with CI, KL, control, losses",
                              add_arguments, main)}
