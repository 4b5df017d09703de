"""The ``ray`` executor on a local Ray instance (2 CPUs, no dashboard) with 2 actors per pool.

One local ``rsft run`` is the reference; the Ray runs (stage by stage through the CLI, with an
actor killed mid-shard, and as one overlapped generate+score pipeline) must write the very same
completions, rewards and manifest records.
"""

from __future__ import annotations

import functools
import json
import os
import sys
import textwrap
import threading
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import ray

from rsft import cli, pipeline, stages
from rsft.artifacts import file_sha256, read_manifest
from rsft.config import (
    ActorPoolConfig,
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RayConfig,
    RunConfig,
    ScoringConfig,
    load_config,
)
from rsft.errors import RsftError
from rsft.stages.executor import LocalExecutor, make_executor
from rsft.stages.ray_executor import RayExecutor, pool_resources
from rsft.types import Completion

M, N, SHARD, SEED = 6, 3, 2, 5
TIMING = {"wall_s", "finished_at", "versions"}
POOL = ActorPoolConfig(actors=2, num_cpus=0.25)  # fractional CPUs: 4 whole-CPU actors deadlock 2 cores


@pytest.fixture(scope="module")
def ray_instance(tmp_path_factory):
    """One local Ray instance for the module; workers import this module's helpers from tests/ and the
    rsft this process imported (not another checkout's installed one)."""
    import rsft

    path = os.pathsep.join([str(Path(__file__).parent), str(Path(rsft.__file__).resolve().parents[1])])
    ray.init(num_cpus=2, include_dashboard=False, object_store_memory=100 * 1024**2,
             _temp_dir=str(tmp_path_factory.mktemp("ray")), logging_level="WARNING",
             runtime_env={"env_vars": {"PYTHONPATH": path, "OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_lm, tiny_rm) -> Path:
    d = tmp_path_factory.mktemp("raywork")
    rows = [{"prompt": f"Q: What is {i} + {i}?\nA:" + " x" * i, "answer": str(2 * i)} for i in range(M - 1)]
    rows.append({"messages": [{"role": "user", "content": "Say hi"}], "answer": "hi"})
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text(textwrap.dedent(f"""
        name: local
        out: {d / 'runs'}
        prompts: {{path: {d / 'prompts.jsonl'}}}
        generation:
          n: {N}
          shard_size: {SHARD}
          generator: {{backend: hf, model: {tiny_lm}}}
          sampling: {{temperature: 1.0, top_k: 50, max_new_tokens: 6, seed: {SEED}}}
        scoring: {{scorer: 'rm:{tiny_rm}', options: {{batch_size: 2}}}}
        ray:
          generate: {{actors: 2, num_cpus: 0.25}}
          score: {{actors: 2, num_cpus: 0.25}}
    """))
    return d


@pytest.fixture(scope="module")
def local_round(workdir) -> Path:
    """The reference: one whole round with the default (local) executor."""
    assert cli.main(["run", "--config", str(workdir / "config.yaml")]) == 0
    return workdir / "runs" / "local" / "round-000"


def _records(round_dir: Path, stage: str, resumed: bool = False) -> dict:
    """A stage's manifest entry without timings (and without the count of new shards of a resumed run)."""
    entry = {k: v for k, v in read_manifest(round_dir)["stages"][stage].items() if k not in TIMING}
    if resumed:
        entry["counts"] = {k: v for k, v in entry["counts"].items() if k != "shards_generated"}
    return entry


def _assert_same_round(got: Path, want: Path, stages_: tuple[str, ...] = ("generate", "score"),
                       resumed: bool = False) -> None:
    for name in ("prompts.parquet", "completions.parquet", "rewards.parquet"):
        assert pq.read_table(got / name).equals(pq.read_table(want / name)), name
        assert file_sha256(got / name) == file_sha256(want / name), name
    for stage in stages_:
        assert _records(got, stage, resumed) == _records(want, stage, resumed), stage
    assert not (got / ".shards").exists()


@ray.remote(num_cpus=0)
class KillSwitch:
    """Where the generator of shard 1 registers its actor, so the test can kill it mid-shard."""

    def __init__(self) -> None:
        self.victim, self.victim_pid, self.killed, self.finished_pid = None, None, False, None

    def register(self, actor, pid: int) -> None:
        self.victim, self.victim_pid = actor, pid

    def victim_handle(self):
        return self.victim

    def mark_killed(self) -> None:
        self.killed = True

    def is_killed(self) -> bool:
        return self.killed

    def finished(self, pid: int) -> None:
        self.finished_pid = pid

    def report(self) -> tuple[bool, int | None, int | None]:
        return self.killed, self.victim_pid, self.finished_pid


class StallingGenerator:
    """The hf generator, except that shard 1's first attempt parks until its actor is killed."""

    def __init__(self, model: str, switch: str) -> None:
        from rsft.generate.hf import HFGenerator

        self.inner, self.switch = HFGenerator(model=model), switch
        self.name = self.inner.name

    def generate(self, prompts, n, sampling):
        switch = ray.get_actor(self.switch)
        if sampling.seed == SEED + 1009 and not ray.get(switch.is_killed.remote()):
            ray.get(switch.register.remote(ray.get_runtime_context().current_actor, os.getpid()))
            time.sleep(120)  # the test kills this actor long before
        rows = self.inner.generate(prompts, n, sampling)
        if sampling.seed == SEED + 1009:
            ray.get(switch.finished.remote(os.getpid()))
        return rows


class InterruptedGenerator(StallingGenerator):
    """Stops the local run at shard 1, as a crash would, after shard 0 was written."""

    def generate(self, prompts, n, sampling):
        if sampling.seed == SEED + 1009:
            raise RsftError("interrupted at shard 1")
        return self.inner.generate(prompts, n, sampling)


def test_ray_stages_equal_local_even_when_an_actor_is_killed_mid_shard(ray_instance, workdir, local_round,
                                                                       tiny_lm, capsys):
    """A local run interrupted after shard 0; Ray resumes it on 2 actors, one killed (ray.kill)
    while it holds shard 1; then scoring on 2 actors."""
    switch = KillSwitch.options(name="kill-switch").remote()

    def killer() -> None:
        while (victim := ray.get(switch.victim_handle.remote())) is None:
            time.sleep(0.1)
        ray.get(switch.mark_killed.remote())
        ray.kill(victim, no_restart=False)  # a real kill; Ray restarts the actor and retries the shard

    thread = threading.Thread(target=killer, daemon=True)
    thread.start()
    config = load_config(workdir / "config.yaml")
    rd = workdir / "ray-staged" / "round-000"
    with pytest.raises(RsftError, match="interrupted at shard 1"):
        stages.generate(rd, config.generation, functools.partial(InterruptedGenerator, str(tiny_lm), ""),
                        _prompts(local_round))
    counts = stages.generate(rd, config.generation, functools.partial(StallingGenerator, str(tiny_lm), "kill-switch"),
                             _prompts(local_round), executor=RayExecutor(config.ray))
    thread.join(timeout=5)
    killed, victim_pid, finished_pid = ray.get(switch.report.remote())
    assert killed and finished_pid is not None and finished_pid != victim_pid
    assert counts["shards_generated"] == M // SHARD - 1  # shard 0 came from the interrupted local run

    assert cli.main(["score", str(rd), "--config", str(workdir / "config.yaml"), "--executor", "ray",
                     "--actors", "2", "--actor-cpus", "0.5"]) == 0
    assert "best-of-N" in capsys.readouterr().out
    _assert_same_round(rd, local_round, resumed=True)
    stats = read_manifest(rd)["stages"]["score"]["stats"]
    assert 0 < stats["padding_efficiency"] <= 1  # the RM's length-sorted batches, summed over its actors


def _prompts(round_dir: Path):
    from rsft import matrix

    return matrix.read_prompts(round_dir / "prompts.parquet")


def explode(prompt, completion):
    raise ValueError("boom")


def test_a_worker_error_is_the_same_one_line_error_as_locally(ray_instance, local_round, tmp_path):
    rd = tmp_path / "round-000"
    rd.mkdir()
    for name in ("prompts.parquet", "completions.parquet"):
        (rd / name).write_bytes((local_round / name).read_bytes())
    with pytest.raises(RsftError) as local_error:
        stages.score(rd, ScoringConfig(), explode, executor=LocalExecutor())
    with pytest.raises(RsftError) as ray_error:
        stages.score(rd, ScoringConfig(), explode, executor=RayExecutor(RayConfig(score=POOL)))
    assert str(ray_error.value) == str(local_error.value)
    assert "scorer 'explode' failed on prompt" in str(ray_error.value) and "ValueError: boom" in str(ray_error.value)
    assert not (rd / "rewards.parquet").exists()


class EchoGenerator:
    """A deterministic generator without torch (its actors start fast): text from prompt and seed."""

    name = "echo"

    def generate(self, prompts, n, sampling):
        return [[Completion(f"{len(str(p)) % 7}-{sampling.seed % 13}-{j}", 1, "stop", generator=self.name)
                 for j in range(n)] for p in prompts]


def length(prompt, completion):
    return float(len(completion))


def test_overlapped_pipeline_equals_the_staged_run_and_resumes_after_an_error(ray_instance, workdir, tmp_path):
    """Generation and scoring as one streaming pipeline (``rsft run`` with ``ray.overlap``). A scorer
    error stops it with the local one-line message and keeps the completion shards that reached
    the driver; the rerun resumes from them and writes what the local stage-after-stage run writes.
    The generator is torch-free so its actors start fast; the hf model on Ray is tested above."""
    def config(name: str, executor: str, pool: ActorPoolConfig = POOL) -> RunConfig:
        return RunConfig(name=name, out=str(tmp_path), prompts=PromptsConfig(path=str(workdir / "prompts.jsonl")),
                         generation=GenerationConfig(n=N, shard_size=SHARD), executor=executor,
                         ray=RayConfig(generate=pool, score=pool, overlap=True))

    local = pipeline.run_round(config("local", "local"), generator=EchoGenerator(), scorer=length, quiet=True)
    one = ActorPoolConfig(actors=1, num_cpus=0.25)
    with pytest.raises(RsftError) as error:
        pipeline.run_round(config("stream", "ray", one), generator=EchoGenerator(), scorer=explode, quiet=True)
    assert "scorer 'explode' failed on prompt" in str(error.value) and "ValueError: boom" in str(error.value)
    rd = tmp_path / "stream" / "round-000"
    written = list((rd / ".shards").glob("completions-*/*.parquet"))
    assert written and not (rd / "completions.parquet").exists()

    result = pipeline.run_round(config("stream", "ray"), generator=EchoGenerator(), scorer=length, quiet=True)
    assert result.generation["shards_generated"] == M // SHARD - len(written)
    _assert_same_round(rd, local.round_dir, ("generate", "score", "select", "export"), resumed=True)
    assert (rd / "selected.jsonl").read_bytes() == (local.round_dir / "selected.jsonl").read_bytes()
    assert read_manifest(rd)["stages"]["score"]["counts"] == {"pairs": M * N, "shards_scored": M // SHARD}


def test_unknown_executor_and_missing_ray_are_one_line_errors(workdir, monkeypatch, capsys):
    code = cli.main(["generate", str(workdir / "x" / "round-000"), "--config", str(workdir / "config.yaml"),
                     "--executor", "dask"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["rsft: error: executor: unknown executor 'dask'; choose one of local, ray"]
    assert not (workdir / "x").exists()
    monkeypatch.setitem(sys.modules, "ray", None)  # as if Ray were not installed
    with pytest.raises(RsftError, match=r"executor 'ray' needs Ray Data: pip install 'rsft\[ray\]'"):
        make_executor("ray")


def test_actor_resources_follow_the_job_and_the_cluster():
    vllm = GenerationConfig(generator=GeneratorConfig(backend="vllm", options={"tensor_parallel_size": 2}))
    assert stages.generation_gpus(vllm) == 2.0
    assert stages.generation_gpus(GenerationConfig(generator=GeneratorConfig(backend="openai"))) == 0.0
    assert stages.scoring_gpus(ScoringConfig(scorer={"gate": "math", "inner": "rm:/m"})) == 1.0
    assert stages.scoring_gpus(ScoringConfig(scorer="math")) == 0.0
    default = ActorPoolConfig(actors=4)
    gpu_node = {"CPU": 16.0, "GPU": 8.0}
    assert pool_resources(default, 2.0, gpu_node, 4, "generate") == (1.0, 2.0)  # one vLLM engine per 2 GPUs
    assert pool_resources(default, 1.0, {"CPU": 2.0}, 4, "generate") == (0.4, 0.0)  # no GPU: CPU, 2 cores / 5
    assert pool_resources(ActorPoolConfig(num_cpus=0.5, num_gpus=0.25), 1.0, gpu_node, 2, "score") == (0.5, 0.25)
    with pytest.raises(RsftError, match=r"ray.generate: one actor needs 0.66 CPUs and 4 GPUs; the cluster has 2 CPUs and 1 GPUs"):
        pool_resources(ActorPoolConfig(num_gpus=4), 0.0, {"CPU": 2.0, "GPU": 1.0}, 2, "generate")
    with pytest.raises(RsftError, match="ray.score.actors: must be >= 1"):
        RayExecutor(RayConfig(score=ActorPoolConfig(actors=0)))
