"""Best-of-N at inference: sample N completions per prompt, score them, return the best one.

No weights change: this is the serving half of the flow (``rsft bon`` on files, ``rsft serve`` over
HTTP). Three selectors pick one completion per prompt:

- ``argmax``: the highest reward (needs a scorer); ties go to the FIRST index, NaN counts as -inf
  (``rsft.select.best_per_prompt``).
- ``majority``: self-consistency. Each completion votes for its extracted answer; the answer with
  the most votes wins, ties going to the answer that appeared first. The chosen completion is the
  first one holding the winning answer; its score is the winning answer's vote share.
- ``weighted_majority``: like ``majority``, but each vote weighs the completion's reward (needs a
  scorer); the score is the winning answer's summed reward.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rsft.config import key_value
from rsft.errors import RsftError
from rsft.generate import Generator, make_generator
from rsft.score import Scorer, as_scorer
from rsft.types import Completion, Prompt, PromptValue, SamplingParams

SELECTORS = ("argmax", "majority", "weighted_majority")
"""Selector names accepted by ``best_of_n``."""

Extract = Callable[[str], "str | None"]
"""Maps a completion to the answer it votes for; ``None`` abstains."""


@dataclass(frozen=True)
class BoNResult:
    """The completion picked for one prompt, with every candidate and its score."""

    prompt: PromptValue
    chosen: str
    """Text of the picked completion."""
    score: float | None
    """argmax: its reward; majority: the winning answer's vote share; weighted_majority: its summed reward."""
    index: int
    """Position of the picked completion among the N candidates."""
    candidates: list[tuple[str, float | None]]
    """Every candidate ``(text, reward)`` in sample order (reward None when there is no scorer)."""
    selector: str
    completions: list[Completion] = field(default_factory=list, repr=False, compare=False)
    """The generator's completions behind ``candidates`` (token counts, finish reasons)."""

    @property
    def finish_reason(self) -> str:
        return self.completions[self.index].finish_reason if self.completions else "stop"


def first_line(text: str) -> str | None:
    """The default answer extractor: the first non-blank line, stripped; None for a blank text."""
    for line in text.splitlines():
        if line.strip():
            return line.strip()
    return None


# --- selectors on one row ------------------------------------------------------------------------


def argmax_indices(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of each row's highest score: ties to the first, NaN as -inf."""
    from rsft.select import best_per_prompt

    return best_per_prompt(scores).tolist() if scores else []


def vote(answers: Sequence[str | None], weights: Sequence[float] | None = None) -> tuple[int, float]:
    """(index of the first completion holding the winning answer, the answer's total weight).

    Each non-None answer adds its weight (1 without ``weights``; a NaN weight adds nothing) to its
    answer's total. The highest total wins; ties go to the answer seen first. When every completion
    abstains the result is ``(0, 0.0)``.
    """
    totals: dict[str, float] = {}
    first: dict[str, int] = {}
    for j, answer in enumerate(answers):
        if answer is None:
            continue
        w = 1.0 if weights is None else float(weights[j])
        first.setdefault(answer, j)
        total = totals.get(answer, 0.0) + (0.0 if math.isnan(w) else w)
        totals[answer] = -math.inf if math.isnan(total) else total  # inf + -inf
    best: str | None = None
    for answer, total in totals.items():  # insertion order = order of first appearance
        if best is None or total > totals[best]:
            best = answer
    return (0, 0.0) if best is None else (first[best], totals[best])


def choose(
    selector: str,
    texts: Sequence[str],
    scores: Sequence[float] | None,
    extract: Extract = first_line,
) -> tuple[int, float | None]:
    """Pick one of a prompt's candidates: ``(index, score)`` as described in the module docstring."""
    if selector == "argmax":
        if scores is None:
            raise RsftError("selector 'argmax' needs a scorer")
        index = argmax_indices([scores])[0]
        return index, float(scores[index])
    if selector in ("majority", "weighted_majority"):
        answers = [extract(t) for t in texts]
        if selector == "majority":
            index, votes = vote(answers)
            return index, votes / len(texts)
        if scores is None:
            raise RsftError("selector 'weighted_majority' needs a scorer")
        return vote(answers, scores)
    raise RsftError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")


# --- the library function ------------------------------------------------------------------------


def check_selector(selector: str, has_scorer: bool) -> None:
    """Fail early on an unknown selector, or one that needs a scorer when none is given."""
    if selector not in SELECTORS:
        raise RsftError(f"unknown selector {selector!r}; choose one of {', '.join(SELECTORS)}")
    if selector != "majority" and not has_scorer:
        raise RsftError(f"selector {selector!r} needs a scorer (--scorer); 'majority' works without one")


def select_best(
    prompts: Sequence[PromptValue],
    rows: Sequence[Sequence[Completion]],
    scorer: Scorer | None,
    selector: str = "argmax",
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | None = None,
) -> list[BoNResult]:
    """Score already generated candidates (one row of N per prompt) and pick one per row."""
    from rsft.stages import score_pairs

    check_selector(selector, scorer is not None)
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    if len(metadata) != len(prompts):
        raise RsftError(f"metadata has {len(metadata)} entries for {len(prompts)} prompts")
    scores: list[list[float]] | None = None
    if scorer is not None:
        flat = [(i, j) for i, row in enumerate(rows) for j in range(len(row))]
        values, _, _ = score_pairs(
            scorer,
            [prompts[i] for i, _ in flat],
            [rows[i][j].text for i, j in flat],
            [metadata[i] for i, _ in flat],
            on_error="fail",
            labels=[f"prompt {i} sample {j}" for i, j in flat],
        )
        it = iter(values)
        scores = [[next(it) for _ in row] for row in rows]
    out = []
    for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True)):
        texts = [c.text for c in row]
        row_scores = scores[i] if scores is not None else None
        index, score = choose(selector, texts, row_scores, extract or first_line)
        candidates = list(zip(texts, row_scores if row_scores is not None else [None] * len(row), strict=True))
        out.append(BoNResult(prompt, texts[index], score, index, candidates, selector, list(row)))
    return out


