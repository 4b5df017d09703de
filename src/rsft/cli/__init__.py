"""``rsft``: one sub-command per stage, ``run`` for a whole round from a YAML config, and the tools
around it (bon, serve, serve-reward, sweep, report, status, stats, rm-check, rm-train).

Each module of this package holds the argparse code of one command group and the glue from parsed
flags to the library call; flags that set config fields are generated from the config dataclasses
(``rsft.cli.options``). Bad input exits with code 2 and one line ``rsft: error: ...``.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from rsft.errors import RsftError

MODULES = ("stages", "stats", "bon", "status", "report", "serve", "sweep", "rm")
"""The command modules under ``rsft.cli``, in the order ``rsft --help`` lists their commands; each has
``COMMANDS``, a mapping of command name to ``rsft.cli.options.Command``."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsft", description="Rejection-sampling fine-tuning and Best-of-N.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module_name in MODULES:
        module = importlib.import_module(f"rsft.cli.{module_name}")
        for name, command in module.COMMANDS.items():
            p = sub.add_parser(name, help=command.help, description=command.help)
            command.add_arguments(p)
            p.set_defaults(func=command.main)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except RsftError as e:
        print(f"rsft: error: {e}", file=sys.stderr)
        return e.exit_code
    except KeyboardInterrupt:
        print("rsft: interrupted; finished shards are kept, rerun the same command to resume", file=sys.stderr)
        return 130
    return 0
