"""Log-probabilities of completions under a causal LM, and a Monte Carlo KL estimate from them.

``sequence_logprobs`` scores ``log p(completion | prompt)`` at temperature 1. The prompt and the
completion are tokenized separately and their ids concatenated, so the boundary is exactly where
the caller put it (tokenizing the joined text could merge tokens across it). ``kl_estimate`` turns
two such lists, scored on samples drawn from the policy, into an estimate of KL(policy || base).

torch is imported inside the functions, so ``import rsft.train.logprobs`` stays cheap.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence
from typing import Any

from rsft.generate.prefix_cache import cache_keyword, prefix_cache, repeated


def sequence_logprobs(
    model: Any,
    tokenizer: Any,
    prompts: Sequence[str],
    completions: Sequence[str],
    batch_size: int = 8,
) -> list[float]:
    """Sum of ``log p(completion tokens | prompt)`` for each pair, under ``model`` at temperature 1.

    The prompt is tokenized as the tokenizer does by default (with its BOS, if it adds one) and the
    completion without special tokens; an empty completion scores 0.0. Pairs are sorted by length
    and run in right-padded batches of ``batch_size`` under ``torch.inference_mode``; the result
    is in input order. The model's mode (train/eval) is left as it is: call ``model.eval()`` first
    for deterministic scores if it has dropout.
    """
    import torch

    if batch_size < 1:
        raise ValueError(f"batch_size must be at least 1, got {batch_size}")
    prompt_ids, completion_ids = pair_token_ids(tokenizer, prompts, completions)

    device = next(model.parameters()).device
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    cache_kw = cache_keyword(model)
    head_only = "logits_to_keep" in inspect.signature(model.forward).parameters
    shared, prefix = prefix_cache(model, prompt_ids, device) if head_only and cache_kw else (0, None)
    order = sorted(range(len(prompts)), key=lambda i: len(prompt_ids[i]) + len(completion_ids[i]))
    out = [0.0] * len(prompts)
    with torch.inference_mode():
        for start in range(0, len(order), batch_size):
            chunk = [i for i in order[start : start + batch_size] if completion_ids[i]]
            if not chunk:
                continue
            # each row: its prompt after the shared prefix, then its completion, right-padded
            seqs = [prompt_ids[i][shared:] + completion_ids[i] for i in chunk]
            width = max(len(s) for s in seqs)
            input_ids = torch.full((len(seqs), width), pad_id, dtype=torch.long)
            attention = torch.zeros((len(seqs), shared + width), dtype=torch.long)
            attention[:, :shared] = 1
            target = torch.zeros((len(seqs), width), dtype=torch.bool)
            for row, (i, seq) in enumerate(zip(chunk, seqs, strict=True)):
                input_ids[row, : len(seq)] = torch.tensor(seq)
                attention[row, shared : shared + len(seq)] = 1
                target[row, len(prompt_ids[i]) - shared : len(seq)] = True
            # Position t predicts token t + 1: only positions lo .. width-2 predict completion tokens,
            # so only they go through the output head (Gemma's 262k-word head would dominate otherwise).
            lo = min(len(prompt_ids[i]) for i in chunk) - shared - 1
            kwargs: dict[str, Any] = {}
            if head_only:
                kwargs["logits_to_keep"] = torch.arange(lo, width - 1, device=device)
            if prefix is not None:
                kwargs.update({cache_kw: repeated(prefix, len(chunk)), "use_cache": True,
                               "position_ids": (shared + torch.arange(width, device=device)).expand(len(chunk), -1)})
            else:
                kwargs["use_cache"] = False
            logits = model(input_ids=input_ids.to(device), attention_mask=attention.to(device), **kwargs).logits
            logits = (logits if head_only else logits[:, lo : width - 1]).float()
            labels = input_ids[:, lo + 1 :].to(device)
            token_lp = logits.gather(-1, labels.unsqueeze(-1)).squeeze(-1) - torch.logsumexp(logits, dim=-1)
            mask = target[:, lo + 1 :].to(device)
            sums = (token_lp.double() * mask).sum(dim=1)
            for row, i in enumerate(chunk):
                out[i] = float(sums[row])
    return out


def pair_token_ids(tokenizer: Any, prompts: Sequence[str],
                   completions: Sequence[str]) -> tuple[list[list[int]], list[list[int]]]:
    """Token ids of each prompt (with the tokenizer's special tokens; BOS alone for an empty prompt)
    and of each completion (without), tokenized apart so the boundary is where the caller put it.
    Every engine that scores ``log p(completion | prompt)`` for rsft tokenizes through this."""
    if len(prompts) != len(completions):
        raise ValueError(f"{len(prompts)} prompts but {len(completions)} completions")
    prompt_ids = _encode(tokenizer, prompts, special=True)
    completion_ids = _encode(tokenizer, completions, special=False)
    for i, ids in enumerate(prompt_ids):
        if not ids:
            if tokenizer.bos_token_id is None:
                raise ValueError(f"prompt {i} is empty and the tokenizer has no BOS token to condition on")
            prompt_ids[i] = [tokenizer.bos_token_id]
    return prompt_ids, completion_ids


def checkpoint_logprobs(spec: str, prompts: Sequence[str], completions: Sequence[str], dtype: str = "auto",
                        device: str = "auto") -> list[float]:
    """:func:`sequence_logprobs` under a checkpoint loaded for this call with transformers
    (``rsft.models.load_causal_lm``: a folder, an embedded model or a LoRA adapter folder), freed after."""
    from rsft.models import load_causal_lm, release_memory

    model, tokenizer = load_causal_lm(spec, dtype=dtype, device=device)
    try:
        return sequence_logprobs(model, tokenizer, prompts, completions)
    finally:
        del model
        release_memory()


def _encode(tokenizer: Any, texts: Sequence[str], special: bool) -> list[list[int]]:
    if not texts:
        return []
    return [list(ids) for ids in tokenizer(list(texts), add_special_tokens=special)["input_ids"]]


def kl_estimate(policy_logprobs: Sequence[float], base_logprobs: Sequence[float]) -> dict[str, float | int]:
    """Monte Carlo estimate of KL(policy || base) from completions sampled from the policy.

    Each pair is ``log pi(y|x)`` and ``log pi_base(y|x)`` of one sampled completion ``y``; the
    estimate is the mean of their differences, unbiased when ``y ~ pi(.|x)`` at temperature 1 with
    no top-k/top-p truncation. ``stderr`` is the standard error of that mean (NaN for one sample).
    Returns ``{"mean", "stderr", "n"}``.
    """
    if len(policy_logprobs) != len(base_logprobs):
        raise ValueError(f"{len(policy_logprobs)} policy log-probs but {len(base_logprobs)} base log-probs")
    n = len(policy_logprobs)
    if n == 0:
        raise ValueError("kl_estimate needs at least one sample")
    diffs = [float(p) - float(b) for p, b in zip(policy_logprobs, base_logprobs, strict=True)]
    mean = math.fsum(diffs) / n
    if n < 2:
        return {"mean": mean, "stderr": float("nan"), "n": n}
    var = math.fsum((d - mean) ** 2 for d in diffs) / (n - 1)
    return {"mean": mean, "stderr": math.sqrt(var / n), "n": n}
