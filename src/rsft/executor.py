"""Where a stage's shards are computed: in this process (``local``) or on Ray actor pools (``ray``).

A stage describes its per-shard work as a ``ShardJob``: a picklable object that builds its model
once (``setup``, once per process or per Ray actor, from a factory rather than a live model) and
turns one shard's task (plain picklable data made by the driver) into a ``ShardResult`` (the
shard's columns). The driver writes each result atomically as it arrives, so an interrupted stage
resumes at the first missing shard and every executor writes the same artifacts.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from rsft.errors import RsftError

EXECUTORS = ("local", "ray")


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


class StreamedScoring(Protocol):
    """A scoring job that can take a generation shard's output directly (for the overlap)."""

    def task_from_generation(self, generation_task: Any, generated: ShardResult) -> Any: ...


OnDone = Callable[[int, ShardResult], None]
Tasks = Sequence[tuple[int, Any]]


class Executor(Protocol):
    """Runs a job over shard tasks and calls ``on_done(shard, result)`` on the driver as each finishes."""

    name: str

    def run(self, job: ShardJob, tasks: Tasks, on_done: OnDone) -> None: ...


class LocalExecutor:
    """Every shard in this process, one after the other; the job is set up only if a shard is missing."""

    name = "local"

    def run(self, job: ShardJob, tasks: Tasks, on_done: OnDone) -> None:
        if not tasks:
            return
        job.setup()
        for s, task in tasks:
            on_done(s, job.run(task))


def make_executor(name: str, ray_config: Any = None) -> Executor:
    """The executor called ``name``; ``ray_config`` is a ``RayConfig`` (defaults when None)."""
    if name == "local":
        return LocalExecutor()
    if name == "ray":
        from rsft.ray_executor import RayExecutor

        return RayExecutor(ray_config)
    raise RsftError(f"executor: unknown executor {name!r}; choose one of {', '.join(EXECUTORS)}")
