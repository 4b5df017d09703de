"""Best-of-N: sample N, score, pick.

- ``answers`` (layer 1): the final answer of a completion and grouping equal answers, for voting.
- ``adaptive`` (layer 1): adaptive N, sampling each prompt until its answers agree.
- ``stats`` (layer 1): what Best-of-n buys for each n, from one M x N reward matrix.
- ``report`` (layer 3): ``rsft stats RUN``, the Best-of-N curve of a scored round.
- ``infer`` (layer 4): Best-of-N at inference (``best_of_n``, ``adaptive_best_of_n``, the selectors),
  used by ``rsft bon`` and ``rsft serve``.

This package answers for the names of ``infer`` (``from rsft.bon import best_of_n``), the module
``rsft.bon`` was before it became a package.
"""

from __future__ import annotations

from rsft import forward_names

__getattr__ = forward_names(__name__, "rsft.bon.infer")
