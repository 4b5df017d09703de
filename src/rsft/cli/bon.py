"""``rsft bon``: Best-of-N over a prompt file or stdin, one JSON line per prompt (``rsft.bon.infer``).

The generator and sampling flags are the ``generation`` fields of the run config (their defaults
are ``GenerationConfig``'s: N 8, temperature 1.0, top_k 50, 64 new tokens); the scorer, selector
and voting flags are shared with ``rsft serve``.
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import TYPE_CHECKING, Any

from rsft.bon.infer import SELECTORS
from rsft.cli.options import Command, Section, Spelling, add_config_flags, apply_flags, given_flags
from rsft.config import GenerationConfig, RunConfig, key_value, sampling_params
from rsft.errors import RsftError
from rsft.generate import generator_from_config
from rsft.registry import ANSWERS, EQUIVALENCES, SCORERS

if TYPE_CHECKING:
    from rsft.bon.adaptive import AdaptivePolicy
    from rsft.generate import Generator
    from rsft.score import Scorer
    from rsft.types import Prompt

MODEL = Section("model", ("generation.generator",), exclude=("generation.generator.n",))
SAMPLING = Section("sampling", ("generation.n", "generation.sampling"),
                   help={"generation.n": "Candidates per prompt (N)."})
ADAPTIVE = Section("adaptive N (sample in growing batches until the answers agree)",
                   ("budget", "min_n", "supermajority", "growth", "rule", "confidence"),
                   help={"budget": "Samples per prompt at most, the N of a non-adaptive run (default: -n)"})
"""``AdaptivePolicy``'s fields; ``rsft serve`` leaves out the budget (each request sends its own)."""


# --- flags shared with ``rsft serve`` -----------------------------------------------------------------


def add_selection_arguments(p: argparse.ArgumentParser) -> None:
    """--scorer/--scorer-option/--selector."""
    g = p.add_argument_group("scoring and selection")
    g.add_argument("--scorer", help=f"scorer spec: {SCORERS.help()} or pkg.module:name "
                                    "(default: none, which means --selector majority)")
    g.add_argument("--scorer-option", type=key_value, action="append", metavar="KEY=VALUE",
                   help="scorer option (repeatable), e.g. batch_size=16")
    g.add_argument("--selector", choices=SELECTORS,
                   help="argmax (highest reward), majority (self-consistency vote over the first line) or "
                        "weighted_majority (reward-weighted vote); default: argmax with a scorer, else majority")


def add_voting_arguments(parser: argparse.ArgumentParser) -> None:
    """--answer and --equivalence."""
    g = parser.add_argument_group("voting (majority, weighted_majority)")
    g.add_argument("--answer", default="first_line",
                   help=f"the answer a completion votes for: {ANSWERS.describe()}; or pkg.module:name, a "
                        "function of the completion text (default: first_line)")
    g.add_argument("--equivalence", default="exact",
                   help=f"answers that vote together: {EQUIVALENCES.describe()}; or pkg.module:name, a "
                        "function mapping an answer to a hashable key (default: exact)")


def add_adaptive_arguments(parser: argparse.ArgumentParser, budget: bool = True) -> None:
    """The ``AdaptivePolicy`` flags, with ``--adaptive`` and ``--budget`` for ``rsft bon``."""
    from rsft.bon.adaptive import AdaptivePolicy

    section = ADAPTIVE if budget else Section(ADAPTIVE.title, ADAPTIVE.include, exclude=("budget",),
                                              description="for requests that send the budget extension field")
    (group,) = add_config_flags(parser, [section], root=AdaptivePolicy, defaults=AdaptivePolicy(budget=1),
                                spellings={"rule": Spelling(("--stop-rule",))})
    if budget:
        group.add_argument("--adaptive", action="store_true",
                           help="sample in growing batches and stop each prompt once its answers agree; "
                                "-n (or --budget) is then the most samples per prompt")


def adaptive_policy(args: argparse.Namespace, budget: int) -> AdaptivePolicy:
    """The ``AdaptivePolicy`` of the flags given, for ``budget`` samples unless ``--budget`` says otherwise."""
    from rsft.bon.adaptive import AdaptivePolicy

    return apply_flags(args, AdaptivePolicy(budget=budget))


