"""Token sampling for the ``hf`` backend: temperature, then top-k, then top-p (the order transformers
uses), without sorting the whole vocabulary when top-k is set.

``torch.topk`` returns the k best logits already sorted, so top-p only needs a cumulative sum over
those k values; only top-p *without* top-k has to sort the full vocabulary.
"""

from __future__ import annotations

from typing import Any

from rsft.types import SamplingParams


def sample_next(logits: Any, sampling: SamplingParams, generator: Any) -> Any:
    """One token id per row of ``logits`` (rows × vocab, float32)."""
    import torch

    if sampling.temperature == 0:
        return logits.argmax(dim=-1)
    scaled = logits / sampling.temperature
    vocab = scaled.shape[-1]
    if sampling.top_k and sampling.top_k < vocab:
        values, index = torch.topk(scaled, sampling.top_k, dim=-1)
    elif sampling.top_p < 1.0:
        values, index = torch.sort(scaled, dim=-1, descending=True)
    else:
        probs = torch.softmax(scaled, dim=-1)
        return torch.multinomial(probs, 1, generator=generator).squeeze(1)
    probs = torch.softmax(values, dim=-1)
    if sampling.top_p < 1.0:
        mass_before = probs.cumsum(dim=-1) - probs
        probs = probs.masked_fill(mass_before >= sampling.top_p, 0.0)  # the first token always stays
    choice = torch.multinomial(probs, 1, generator=generator)
    return index.gather(1, choice).squeeze(1)


def sampling_distribution(logits: Any, sampling: SamplingParams) -> Any:
    """The exact distribution ``sample_next`` draws from (rows × vocab), for tests and diagnostics."""
    import torch

    if sampling.temperature == 0:
        return torch.nn.functional.one_hot(logits.argmax(-1), logits.shape[-1]).float()
    scaled = logits / sampling.temperature
    order = torch.argsort(scaled, dim=-1, descending=True, stable=True)
    probs_sorted = torch.softmax(scaled.gather(-1, order), dim=-1)
    keep = torch.ones_like(probs_sorted, dtype=torch.bool)
    if sampling.top_k and sampling.top_k < scaled.shape[-1]:
        keep[..., sampling.top_k :] = False
    renorm = torch.where(keep, probs_sorted, 0.0)
    renorm = renorm / renorm.sum(-1, keepdim=True)
    if sampling.top_p < 1.0:
        keep &= (renorm.cumsum(-1) - renorm) < sampling.top_p
    final = torch.where(keep, probs_sorted, 0.0)
    final = final / final.sum(-1, keepdim=True)
    return torch.zeros_like(final).scatter(-1, order, final)
