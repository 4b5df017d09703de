"""``rsft sweep --config FILE``: a grid over N, temperature, keep threshold and epochs (``rsft.rounds.sweep``)."""

from __future__ import annotations

import argparse

from rsft.cli.options import Command, Section, add_config_argument, add_config_flags, apply_flags

RUN = Section("run", ("name", "out"))


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_argument(parser, required=True,
                        help="the YAML of `rsft run` (with train: and eval:) plus a sweep: section")
    parser.add_argument("--dry-run", action="store_true",
                        help="print the plan (generations, selections, trainings, evals) and stop")
    parser.add_argument("--new-version", action="store_true",
                        help="the generation or scoring config changed: keep the old outputs under versions/ "
                             "and redo them")
    add_config_flags(parser, [RUN])


def main(args: argparse.Namespace) -> None:
    from rsft import artifacts
    from rsft.config import check_run, load_config
    from rsft.rounds.sweep import format_markdown, format_plan, plan, run_sweep

    config = check_run(apply_flags(args, load_config(args.config)))
    if args.dry_run:
        print(format_plan(plan(config)))
        return
    summary = run_sweep(config, new_version=args.new_version)
    print(format_markdown(summary))
    print(f"sweep: {config.run_dir / artifacts.SWEEP_JSON}, {config.run_dir / artifacts.SWEEP_MD}")


COMMANDS = {"sweep": Command("a grid over N, temperature, keep threshold and epochs from one YAML, with a "
                             "results table", add_arguments, main)}
