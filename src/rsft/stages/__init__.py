"""The four stages of a round. Each reads the previous stage's files from the round folder and
writes its own, so any stage can be re-run alone (generate once, re-score or re-select many times).

generate: prompts.parquet + completions.parquet     score:  rewards.parquet
select:   selection.parquet                          export: selected.jsonl

Generation and scoring run in shards of prompts (``shards``); each finished shard is written
atomically under ``.shards/`` so an interrupted stage resumes at the first missing shard. An
executor (``rsft.stages.executor``) computes the missing shards, here or on Ray actors; the driver writes them.

The functions ``generate`` and ``score`` hide the submodules of the same names as attributes of this
package: import from those with ``from rsft.stages.generate import ...``.
"""

from __future__ import annotations

from rsft.config import sampling_params as sampling_params
from rsft.score import score_pairs as score_pairs
from rsft.stages.export import export_selected as export_selected
from rsft.stages.generate import GenerationShards as GenerationShards
from rsft.stages.generate import generate as generate
from rsft.stages.generate import generation_gpus as generation_gpus
from rsft.stages.score import ScoringShards as ScoringShards
from rsft.stages.score import check_on_error as check_on_error
from rsft.stages.score import generate_and_score as generate_and_score
from rsft.stages.score import score as score
from rsft.stages.score import scoring_gpus as scoring_gpus
from rsft.stages.select import select_completions as select_completions
from rsft.stages.select import warn as warn
