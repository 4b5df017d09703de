"""Best-of-N selectors compared on real samples: argmax vs majority vs equivalence-aware weighted vote
vs adaptive voting (with the samples it used), scored by the checker as ground truth.

    python bench/bon_selectors.py ROUND_DIR [ROUND_DIR ...] [--answer boxed|first_line] [--out FILE.md]

Each ROUND_DIR is a scored folder (prompts.parquet, completions.parquet, rewards.parquet), e.g.
``make demo-real``'s ``runs/demo-real/bon-chain_sum/sampled`` (Qwen, 16 samples per question, math-verify)
or ``make demo``'s ``runs/demo/round-000`` (Gemma, 8 per question). The rewards are the checker's
verdicts, used only to grade a pick, never to make it: the selectors see the texts and the policy's own
log-probabilities (``completions.parquet``'s ``logprob``), the label-free score a user has without a
reward model. Adaptive voting replays the samples in order (batch k of a live run is seeded ``seed + k``,
so its samples are the first ones of the full run) and reports the samples it used.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

from rsft import artifacts, matrix
from rsft.bon.adaptive import AdaptivePolicy, should_stop
from rsft.bon.answers import answer_extractor
from rsft.bon.infer import argmax_indices, vote


def mean_logprobs(folder: Path, prompts) -> np.ndarray:
    """Per completion, its mean token log-probability (NaN where the backend recorded none)."""
    import pyarrow.parquet as pq

    table = pq.read_table(folder / artifacts.COMPLETIONS, columns=["prompt_id", "sample_idx", "logprob", "n_tokens"])
    order = {p.prompt_id: i for i, p in enumerate(prompts)}
    n = int(np.max(table.column("sample_idx").to_numpy())) + 1
    out = np.full((len(prompts), n), np.nan)
    for pid, j, lp, nt in zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True):
        if lp is not None and nt:
            out[order[pid], j] = lp / nt
    return out


def grade(folder: Path, extract_spec: str, budget: int | None) -> dict[str, dict[str, float]]:
    prompts = matrix.read_prompts(folder / artifacts.PROMPTS)
    texts = matrix.read_completions(folder / artifacts.COMPLETIONS, prompts).texts
    R, _ = matrix.read_rewards(folder / artifacts.REWARDS, [p.prompt_id for p in prompts])
    N = budget or R.shape[1]
    R, texts = R[:, :N], [row[:N] for row in texts]
    correct = R >= 1.0
    lp = mean_logprobs(folder, prompts)[:, :N]
    extract = answer_extractor(extract_spec)
    answers = [[extract(t) for t in row] for row in texts]
    confidence = np.exp(lp)  # the mean token probability: a positive vote weight
    rows: dict[str, list[float]] = {}

    def add(name: str, hit: bool, used: int = N) -> None:
        rows.setdefault(name, []).append(hit)
        rows.setdefault(name + " samples", []).append(used)

    policies = {"adaptive share >= 0.6": AdaptivePolicy(budget=N, min_n=4, supermajority=0.6),
                "adaptive beta 0.95": AdaptivePolicy(budget=N, min_n=4, rule="beta", confidence=0.95)}
    for i in range(len(prompts)):
        add("one sample (mean)", float(correct[i].mean()), 1)
        add(f"oracle pass@{N}", bool(correct[i].any()))
        add("argmax mean log-prob", bool(correct[i, argmax_indices([np.nan_to_num(lp[i], nan=-np.inf)])[0]]))
        add("majority (exact)", bool(correct[i, vote(answers[i], None, "exact")[0]]))
        add("majority (math-verify)", bool(correct[i, vote(answers[i], None, "math")[0]]))
        add("weighted by prob (math-verify)",
            bool(correct[i, vote(answers[i], list(np.nan_to_num(confidence[i])), "math")[0]]))
        for name, policy in policies.items():
            used = next(k for k in policy.schedule() if k == N or should_stop(policy, answers[i][:k], None, "math"))
            add(name + " (math-verify)", bool(correct[i, vote(answers[i][:used], None, "math")[0]]), used)
    return {"prompts": len(prompts), "N": N,
            "rows": {k: float(np.mean(v)) for k, v in rows.items() if not k.endswith(" samples")},
            "samples": {k[: -len(" samples")]: float(np.mean(v)) for k, v in rows.items() if k.endswith(" samples")}}


def markdown(folder: Path, result: dict) -> str:
    lines = [f"**{folder}** ({result['prompts']} prompts, N = {result['N']})", "",
             "| selector | accuracy | samples per prompt |", "|---|---|---|"]
    for name, acc in result["rows"].items():
        lines.append(f"| {name} | {acc:.1%} | {result['samples'][name]:.1f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("folders", nargs="+", type=Path)
    ap.add_argument("--answer", default="boxed", help="answer extractor: boxed, first_line or pkg.module:name")
    ap.add_argument("--budget", type=int, help="use the first N samples of each prompt (default: all)")
    ap.add_argument("--out", type=Path, help="also write the markdown tables here")
    args = ap.parse_args(argv)
    text = "\n".join(markdown(f, grade(f, args.answer, args.budget)) for f in args.folders)
    print(text)
    if args.out:
        artifacts.write_text(args.out, text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
