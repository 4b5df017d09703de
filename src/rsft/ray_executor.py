"""The ``ray`` executor: shards as Ray Data ``map_batches`` over actor pools (``pip install 'rsft[ray]'``).

Each missing shard is one row (its task, pickled) of a dataset with one block per shard; a pool of
actors (``ActorPoolStrategy``) runs the stage's ``ShardJob``: each actor builds its generator or
scorer once, then computes one shard per call. Results stream back to the driver, which writes
each shard atomically as it arrives: the shard folder needs no shared storage, an interrupted run
resumes at the first missing shard, and the artifacts equal the local executor's.

Fault tolerance is Ray Data's: an actor that dies (node lost, ``ray.kill``) is restarted and its
in-flight shards are retried on it (its actor pools default to ``max_restarts=-1`` and
``max_task_retries=-1``); an RsftError of the job itself (a bad scorer, a generator returning the
wrong shape) fails the stage with the job's own one-line message.

``run_stream`` chains a generator pool and a scorer pool in one pipeline, so shard k is scored
while shard k+1 generates.
"""

from __future__ import annotations

import logging
import os
import pickle
from typing import Any

from rsft.config import ActorPoolConfig, RayConfig
from rsft.errors import RsftError
from rsft.shard_job import OnDone, ShardJob, StreamedScoring, Tasks


def import_ray() -> Any:
    """``ray`` with Ray Data, or a one-line RsftError saying how to install it."""
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise RsftError("executor 'ray' needs Ray Data: pip install 'rsft[ray]' (or use --executor local)") from None
    return ray


def _run_one(job: Any, task: Any) -> tuple[bytes, str]:
    """One shard on a worker: (pickled result, "") or (b"", the RsftError's message).

    A job's RsftError travels back as data: Ray would bury its one-line message in a traceback.
    """
    try:
        return pickle.dumps(job.run(task)), ""
    except RsftError as e:
        return b"", str(e) or type(e).__name__


class _ShardWorker:
    """A Ray Data actor: sets its job up once (loads the model), then computes one shard per row."""

    def __init__(self, job: ShardJob) -> None:
        self.job = job
        self.error = _setup(job)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out = [_run_one(self.job, pickle.loads(t)) if not self.error else (b"", self.error) for t in batch["task"]]
        return {"shard": list(batch["shard"]), "task": list(batch["task"]),
                "result": [r for r, _ in out], "error": [e for _, e in out]}


class _StreamScoreWorker:
    """A scorer actor of the overlapped pipeline: scores each generated shard as it comes."""

    def __init__(self, job: Any) -> None:
        self.job = job
        self.error = _setup(job)

    def __call__(self, batch: dict[str, Any]) -> dict[str, list[Any]]:
        out = []
        for task, result, error in zip(batch["task"], batch["result"], batch["error"], strict=True):
            if error or self.error:
                out.append((b"", error or self.error))
            else:
                out.append(_run_one(self.job, self.job.task_from_generation(pickle.loads(task), pickle.loads(result))))
        return {"shard": list(batch["shard"]), "generated": list(batch["result"]),
                "scored": [r for r, _ in out], "error": [e for _, e in out]}


def _setup(job: Any) -> str:
    """Set the job up; a bad spec's RsftError is reported with the first shard instead of killing the actor."""
    try:
        job.setup()
    except RsftError as e:
        return str(e) or type(e).__name__
    return ""


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
        actors = min(len(tasks), getattr(self.config, job.role).actors)
        pool = self.pool_options(job, actors, actors)
        ds = self._dataset(tasks).map_batches(_ShardWorker, fn_constructor_kwargs={"job": job}, **pool)
        for row in ds.iter_rows():
            _raise_error(row)
            on_done(int(row["shard"]), pickle.loads(row["result"]))

    def run_stream(self, generate: ShardJob, score: StreamedScoring, tasks: Tasks, on_generated: OnDone,
                   on_scored: OnDone) -> None:
        """Generate and score in one pipeline; both callbacks of a shard run when its scores arrive
        (a shard whose scoring failed still has its completions handed over first)."""
        if not tasks:
            return
        self._connect()
        generators = min(len(tasks), self.config.generate.actors)
        scorers = min(len(tasks), self.config.score.actors)
        ds = (self._dataset(tasks)
              .map_batches(_ShardWorker, fn_constructor_kwargs={"job": generate},
                           **self.pool_options(generate, generators, generators + scorers))
              .map_batches(_StreamScoreWorker, fn_constructor_kwargs={"job": score},
                           **self.pool_options(score, scorers, generators + scorers)))
        for row in ds.iter_rows():
            s = int(row["shard"])
            if row["generated"]:
                on_generated(s, pickle.loads(row["generated"]))
            _raise_error(row)
            on_scored(s, pickle.loads(row["scored"]))

    def pool_options(self, job: ShardJob, actors: int, actors_in_cluster: int) -> dict[str, Any]:
        """``map_batches`` arguments of the pool of ``actors`` actors that runs ``job``."""
        from ray.data import ActorPoolStrategy

        pool: ActorPoolConfig = getattr(self.config, job.role)
        cpus, gpus = pool_resources(pool, job.gpus, self.ray.cluster_resources(), actors_in_cluster, job.role)
        return {"compute": ActorPoolStrategy(size=actors), "batch_size": 1, "num_cpus": cpus, "num_gpus": gpus}

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

    def _dataset(self, tasks: Tasks) -> Any:
        from ray.data import DataContext

        DataContext.get_current().enable_progress_bars = False  # rsft draws its own
        rows = [{"shard": s, "task": pickle.dumps(task)} for s, task in tasks]
        return self.ray.data.from_items(rows, override_num_blocks=len(rows))


def _raise_error(row: dict[str, Any]) -> None:
    """A job's RsftError, carried back in its output row, raised on the driver as the same one line."""
    if row["error"]:
        raise RsftError(row["error"])


def pool_resources(
    pool: ActorPoolConfig, job_gpus: float, cluster: dict[str, float], actors_in_cluster: int, role: str
) -> tuple[float, float]:
    """CPUs and GPUs per actor: the configured ones, else sized to the job and the cluster.

    GPUs default to what the job wants (vLLM: its tensor-parallel size) when the cluster has that
    many, else 0. CPUs default to 1, or less when the cluster cannot give every actor of the run a
    whole CPU and keep one for Ray Data's own tasks (whole-CPU actors deadlock a 2-core machine).
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
