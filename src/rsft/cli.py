"""``rsft``: one sub-command per stage, plus ``run`` for a whole round from a YAML config.

Every stage command takes the round folder it works in. Options come from a ``--config`` YAML
(the same file ``rsft run`` takes) and flags override it; flag help is the config field's docstring.
Bad input exits with code 2 and one line ``rsft: error: ...``.
"""

from __future__ import annotations

import argparse
import functools
import importlib
import json
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from rsft.config import (
    ActorPoolConfig,
    GenerationConfig,
    PromptsConfig,
    RayConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    TaskConfig,
    field_docs,
    key_value,
    load_config,
)
from rsft.errors import RsftError


def _doc(cls: type, name: str) -> str:
    return field_docs(cls).get(name, "")


def _add_config(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, help="YAML run config; flags override its values")


def _add_prompt_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("prompts")
    g.add_argument("--prompts", help=_doc(PromptsConfig, "path"))
    g.add_argument("--split", help=_doc(PromptsConfig, "split"))
    g.add_argument("--prompt-field", help=_doc(PromptsConfig, "prompt_field"))
    g.add_argument("--messages-field", help=_doc(PromptsConfig, "messages_field"))
    g.add_argument("--answer-field", help=_doc(PromptsConfig, "answer_field"))
    g.add_argument("--task", help="reasoning-gym task name (instead of --prompts), e.g. chain_sum")
    g.add_argument("--size", type=int, help=_doc(TaskConfig, "size"))
    g.add_argument("--task-seed", type=int, help=_doc(TaskConfig, "seed"))
    g.add_argument("--shots", type=int, help=_doc(TaskConfig, "shots"))
    g.add_argument("--shot-seed", type=int, help=_doc(TaskConfig, "shot_seed"))
    g.add_argument("--task-option", type=key_value, action="append", metavar="KEY=VALUE", help=_doc(TaskConfig, "options"))


def _add_generation_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("generation")
    g.add_argument("-n", type=int, help=_doc(GenerationConfig, "n"))
    g.add_argument("--backend", help="generation backend: hf, openai or vllm")
    g.add_argument("--model", help="model path, hub id (offline), served model name, or gemma3-270m")
    g.add_argument("--option", type=key_value, action="append", metavar="KEY=VALUE",
                   help="backend option, e.g. batch_size=8, dtype=bfloat16, base_url=http://host/v1")
    g.add_argument("--temperature", type=float, help="sampling temperature (0: greedy)")
    g.add_argument("--top-p", type=float, help="nucleus sampling mass")
    g.add_argument("--top-k", type=int, help=_doc(SamplingConfig, "top_k"))
    g.add_argument("--max-new-tokens", type=int, help="tokens to generate at most per completion")
    g.add_argument("--stop", action="append", help="stop string (repeatable); '\\n' means newline")
    g.add_argument("--seed", type=int, help="sampling seed")
    g.add_argument("--shard-size", type=int, help=_doc(GenerationConfig, "shard_size"))


def _add_scoring_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("scoring")
    g.add_argument("--scorer", help=_doc(ScoringConfig, "scorer"))
    g.add_argument("--scorer-option", type=key_value, action="append", metavar="KEY=VALUE", help=_doc(ScoringConfig, "options"))
    g.add_argument("--on-error", choices=["fail", "record"], help=_doc(ScoringConfig, "on_error"))
    g.add_argument("--pass-threshold", type=float, help=_doc(ScoringConfig, "pass_threshold"))


def _add_selection_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("selection")
    g.add_argument("--strategy", choices=["best", "top_k", "threshold", "k_per_prompt", "rso", "dpo_pairs"],
                   help=_doc(SelectionConfig, "strategy"))
    g.add_argument("-k", type=int, help="how many to keep (top_k: overall; k_per_prompt, rso: per prompt)")
    g.add_argument("--beta", type=float, help=_doc(SelectionConfig, "beta"))
    g.add_argument("--threshold", type=float, help=_doc(SelectionConfig, "threshold"))
    g.add_argument("--dedup", action="store_true", default=None, help=_doc(SelectionConfig, "dedup"))


