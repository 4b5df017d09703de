"""YAML config: typed, unknown keys rejected with the nearest name, round-trips through dump."""

from __future__ import annotations

import pytest

from rsft.config import RunConfig, SelectionConfig, dump_config, field_docs, from_dict, load_config
from rsft.errors import RsftError


def test_full_config_loads_with_types(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text(
        """
name: x
prompts:
  task: {name: chain_sum, size: 4, options: {min_terms: 2}}
generation:
  n: 16
  mix:
    - {backend: hf, model: a, n: 8}
    - {backend: openai, model: b, n: 8, options: {base_url: "http://127.0.0.1:1/v1"}}
  sampling: {temperature: 1, stop: ["\\n"]}
scoring: {scorer: {gate: math, inner: "rm:/m"}, on_error: record}
selection: {strategy: top_k, k: 3}
"""
    )
    c = load_config(path)
    assert c.prompts.task.options == {"min_terms": 2} and c.prompts.task.size == 4
    assert c.generation.n == 16 and [g.model for g in c.generation.mix] == ["a", "b"]
    assert c.generation.sampling.temperature == 1.0 and isinstance(c.generation.sampling.temperature, float)
    assert c.generation.sampling.stop == ["\n"]
    assert c.scoring.scorer == {"gate": "math", "inner": "rm:/m"}
    assert c.selection.k == 3
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(c))
    assert load_config(again) == c


@pytest.mark.parametrize(
    "yaml_text, message",
    [
        ("generaton: {}\n", "unknown key 'generaton'; did you mean 'generation'?"),
        ("generation: {sampling: {temprature: 1}}\n", "generation: sampling: unknown key 'temprature'; did you mean 'temperature'?"),
        ("generation: {n: eight}\n", "generation: n: expected int, got 'eight'"),
        ("generation: {n: true}\n", "generation: n: expected int"),
        ("selection: {k: 1.5}\n", "selection: k: expected int | None"),
        ("generation: [1, 2]\n", "expected a mapping for GenerationConfig"),
        ("name: [unclosed\n", "invalid YAML"),
    ],
)
def test_bad_config_names_the_field(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(RsftError, match=None) as e:
        load_config(path)
    assert message in str(e.value) and str(path) in str(e.value)


def test_missing_config_file(tmp_path):
    with pytest.raises(RsftError, match="no such config file"):
        load_config(tmp_path / "nope.yaml")


def test_defaults_and_docs():
    c = from_dict(RunConfig, {}, "x")
    assert c == RunConfig()
    assert "one per prompt" in field_docs(SelectionConfig)["strategy"]


def test_selection_strategies_declared_once_in_select():
    from dataclasses import fields

    from rsft import select

    strategy = next(f for f in fields(SelectionConfig) if f.name == "strategy")
    assert strategy.metadata["choices"] == select.SELECTION_STRATEGIES
    assert select.SELECTION_STRATEGIES == select.STRATEGIES + ("dpo_pairs",)
    assert all(callable(getattr(select, name)) for name in select.PAIR_STRATEGIES)


@pytest.mark.parametrize("name", ["demo.yaml", "rsft.yaml"])
def test_shipped_example_configs_load(name):
    from pathlib import Path

    config = load_config(Path(__file__).parent.parent / "configs" / name)
    assert config.prompts.task is not None and config.prompts.task.name == "count_bits"


def test_secrets_never_reach_config_yaml_or_manifests(tmp_path):
    from rsft import artifacts
    from rsft.config import GenerationConfig, GeneratorConfig, ScoringConfig

    config = RunConfig(generation=GenerationConfig(generator=GeneratorConfig("openai", "m", {"api_key": "sk-live-123",
                                                                                           "base_url": "http://x"})),
                       scoring=ScoringConfig(scorer="judge:m", options={"API_KEY": "sk-judge", "token": ""}))
    text = dump_config(config)
    assert "sk-live-123" not in text and "sk-judge" not in text and text.count("<redacted>") == 2
    assert "http://x" in text  # everything else as is
    (tmp_path / "out.txt").write_text("done")
    stage = {"generator": {"options": {"api_key": "sk-live-123", "base_url": "http://x"}}}
    artifacts.record_stage(tmp_path, "generate", config=stage, inputs=[], outputs=["out.txt"], started=0.0)
    assert "sk-live-123" not in (tmp_path / artifacts.MANIFEST).read_text()
    other_key = {"generator": {"options": {"api_key": "sk-rotated", "base_url": "http://x"}}}
    assert artifacts.stage_is_current(tmp_path, "generate", other_key, [], ["out.txt"]) is not None  # same config
    with pytest.raises(RsftError, match=r"generation\.generator\.options\.base_url"):
        artifacts.guard_outputs(tmp_path, "generate", {"generator": {"options": {"api_key": "k", "base_url": "http://y"}}},
                                new_version=False)
