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

The voting selectors group answers before counting (``equivalence``): ``exact`` (equal texts),
``math`` (math-verify equivalence, so ``1/2``, ``0.5`` and ``\\frac{1}{2}`` vote together) or a
user key function. The answer a completion votes for comes from ``first_line`` (default), ``boxed``
(the last ``\\boxed{...}``) or a user function.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

from rsft.bon.adaptive import AdaptivePolicy, sample_adaptively
from rsft.bon.answers import (
    Extract,
    KeyFn,
    answer_extractor,
    answer_groups,
    first_line,
    resolve_equivalence,
)
from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.score import Scorer, as_scorer, score_pairs
from rsft.types import Completion, Prompt, PromptValue, SamplingParams

SELECTORS = ("argmax", "majority", "weighted_majority")
"""Selector names accepted by ``best_of_n``."""

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


# --- selectors on one row ------------------------------------------------------------------------


def argmax_indices(scores: Sequence[Sequence[float]]) -> list[int]:
    """Index of each row's highest score: ties to the first, NaN as -inf."""
    from rsft.select import best_per_prompt

    return best_per_prompt(scores).tolist() if scores else []


def vote(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    equivalence: str | KeyFn = "exact",
) -> tuple[int, float]:
    """(index of the first completion in the winning group, the group's total weight).

    Answers are grouped by ``equivalence`` (``answer_groups``). Each non-None answer adds its weight
    (1 without ``weights``; a NaN weight adds nothing) to its group's total. The highest total wins;
    ties go to the group whose first member appears first. When every completion abstains the
    result is ``(0, 0.0)``.
    """
    totals: dict[int, float] = {}  # group label (its first member's index) -> total weight
    for j, group in enumerate(answer_groups(answers, equivalence)):
        if group is None:
            continue
        w = 1.0 if weights is None else float(weights[j])
        total = totals.get(group, 0.0) + (0.0 if math.isnan(w) else w)
        totals[group] = -math.inf if math.isnan(total) else total  # inf + -inf
    best: int | None = None
    for group, total in totals.items():  # insertion order = order of first appearance
        if best is None or total > totals[best]:
            best = group
    return (0, 0.0) if best is None else (best, totals[best])


def choose(
    selector: str,
    texts: Sequence[str],
    scores: Sequence[float] | None,
    extract: Extract = first_line,
    equivalence: str | KeyFn = "exact",
) -> tuple[int, float | None]:
    """Pick one of a prompt's candidates: ``(index, score)`` as described in the module docstring.

    ``extract`` and ``equivalence`` only matter to the voting selectors.
    """
    if selector == "argmax":
        if scores is None:
            raise RsftError("selector 'argmax' needs a scorer")
        index = argmax_indices([scores])[0]
        return index, float(scores[index])
    if selector in ("majority", "weighted_majority"):
        answers = [extract(t) for t in texts]
        if selector == "majority":
            index, votes = vote(answers, None, equivalence)
            return index, votes / len(texts)
        if scores is None:
            raise RsftError("selector 'weighted_majority' needs a scorer")
        return vote(answers, scores, equivalence)
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
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
) -> list[BoNResult]:
    """Score already generated candidates (one row of N per prompt) and pick one per row."""
    check_selector(selector, scorer is not None)
    extract_fn, equivalence = answer_extractor(extract), resolve_equivalence(equivalence)
    metadata = list(metadata) if metadata is not None else [{} for _ in prompts]
    if len(metadata) != len(prompts):
        raise RsftError(f"metadata has {len(metadata)} entries for {len(prompts)} prompts")
    scores = score_rows(prompts, rows, scorer, metadata) if scorer is not None else None
    return [pick(prompt, row, scores[i] if scores is not None else None, selector, extract_fn, equivalence)
            for i, (prompt, row) in enumerate(zip(prompts, rows, strict=True))]


def score_rows(
    prompts: Sequence[PromptValue],
    rows: Sequence[Sequence[Completion]],
    scorer: Scorer,
    metadata: Sequence[Mapping[str, Any]],
    *,
    indices: Sequence[int] | None = None,
    first_sample: int = 0,
) -> list[list[float]]:
    """Every candidate's reward, row by row, in one scorer batch (a failure names its pair).

    ``indices`` (each row's prompt number) and ``first_sample`` (the first candidate's sample
    index) only label errors, for callers that score a slice of the prompts or of the samples.
    """
    flat = [(i, j) for i, row in enumerate(rows) for j in range(len(row))]
    number = indices if indices is not None else range(len(rows))
    values, _, _ = score_pairs(
        scorer,
        [prompts[i] for i, _ in flat],
        [rows[i][j].text for i, j in flat],
        [metadata[i] for i, _ in flat],
        on_error="fail",
        labels=[f"prompt {number[i]} sample {first_sample + j}" for i, j in flat],
    )
    it = iter(values)
    return [[next(it) for _ in row] for row in rows]


def pick(
    prompt: PromptValue,
    row: Sequence[Completion],
    scores: Sequence[float] | None,
    selector: str,
    extract: Extract = first_line,
    equivalence: str | KeyFn = "exact",
) -> BoNResult:
    """The ``BoNResult`` of one prompt's candidates (``choose`` on their texts and rewards)."""
    texts = [c.text for c in row]
    index, score = choose(selector, texts, scores, extract, equivalence)
    candidates = list(zip(texts, scores if scores is not None else [None] * len(row), strict=True))
    return BoNResult(prompt, texts[index], score, index, candidates, selector, list(row))