def _add_executor_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("executor")
    g.add_argument("--executor", help=_doc(RunConfig, "executor"))
    g.add_argument("--ray-address", help=_doc(RayConfig, "address"))
    g.add_argument("--actors", type=int,
                   help="ray: actors in each pool (generators and scorers; for vllm, the data-parallel replicas)")
    g.add_argument("--actor-cpus", type=float, help="ray: " + _doc(ActorPoolConfig, "num_cpus"))
    g.add_argument("--actor-gpus", type=float, help="ray: " + _doc(ActorPoolConfig, "num_gpus"))


def _set(obj: Any, attr: str, value: Any) -> None:
    if value is not None:
        setattr(obj, attr, value)


def _config_from(args: argparse.Namespace) -> RunConfig:
    """The config file (or defaults) with every given flag applied on top."""
    config = load_config(args.config) if getattr(args, "config", None) else RunConfig()
    a = vars(args)
    if a.get("prompts") is not None or a.get("task") is not None:
        config.prompts.path, config.prompts.task = a.get("prompts"), None
        if a.get("task"):
            config.prompts.task = TaskConfig(name=a["task"])
    pc = config.prompts
    for attr in ("split", "prompt_field", "messages_field", "answer_field"):
        _set(pc, attr, a.get(attr))
    if pc.task is not None:
        for flag, attr in (("size", "size"), ("task_seed", "seed"), ("shots", "shots"), ("shot_seed", "shot_seed")):
            _set(pc.task, attr, a.get(flag))
        pc.task.options.update(dict(a.get("task_option") or []))
    gc, sc = config.generation, config.generation.sampling
    _set(gc, "n", a.get("n"))
    _set(gc, "shard_size", a.get("shard_size"))
    _set(gc.generator, "backend", a.get("backend"))
    _set(gc.generator, "model", a.get("model"))
    gc.generator.options.update(dict(a.get("option") or []))
    for attr in ("temperature", "top_p", "top_k", "max_new_tokens", "seed"):
        _set(sc, attr, a.get(attr))
    if a.get("stop"):
        sc.stop = [s.encode().decode("unicode_escape") for s in a["stop"]]
    _set(config.scoring, "scorer", a.get("scorer"))
    config.scoring.options.update(dict(a.get("scorer_option") or []))
    _set(config.scoring, "on_error", a.get("on_error"))
    _set(config.scoring, "pass_threshold", a.get("pass_threshold"))
    for attr in ("strategy", "k", "threshold", "dedup", "beta"):
        _set(config.selection, attr, a.get(attr))
    _set(config, "executor", a.get("executor"))
    _set(config.ray, "address", a.get("ray_address"))
    for pool in (config.ray.generate, config.ray.score):
        for flag, attr in (("actors", "actors"), ("actor_cpus", "num_cpus"), ("actor_gpus", "num_gpus")):
            _set(pool, attr, a.get(flag))
    return config


def _print_json(obj: Any) -> None:
    print(json.dumps(obj, indent=2, default=str))


# --- commands ------------------------------------------------------------------------------------


def cmd_generate(args: argparse.Namespace) -> None:
    from rsft import pipeline, stages
    from rsft.executor import make_executor

    config = _config_from(args)
    executor = make_executor(config.executor, config.ray)
    prompts = pipeline.load_prompt_set(config.prompts)
    pipeline.check_backends(config.generation)
    counts = stages.generate(args.round_dir, config.generation,
                             functools.partial(pipeline.build_generator, config.generation, round_dir=args.round_dir), prompts,
                             new_version=args.new_version, executor=executor)
    _print_json({"round_dir": str(args.round_dir), **counts})


def cmd_score(args: argparse.Namespace) -> None:
    from rsft import pipeline, stages, stats
    from rsft.executor import make_executor

    config = _config_from(args)
    executor = make_executor(config.executor, config.ray)
    summary = stages.score(args.round_dir, config.scoring, pipeline.build_scorer(config.scoring),
                           shard_size=config.generation.shard_size, new_version=args.new_version,
                           executor=executor, make_scorer=pipeline.scorer_factory(config.scoring, executor))
    print(stats.format_stats(summary))


def cmd_select(args: argparse.Namespace) -> None:
    from rsft import stages

    _print_json(stages.select_completions(args.round_dir, _config_from(args).selection))


def cmd_export(args: argparse.Namespace) -> None:
    from rsft import stages

    _print_json(stages.export_selected(args.round_dir))


def cmd_train(args: argparse.Namespace) -> None:
    from rsft import train

    train.main(args)


