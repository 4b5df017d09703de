"""``rsft rm-check`` and ``rsft rm-train``: re-validate a reward model on preference pairs, or train one.

Both read pairs from ``--pairs FILE`` or build them from a scored round (``--from-round``); the
library code is ``rsft.rounds.rm_check`` and ``rsft.train.rm``. rm-train's training flags are the fields of
``RmTrainConfig``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import TYPE_CHECKING

from rsft.cli.options import Command, Section, add_config_flags, apply_flags
from rsft.config import key_value
from rsft.errors import RsftError

if TYPE_CHECKING:
    from rsft.rounds.rm_check import RoundVerdicts


def add_pair_source_arguments(parser: argparse.ArgumentParser) -> None:
    """``--pairs FILE`` or ``--from-round DIR`` with ``--checker SPEC`` (shared by rm-check and rm-train)."""
    g = parser.add_argument_group("pairs")
    src = g.add_mutually_exclusive_group(required=True)
    src.add_argument("--pairs", type=Path, metavar="FILE",
                     help="chosen/rejected JSONL: prompt, chosen, rejected (text or conversational)")
    src.add_argument("--from-round", type=Path, metavar="ROUND_DIR", action="append",
                     help="build pairs from a scored round: a passing vs a failing completion of the same prompt "
                          "(rm-train: repeat it to pool several rounds)")
    g.add_argument("--checker", metavar="SPEC", help="the checker whose verdicts label the pairs (math, task, "
                   "code, exact, pkg.mod:fn...); with --pairs: also report the RM's agreement with it")
    g.add_argument("--checker-option", type=key_value, action="append", metavar="KEY=VALUE", help="checker option")
    g.add_argument("--round-rewards", action="store_true",
                   help="--from-round: use the round's rewards.parquet as the verdicts instead of running --checker")
    g.add_argument("--pass-threshold", type=float, default=1.0,
                   help="a checker score at or above this passes (default 1.0: reasoning-gym gives partial credit)")
    g.add_argument("--pairs-per-prompt", type=int, default=1,
                   help="--from-round: random (pass, fail) pairs per prompt, 0 for every combination (default 1: "
                        "independent pairs, so the CI holds)")
    g.add_argument("--pair-seed", type=int, default=0, help="--from-round: seed of the pair sampling")


def round_source(args: argparse.Namespace) -> list[RoundVerdicts]:
    """The verdicts of each ``--from-round``, after checking the flags agree."""
    from rsft.rounds.rm_check import round_verdicts

    if args.round_rewards and args.checker:
        raise RsftError("give either --checker or --round-rewards with --from-round, not both")
    if not args.round_rewards and not args.checker:
        raise RsftError("--from-round needs --checker SPEC (or --round-rewards to reuse the round's rewards)")
    return [round_verdicts(d, None if args.round_rewards else args.checker, dict(args.checker_option or []),
                           args.pass_threshold) for d in args.from_round]


def add_check_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("rm", metavar="RM", help="the reward model: rm:PATH or a model folder (or any scorer spec)")
    add_pair_source_arguments(parser)
    parser.add_argument("--rm-option", type=key_value, action="append", metavar="KEY=VALUE",
                        help="reward model option: batch_size, max_length, device, dtype, max_batch_tokens")
    parser.add_argument("--min-accuracy", type=float,
                        help="exit with code 1 when the accuracy is below this (after printing the report)")
    parser.add_argument("--json", action="store_true", help="print the report as JSON instead of a table")
    parser.add_argument("--out", type=Path, metavar="FILE", help="also write the JSON report here")


def check(args: argparse.Namespace) -> None:
    """``rsft rm-check``: the report as a table or JSON; exit code 1 below ``--min-accuracy``."""
    from rsft import artifacts
    from rsft.rounds.rm_check import (
        RmGateError,
        check_pairs,
        check_round,
        file_source,
        format_report,
        load_rm,
        percent,
        read_pairs,
    )

    if args.pairs is not None and args.round_rewards:
        raise RsftError("--round-rewards applies to --from-round, not --pairs")
    if args.from_round is not None and len(args.from_round) > 1:
        raise RsftError("rm-check takes one --from-round (its report is per round); run it once per round")
    verdicts = round_source(args)[0] if args.from_round is not None else None
    pairs = read_pairs(args.pairs) if args.pairs is not None else None
    rm = load_rm(args.rm, dict(args.rm_option or []))
    if verdicts is not None:
        rep = check_round(rm, verdicts, args.pairs_per_prompt, args.pair_seed)
    else:
        rep = check_pairs(rm, pairs or [], args.checker, dict(args.checker_option or []), args.pass_threshold)
        rep["source"] = file_source(args.pairs)
    if args.min_accuracy is not None:
        value = rep["pairs"]["accuracy"]
        rep["gate"] = {"metric": "accuracy", "value": value, "min_accuracy": args.min_accuracy,
                       "passed": value is not None and value >= args.min_accuracy}
    if args.out is not None:
        artifacts.write_json(args.out, rep)
    print(json.dumps(rep, indent=2) if args.json else format_report(rep))
    if "gate" in rep and not rep["gate"]["passed"]:
        raise RmGateError(f"reward model accuracy {percent(rep['pairs']['accuracy'])} is below --min-accuracy "
                          f"{percent(args.min_accuracy)}")


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
    from rsft.train.rm import RmTrainConfig

    add_pair_source_arguments(parser)
    parser.add_argument("--base", required=True, metavar="MODEL",
                        help="model to start from: a folder, a cached hub id or gemma3-270m (gets a new score head)")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="where the reward model goes")
    add_config_flags(parser, [Section("training", ("",))], root=RmTrainConfig)


def train(args: argparse.Namespace) -> None:
    """``rsft rm-train``: train on the pairs and print the summary as JSON."""
    from rsft.rounds.rm_check import Pair, file_source, read_pairs, sample_pairs
    from rsft.train.rm import RmTrainConfig, train_rm

    config = apply_flags(args, RmTrainConfig())
    if args.from_round is not None:
        pairs = []
        for verdicts in round_source(args):
            picks = sample_pairs(verdicts, args.pairs_per_prompt, args.pair_seed)
            pairs += [Pair(verdicts.prompts[i].prompt, verdicts.texts[i][g], verdicts.texts[i][b],
                           f"{verdicts.round_dir}/{verdicts.prompts[i].prompt_id}:{g}>{b}") for i, g, b in picks]
        dirs = [str(d) for d in args.from_round]
        source = {"kind": "round", "round_dir": dirs[0] if len(dirs) == 1 else dirs, "checker": verdicts.checker,
                  "pass_threshold": args.pass_threshold, "pairs_per_prompt": args.pairs_per_prompt,
                  "seed": args.pair_seed}
    else:
        if args.round_rewards:
            raise RsftError("--round-rewards applies to --from-round, not --pairs")
        pairs = read_pairs(args.pairs)
        source = file_source(args.pairs)
    print(json.dumps(train_rm(pairs, args.base, args.out, config, source), indent=2))


COMMANDS = {
    "rm-check": Command("re-validate a reward model on chosen/rejected pairs: accuracy with a CI, agreement with "
                        "a checker", add_check_arguments, check),
    "rm-train": Command("train a reward model on chosen/rejected pairs with TRL's RewardTrainer",
                        add_train_arguments, train),
}
