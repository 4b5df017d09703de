"""rsft: rejection-sampling fine-tuning and Best-of-N for LLMs.

Importing the package is cheap: heavy modules (torch, transformers) load only when used.
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

_LAZY = {"best_of_n": "rsft.bon", "BoNResult": "rsft.bon", "run_round": "rsft.pipeline"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'rsft' has no attribute {name!r}")