def best_of_n(
    prompts: Sequence[PromptValue | Prompt],
    n: int,
    generator: Generator,
    scorer: Any = None,
    selector: str = "argmax",
    sampling: SamplingParams | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
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
        extract: the answer a completion votes for (voting selectors): ``first_line`` (default),
            ``boxed``, ``"pkg.module:name"`` or a callable returning the answer (None abstains).
        equivalence: which answers vote together: ``exact`` (default), ``math`` (math-verify), or
            a key function (``"pkg.module:name"`` or a callable) mapping an answer to a hashable key.

    Raises:
        RsftError: bad ``n``/selector/extract/equivalence, a selector that needs a missing scorer,
            a generator that returns the wrong number of completions, or a scorer failure.
    """
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise RsftError(f"n must be a positive integer, got {n!r}")
    scorer_obj = as_scorer(scorer) if scorer is not None else None
    check_selector(selector, scorer_obj is not None)
    extract, equivalence = answer_extractor(extract), resolve_equivalence(equivalence)  # fail before sampling
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
    return select_best(values, rows, scorer_obj, selector, metadata, extract, equivalence)


def read_prompt_lines(stream: TextIO, source: str = "<stdin>") -> list[Prompt]:
    """Prompts from text lines: a JSON object is a prompt row (``prompt`` or ``messages``, other
    fields become metadata); any other non-blank line is a plain-text prompt."""
    from rsft.prompts import FieldMap, prompt_id, row_to_prompt

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
            out.append(row_to_prompt(row, FieldMap(), Path(source), line_no))
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


# --- adaptive N ------------------------------------------------------------------------------------


@dataclass(frozen=True)
class AdaptiveResult:
    """The pick of each prompt, and what adaptive sampling spent."""

    results: list[BoNResult]
    """One per prompt; ``len(result.candidates)`` is the samples that prompt used."""
    budget: int
    """Samples per prompt at most."""
    batches: int
    """``generate`` calls made."""

    @property
    def samples(self) -> list[int]:
        """Samples used by each prompt."""
        return [len(r.candidates) for r in self.results]

    @property
    def used(self) -> int:
        return sum(self.samples)

    @property
    def saved(self) -> int:
        """Samples a non-adaptive run with N = budget would have drawn beyond these."""
        return self.budget * len(self.results) - self.used

    def summary(self) -> dict[str, Any]:
        """Samples used against the budget, as a JSON-ready dict."""
        full = self.budget * len(self.results)
        return {"prompts": len(self.results), "budget": self.budget, "samples": self.used, "saved": self.saved,
                "saved_fraction": round(self.saved / full, 4) if full else 0.0, "batches": self.batches,
                "stopped_early": sum(k < self.budget for k in self.samples)}


def adaptive_best_of_n(
    prompts: Sequence[PromptValue | Prompt],
    policy: AdaptivePolicy | int,
    generator: Generator,
    scorer: Any = None,
    selector: str = "majority",
    sampling: SamplingParams | None = None,
    metadata: Sequence[Mapping[str, Any]] | None = None,
    extract: Extract | str | None = None,
    equivalence: str | KeyFn = "exact",
) -> AdaptiveResult:
    """``rsft.bon.infer.best_of_n`` with adaptive N: each prompt samples until its answers agree or ``policy.budget``.

    Args:
        prompts, scorer, sampling, metadata, extract, equivalence: as for ``best_of_n``.
        policy: an ``AdaptivePolicy``, or a budget (then the policy's defaults).
        generator: any ``Generator``; called once per batch with the prompts still open.
        selector: ``majority`` (default), ``weighted_majority`` (votes weigh rewards in the stopping
            rule too) or ``argmax`` (stops on agreement of the answers, picks the highest reward).

    Raises:
        RsftError: a bad policy, selector or option; a generator returning the wrong number of
            completions; a scorer failure.
    """
    policy = AdaptivePolicy(budget=policy) if isinstance(policy, int) else policy
    scorer_obj: Scorer | None = as_scorer(scorer) if scorer is not None else None
    check_selector(selector, scorer_obj is not None)
    extract_fn, equivalence = answer_extractor(extract), resolve_equivalence(equivalence)  # fail before sampling
    values = [p.prompt if isinstance(p, Prompt) else p for p in prompts]
    meta = list(metadata) if metadata is not None else [p.metadata if isinstance(p, Prompt) else {} for p in prompts]
    if len(meta) != len(values):
        raise RsftError(f"metadata has {len(meta)} entries for {len(values)} prompts")
    sampling = sampling or SamplingParams()

    def score_batch(open_: list[int], batch: list[list[Completion]], first: int) -> list[list[float]]:
        assert scorer_obj is not None
        return score_rows([values[i] for i in open_], batch, scorer_obj, [meta[i] for i in open_],
                          indices=open_, first_sample=first)

    run = sample_adaptively(values, policy, generator, sampling, extract_fn, equivalence,
                            score_batch if scorer_obj is not None else None,
                            weighted=selector == "weighted_majority")
    results = [pick(values[i], run.rows[i], run.scores[i] if run.scores is not None else None, selector, extract_fn,
                    equivalence) for i in range(len(values))]
    return AdaptiveResult(results, policy.budget, run.batches)
