"""Scorers built from other scorers: a checker gating a reward model, and a weighted sum."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from rsft.errors import RsftError
from rsft.score.base import Scorer, ScoreValue
from rsft.score.pairs import score_batch
from rsft.types import PromptValue, Verdict, unwrap_verdict


def score_value(value: ScoreValue) -> float:
    """The number in a scorer's output, whether a bare float or a ``Verdict``."""
    return float(unwrap_verdict(value)[0])


def sigmoid(x: float) -> float:
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


class GatedScorer:
    """A checker gates, a second scorer (typically a reward model) breaks ties among passing pairs.

    ``reward = pass_offset + sigmoid(inner)`` when ``gate >= threshold``, else ``fail_value``.

    With ``fail_value <= pass_offset`` every passing completion outranks every failing one (the
    sigmoid lies in (0, 1)), and among passing completions the inner scorer decides. The inner
    scorer runs only on passing pairs, so a costly reward model is not spent on wrong answers. A
    passing pair whose inner score is NaN gets ``pass_offset`` (it still passes).
    """

    def __init__(
        self,
        gate: Scorer,
        inner: Scorer,
        fail_value: float = 0.0,
        pass_offset: float = 1.0,
        threshold: float = 1.0,
    ) -> None:
        if fail_value > pass_offset:
            raise RsftError(f"gate: fail_value ({fail_value}) must be <= pass_offset ({pass_offset})")
        self.gate, self.inner = gate, inner
        self.fail_value, self.pass_offset, self.threshold = fail_value, pass_offset, threshold
        self.name = f"gate({gate.name},{inner.name})"

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        gate_out = score_batch(self.gate, prompts, completions, metadata)
        passing = [i for i, v in enumerate(gate_out) if score_value(v) >= self.threshold]
        inner_out = (
            score_batch(
                self.inner,
                [prompts[i] for i in passing],
                [completions[i] for i in passing],
                [metadata[i] for i in passing],
            )
            if passing
            else []
        )
        inner_by_index = dict(zip(passing, inner_out, strict=True))
        out = []
        for i, g in enumerate(gate_out):
            gate_value, gate_details = unwrap_verdict(g)
            gate_note = f"{self.gate.name}={float(gate_value):g}" + (f" ({gate_details})" if gate_details else "")
            if i not in inner_by_index:
                out.append(Verdict(self.fail_value, gate_note))
                continue
            x = score_value(inner_by_index[i])
            reward = self.pass_offset if math.isnan(x) else self.pass_offset + sigmoid(x)
            out.append(Verdict(reward, f"{gate_note}; {self.inner.name}={x:.6g}"))
        return out


class WeightedSum:
    """``reward = sum(weight * score)`` over several scorers, each run on the whole batch."""

    def __init__(self, terms: Sequence[tuple[Scorer, float]]) -> None:
        if not terms:
            raise RsftError("sum: needs at least one (scorer, weight) term")
        self.terms = [(s, float(w)) for s, w in terms]
        self.name = "sum(" + ",".join(f"{w:g}*{s.name}" for s, w in self.terms) + ")"

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]],
    ) -> list[Verdict]:
        totals = [0.0] * len(completions)
        notes: list[list[str]] = [[] for _ in completions]
        for scorer, weight in self.terms:
            for i, v in enumerate(score_batch(scorer, prompts, completions, metadata)):
                totals[i] += weight * score_value(v)
                notes[i].append(f"{scorer.name}={score_value(v):.6g}")
        return [Verdict(t, "; ".join(n)) for t, n in zip(totals, notes, strict=True)]
