"""Training: the data it takes and the trainers.

- ``rows`` (layer 1): TRL-ready rows (SFT and preference pairs) for the kept set.
- ``logprobs`` (layer 1): log-probabilities of completions under a causal LM and the KL estimate.
- ``grpo`` (layer 1): rsft scorers as TRL GRPO rewards (and TRL rewards as scorers).
- ``sft`` (layer 3): a round's TRL SFT (full or LoRA) into its checkpoint.
- ``rm`` (layer 3): training a reward model on preference pairs (``rsft rm-train``).

This package answers for the names of ``sft`` (``from rsft.train import train``), the module
``rsft.train`` was before it became a package.
"""

from __future__ import annotations

from rsft import forward_names

__getattr__ = forward_names(__name__, "rsft.train.sft")