def best_of_n(
    prompts: Sequence[PromptValue | Prompt],
    n: int,
    generator: Generator,
    scorer: Any = None,
    selector: str = "argmax",
    sampling: SamplingParams | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | None = None,
) -> list[BoNResult]:
    """Sample ``n`` completions per prompt with ``generator`` and return the best one of each.

    Args:
        prompts: texts, chat message lists, or ``Prompt`` rows (whose metadata is used when
            ``metadata`` is not given).
        n: candidates per prompt (N).
        generator: any ``Generator`` (e.g. ``make_generator("hf", {"model": ...})``).
        scorer: anything ``rsft.score.as_scorer`` accepts (a spec string such as ``"math"``, a
            ``Scorer``, or a plain ``f(prompt, completion) -> float``); None for ``majority``.
        selector: ``argmax``, ``majority`` or ``weighted_majority`` (see the module docstring).
        sampling: how to sample (default ``SamplingParams()``).
        metadata: per-prompt fields passed to the scorer (e.g. the gold ``answer``).
        extract: the answer a completion votes for (majority selectors); default ``first_line``.

    Raises:
        RsftError: bad ``n``/selector, a selector that needs a missing scorer, a generator that
            returns the wrong number of completions, or a scorer failure.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RsftError(f"n must be a positive integer, got {n!r}")
    scorer_obj = as_scorer(scorer) if scorer is not None else None
    check_selector(selector, scorer_obj is not None)
    values = [p.prompt if isinstance(p, Prompt) else p for p in prompts]
    if metadata is None:
        metadata = [p.metadata if isinstance(p, Prompt) else {} for p in prompts]
    if not values:
        return []
    rows = generator.generate(values, n, sampling or SamplingParams())
    if len(rows) != len(values) or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {generator.name!r} returned {len(rows)} rows of {got} completions; "
                        f"expected {len(values)} of {n}")
    return select_best(values, rows, scorer_obj, selector, metadata, extract)


# --- command-line options shared by ``rsft bon`` and ``rsft serve`` ---------------------------------


def add_model_arguments(p: argparse.ArgumentParser, default_model: str = "gemma3-270m") -> None:
    """--backend/--model/--option and --scorer/--scorer-option/--selector."""
    g = p.add_argument_group("model and selection")
    g.add_argument("--backend", default="hf", help="generation backend: hf, openai or vllm (default: hf)")
    g.add_argument("--model", default=default_model,
                   help=f"model path, hub id (offline), served model name, or gemma3-270m (default: {default_model})")
    g.add_argument("--option", type=key_value, action="append", metavar="KEY=VALUE",
                   help="backend option (repeatable), e.g. batch_size=8, dtype=bfloat16, chat_template=plain")
    g.add_argument("--scorer", help="scorer spec: math, exact, regex:PAT, task, rm:PATH or pkg.module:name "
                                    "(default: none, which means --selector majority)")
    g.add_argument("--scorer-option", type=key_value, action="append", metavar="KEY=VALUE",
                   help="scorer option (repeatable), e.g. batch_size=16")
    g.add_argument("--selector", choices=SELECTORS,
                   help="argmax (highest reward), majority (self-consistency vote over the first line) or "
                        "weighted_majority (reward-weighted vote); default: argmax with a scorer, else majority")


def scorer_from_args(args: argparse.Namespace) -> tuple[Scorer | None, str]:
    """The scorer (or None) and the selector named by ``add_model_arguments`` flags, checked together."""
    selector = args.selector or ("argmax" if args.scorer else "majority")
    check_selector(selector, bool(args.scorer))
    scorer = as_scorer(args.scorer, dict(args.scorer_option or [])) if args.scorer else None
    return scorer, selector


def generator_from_args(args: argparse.Namespace) -> Generator:
    """The generator named by ``--backend``, ``--model`` and ``--option``."""
    return make_generator(args.backend, {"model": args.model, **dict(args.option or [])})


# --- ``rsft bon`` ----------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of ``rsft bon``."""
    parser.add_argument("--prompts", help="prompt file (.jsonl, .parquet, .csv); '-' or absent: stdin, one JSON "
                                          "object or one plain-text prompt per line")
    parser.add_argument("--output", help="JSONL output file (default: stdout)")
    add_model_arguments(parser)
    g = parser.add_argument_group("sampling")
    g.add_argument("-n", type=int, default=8, help="candidates per prompt (default: 8)")
    g.add_argument("--temperature", type=float, default=1.0, help="sampling temperature, 0 for greedy (default: 1.0)")
    g.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (default: 1.0)")
    g.add_argument("--top-k", type=int, default=50, help="top-k filter, 0 disables (default: 50)")
    g.add_argument("--max-new-tokens", type=int, default=64, help="tokens per completion at most (default: 64)")
    g.add_argument("--stop", action="append", help="stop string (repeatable); '\\n' means newline")
    g.add_argument("--seed", type=int, default=0, help="sampling seed (default: 0)")


