"""``rsft generate|score|select|export|train|run``: one sub-command per stage of a round, and a whole run.

Every stage command takes the round folder it works in. Options come from a ``--config`` YAML
(the same file ``rsft run`` takes) and flags override it; the flags are the config fields the
sections below select (``rsft.cli.options``), their help the fields' docstrings.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path
from typing import Any

from rsft.cli.options import Command, Section, add_config_argument, add_config_flags, config_from

PROMPTS = Section("prompts", ("prompts",), exclude=("prompts.task.template", "prompts.task.chat"),
                  help={"prompts.task.name": "reasoning-gym task name (instead of --prompts), e.g. chain_sum"})
GENERATION = Section("generation", ("generation.n", "generation.generator", "generation.sampling",
                                    "generation.shard_size"), exclude=("generation.generator.n",))
ADAPTIVE = Section("adaptive N (stop sampling a prompt once its answers agree)", ("generation.adaptive",))
SCORING = Section("scoring", ("scoring",))
SELECTION = Section("selection", ("selection",), exclude=("selection.seed",))
EXECUTOR = Section("executor", ("executor", "ray.address", "ray.generate.actors", "ray.generate.num_cpus",
                                "ray.generate.num_gpus"))
TRAINING = Section("training", ("generation.generator.model", "train"), exclude=("train.lora_target_modules",),
                   help={"generation.generator.model": "starting checkpoint: model folder, cached hub id, or "
                                                       "gemma3-270m (default: the config's generator model)"})
TRACKING = Section("tracking (metrics.jsonl always; TensorBoard, MLflow, trackio, W&B)", ("tracking",))
RUN = Section("run", ("name", "out", "rounds.rounds"),
              help={"rounds.rounds": "full RSFT: K rounds of generate, score, select, train and held-out eval gate"})


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


def _round_dir(p: argparse.ArgumentParser, help: str = "the round folder, e.g. runs/x/round-000") -> None:
    p.add_argument("round_dir", type=Path, metavar="ROUND_DIR", help=help)


def _new_version(p: argparse.ArgumentParser) -> None:
    p.add_argument("--new-version", action="store_true",
                   help="the config changed: keep the old outputs under ROUND_DIR/versions/ and redo the stage")


def _stage_arguments(*sections: Section, new_version: bool = False) -> Any:
    """The ``add_arguments`` of a stage command: ROUND_DIR, --config, maybe --new-version, the sections."""
    def add_arguments(p: argparse.ArgumentParser) -> None:
        _round_dir(p)
        add_config_argument(p)
        if new_version:
            _new_version(p)
        add_config_flags(p, sections)
    return add_arguments


def cmd_generate(args: argparse.Namespace) -> None:
    from rsft import pipeline, stages
    from rsft.stages.executor import make_executor

    config = config_from(args)
    executor = make_executor(config.executor, config.ray)
    prompts = pipeline.open_prompt_set(config.prompts)  # streamed into prompts.parquet, as in rsft run
    counts = stages.generate(args.round_dir, config.generation,
                             functools.partial(pipeline.build_generator, config.generation, round_dir=args.round_dir),
                             prompts, new_version=args.new_version, executor=executor)
    _print_json({"round_dir": str(args.round_dir), **counts})


def cmd_score(args: argparse.Namespace) -> None:
    from rsft import pipeline, stages, stats
    from rsft.stages.executor import make_executor

    config = config_from(args)
    executor = make_executor(config.executor, config.ray)
    summary = stages.score(args.round_dir, config.scoring, pipeline.build_scorer(config.scoring, args.round_dir),
                           shard_size=config.generation.shard_size, new_version=args.new_version,
                           executor=executor,
                           make_scorer=pipeline.scorer_factory(config.scoring, executor, args.round_dir))
    print(stats.format_stats(summary))


def cmd_select(args: argparse.Namespace) -> None:
    from rsft import stages

    _print_json(stages.select_completions(args.round_dir, config_from(args).selection))


def cmd_export(args: argparse.Namespace) -> None:
    from rsft import stages

    _print_json(stages.export_selected(args.round_dir))


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    """``rsft train ROUND_DIR``: the run config's ``train`` section and the starting checkpoint."""
    _round_dir(p, "the round folder: reads selected.jsonl, writes checkpoint/")
    add_config_argument(p, help="YAML run config: its train section and generator model; flags override them "
                                "(default: the config.yaml of the run folder holding ROUND_DIR)")
    add_config_flags(p, [TRAINING])


def cmd_train(args: argparse.Namespace) -> None:
    """Train on ROUND_DIR/selected.jsonl and print the summary as JSON."""
    from rsft import artifacts
    from rsft.models import EMBEDDED_DEFAULT
    from rsft.train.sft import train

    run_config = args.round_dir.parent / artifacts.CONFIG  # the run's own settings, as rsft run wrote them
    if args.config is None and run_config.is_file():
        args.config = run_config
    config = config_from(args)
    model = config.generation.generator.model or EMBEDDED_DEFAULT
    if args.config is None:
        print(f"rsft: no --config and no {run_config}: training {model} with the default train settings "
              "and the flags given", file=sys.stderr)
    summary = train(args.round_dir, config.train, model)
    print(json.dumps(summary, indent=2))


def add_run_arguments(p: argparse.ArgumentParser) -> None:
    add_config_argument(p)
    _new_version(p)
    add_config_flags(p, [RUN, PROMPTS, GENERATION, ADAPTIVE, SCORING, SELECTION, EXECUTOR, TRACKING])


def cmd_run(args: argparse.Namespace) -> None:
    from rsft import pipeline

    config = config_from(args)
    if config.rounds.train:
        from rsft.rounds import loop as rounds

        _print_json(rounds.run_rounds(config))
        return
    from rsft.rounds.rm_check import gate_round
    from rsft.tracking import start as start_tracking

    tracker = start_tracking(config)  # before any work: a missing tracker library fails at once
    gate_round(config, pipeline.round_dir(config))  # rounds.rm_check applies to a single round too
    result = pipeline.run_round(config, new_version=args.new_version)
    tracker.round(0, result.round_dir)
    _print_json({"round_dir": str(result.round_dir), "selected": result.export["rows"],
                 "selected_jsonl": result.export["path"]})


COMMANDS: dict[str, Command] = {
    "generate": Command("sample N completions per prompt into ROUND_DIR/completions.parquet",
                        _stage_arguments(PROMPTS, GENERATION, ADAPTIVE, EXECUTOR, new_version=True), cmd_generate),
    "score": Command("score every (prompt, completion) into ROUND_DIR/rewards.parquet and print statistics",
                     _stage_arguments(SCORING, EXECUTOR, new_version=True), cmd_score),
    "select": Command("pick completions from the reward matrix into ROUND_DIR/selection.parquet",
                      _stage_arguments(SELECTION), cmd_select),
    "export": Command("write the selected completions as TRL-ready ROUND_DIR/selected.jsonl",
                      _stage_arguments(), cmd_export),
    "train": Command("fine-tune the starting checkpoint on ROUND_DIR/selected.jsonl into ROUND_DIR/checkpoint/",
                     add_train_arguments, cmd_train),
    "run": Command("one whole round (generate, score, select, export) from a YAML config",
                   add_run_arguments, cmd_run),
}
