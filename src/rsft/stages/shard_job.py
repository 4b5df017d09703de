"""The per-shard work of a stage, as executors see it: a leaf module that ``rsft.stages.executor``, the
``ray`` executor and the stages all import (and that imports none of them).

A stage describes its per-shard work as a ``ShardJob``: a picklable object that builds its model
once (``setup``, once per process or per Ray actor, from a factory rather than a live model) and
turns one shard's task (plain picklable data made by the driver) into a ``ShardResult`` (the
shard's columns).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class ShardResult:
    """What one shard produced: its columns, counters to sum over shards, and progress units."""

    columns: dict[str, list[Any]]
    stats: dict[str, int] = field(default_factory=dict)
    units: int = 0
    """Prompts or pairs done, for the progress bar."""


class ShardJob(Protocol):
    """The per-shard work of one stage; must pickle (cloudpickle) to run on Ray actors."""

    role: str
    """``generate`` or ``score``: which actor pool runs it."""
    gpus: float
    """GPUs one worker wants where the cluster has them (vLLM: its tensor-parallel size)."""

    def setup(self) -> None:
        """Build the generator or scorer; called once per process (per actor) before ``run``."""
        ...

    def run(self, task: Any) -> ShardResult:
        """Compute one shard from its task."""
        ...


class StreamedScoring(ShardJob, Protocol):
    """A scoring job that can take a generation shard's output directly (for the overlap)."""

    def task_from_generation(self, generation_task: Any, generated: ShardResult) -> Any: ...


OnDone = Callable[[int, ShardResult], None]
"""Called on the driver with ``(shard, result)`` as each shard finishes."""
Tasks = Sequence[tuple[int, Any]]
"""The ``(shard, task)`` pairs of the shards to compute."""