def sampling_from_args(args: argparse.Namespace) -> SamplingParams:
    try:
        return SamplingParams(
            temperature=args.temperature,
            top_p=args.top_p,
            top_k=args.top_k,
            max_new_tokens=args.max_new_tokens,
            stop=tuple(s.encode().decode("unicode_escape") for s in args.stop or []),
            seed=args.seed,
        )
    except ValueError as e:
        raise RsftError(str(e)) from None


def read_prompt_lines(stream: TextIO, source: str = "<stdin>") -> list[Prompt]:
    """Prompts from text lines: a JSON object is a prompt row (``prompt`` or ``messages``, other
    fields become metadata); any other non-blank line is a plain-text prompt."""
    from rsft.prompts import FieldMap, _row_to_prompt, prompt_id

    out = []
    for line_no, line in enumerate(stream, start=1):
        text = line.rstrip("\r\n")
        if not text.strip():
            continue
        row = None
        if text.lstrip().startswith("{"):
            try:
                row = json.loads(text)
            except json.JSONDecodeError:
                row = None
        if isinstance(row, dict):
            out.append(_row_to_prompt(row, FieldMap(), Path(source), line_no))
        else:
            out.append(Prompt(prompt_id(text), text, {}))
    if not out:
        raise RsftError(f"{source}: no prompts")
    return out


def result_row(prompt: Prompt, result: BoNResult) -> dict[str, Any]:
    """One output line of ``rsft bon``."""
    return {
        "prompt_id": prompt.prompt_id,
        "prompt": prompt.prompt,
        "completion": result.chosen,
        "score": json_number(result.score),
        "index": result.index,
        "selector": result.selector,
        "candidates": [{"text": t, "score": json_number(s)} for t, s in result.candidates],
    }


def json_number(value: float | None) -> float | None:
    """JSON has no NaN or infinity: those become null."""
    return value if value is not None and math.isfinite(value) else None


def main(args: argparse.Namespace) -> None:
    """``rsft bon``: Best-of-N over a prompt file (or stdin), one JSON line per prompt."""
    from rsft.prompts import load_prompts

    sampling = sampling_from_args(args)
    if args.n < 1:
        raise RsftError(f"-n must be >= 1, got {args.n}")
    scorer, selector = scorer_from_args(args)
    source = getattr(args, "prompts", None)
    prompts = read_prompt_lines(sys.stdin) if source in (None, "-") else load_prompts(source)
    generator = generator_from_args(args)
    results = best_of_n(prompts, args.n, generator, scorer, selector, sampling)
    rows = [result_row(p, r) for p, r in zip(prompts, results, strict=True)]
    if args.output:
        from rsft.artifacts import write_jsonl

        write_jsonl(args.output, rows)
        print(f"rsft: wrote {len(rows)} rows to {args.output}", file=sys.stderr)
    else:
        for row in rows:
            sys.stdout.write(json.dumps(row, ensure_ascii=False) + "\n")
        sys.stdout.flush()
