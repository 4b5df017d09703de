"""The embedded default, Gemma-3-270M from the PyPI GGUF packages: slow (model assembly, real CPU work)."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


def test_embedded_default_generates_and_scores(tmp_path):
    from rsft import pipeline
    from rsft.config import (
        GenerationConfig,
        GeneratorConfig,
        PromptsConfig,
        RunConfig,
        SamplingConfig,
        TaskConfig,
    )

    config = RunConfig(
        name="gemma", out=str(tmp_path),
        prompts=PromptsConfig(task=TaskConfig(name="count_bits", size=4, shots=3,
                                              options={"max_n": 127})),
        generation=GenerationConfig(n=2, generator=GeneratorConfig("hf", "gemma3-270m"),
                                    sampling=SamplingConfig(max_new_tokens=6, stop=["\n"], top_k=50)),
    )
    result = pipeline.run_round(config, quiet=True)
    assert result.generation["completions"] == 8
    assert all("\n" not in json.loads(line)["completion"]
               for line in (result.round_dir / "selected.jsonl").read_text().splitlines())
    assert 0.0 <= result.reward_stats["mean"] <= 1.0


def test_demo_runs_and_reports_three_accuracies(tmp_path, capsys):
    from rsft.demos import demo

    assert demo.main(["--out", str(tmp_path), "--prompts", "8", "-n", "4", "--no-rsft"]) == 0
    out = capsys.readouterr().out
    for label in ("greedy", "mean sampled", "best-of-4"):
        assert label in out
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())
    assert summary["best_of_n_accuracy"] >= summary["mean_sampled_accuracy"]
    assert (tmp_path / "demo" / "round-000" / "selected.jsonl").exists()


def test_demo_rsft_round_compares_base_rsft_and_control(tmp_path, capsys):
    """The make-demo path with the RSFT round, shrunk: LoRA on Gemma, held-out eval of three arms."""
    from rsft.demos import demo

    args = ["--out", str(tmp_path), "--prompts", "8", "-n", "4", "--epochs", "1", "--eval-prompts", "12",
            "--eval-n", "1"]
    assert demo.main(args) == 0
    out = capsys.readouterr().out
    for label in ("base", "RSFT round 1", "random control", "decision:", "KL from base"):
        assert label in out
    summary = json.loads((tmp_path / "demo" / "demo.json").read_text())["rsft"]
    assert summary["base"]["n"] == summary["rsft"]["n"] == summary["control"]["n"] > 0
    assert summary["kl"]["mean"] != 0.0  # the trained policy moved
    assert summary["train"]["steps"] >= 1 and summary["control_train"]["steps"] >= 1
    run = tmp_path / "demo"
    for arm in (run / "round-000", run / "round-000" / "control"):
        assert (arm / "checkpoint" / "rsft_train.json").exists()
        assert (arm / "eval.json").exists()
    assert (run / "rounds.json").exists()
