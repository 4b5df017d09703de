"""Rounds and runs built on ``rsft.pipeline``'s one round (layer 3).

- ``loop``: RSFT rounds: generate from the current policy, train, evaluate on held-out prompts,
  keep the better policy; KL from the base and the control arm.
- ``sweep``: ``rsft sweep``, a grid over N, temperature, threshold and epochs.
- ``rm_check``: re-validating a reward model on preference pairs (``rsft rm-check``, the round gate).

This package answers for the names of ``loop`` (``from rsft.rounds import run_rounds``), the module
``rsft.rounds`` was before it became a package.
"""

from __future__ import annotations

from rsft import forward_names

__getattr__ = forward_names(__name__, "rsft.rounds.loop")
