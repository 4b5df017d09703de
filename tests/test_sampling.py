"""The hf backend's sampler draws from exactly the distribution transformers' warpers define."""

from __future__ import annotations

import pytest
import torch

from rsft.generate.sampling import sample_next, sampling_distribution
from rsft.types import SamplingParams


def _reference(logits: torch.Tensor, s: SamplingParams) -> torch.Tensor:
    """transformers' own warpers (temperature -> top-k -> top-p), softmaxed."""
    from transformers import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

    x = logits.clone()
    x = TemperatureLogitsWarper(s.temperature)(None, x)
    if s.top_k:
        x = TopKLogitsWarper(s.top_k)(None, x)
    if s.top_p < 1:
        x = TopPLogitsWarper(s.top_p)(None, x)
    return torch.softmax(x, -1)


@pytest.mark.parametrize("s", [
    SamplingParams(temperature=1.0, top_k=0, top_p=1.0),
    SamplingParams(temperature=0.7, top_k=5, top_p=1.0),
    SamplingParams(temperature=1.3, top_k=0, top_p=0.8),
    SamplingParams(temperature=0.9, top_k=8, top_p=0.6),
])
def test_distribution_equals_transformers_warpers(s):
    torch.manual_seed(0)
    logits = torch.randn(6, 40) * 2
    assert torch.allclose(sampling_distribution(logits, s), _reference(logits, s), atol=1e-6)


@pytest.mark.parametrize("s", [
    SamplingParams(temperature=0.8, top_k=6, top_p=1.0),
    SamplingParams(temperature=1.0, top_k=10, top_p=0.7),
    SamplingParams(temperature=1.0, top_k=0, top_p=0.9),
])
def test_empirical_frequencies_match_the_distribution(s):
    torch.manual_seed(1)
    logits = torch.randn(1, 30) * 1.5
    draws = 40_000
    g = torch.Generator().manual_seed(2)
    samples = sample_next(logits.expand(draws, -1).contiguous(), s, g)
    freq = torch.bincount(samples, minlength=30).float() / draws
    expected = sampling_distribution(logits, s)[0]
    assert (freq[expected == 0] == 0).all()  # never outside the top-k / nucleus
    assert 0.5 * (freq - expected).abs().sum() < 0.015  # total variation


def test_greedy_is_argmax():
    logits = torch.tensor([[0.1, 3.0, 2.0], [5.0, 1.0, 5.0]])
    assert sample_next(logits, SamplingParams(temperature=0), None).tolist() == [1, 0]
