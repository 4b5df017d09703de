"""Adaptive N in the generate stage: rows stop once their answers agree, the rest of the M x N matrix
is marked unsampled, scoring skips those cells, statistics and selection leave them out."""

from __future__ import annotations

import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest
from test_adaptive import SCRIPT, ScriptedGenerator
from test_cli import rsft

from rsft import artifacts, matrix, stages, stats
from rsft.bon import report as bon_report
from rsft.bon.adaptive import AdaptivePolicy
from rsft.bon.infer import adaptive_best_of_n
from rsft.config import (
    AdaptiveGenerationConfig,
    GenerationConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
)
from rsft.errors import RsftError
from rsft.types import Prompt, SamplingParams

N = 8
PROMPTS = [Prompt(name, name, {"answer": SCRIPT[name][-1]}) for name in SCRIPT]  # easy, split, late
SCRIPT_LONG = {k: v * 200 for k, v in SCRIPT.items()}
"""ScriptedGenerator answers sample t of seed s with script[s + t]: shard 1 samples with seed 1009."""


def _config(enabled: bool = True, **adaptive) -> GenerationConfig:
    return GenerationConfig(n=N, shard_size=2, sampling=SamplingConfig(seed=0),
                            adaptive=AdaptiveGenerationConfig(enabled=enabled, **{"min_n": 2, **adaptive}))


class CountingExact:
    """The exact-match checker, counting the pairs it is asked to score."""

    name = "exact-count"

    def __init__(self) -> None:
        self.pairs = 0

    def score(self, prompts, completions, metadata):
        self.pairs += len(completions)
        assert all(isinstance(c, str) for c in completions)
        return [float(c == m["answer"]) for c, m in zip(completions, metadata, strict=True)]