def scorer_from_args(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    """The scorer (or None) and the selector named by ``add_selection_arguments`` flags, checked together."""
    from rsft.bon.infer import check_selector
    from rsft.score import as_scorer

    selector = args.selector or ("argmax" if args.scorer else "majority")
    check_selector(selector, bool(args.scorer))
    scorer = as_scorer(args.scorer, dict(args.scorer_option or [])) if args.scorer else None
    return scorer, selector


# --- ``rsft bon`` ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft bon``."""
    parser.add_argument("--prompts", help="prompt file (.jsonl, .parquet, .csv); '-' or absent: stdin, one JSON "
                                          "object or one plain-text prompt per line")
    parser.add_argument("--output", help="JSONL output file (default: stdout)")
    add_config_flags(parser, [MODEL])
    add_selection_arguments(parser)
    add_config_flags(parser, [SAMPLING])
    add_voting_arguments(parser)
    add_adaptive_arguments(parser)


def _adaptive_policy(args: argparse.Namespace, n: int) -> AdaptivePolicy | None:
    """``--adaptive``'s policy (budget: --budget, else -n); None without it (other adaptive flags refused)."""
    from rsft.bon.adaptive import AdaptivePolicy

    if not getattr(args, "adaptive", False):
        given = given_flags(args, AdaptivePolicy)
        if given:
            raise RsftError(f"{', '.join(given)} need --adaptive")
        return None
    return adaptive_policy(args, n)


def main(args: argparse.Namespace) -> None:
    """``rsft bon``: Best-of-N over a prompt file (or stdin), one JSON line per prompt."""
    from rsft.bon.infer import answer_extractor, read_prompt_lines, resolve_equivalence
    from rsft.prompts import load_prompts

    config: GenerationConfig = apply_flags(args, RunConfig()).generation
    try:
        sampling = sampling_params(config)
    except ValueError as e:
        raise RsftError(str(e)) from None
    if config.n < 1:
        raise RsftError(f"-n must be >= 1, got {config.n}")
    scorer, selector = scorer_from_args(args)
    extract = answer_extractor(getattr(args, "answer", None))
    equivalence = resolve_equivalence(getattr(args, "equivalence", None) or "exact")
    policy = _adaptive_policy(args, config.n)
    source = getattr(args, "prompts", None)
    prompts = read_prompt_lines(sys.stdin) if source in (None, "-") else load_prompts(source)
    generator = generator_from_config(config.generator)
    choose = {"scorer": scorer, "selector": selector, "sampling": sampling, "extract": extract,
              "equivalence": equivalence}
    if policy is None:
        rows = _fixed_rows(prompts, config.n, generator, choose)
    else:
        rows = _adaptive_rows(prompts, policy, generator, choose)
    _write_rows(rows, args.output)


def _fixed_rows(prompts: list[Prompt], n: int, generator: Generator, choose: dict[str, Any]) -> list[dict[str, Any]]:
    from rsft.bon.infer import best_of_n, result_row

    results = best_of_n(prompts, n, generator, **choose)
    return [result_row(p, r) for p, r in zip(prompts, results, strict=True)]


def _adaptive_rows(prompts: list[Prompt], policy: AdaptivePolicy, generator: Generator,
                   choose: dict[str, Any]) -> list[dict[str, Any]]:
    from rsft.bon.infer import adaptive_best_of_n, result_row

    run = adaptive_best_of_n(prompts, policy, generator, **choose)
    rows = [{**result_row(p, r), "samples": k} for p, r, k in zip(prompts, run.results, run.samples, strict=True)]
    s = run.summary()
    print(f"rsft: adaptive N: {s['samples']} of {s['prompts'] * s['budget']} samples ({s['saved']} saved, "
          f"{s['saved_fraction']:.0%}; {s['stopped_early']} of {s['prompts']} prompts stopped early) "
          f"in {s['batches']} batches", file=sys.stderr)
    return rows


def _write_rows(rows: list[dict[str, Any]], output: str | None) -> None:
    if output:
        from rsft.artifacts import write_jsonl

        write_jsonl(output, rows)
        print(f"rsft: wrote {len(rows)} rows to {output}", file=sys.stderr)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()


COMMANDS = {"bon": Command("Best-of-N at inference: N candidates per prompt, scored, the best one per JSON line",
                           add_arguments, main)}
