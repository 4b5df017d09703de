"""Where a stage's shards are computed: in this process (``local``) or on Ray actor pools (``ray``).

A stage hands an executor a ``ShardJob`` (``rsft.stages.shard_job``) and the tasks of its missing shards.
The driver writes each result atomically as it arrives, so an interrupted stage resumes at the
first missing shard and every executor writes the same artifacts.
"""

from __future__ import annotations

from typing import Any, Protocol

from rsft.config.checks import check_executor
from rsft.config.schema import EXECUTORS as EXECUTORS
from rsft.stages.shard_job import OnDone, ShardJob, StreamedScoring, Tasks


class Executor(Protocol):
    """Runs a job over shard tasks and calls ``on_done(shard, result)`` on the driver as each finishes."""

    name: str
    in_process: bool
    """True when jobs run in this process, so they may use the driver's live objects (a loaded
    model, a scorer): nothing needs to be rebuilt from a factory on a worker."""

    def run(self, job: ShardJob, tasks: Tasks, on_done: OnDone) -> None: ...

    def run_stream(self, generate: ShardJob, score: StreamedScoring, tasks: Tasks, on_generated: OnDone,
                   on_scored: OnDone) -> None:
        """Generate and score each shard: ``score`` takes the shard's generated output directly.
        ``on_generated`` of a shard is called before its ``on_scored``, also when scoring fails."""
        ...


class LocalExecutor:
    """Every shard in this process, one after the other; the job is set up only if a shard is missing."""

    name = "local"
    in_process = True

    def run(self, job: ShardJob, tasks: Tasks, on_done: OnDone) -> None:
        if not tasks:
            return
        job.setup()
        for s, task in tasks:
            on_done(s, job.run(task))

    def run_stream(self, generate: ShardJob, score: StreamedScoring, tasks: Tasks, on_generated: OnDone,
                   on_scored: OnDone) -> None:
        """Each shard generated then scored before the next (no overlap here: one process)."""
        if not tasks:
            return
        generate.setup()
        score.setup()
        for s, task in tasks:
            generated = generate.run(task)
            on_generated(s, generated)
            on_scored(s, score.run(score.task_from_generation(task, generated)))


def make_executor(name: str, ray_config: Any = None) -> Executor:
    """The executor called ``name``; ``ray_config`` is a ``RayConfig`` (defaults when None)."""
    check_executor(name)
    if name == "local":
        return LocalExecutor()
    from rsft.stages.ray_executor import RayExecutor  # name == "ray"

    return RayExecutor(ray_config)
