"""Adaptive N (adaptive self-consistency): sample in growing batches, stop once answers agree.

A fixed N spends as much on a prompt whose first four samples all say ``42`` as on one whose
samples disagree. Here each prompt gets at most ``budget`` samples, drawn in batches: ``min_n``
first, then the samples so far grow by ``growth`` (4, 8, 16, ... capped at the budget). After each
batch a prompt whose answers already agree stops and leaves the later batches, which run over the
prompts still open (one ``generate`` call per batch). Answers are grouped exactly as the voting
selectors of ``rsft.bon.infer`` group them (``rsft.bon.answers``: the same ``extract`` and ``equivalence``);
with ``weighted_majority`` each vote weighs its reward (negative and NaN rewards count 0 here).

Two users: ``rsft.bon.infer.adaptive_best_of_n`` (``rsft bon --adaptive``, ``rsft serve``'s ``budget``)
then picks among the samples drawn, as ``best_of_n`` would; the generate stage
(``generation.adaptive``) writes them into the round's M x N matrix, the cells a prompt did not
sample marked unsampled.

Two stopping rules (``AdaptivePolicy.rule``):

- ``share`` (default): the leading answer group holds at least ``supermajority`` of all the votes
  so far (abstaining samples count in the total). ``supermajority`` above 1 never stops early.
- ``beta``: the rule of Adaptive-Consistency (Aggarwal et al. 2023, "Let's Sample Step by Step"):
  with ``v1`` and ``v2`` the votes of the leading and the runner-up group, stop once
  ``P(p1 > p2) = P(X > 1/2)``, ``X ~ Beta(v1 + 1, v2 + 1)``, reaches ``confidence`` (0.95).

Seeds: the batch holding samples ``k .. k+m-1`` of each open prompt is asked for with
``sampling.seed + k``. The whole run is deterministic, and the first batch is exactly a
non-adaptive run of ``min_n``. Where a generator seeds sample ``j`` with ``seed + j`` (the
``openai`` backend with ``max_n_per_request=1``, as against llama.cpp), the samples are the first
ones of a non-adaptive run with the same seed. The ``hf`` backend draws a batch from one random
stream, so its later batches differ from a full run's samples ``k..`` (still deterministic).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from rsft.bon.answers import Extract, KeyFn, answer_groups
from rsft.config import STOP_RULES, check_adaptive_policy, choices
from rsft.errors import RsftError
from rsft.generate import Generator
from rsft.types import Completion, PromptValue, SamplingParams

"""Stopping rules accepted by ``AdaptivePolicy.rule``."""


@dataclass(frozen=True)
class AdaptivePolicy:
    """How many samples a prompt gets: batches that grow until its answers agree or the budget is spent."""

    budget: int
    """Samples per prompt at most (the N of a non-adaptive run)."""
    min_n: int = 4
    """Samples in the first batch (capped at the budget); no prompt stops with fewer."""
    supermajority: float = 0.6
    """share rule: stop once the leading answer group holds at least this fraction of the votes (above 1: never early)."""
    growth: float = 2.0
    """Each later batch grows a prompt's samples to ceil(growth x samples so far), at least one more, up to the budget."""
    rule: str = field(default="share", metadata=choices(*STOP_RULES))
    """Stopping rule: share (supermajority of the votes) or beta (P(leader beats runner-up) >= confidence)."""
    confidence: float = 0.95
    """beta rule: posterior probability that the leading answer beats the runner-up needed to stop."""

    def __post_init__(self) -> None:
        check_adaptive_policy(self.budget, self.min_n, self.supermajority, self.growth, self.rule, self.confidence)

    def schedule(self) -> list[int]:
        """Samples per prompt after each batch, e.g. ``[4, 8, 16]`` for budget 16, min_n 4, growth 2."""
        totals = [min(self.min_n, self.budget)]
        while totals[-1] < self.budget:
            totals.append(min(self.budget, max(totals[-1] + 1, math.ceil(totals[-1] * self.growth))))
        return totals


# --- the stopping rule ------------------------------------------------------------------------------


def vote_totals(
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    equivalence: str | KeyFn = "exact",
) -> tuple[float, float, float]:
    """(leading group's votes, runner-up group's votes, all samples' votes) for the stopping rule.

    A vote weighs 1, or its weight clipped at 0 (NaN counts 0): a share needs non-negative votes.
    Abstaining samples (answer None) add to the total only. Groups are ``rsft.bon.answers.answer_groups``.
    """
    clipped = [1.0] * len(answers) if weights is None else [
        0.0 if math.isnan(w) else max(0.0, float(w)) for w in weights]
    totals: dict[int, float] = {}
    for group, w in zip(answer_groups(answers, equivalence), clipped, strict=True):
        if group is not None:
            totals[group] = totals.get(group, 0.0) + w
    top = sorted(totals.values(), reverse=True)[:2] + [0.0, 0.0]
    return top[0], top[1], sum(clipped)


