"""The ``ray`` executor: shards on pools of Ray actors (``pip install 'rsft[ray]'``).

Each role (``generate``, ``score``) gets a pool of actors (``RayConfig``); each actor sets its
``ShardJob`` up once (builds its generator or scorer), then computes one shard per call. The
driver makes each shard's task only when an actor has room for it (two shards per actor in flight),
so a stage of any size holds a few shards' inputs, not its whole task list. Results come back to
the driver, which writes each shard atomically as it arrives: the shard folder needs no shared
storage, an interrupted run resumes at the first missing shard, and the artifacts equal the local
executor's.

Fault tolerance is Ray's: an actor that dies (node lost, ``ray.kill``) is restarted and its
in-flight shards are retried on it (``max_restarts=-1``, ``max_task_retries=-1``); an RsftError of
the job itself (a bad scorer, a generator returning the wrong shape) fails the stage with the
job's own one-line message.

``run_stream`` chains a generator pool and a scorer pool, so shard k is scored while shard k+1
generates; a generated shard goes from its generator actor to a scorer actor without the driver.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterator
from typing import Any

from rsft.config import ActorPoolConfig, RayConfig
from rsft.errors import RsftError
from rsft.stages.shard_job import OnDone, ShardJob, StreamedScoring, Tasks


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line RsftError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RsftError("executor 'ray' needs Ray Data: pip install 'rsft[ray]' (or use --executor local)") from None
    return ray


def _run_one(job: Any, task: Any) -> tuple[Any, str]:
    """One shard on a worker: (result, "") or (None, the RsftError's message).

    A job's RsftError travels back as data: Ray would bury its one-line message in a traceback.
    """
    try:
        return job.run(task), ""
    except RsftError as e:
        return None, str(e) or type(e).__name__


class _ShardWorker:
    """A Ray actor: sets its job up once (loads the model), then computes one shard per call."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.error = _setup(job)

    def run(self, task: Any) -> tuple[Any, str]:
        return (None, self.error) if self.error else _run_one(self.job, task)

    def score_generated(self, task: Any, generated: Any, generation_error: str) -> tuple[Any, str]:
        """Score a shard of the overlapped pipeline from its generation task and output."""
        if generation_error or self.error:
            return None, generation_error or self.error
        return _run_one(self.job, self.job.task_from_generation(task, generated))


def _setup(job: Any) -> str:
    """Set the job up; a bad spec's RsftError is reported with the first shard instead of killing the actor."""
    try:
        job.setup()
    except RsftError as e:
        return str(e) or type(e).__name__
    return ""


IN_FLIGHT = 2
"""Shards queued per actor: one running, one ready to start when it finishes."""


def _feed(ray: Any, tasks: Iterator[tuple[int, Any]], pools: list[list[Any]],
          submit: Callable[[list[Any], Any], Any], finish: Callable[[int, Any], None],
          wait_on: Callable[[Any], Any] = lambda refs: refs) -> None:
    """Run ``tasks`` on actors, taking each task from the iterator only when every pool has an
    actor with room (``IN_FLIGHT`` shards each): ``submit(actors, task)`` (one actor per pool)
    returns the shard's refs, and ``finish(shard, refs)`` runs on the driver once ``wait_on(refs)``
    is ready, in the order shards finish."""
    free = [[actor for actor in pool for _ in range(IN_FLIGHT)] for pool in pools]
    pending: dict[Any, tuple[int, Any, list[Any]]] = {}
    while True:
        while all(free) and (item := next(tasks, None)) is not None:
            shard, task = item
            used = [lane.pop(0) for lane in free]
            refs = submit(used, task)
            pending[wait_on(refs)] = (shard, refs, used)
        if not pending:
            return
        [ready], _ = ray.wait(list(pending), num_returns=1)
        shard, refs, used = pending.pop(ready)
        for lane, actor in zip(free, used, strict=True):
            lane.append(actor)
        finish(shard, refs)


def _value(out: tuple[Any, str]) -> Any:
    """A worker's result; its RsftError, carried back as data, raised on the driver as the same one line."""
    result, error = out
    if error:
        raise RsftError(error)
    return result


class RayExecutor:
    """Runs shard jobs on Ray actor pools sized by ``RayConfig`` (see ``rsft.config.RayConfig``)."""

    name = "ray"
    in_process = False

    def __init__(self, config: RayConfig | None = None) -> None:
        self.config = config or RayConfig()
        self.ray = import_ray()
        for role in ("generate", "score"):
            pool: ActorPoolConfig = getattr(self.config, role)
            if pool.actors < 1:
                raise RsftError(f"ray.{role}.actors: must be >= 1, got {pool.actors}")
            for key in ("num_cpus", "num_gpus"):
                value = getattr(pool, key)
                if value is not None and value < 0:
                    raise RsftError(f"ray.{role}.{key}: must be >= 0, got {value}")

    def run(self, job: ShardJob, tasks: Tasks, on_done: OnDone) -> None:
        if not tasks:
            return
        self._connect()
        actors = self._pool(job, min(len(tasks), getattr(self.config, job.role).actors), 0)
        try:
            _feed(self.ray, iter(tasks), [actors], lambda used, task: used[0].run.remote(task),
                  lambda s, ref: on_done(s, _value(self.ray.get(ref))))
        finally:
            self._release(actors)

    def run_stream(self, generate: ShardJob, score: StreamedScoring, tasks: Tasks, on_generated: OnDone,
                   on_scored: OnDone) -> None:
        """Generate and score in one pipeline; both callbacks of a shard run when its scores arrive
        (a shard whose scoring failed still has its completions handed over first)."""
        if not tasks:
            return
        self._connect()
        n_gen, n_score = min(len(tasks), self.config.generate.actors), min(len(tasks), self.config.score.actors)
        generators = self._pool(generate, n_gen, n_score)
        scorers = self._pool(score, n_score, n_gen)
        ray = self.ray

        def submit(used: list[Any], task: Any) -> tuple[Any, Any, Any]:
            task_ref = ray.put(task)  # one copy for both actors
            generated, error = used[0].run.options(num_returns=2).remote(task_ref)
            return generated, error, used[1].score_generated.remote(task_ref, generated, error)

        def finish(s: int, refs: tuple[Any, Any, Any]) -> None:
            generated, error, scored = refs
            _value((None, ray.get(error)))  # generation failed: nothing to hand over
            on_generated(s, ray.get(generated))
            on_scored(s, _value(ray.get(scored)))

        try:
            _feed(ray, iter(tasks), [generators, scorers], submit, finish, lambda refs: refs[2])
        finally:
            self._release(generators + scorers)

    def _pool(self, job: ShardJob, actors: int, others: int) -> list[Any]:
        """``actors`` actors running ``job``, sized for a cluster that also holds ``others``."""
        pool: ActorPoolConfig = getattr(self.config, job.role)
        cpus, gpus = pool_resources(pool, job.gpus, self.ray.cluster_resources(), actors + others, job.role)
        worker = self.ray.remote(_ShardWorker).options(num_cpus=cpus, num_gpus=gpus, max_restarts=-1,
                                                       max_task_retries=-1)
        return [worker.remote(job) for _ in range(actors)]

    def _release(self, actors: list[Any]) -> None:
        for actor in actors:
            self.ray.kill(actor)

    def _connect(self) -> None:
        ray = self.ray
        if ray.is_initialized():
            return
        address = self.config.address or os.environ.get("RAY_ADDRESS")
        options: dict[str, Any] = {"logging_level": logging.WARNING, "runtime_env": self.config.runtime_env or None}
        if not address:
            options["include_dashboard"] = False
        try:
            ray.init(address=address, **options)
        except (ConnectionError, RuntimeError, ValueError) as e:
            where = address or "a local Ray instance"
            raise RsftError(f"ray: cannot connect to {where}: {str(e).strip().splitlines()[0]}") from None


def pool_resources(
    pool: ActorPoolConfig, job_gpus: float, cluster: dict[str, float], actors_in_cluster: int, role: str
) -> tuple[float, float]:
    """CPUs and GPUs per actor: the configured ones, else sized to the job and the cluster.

    GPUs default to what the job wants (vLLM: its tensor-parallel size) when the cluster has that
    many, else 0. CPUs default to 1, or less when the cluster cannot give every actor of the run a
    whole CPU and keep one spare for Ray's own work (whole-CPU actors deadlock a 2-core machine).
    """
    total_cpus, total_gpus = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    gpus = pool.num_gpus if pool.num_gpus is not None else (job_gpus if 0 < job_gpus <= total_gpus else 0.0)
    if pool.num_cpus is not None:
        cpus = pool.num_cpus
    else:
        cpus = min(1.0, int(100 * total_cpus / (actors_in_cluster + 1)) / 100) or 0.01
    if gpus > total_gpus or cpus > total_cpus:
        raise RsftError(f"ray.{role}: one actor needs {cpus:g} CPUs and {gpus:g} GPUs; the cluster has "
                        f"{total_cpus:g} CPUs and {total_gpus:g} GPUs (lower ray.{role}.num_cpus/num_gpus)")
    return cpus, gpus
