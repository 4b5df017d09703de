"""The flags generated from the config dataclasses (rsft.cli.options): spellings, types, help, and how
given flags land on a config loaded from YAML."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest

from rsft.cli import build_parser
from rsft.cli.options import Section, add_config_flags, apply_flags, config_from
from rsft.config import RunConfig, SamplingConfig, TaskConfig, TrainConfig
from rsft.errors import RsftError
from rsft.types import SamplingParams

SPELLINGS = {
    "run": ["--name", "--out", "--rounds", "--config", "--new-version", "--prompts", "--split", "--prompt-field",
            "--messages-field", "--answer-field", "--task", "--size", "--task-seed", "--shots", "--shot-seed",
            "--task-option", "-n", "--backend", "--model", "--option", "--temperature", "--top-p", "--top-k",
            "--max-new-tokens", "--stop", "--seed", "--shard-size", "--scorer", "--scorer-option", "--on-error",
            "--pass-threshold", "--strategy", "-k", "--beta", "--threshold", "--dedup", "--executor",
            "--ray-address", "--actors", "--actor-cpus", "--actor-gpus"],
    "train": ["--config", "--model", "--lora", "--no-lora", "--lora-r", "--lora-alpha", "--merge", "--no-merge",
              "--learning-rate", "--lr", "--epochs", "--max-steps", "--batch-size", "--grad-accum", "--max-length",
              "--mixed-precision", "--activation-checkpointing", "--no-activation-checkpointing", "--report-to",
              "--seed"],
    "bon": ["--prompts", "--output", "--backend", "--model", "--option", "--scorer", "--scorer-option", "--selector",
            "-n", "--temperature", "--top-p", "--top-k", "--max-new-tokens", "--stop", "--seed", "--answer",
            "--equivalence"],
    "serve": ["--backend", "--model", "--option", "--scorer", "--scorer-option", "--selector", "--host", "--port",
              "--model-name", "--api-key-env", "--max-n", "--max-tokens", "--max-queue", "--batch-window-ms",
              "--max-batch-prompts", "--max-body-bytes", "--request-timeout"],
    "rm-train": ["--pairs", "--from-round", "--checker", "--base", "--out", "--epochs", "--max-steps",
                 "--batch-size", "--learning-rate", "--max-length", "--center-rewards-coefficient", "--seed"],
    "sweep": ["--config", "--name", "--out", "--dry-run", "--new-version"],
}
"""The flag spellings of the hand-written CLI these flags replaced (tests, README and bench scripts use them)."""


def subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    (sub,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", sorted(SPELLINGS))
def test_every_earlier_spelling_still_parses(command):
    known = {s for a in subparsers()[command]._actions for s in a.option_strings}
    assert set(SPELLINGS[command]) <= known


def test_every_flag_of_every_command_has_help():
    for name, p in subparsers().items():
        for action in p._actions:
            assert action.help and action.help.strip(), f"rsft {name} {action.option_strings or action.dest}"
        p.format_help()  # a stray % in a docstring would fail here


def test_help_comes_from_the_field_docstrings_with_the_dataclass_defaults():
    text = subparsers()["run"].format_help()
    assert "Prompts per shard: each shard is written atomically" in text  # GenerationConfig.shard_size
    assert "{best,top_k,threshold,k_per_prompt,rso,dpo_pairs}" in text  # SelectionConfig.strategy's choices
    assert "``" not in text
    bon_help = " ".join(subparsers()["bon"].format_help().split())
    assert f"(default: {SamplingConfig().top_k})" in bon_help and "(default: 8)" in bon_help


@pytest.fixture
def yaml_config(tmp_path: Path) -> Path:
    path = tmp_path / "c.yaml"
    path.write_text("prompts:\n  task: {name: basic_arithmetic, size: 5, options: {x: 1}}\n"
                    "generation:\n  n: 3\n  generator: {options: {batch_size: 4}}\n"
                    "  sampling: {temperature: 0.7, stop: [X]}\n"
                    "train: {lora: false, epochs: 3}\n")
    return path


def parse(*argv: str) -> RunConfig:
    return config_from(build_parser().parse_args(list(argv)))


def test_given_flags_override_the_yaml_and_the_rest_is_kept(yaml_config):
    c = parse("run", "--config", str(yaml_config), "--size", "9", "--task-option", "y=2", "--option", "dtype=bf16",
              "--stop", "\\n", "--stop", "END", "-n", "5", "--actors", "4", "--no-dedup")
    assert c.prompts.task == TaskConfig(name="basic_arithmetic", size=9, options={"x": 1, "y": 2})
    assert c.generation.n == 5 and c.generation.sampling.temperature == 0.7
    assert c.generation.generator.options == {"batch_size": 4, "dtype": "bf16"}  # KEY=VALUE merges
    assert c.generation.sampling.stop == ["\n", "END"]  # a list is replaced; escapes are read
    assert (c.ray.generate.actors, c.ray.score.actors) == (4, 4)  # one flag, both pools
    assert c.selection.dedup is False and c.rounds.train is False
    assert c.train == TrainConfig(lora=False, epochs=3.0)  # no train flag on `rsft run`


def test_what_a_flag_replaces(yaml_config):
    c = parse("run", "--config", str(yaml_config), "--prompts", "p.jsonl")
    assert (c.prompts.path, c.prompts.task) == ("p.jsonl", None)
    c = parse("run", "--config", str(yaml_config), "--task", "chain_sum")
    assert c.prompts.task == TaskConfig(name="chain_sum")  # a fresh task, not the YAML's
    with pytest.raises(RsftError, match="prompts: give either 'path' or 'task', not both"):
        parse("run", "--prompts", "p.jsonl", "--task", "chain_sum")  # the config checks, as for YAML
    assert parse("run", "--size", "3").prompts.task is None  # a task flag without a task is ignored
    c = parse("run", "--rounds", "2")
    assert (c.rounds.rounds, c.rounds.train) == (2, True)


def test_train_flags_on_the_train_section(yaml_config):
    c = parse("train", "r", "--config", str(yaml_config), "--lr", "0.01", "--merge")
    assert c.train == dataclasses.replace(TrainConfig(), lora=False, epochs=3.0, learning_rate=0.01, merge=True)
    assert parse("train", "r").train == TrainConfig()


def test_any_dataclass_as_the_root():
    @dataclasses.dataclass
    class Knobs:
        depth: int | None = None
        """How deep."""
        names: list[str] = dataclasses.field(default_factory=list)
        """Which ones."""
        fast: bool = False
        """Go fast."""

    p = argparse.ArgumentParser()
    add_config_flags(p, [Section("knobs", ("",))], root=Knobs)
    assert apply_flags(p.parse_args(["--depth", "3", "--names", "a", "--names", "b", "--fast"]), Knobs()) == \
        Knobs(3, ["a", "b"], True)
    assert apply_flags(p.parse_args([]), Knobs(depth=1)) == Knobs(depth=1)
    with pytest.raises(ValueError, match="no field or section 'nope'"):
        add_config_flags(argparse.ArgumentParser(), [Section("x", ("nope",))], root=Knobs)


def test_top_k_defaults():
    """Configs and the CLI filter to the top 50 tokens; a bare SamplingParams (library code) filters nothing."""
    assert SamplingConfig().top_k == 50 and SamplingParams().top_k == 0
    assert parse("bon").generation.sampling.top_k == 50


def test_serve_flags_are_checked_by_the_frozen_dataclass():
    from rsft.config import ServeConfig
    from rsft.errors import RsftError

    args = build_parser().parse_args(["serve", "--max-n", "4", "--port", "9000"])
    assert apply_flags(args, ServeConfig()) == ServeConfig(max_n=4, port=9000)
    assert ServeConfig(max_n=4).default_n == 4 and ServeConfig().default_n == 8  # 8 unless max_n is lower
    assert apply_flags(build_parser().parse_args(["serve", "--n", "2"]), ServeConfig()).default_n == 2
    with pytest.raises(RsftError, match="serve.n: 5 exceeds serve.max_n 4"):
        apply_flags(build_parser().parse_args(["serve", "--n", "5", "--max-n", "4"]), ServeConfig())
    with pytest.raises(RsftError, match="serve.max_n: must be >= 1, got 0"):
        apply_flags(build_parser().parse_args(["serve", "--max-n", "0"]), ServeConfig())
