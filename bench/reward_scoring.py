"""Reward-model scoring on a long-tailed length distribution: rsft's batching vs naive batches.

Sides, each scoring the same pairs with the same ``RewardModelScorer`` weights (so the per-pair
model code is identical; only the batching differs), interleaved, median of the repeats:

- ``naive``: fixed batches of 8 in input order (what a loop over ``pipeline("text-classification")``
  or a hand-written ``for i in range(0, len(x), 8)`` does);
- ``rsft sorted, 8 per batch``: the previous default (length-sorted, fixed count);
- ``rsft sorted + token budget``: length-sorted, at most B padded tokens per batch
  (``RewardModelScorer(max_batch_tokens=B, batch_size=64)``), B = ``--budget-x`` (default 8) times the
  median pair length of the data, rounded to 64 (the rule of thumb in the scorer's docstring).

Padded-token efficiency = real tokens / tokens processed (rows x the batch's longest row, summed).
Scores are checked equal across the sides (and to one-pair-at-a-time scoring on a sample).

Models: the tests' tiny 2-layer Llama RM, and (``--gemma``) a sequence-classification head with
random weights on Gemma-3-270M's body (compute-bound, so throughput follows padded tokens).

    .venv/bin/python bench/reward_scoring.py --pairs 256
"""

from __future__ import annotations

import argparse
import random
import statistics
import tempfile
from pathlib import Path
from typing import Any

from common import header, interleaved, one_thread, table, verdict

WORDS = ("the quick brown fox jumps over a lazy dog so the answer is 42 because we add seven and "
         "then carry one to get the final result which we check twice").split()


def long_tailed_pairs(count: int, max_words: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Prompts of 8-40 words; completion lengths Pareto(1.1) x 6 words, capped: most are short, a few long."""
    rng = random.Random(seed)
    prompts, completions = [], []
    for i in range(count):
        prompts.append(f"Q{i}: " + " ".join(rng.choice(WORDS) for _ in range(rng.randint(8, 40))) + "?")
        words = min(int(6 * rng.paretovariate(1.1)), max_words)
        completions.append(" ".join(rng.choice(WORDS) for _ in range(words)))
    return prompts, completions


def gemma_rm(workdir: Path) -> Path:
    """Gemma-3-270M's body with a fresh one-output classification head, saved for RewardModelScorer."""
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    from rsft.models import resolve_model_path

    src = resolve_model_path("gemma3-270m")
    torch.manual_seed(0)
    model = AutoModelForSequenceClassification.from_pretrained(src, num_labels=1, dtype=torch.float32)
    out = workdir / "gemma-rm"
    model.save_pretrained(out)
    AutoTokenizer.from_pretrained(src).save_pretrained(out)
    return out


def run(path: Path, pairs: int, max_words: int, budget_x: float, repeats: int,
        warmup: bool) -> tuple[list[list[Any]], dict[str, Any]]:
    import numpy as np

    from rsft.score.reward_model import RewardModelScorer

    prompts, completions = long_tailed_pairs(pairs, max_words)
    scorer = RewardModelScorer(path, batch_size=8, device="cpu", dtype="float32")
    lengths = [len(x) for x in scorer.encode(prompts, completions)]
    budget = max(64, round(budget_x * statistics.median(lengths) / 64) * 64)
    settings = {
        "naive: 8 per batch, input order": {"batch_size": 8, "sort_by_length": False, "max_batch_tokens": None},
        "rsft sorted, 8 per batch": {"batch_size": 8, "sort_by_length": True, "max_batch_tokens": None},
        f"rsft sorted + token budget {budget}": {"batch_size": 64, "sort_by_length": True,
                                                  "max_batch_tokens": budget},
    }

    def side(cfg: dict[str, Any]) -> Any:
        def call() -> tuple[list[float], dict[str, Any]]:
            scorer.batch_size = cfg["batch_size"]
            scorer.sort_by_length = cfg["sort_by_length"]
            scorer.max_batch_tokens = cfg["max_batch_tokens"]
            scores = scorer.score(prompts, completions)
            return scores, dict(scorer.last_stats)

        return call

    if not warmup:  # a cheap warm-up instead: two pairs, so first-call costs hit no side
        scorer.score(prompts[:2], completions[:2])
    results = interleaved({name: side(cfg) for name, cfg in settings.items()}, repeats, warmup=warmup)
    naive = results["naive: 8 per batch, input order"]
    reference = np.array(naive["value"][0])
    sample = list(range(0, pairs, max(1, pairs // 8)))
    scorer.batch_size, scorer.max_batch_tokens = 1, None
    alone = [scorer.score([prompts[i]], [completions[i]])[0] for i in sample]
    max_diff = float(np.max(np.abs(reference[sample] - np.array(alone))))
    rows = []
    for name, r in results.items():
        scores, stats = r["value"]
        max_diff = max(max_diff, float(np.max(np.abs(np.array(scores) - reference))))
        rows.append([name, stats["batches"], stats["real_tokens"], stats["padded_tokens"], stats["efficiency"],
                     pairs / r["median"], naive["median"] / r["median"]])
    info = {"lengths": lengths, "max_diff": max_diff, "results": results}
    return rows, info


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=256)
    parser.add_argument("--max-words", type=int, default=400)
    parser.add_argument("--budget-x", type=float, default=8.0, help="token budget = this x median pair length")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--gemma", action="store_true", help="also a Gemma-3-270M-bodied RM")
    parser.add_argument("--gemma-pairs", type=int, default=48)
    parser.add_argument("--gemma-repeats", type=int, default=2, help="Gemma: a 2-pair warm-up only")
    args = parser.parse_args()
    one_thread()
    header("2. Reward-model scoring: length-sorted token-budget batches vs naive fixed batches")
    goals = []
    with tempfile.TemporaryDirectory() as tmp:
        from tiny_models import build_reward_model

        models = [("tiny 2-layer Llama RM", build_reward_model(Path(tmp) / "tiny-rm"), args.pairs, args.repeats,
                   True)]
        if args.gemma:
            models.append(("Gemma-3-270M body + random 1-output head", gemma_rm(Path(tmp)), args.gemma_pairs,
                           args.gemma_repeats, False))
        for label, path, pairs, repeats, warmup in models:
            rows, info = run(path, pairs, args.max_words, args.budget_x, repeats, warmup)
            lengths = sorted(info["lengths"])
            print(f"### {label}: {pairs} pairs, tokens per pair median {statistics.median(lengths):.0f}, "
                  f"p90 {lengths[int(0.9 * len(lengths))]}, max {lengths[-1]} (median of {repeats}"
                  f"{', after a warm-up call each' if warmup else ', after a 2-pair warm-up call'})\n")
            table(["batching", "batches", "real tokens", "padded tokens", "efficiency", "pairs/s",
                   "throughput vs naive"], rows)
            print(f"Largest score difference between sides and vs one pair at a time: {info['max_diff']:.1e}\n")
            best = rows[-1]
            goals.append([f"{label}: padded-token efficiency", f"{best[4]:.3f}", ">= 0.9", verdict(best[4], 0.9)])
            goals.append([f"{label}: throughput vs naive", f"{best[6]:.2f}x", ">= 1.5x", verdict(best[6], 1.5)])
    print("#### Goals\n")
    table(["measure (rsft with the token budget)", "value", "goal", "met?"], goals)


if __name__ == "__main__":
    main()
