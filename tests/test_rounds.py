"""RSFT rounds end to end on a tiny model: train, gate on held-out eval, roll back, KL, resume.

The tiny random model cannot do arithmetic, so the tests use a reward it can learn within a few
steps: the fraction of digits in a completion. Trained on its digit-richest samples, the policy's
held-out digit rate rises (promoted); trained on its digit-poorest ones it falls (rolled back).
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from digits_run import rsft_cli, write_run

from rsft.config import load_config
from rsft.errors import RsftError
from rsft.rounds import loop as rounds

ROUND_FILES = {"prompts.parquet", "completions.parquet", "rewards.parquet", "selection.parquet",
               "selected.jsonl", "manifest.json", "train_log.jsonl", "checkpoint", "eval", "kl", "eval.json"}


def _write_run(d: Path, tiny_lm: Path, train_scorer: str, name: str, control: bool = False) -> Path:
    rounds_yaml = f"rounds: {{rounds: 2, prompts_per_round: 6, refresh: rotate, control: {str(control).lower()}}}\n"
    return write_run(d, tiny_lm, name, train_scorer=train_scorer, extra=rounds_yaml)


_rsft = rsft_cli


@pytest.fixture(scope="module")
def good_run(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("rounds")
    cfg = _write_run(d, tiny_lm, "digits", "good", control=True)
    r = _rsft("run", "--config", str(cfg), "--rounds", "2", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    return d, d / "runs" / "good", json.loads(r.stdout)


def test_two_rounds_through_the_cli_write_every_file(good_run):
    _, run, summary = good_run
    for k in (0, 1):
        rd = run / f"round-{k:03d}"
        assert {p.name for p in rd.iterdir()} == ROUND_FILES | {"control"}
        assert {p.name for p in (rd / "control").iterdir()} >= {"selected.jsonl", "checkpoint", "eval.json", "eval",
                                                                 "train_log.jsonl"}
        ev = json.loads((rd / "eval.json").read_text())
        assert {"metric", "kl", "promoted", "reason", "control", "best_before"} <= set(ev)
        assert ev["metric"]["ci_low"] <= ev["metric"]["value"] <= ev["metric"]["ci_high"]
        # the control arm trained on as many rows as the kept set
        kept = len((rd / "selected.jsonl").read_text().splitlines())
        assert len((rd / "control" / "selected.jsonl").read_text().splitlines()) == kept == 6
    assert (run / "baseline" / "eval.json").exists() and (run / "rounds.json").exists()
    assert summary["rounds"][0]["promoted"] is True, summary
    base = json.loads((run / "baseline" / "eval.json").read_text())["metric"]["value"]
    assert summary["rounds"][0]["metric"]["value"] > base


def test_round_two_samples_from_round_ones_checkpoint(good_run):
    _, run, summary = good_run
    import pyarrow.parquet as pq

    gens = set(pq.read_table(run / "round-001" / "completions.parquet").column("generator").to_pylist())
    assert gens == {f"hf:{run / 'round-000' / 'checkpoint'}"}
    manifest = json.loads((run / "round-001" / "manifest.json").read_text())
    assert manifest["stages"]["generate"]["config"]["generator"]["model"] == str(run / "round-000" / "checkpoint")
    meta = json.loads((run / "round-001" / "checkpoint" / "rsft_train.json").read_text())
    assert meta["base_model"] == str(run / "round-000" / "checkpoint")


def test_prompt_rotation_gives_rounds_different_prompts(good_run):
    _, run, _ = good_run
    import pyarrow.parquet as pq

    a = set(pq.read_table(run / "round-000" / "prompts.parquet").column("prompt").to_pylist())
    b = set(pq.read_table(run / "round-001" / "prompts.parquet").column("prompt").to_pylist())
    assert len(a) == len(b) == 6 and a != b


def test_kl_is_zero_for_the_base_and_positive_after_training(good_run):
    _, run, _ = good_run
    base_kl = json.loads((run / "baseline" / "eval.json").read_text())["kl"]
    trained_kl = json.loads((run / "round-000" / "eval.json").read_text())["kl"]
    assert abs(base_kl["mean"]) < 1e-6
    assert trained_kl["mean"] > 0.1 and trained_kl["n"] == 16


def test_rerun_resumes_without_redoing_finished_work(good_run):
    d, run, summary = good_run
    ckpt = run / "round-000" / "checkpoint" / "rsft_train.json"
    before = ckpt.stat().st_mtime_ns, (run / "round-001" / "eval.json").read_text()
    r = _rsft("run", "--config", str(d / "good.yaml"), "--rounds", "2", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads(r.stdout)["current"] == summary["current"]
    assert (ckpt.stat().st_mtime_ns, (run / "round-001" / "eval.json").read_text()) == before


def test_a_worse_round_is_not_promoted_and_the_next_round_rolls_back(tmp_path, tiny_lm):
    cfg = _write_run(tmp_path, tiny_lm, "no_digits", "bad")
    config = load_config(cfg)
    os.environ.setdefault("PYTHONPATH", "")
    sys.path.insert(0, str(tmp_path))
    try:
        summary = rounds.run_rounds(config, quiet=True)
    finally:
        sys.path.remove(str(tmp_path))
    run = tmp_path / "runs" / "bad"
    r0 = json.loads((run / "round-000" / "eval.json").read_text())
    assert r0["promoted"] is False and "<=" in r0["reason"]
    assert summary["current"] == str(tiny_lm)  # rolled back to the base
    import pyarrow.parquet as pq

    gens = set(pq.read_table(run / "round-001" / "completions.parquet").column("generator").to_pylist())
    assert gens == {f"hf:{tiny_lm}"}  # round 2 sampled from the kept (base) policy, not round 1's checkpoint


def test_empty_kept_set_stops_with_advice(tmp_path, tiny_lm):
    cfg = _write_run(tmp_path, tiny_lm, "digits", "empty")
    config = load_config(cfg)
    config.selection.strategy, config.selection.threshold = "threshold", 2.0  # nothing reaches 2
    sys.path.insert(0, str(tmp_path))
    try:
        with pytest.raises(Exception, match="kept set is empty; lower selection.threshold or raise generation.n"):
            rounds.run_rounds(config, quiet=True)
    finally:
        sys.path.remove(str(tmp_path))


def test_metric_ci_and_refresh():
    import numpy as np

    m = rounds.metric_with_ci(np.array([[1.0], [0.0], [1.0], [1.0]]))
    assert m["name"] == "accuracy" and m["value"] == 0.75 and 0.2 < m["ci_low"] < 0.75 < m["ci_high"] <= 1
    m = rounds.metric_with_ci(np.array([[0.2, 0.4], [0.6, 0.8]]))
    assert m["name"] == "mean_reward" and m["value"] == pytest.approx(0.5)


def test_eval_questions_shared_with_training_are_dropped():
    from rsft.prompts import TaskSpec, task_prompts

    opts = {"min_animals": 1, "max_animals": 1, "max_instances": 1}
    pool = task_prompts(TaskSpec("leg_counting", size=12, seed=1, options=opts))
    ev = task_prompts(TaskSpec("leg_counting", size=12, seed=2, options=opts))
    kept = rounds.held_out(ev, pool)
    pool_questions = {p.metadata["entry"]["question"] for p in pool}
    assert kept and all(p.metadata["entry"]["question"] not in pool_questions for p in kept)
    assert len(kept) < len(ev)  # the easy setting repeats questions across seeds
    with pytest.raises(Exception, match="every eval question is also in the training prompts"):
        rounds.held_out(pool, pool)


def test_metric_with_pass_threshold_counts_exact_answers():
    import numpy as np

    m = rounds.metric_with_ci(np.array([[1.0], [0.01], [0.01], [1.0]]), pass_threshold=1.0)
    assert m["name"] == "accuracy" and m["value"] == 0.5
    sampled = rounds.metric_with_ci(np.array([[1.0, 0.01], [0.01, 0.01], [1.0, 1.0]]), pass_threshold=1.0)
    assert sampled["name"] == "accuracy" and sampled["value"] == pytest.approx(0.5)  # mean of 1/2, 0, 1
    assert rounds.metric_with_ci(np.array([[0.3, 0.5]]))["name"] == "mean_reward"


def test_eval_is_redone_when_the_held_out_prompts_change(tmp_path, monkeypatch):
    """A larger training pool shrinks the held-out set: an eval.json of the old set must not be reused."""
    from rsft.config import EvalConfig, RunConfig
    from rsft.types import Prompt

    calls = []

    def fake_evaluate(config, policies, model, base, out, prompts):
        calls.append([p.prompt_id for p in prompts])
        return {"metric": {"name": "accuracy", "value": 0.5, "ci_low": 0.1, "ci_high": 0.9, "n": len(prompts)},
                "kl": None}

    monkeypatch.setattr(rounds, "evaluate", fake_evaluate)
    config = RunConfig(name="x", out=str(tmp_path), eval=EvalConfig())
    a = [Prompt(prompt_id=f"id{i}", prompt=f"q{i}") for i in range(3)]
    info = {"round": -1, "checkpoint": "base"}
    assert rounds.evaluate_checkpoint(tmp_path, info, config, None, "base", a)["metric"]["n"] == 3
    assert rounds.evaluate_checkpoint(tmp_path, info, config, None, "base", a)["metric"]["n"] == 3  # reused
    assert rounds.evaluate_checkpoint(tmp_path, info, config, None, "base", a[:2])["metric"]["n"] == 2
    assert calls == [["id0", "id1", "id2"], ["id0", "id1"]]


def test_chain_control_is_a_policy_of_its_own_and_one_model_is_loaded_at_a_time(tmp_path, tiny_lm, monkeypatch):
    import gc
    import weakref

    import pyarrow.parquet as pq

    from rsft import pipeline

    cfg = _write_run(tmp_path, tiny_lm, "digits", "chain", control=True)
    cfg.write_text(cfg.read_text().replace("control: true}", "control: true, control_mode: chain}"))
    monkeypatch.syspath_prepend(str(tmp_path))
    built, alive_at_build = [], []
    real_build = pipeline.build_generator

    def counting_build(*args, **kwargs):
        gc.collect()
        alive_at_build.append(sum(ref() is not None for ref in built))
        g = real_build(*args, **kwargs)
        built.append(weakref.ref(g))
        return g

    monkeypatch.setattr(pipeline, "build_generator", counting_build)
    config = load_config(cfg)
    summary = rounds.run_rounds(config, quiet=True)
    assert alive_at_build and max(alive_at_build) == 0  # every policy was released before the next loaded

    r0, r1 = summary["rounds"]
    assert r0["control"]["mode"] == "chain" and r0["control"]["started_from"] == str(tiny_lm)
    assert r1["control"]["started_from"] == r0["control"]["checkpoint"]  # the control carries on its own
    for k, r in enumerate(summary["rounds"]):
        control = config.run_dir / f"round-00{k}" / "control"
        table = pq.read_table(control / "completions.parquet").to_pylist()
        assert len(table) == r["kept"] and {row["sample_idx"] for row in table} == {0}  # one own sample each
        assert len((control / "selected.jsonl").read_text().splitlines()) == r["kept"]
        assert 0.0 <= r["control"]["metric"]["value"] <= 1.0 and r["control"]["kl"]["mean"] is not None


def test_unknown_control_mode_is_an_error(tmp_path, tiny_lm, monkeypatch):
    cfg = _write_run(tmp_path, tiny_lm, "digits", "badmode", control=True)
    cfg.write_text(cfg.read_text().replace("control: true}", "control: true, control_mode: chian}"))
    monkeypatch.syspath_prepend(str(tmp_path))
    with pytest.raises(rounds.RsftError, match="rounds.control_mode: expected 'round' or 'chain', got 'chian'"):
        rounds.run_rounds(load_config(cfg), quiet=True)


def test_kl_on_the_first_kl_prompts_and_exactly_zero_for_the_base(tmp_path, tiny_lm, tiny_lm_no_template):
    from rsft import pipeline
    from rsft.config import PromptsConfig

    config = load_config(write_run(tmp_path, tiny_lm, "kl", eval_prompts=4, kl_samples=2))
    config.eval.kl_prompts = 3
    policies = rounds.Policies(config)
    prompts = pipeline.load_prompt_set(PromptsConfig(path=str(tmp_path / "eval.jsonl")))
    base = rounds.kl_from_base(config, policies, str(tiny_lm), str(tiny_lm), prompts, tmp_path / "base")
    assert base == {"mean": 0.0, "stderr": 0.0, "n": 6} and not (tmp_path / "base").exists()  # nothing sampled
    other = rounds.kl_from_base(config, policies, str(tiny_lm_no_template), str(tiny_lm), prompts, tmp_path / "o")
    assert other["n"] == 6  # 3 prompts x 2 samples
    sampled = pq.read_table(tmp_path / "o" / "kl" / "completions.parquet").column("prompt_id").to_pylist()
    assert sorted(set(sampled)) == sorted(p.prompt_id for p in prompts[:3])
    config.eval.kl_prompts = 0
    with pytest.raises(RsftError, match="eval.kl_prompts: must be >= 1"):
        rounds.kl_from_base(config, policies, str(tiny_lm_no_template), str(tiny_lm), prompts, tmp_path / "z")
