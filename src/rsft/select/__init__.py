"""Selection: pick completions from the M x N reward matrix R, pure numpy (layer 1).

``core`` holds the conventions every strategy keeps (NaN counts as -inf, ties go to the first
index, only finite entries are picked), the building blocks (``best_per_prompt``, ``top_k_overall``,
``keep_above``, ``k_per_prompt``, ``dpo_pairs``, ``rso_per_prompt``, ``dedup_mask``), ``select`` and
the built-in strategies. A new strategy is a file here with one ``pick(R, *, k, threshold, beta,
seed)`` function and a line in ``rsft.registry.STRATEGIES`` (docs/architecture.md, "A selection
strategy"). Every name of ``core`` is importable from here.
"""

from __future__ import annotations

from rsft.select.core import PAIR_STRATEGIES as PAIR_STRATEGIES
from rsft.select.core import SELECTION_STRATEGIES as SELECTION_STRATEGIES
from rsft.select.core import STRATEGIES as STRATEGIES
from rsft.select.core import Selection as Selection
from rsft.select.core import apply_mask as apply_mask
from rsft.select.core import as_reward_matrix as as_reward_matrix
from rsft.select.core import best_per_prompt as best_per_prompt
from rsft.select.core import dedup_mask as dedup_mask
from rsft.select.core import dpo_pairs as dpo_pairs
from rsft.select.core import k_per_prompt as k_per_prompt
from rsft.select.core import keep_above as keep_above
from rsft.select.core import mask_non_finite as mask_non_finite
from rsft.select.core import nan_count as nan_count
from rsft.select.core import rso_per_prompt as rso_per_prompt
from rsft.select.core import select as select
from rsft.select.core import top_k_overall as top_k_overall