def test_rows_stop_when_answers_agree_and_the_rest_is_unsampled(tmp_path):
    counts = stages.generate(tmp_path, _config(), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    table = pq.read_table(tmp_path / artifacts.COMPLETIONS)
    assert table.num_rows == len(PROMPTS) * N  # the M x N matrix, as without adaptive N
    texts = table.column("text").to_pylist()
    reasons = table.column("finish_reason").to_pylist()
    easy = slice(0, N)
    # easy agrees at 2 samples ("7", "7"); split keeps going to 8 (5/8 say "1")
    assert texts[easy] == ["7", "7"] + [None] * 6
    assert reasons[easy] == ["stop", "stop"] + [matrix.UNSAMPLED] * 6
    assert texts[N:2 * N] == SCRIPT["split"]
    assert table.column("n_tokens").to_pylist()[2:N] == [None] * 6
    mask = matrix.unsampled_mask(tmp_path / artifacts.COMPLETIONS, len(PROMPTS), N)
    assert mask is not None and mask[0].tolist() == [False] * 2 + [True] * 6 and not mask[1].any()
    assert counts["completions"] == counts["adaptive"]["samples"] == int((~mask).sum())
    assert counts["adaptive"]["saved"] == int(mask.sum()) >= 6 and counts["adaptive"]["budget"] == len(PROMPTS) * N


def test_shard_rows_are_the_library_runs_samples(tmp_path):
    config = _config(supermajority=0.7)
    stages.generate(tmp_path, config, lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    table = pq.read_table(tmp_path / artifacts.COMPLETIONS)
    texts = table.column("text").to_pylist()
    policy = AdaptivePolicy(budget=N, min_n=2, supermajority=0.7)
    for shard, chunk in enumerate((PROMPTS[:2], PROMPTS[2:])):
        run = adaptive_best_of_n([p.prompt for p in chunk], policy, ScriptedGenerator(SCRIPT_LONG),
                                 sampling=SamplingParams(seed=1009 * shard))
        for k, result in enumerate(run.results):
            row = PROMPTS.index(chunk[k])
            got = [t for t in texts[row * N:(row + 1) * N] if t is not None]
            assert got == [text for text, _ in result.candidates]


def test_scoring_skips_unsampled_cells_and_statistics_leave_them_out(tmp_path):
    stages.generate(tmp_path, _config(), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    scorer = CountingExact()
    summary = stages.score(tmp_path, ScoringConfig(pass_threshold=1.0), scorer, shard_size=2)
    ids = [p.prompt_id for p in PROMPTS]
    R = matrix.read_reward_matrix(tmp_path / artifacts.REWARDS, ids)
    mask = matrix.unsampled_mask(tmp_path / artifacts.COMPLETIONS, len(ids), N)
    assert scorer.pairs == int((~mask).sum())  # the scorer never saw an unsampled cell
    assert np.isnan(R[mask]).all() and np.isfinite(R[~mask]).all()
    assert summary["unsampled"] == int(mask.sum()) and summary["nan_count"] == 0
    assert summary["pass_at_1"] == pytest.approx(np.nansum(R) / (~mask).sum())
    assert summary["frac_all_pass"] == pytest.approx(np.mean([(R[i][~mask[i]] == 1).all() for i in range(3)]))
    assert any("not sampled" in w for w in summary["warnings"])
    assert "unsampled (adaptive N)" in stats.format_stats(summary)
    failed = pq.read_table(tmp_path / artifacts.REWARDS).column("failed").to_pylist()
    assert not any(failed)
    # best per prompt never picks an unsampled cell; the first passing sample wins
    sel = stages.select_completions(tmp_path, SelectionConfig(strategy="best", threshold=1.0))
    picked = pq.read_table(tmp_path / artifacts.SELECTION).to_pylist()
    first_pass = {ids[i]: int(np.argmax(R[i] == 1)) for i in range(len(ids)) if (R[i] == 1).any()}
    assert {r["prompt_id"]: r["sample_idx"] for r in picked} == first_pass
    assert sel["selected"] == len(picked) and sel["unsampled"] == int(mask.sum()) and sel["nan_rewards"] == 0 and all(not mask[ids.index(r["prompt_id"]), r["sample_idx"]] for r in picked)
    # rsft stats: the curve only over the columns every prompt sampled
    rep = bon_report.report(tmp_path, threshold=1.0)
    first = int((~mask).sum(axis=1).min())
    assert rep["unsampled"] == int(mask.sum()) and rep["curve_columns"] == first
    assert [r["n"] for r in rep["curve"]][-1] == first
    assert "adaptive N left" in bon_report.format_report(rep)


def test_streamed_generate_and_score_writes_the_same_files(tmp_path):
    from rsft.stages.executor import LocalExecutor

    staged, streamed = tmp_path / "staged", tmp_path / "streamed"
    stages.generate(staged, _config(), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    stages.score(staged, ScoringConfig(), CountingExact(), shard_size=2)
    stages.generate_and_score(streamed, _config(), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS, ScoringConfig(),
                              CountingExact(), LocalExecutor())
    for name in (artifacts.COMPLETIONS, artifacts.REWARDS):
        assert artifacts.file_sha256(streamed / name) == artifacts.file_sha256(staged / name), name


def test_off_by_default_and_the_manifest_is_unchanged(tmp_path):
    counts = stages.generate(tmp_path, _config(enabled=False), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    assert "adaptive" not in counts and counts["completions"] == len(PROMPTS) * N
    recorded = artifacts.read_manifest(tmp_path)["stages"]["generate"]["config"]
    assert "adaptive" not in recorded  # rounds written before the option stay current
    assert matrix.unsampled_mask(tmp_path / artifacts.COMPLETIONS, len(PROMPTS), N) is None
    again = stages.generate(tmp_path, _config(enabled=False), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    assert again["reused"]


@pytest.mark.parametrize("adaptive, message", [
    ({"min_n": 0}, "generation.adaptive: adaptive min_n must be a positive integer"),
    ({"rule": "vote"}, "generation.adaptive: adaptive rule 'vote' is unknown"),
    ({"equivalence": "nope"}, "generation.adaptive: unknown equivalence 'nope'"),
])
def test_bad_settings_fail_before_anything_is_written(tmp_path, adaptive, message):
    with pytest.raises(RsftError, match=message):
        stages.generate(tmp_path, _config(**adaptive), lambda: ScriptedGenerator(SCRIPT_LONG), PROMPTS)
    assert not (tmp_path / artifacts.PROMPTS).exists()


def test_reward_stats_mask_must_match_nans():
    R = np.array([[1.0, math.nan], [0.0, 1.0]])
    with pytest.raises(RsftError, match="unsampled cells must have NaN rewards"):
        stats.reward_stats(R, unsampled=[[False, False], [False, True]])
    s = stats.reward_stats(R, unsampled=[[False, True], [False, False]], pass_threshold=1.0)
    assert s["unsampled"] == 1 and s["nan_count"] == 0 and s["pass_at_1"] == pytest.approx(2 / 3)
    assert s["frac_all_pass"] == 0.5


def test_cli_generate_adaptive_on_the_tiny_model(tmp_path, tiny_lm):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Q: {i} + 1?\nA:", "answer": str(i + 1)}) + "\n"
                               for i in range(4)))
    rd = tmp_path / "round-000"
    r = rsft("generate", str(rd), "--prompts", str(prompts), "--model", str(tiny_lm), "-n", "8",
             "--max-new-tokens", "1", "--temperature", "0.3", "--adaptive", "--min-n", "2", "--supermajority", "0.5",
             cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["adaptive"]["samples"] == out["completions"] and out["adaptive"]["budget"] == 32
    assert out["completions"] + out["adaptive"]["saved"] == 32
    table = pq.read_table(rd / artifacts.COMPLETIONS)
    assert table.num_rows == 32
    sampled = [t is not None for t in table.column("text").to_pylist()]
    assert sum(sampled) == out["completions"]
    manifest = artifacts.read_manifest(rd)["stages"]["generate"]["config"]
    assert manifest["adaptive"]["enabled"] is True and manifest["adaptive"]["min_n"] == 2
    r = rsft("score", str(rd), "--scorer", "exact", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    bad = rsft("generate", str(tmp_path / "r2"), "--prompts", str(prompts), "--model", str(tiny_lm),
               "--adaptive", "--min-n", "0", cwd=tmp_path)
    assert bad.returncode == 2 and "generation.adaptive: adaptive min_n" in bad.stderr
    assert not (tmp_path / "r2" / artifacts.PROMPTS).exists()


def test_cli_run_adaptive_then_report(tmp_path, tiny_lm):
    prompts = tmp_path / "prompts.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"Q: {i} + 1?\nA:", "answer": str(i + 1)}) + "\n"
                               for i in range(6)))
    r = rsft("run", "--prompts", str(prompts), "--model", str(tiny_lm), "-n", "6", "--max-new-tokens", "1",
             "--temperature", "0.2", "--adaptive", "--min-n", "2", "--supermajority", "0.5", "--scorer", "exact",
             "--name", "ada", "--out", str(tmp_path / "runs"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    rd = tmp_path / "runs" / "ada" / "round-000"
    mask = matrix.unsampled_mask(rd / artifacts.COMPLETIONS, 6, 6)
    assert mask is not None and mask.any()  # near-greedy one-token answers agree at 2 samples
    manifest = artifacts.read_manifest(rd)["stages"]
    assert manifest["score"]["stats"]["unsampled"] == int(mask.sum())
    assert manifest["select"]["counts"]["unsampled"] == int(mask.sum())
    assert manifest["select"]["counts"]["nan_rewards"] == 0
    r = rsft("report", str(tmp_path / "runs" / "ada"), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    html = next((tmp_path / "runs" / "ada").glob("report*.html")).read_text()
    assert f"unsampled cells (adaptive N)</td><td>{int(mask.sum())}" in html.replace("\n", "")


def test_the_shard_job_pickles_for_ray_actors():
    import pickle

    from rsft.stages.generate import GenerationShards, adaptive_sampling

    config = _config(answer="boxed", equivalence="math")
    job = GenerationShards(lambda: None, N, adaptive=adaptive_sampling(config))
    copy = pickle.loads(pickle.dumps(job.adaptive))
    assert copy == job.adaptive and copy.answer == "boxed" and copy.equivalence == "math"  # specs, not functions
    rows = copy.sample(ScriptedGenerator(SCRIPT_LONG), PROMPTS, SamplingParams(seed=0))
    assert [len(r) for r in rows] == [len(r) for r in job.adaptive.sample(ScriptedGenerator(SCRIPT_LONG), PROMPTS,
                                                                          SamplingParams(seed=0))]