def _add_train_args(p: argparse.ArgumentParser) -> None:
    from rsft import train

    train.add_arguments(p, round_dir=False)


def cmd_run(args: argparse.Namespace) -> None:
    from rsft import pipeline

    config = _config_from(args)
    _set(config, "name", args.name)
    _set(config, "out", args.out)
    if args.rounds is not None:
        config.rounds.rounds, config.rounds.train = args.rounds, True
    if config.rounds.train:
        from rsft import rounds

        _print_json(rounds.run_rounds(config))
        return
    from rsft.rm import gate_round

    gate_round(config, pipeline.round_dir(config))  # rounds.rm_check applies to a single round too
    result = pipeline.run_round(config, new_version=args.new_version)
    _print_json({"round_dir": str(result.round_dir), "selected": result.export["rows"],
                 "selected_jsonl": result.export["path"]})


COMMANDS: dict[str, tuple[Callable[[argparse.Namespace], None], str, list[Callable[..., None]]]] = {
    "generate": (cmd_generate, "sample N completions per prompt into ROUND_DIR/completions.parquet",
                 [_add_prompt_args, _add_generation_args, _add_executor_args]),
    "score": (cmd_score, "score every (prompt, completion) into ROUND_DIR/rewards.parquet and print statistics",
              [_add_scoring_args, _add_executor_args]),
    "select": (cmd_select, "pick completions from the reward matrix into ROUND_DIR/selection.parquet",
               [_add_selection_args]),
    "export": (cmd_export, "write the selected completions as TRL-ready ROUND_DIR/selected.jsonl", []),
    "train": (cmd_train, "fine-tune the starting checkpoint on ROUND_DIR/selected.jsonl into ROUND_DIR/checkpoint/",
              [_add_train_args]),
    "run": (cmd_run, "one whole round (generate, score, select, export) from a YAML config",
            [_add_prompt_args, _add_generation_args, _add_scoring_args, _add_selection_args, _add_executor_args]),
}


PLUGGED: dict[str, tuple[str, str]] = {
    "stats": ("rsft.bon_report", "Best-of-N curve of a scored round: E[max reward], pass@n and KL per n"),
    "bon": ("rsft.bon", "Best-of-N at inference: N candidates per prompt, scored, the best one per JSON line"),
    "status": ("rsft.status", "each round's stages of a run: done, partial (finished shards) or missing"),
    "report": ("rsft.report", "HTML report of an RSFT run: rewards, kept set, eval with CI, KL, control, losses"),
    "serve": ("rsft.serve", "serve Best-of-N over the OpenAI API (/v1/completions, /v1/chat/completions)"),
    "sweep": ("rsft.sweep", "a grid over N, temperature, keep threshold and epochs from one YAML, with a results table"),
    "rm-check": ("rsft.rm", "re-validate a reward model on chosen/rejected pairs: accuracy with a CI, agreement with a checker"),
    "rm-train": ("rsft.rm_train", "train a reward model on chosen/rejected pairs with TRL's RewardTrainer"),
}
"""Commands whose module declares its own options (``add_arguments``) and body (``main``)."""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="rsft", description="Rejection-sampling fine-tuning and Best-of-N.")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name, (func, help_text, adders) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == "run":
            p.add_argument("--name", help="run folder name (under --out)")
            p.add_argument("--out", help="parent folder of runs (default: runs)")
            p.add_argument("--rounds", type=int,
                           help="full RSFT: K rounds of generate, score, select, train and held-out eval gate")
        elif name != "export":
            p.add_argument("round_dir", type=Path, metavar="ROUND_DIR", help="the round folder, e.g. runs/x/round-000")
        else:
            p.add_argument("round_dir", type=Path, metavar="ROUND_DIR")
        _add_config(p)
        if name in ("generate", "score", "run"):
            p.add_argument("--new-version", action="store_true",
                           help="the config changed: keep the old outputs under ROUND_DIR/versions/ and redo the stage")
        for add in adders:
            add(p)
        p.set_defaults(func=func)
    for name, (module_name, help_text) in PLUGGED.items():
        module = importlib.import_module(module_name)
        p = sub.add_parser(name, help=help_text, description=help_text)
        module.add_arguments(p)
        p.set_defaults(func=module.main)
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


if __name__ == "__main__":
    sys.exit(main())
