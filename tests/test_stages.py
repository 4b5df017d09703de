"""The stages package's seams: streaming on every executor, resources asked of the backends, the
optional ``ReportsStats`` protocol, and shard jobs in a leaf module (no executor import cycle)."""

from __future__ import annotations

import ast
from pathlib import Path

import pyarrow.parquet as pq

from rsft import stages
from rsft.artifacts import COMPLETIONS, PROMPTS, REWARDS, file_sha256, read_if_key, read_manifest, write_json
from rsft.config import GenerationConfig, GeneratorConfig, SamplingConfig, ScoringConfig
from rsft.generate import generator_gpus
from rsft.score import ReportsStats, as_scorer, scorer_gpus
from rsft.stages.executor import LocalExecutor
from rsft.types import Completion, Prompt

SRC = Path(__file__).resolve().parents[1] / "src" / "rsft"
M, N, SHARD = 7, 3, 2
TIMING = {"started_at", "finished_at", "wall_s", "host", "pid", "versions"}


class Echo:
    name = "echo"

    def generate(self, prompts, n, sampling):
        return [[Completion(f"{len(str(p)) % 5}-{sampling.seed % 11}-{j}", 1 + j, "stop", generator=self.name)
                 for j in range(n)] for p in prompts]


class Padded:
    """A scorer that reports its padding, as a reward model does."""

    name = "padded"

    def __init__(self) -> None:
        self.last_stats: dict[str, int] = {}

    def score(self, prompts, completions, metadata):
        self.last_stats = {"real_tokens": 3 * len(prompts), "padded_tokens": 4 * len(prompts)}
        return [float(len(c)) for c in completions]


def _prompts() -> list[Prompt]:
    return [Prompt(f"p{i}", f"question {i}", {}) for i in range(M)]


def _config() -> GenerationConfig:
    return GenerationConfig(n=N, shard_size=SHARD, sampling=SamplingConfig(seed=5))


def _entry(round_dir: Path, stage: str) -> dict:
    return {k: v for k, v in read_manifest(round_dir)["stages"][stage].items() if k not in TIMING}


def test_local_streaming_writes_what_the_stages_write_one_after_the_other(tmp_path):
    staged, streamed = tmp_path / "staged", tmp_path / "streamed"
    counts = stages.generate(staged, _config(), Echo, _prompts())
    summary = stages.score(staged, ScoringConfig(), Padded(), shard_size=SHARD)
    got = stages.generate_and_score(streamed, _config(), Echo, _prompts(), ScoringConfig(), Padded(),
                                    LocalExecutor())
    assert got == (counts, summary)
    assert summary["padding_efficiency"] == 0.75  # from ReportsStats, summed over shards
    for name in (PROMPTS, COMPLETIONS, REWARDS):
        assert file_sha256(streamed / name) == file_sha256(staged / name), name
    for stage in ("generate", "score"):
        assert _entry(streamed, stage) == _entry(staged, stage)
    assert pq.read_table(streamed / REWARDS).num_rows == M * N


def test_local_run_stream_hands_each_shard_over_generated_then_scored():
    calls: list[tuple[str, int]] = []
    gen = stages.GenerationShards(Echo, 2)
    score = stages.ScoringShards(lambda: as_scorer(lambda p, c: 1.0), "fail")
    tasks = [(s, ([p], stages.sampling_params(_config(), s))) for s, p in enumerate(_prompts()[:3])]
    LocalExecutor().run_stream(gen, score, tasks, lambda s, r: calls.append(("generated", s)),
                               lambda s, r: calls.append(("scored", s)))
    assert calls == [(kind, s) for s in range(3) for kind in ("generated", "scored")]


def test_backends_and_scorer_specs_answer_how_many_gpus_they_want():
    assert generator_gpus("vllm", {"tensor_parallel_size": 4}) == 4.0
    assert generator_gpus("hf", {}) == 1.0 and generator_gpus("hf", {"device": "cpu"}) == 0.0
    assert generator_gpus("openai", {"base_url": "http://x"}) == 0.0
    mixed = GenerationConfig(mix=[GeneratorConfig(backend="openai", n=4), GeneratorConfig(backend="hf", n=4)])
    assert stages.generation_gpus(mixed) == 1.0
    assert scorer_gpus("rm:/models/rm") == 1.0 and scorer_gpus("math") == 0.0
    assert scorer_gpus("prm:/models/prm") == 1.0 and scorer_gpus("prm-fn:mod:steps") == 0.0
    assert scorer_gpus({"gate": "math", "inner": "rm:/m"}) == 1.0
    assert scorer_gpus({"gate": "exact", "inner": "regex:rm"}) == 0.0


def test_scorers_report_stats_through_a_protocol():
    assert isinstance(Padded(), ReportsStats)
    assert not isinstance(as_scorer("math"), ReportsStats)


def _imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    return {node.module for node in ast.walk(tree) if isinstance(node, ast.ImportFrom) and node.module} | {
        alias.name for node in ast.walk(tree) if isinstance(node, ast.Import) for alias in node.names}


def test_shard_jobs_live_in_a_leaf_module_so_executors_import_no_cycle():
    assert not {m for m in _imports(SRC / "stages" / "shard_job.py") if m.startswith("rsft")}
    assert "rsft.stages.executor" not in _imports(SRC / "stages" / "ray_executor.py")


def test_bon_imports_no_stage_code_and_no_private_prompts_helper():
    tree = ast.parse((SRC / "bon" / "infer.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("rsft"):
            assert not node.module.startswith("rsft.stages"), node.module
            if node.module in ("rsft.prompts", "rsft.score"):
                assert not [a.name for a in node.names if a.name.startswith("_")], (node.module, node.lineno)


def test_read_if_key_reuses_a_result_only_while_its_key_is_the_same(tmp_path):
    path = tmp_path / "eval.json"
    assert read_if_key(path, "abc") is None  # no file yet
    write_json(path, {"key": "abc", "accuracy": 0.5})
    assert read_if_key(path, "abc") == {"key": "abc", "accuracy": 0.5}
    assert read_if_key(path, "abd") is None  # made from something else: redo the step
