"""Heterogeneous generations: several generators fill the N columns of one completion matrix.

Column order is fixed by the order of the parts (the first ``n_1`` samples come from the first
generator, and so on), so the matrix is reproducible and every completion records its generator.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace

from rsft.generate import Generator
from rsft.types import Completion, PromptValue, SamplingParams


class MixedGenerator:
    """Draws ``share`` of each row from each generator; shares are scaled to sum to the requested n."""

    def __init__(self, parts: Sequence[tuple[Generator, int]]) -> None:
        if not parts or any(k < 1 for _, k in parts):
            raise ValueError("MixedGenerator needs (generator, count >= 1) parts")
        self.parts = list(parts)
        self.name = "mixed:" + "+".join(g.name for g, _ in self.parts)

    @property
    def n(self) -> int:
        return sum(k for _, k in self.parts)

    def counts(self, n: int) -> list[int]:
        """Split ``n`` over the parts in proportion to their counts (largest remainders, stable)."""
        total = self.n
        exact = [n * k / total for _, k in self.parts]
        counts = [int(x) for x in exact]
        order = sorted(range(len(exact)), key=lambda i: (-(exact[i] - counts[i]), i))
        for i in order[: n - sum(counts)]:
            counts[i] += 1
        return counts

    def generate(self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams) -> list[list[Completion]]:
        rows: list[list[Completion]] = [[] for _ in prompts]
        for index, ((generator, _), count) in enumerate(zip(self.parts, self.counts(n), strict=True)):
            if count == 0:
                continue
            part = generator.generate(prompts, count, replace(sampling, seed=sampling.seed + 7919 * index))
            for row, extra in zip(rows, part, strict=True):
                row.extend(extra)
        return rows