def leader_probability(lead: float, runner_up: float) -> float:
    """``P(X > 1/2)`` for ``X ~ Beta(lead + 1, runner_up + 1)``: how sure the leader is the more likely answer.

    Adaptive-Consistency's posterior (a uniform prior over the two groups' shares); exact for any
    non-negative real votes through the regularized incomplete beta function.
    """
    return 1.0 - _betainc(lead + 1.0, runner_up + 1.0, 0.5)


def should_stop(
    policy: AdaptivePolicy,
    answers: Sequence[str | None],
    weights: Sequence[float] | None = None,
    equivalence: str | KeyFn = "exact",
) -> bool:
    """Whether a prompt with these answers so far has agreed enough to stop sampling (see the module docstring)."""
    if len(answers) < min(policy.min_n, policy.budget):
        return False
    lead, runner_up, total = vote_totals(answers, weights, equivalence)
    if policy.rule == "beta":
        return lead > 0 and leader_probability(lead, runner_up) >= policy.confidence
    return total > 0 and lead / total >= policy.supermajority


def _betainc(a: float, b: float, x: float) -> float:
    """The regularized incomplete beta function ``I_x(a, b)`` (continued fraction, Numerical Recipes 6.4)."""
    if x <= 0.0 or x >= 1.0:
        return 0.0 if x <= 0.0 else 1.0
    log_front = math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b) + a * math.log(x) + b * math.log1p(-x)
    if x < (a + 1.0) / (a + b + 2.0):
        return math.exp(log_front) * _beta_fraction(a, b, x) / a
    return 1.0 - math.exp(log_front) * _beta_fraction(b, a, 1.0 - x) / b


def _beta_fraction(a: float, b: float, x: float) -> float:
    """The continued fraction of ``I_x(a, b)``, evaluated by the modified Lentz method."""
    tiny = 1e-300

    def guard(v: float) -> float:
        return v if abs(v) > tiny else tiny

    c, d = 1.0, 1.0 / guard(1.0 - (a + b) * x / (a + 1.0))
    h = d
    for m in range(1, 1000):
        even = m * (b - m) * x / ((a + 2 * m - 1.0) * (a + 2 * m))
        d, c = 1.0 / guard(1.0 + even * d), guard(1.0 + even / c)
        h *= d * c
        odd = -(a + m) * (a + b + m) * x / ((a + 2 * m) * (a + 2 * m + 1.0))
        d, c = 1.0 / guard(1.0 + odd * d), guard(1.0 + odd / c)
        h *= d * c
        if abs(d * c - 1.0) < 1e-15:
            break
    return h


# --- the sampling loop ---------------------------------------------------------------------------


@dataclass
class AdaptiveRows:
    """What ``sample_adaptively`` drew: a ragged row of completions per prompt."""

    rows: list[list[Completion]]
    scores: list[list[float]] | None
    """The rewards of each row's completions, when a ``score_batch`` was given."""
    batches: int
    """``generate`` calls made."""


def sample_adaptively(
    values: Sequence[PromptValue],
    policy: AdaptivePolicy,
    generator: Generator,
    sampling: SamplingParams,
    extract: Extract,
    equivalence: str | KeyFn = "exact",
    score_batch: Callable[[list[int], list[list[Completion]], int], list[list[float]]] | None = None,
    weighted: bool = False,
) -> AdaptiveRows:
    """The sampling loop of adaptive N: batches over the prompts still open (see the module docstring).

    ``score_batch(open_rows, batch, first_sample)`` scores a batch when given; with ``weighted`` the
    votes of the stopping rule weigh those scores. Used by ``adaptive_best_of_n`` and the generate stage.
    """
    rows: list[list[Completion]] = [[] for _ in values]
    answers: list[list[str | None]] = [[] for _ in values]
    scores: list[list[float]] | None = [[] for _ in values] if score_batch is not None else None
    open_, drawn, batches = list(range(len(values))), 0, 0
    for total in policy.schedule():
        if not open_:
            break
        batch = _draw(generator, [values[i] for i in open_], total - drawn,
                      dataclasses.replace(sampling, seed=sampling.seed + drawn))
        if scores is not None and score_batch is not None:
            for i, row_scores in zip(open_, score_batch(open_, batch, drawn), strict=True):
                scores[i].extend(row_scores)
        for i, row in zip(open_, batch, strict=True):
            rows[i].extend(row)
            answers[i].extend(extract(c.text) for c in row)
        drawn, batches = total, batches + 1
        weights = scores if weighted else None
        open_ = [i for i in open_ if not should_stop(policy, answers[i], weights[i] if weights else None,
                                                     equivalence)]
    return AdaptiveRows(rows, scores, batches)


def _draw(generator: Generator, prompts: list[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
    """One batch: ``n`` completions for each open prompt, checked."""
    rows = generator.generate(prompts, n, sampling)
    if len(rows) != len(prompts) or any(len(r) != n for r in rows):
        got = sorted({len(r) for r in rows})
        raise RsftError(f"generator {generator.name!r} returned {len(rows)} rows of {got} completions; "
                        f"expected {len(prompts)} of {n}")
    return rows
