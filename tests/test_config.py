"""YAML config: typed, unknown keys rejected with the nearest name, round-trips through dump."""

from __future__ import annotations

import pytest

from rsft.config import (
    RunConfig,
    SelectionConfig,
    TrainConfig,
    dump_config,
    field_docs,
    from_dict,
    load_config,
)
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
    assert "Which completions to keep" in field_docs(SelectionConfig)["strategy"]


def test_selection_strategies_declared_once_in_the_registry():
    from dataclasses import fields

    from rsft import registry, select

    strategy = next(f for f in fields(SelectionConfig) if f.name == "strategy")
    assert strategy.metadata["choices"] is registry.STRATEGIES
    assert tuple(registry.STRATEGIES) == select.SELECTION_STRATEGIES == select.STRATEGIES + ("dpo_pairs",)
    assert all(registry.STRATEGIES[name].pairs for name in select.PAIR_STRATEGIES)


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


@pytest.mark.parametrize("text, want", [("no", "no"), ("'no'", "no"), ("bf16", "bf16"), ("auto", "auto")])
def test_unquoted_yaml_no_is_the_word_no_for_a_choice_field(tmp_path, text, want):
    path = tmp_path / "c.yaml"
    path.write_text(f"train:\n  mixed_precision: {text}\n")  # YAML 1.1 reads a bare no as False
    config = load_config(path)
    assert config.train.mixed_precision == want
    again = tmp_path / "again.yaml"
    again.write_text(dump_config(config))
    assert load_config(again) == config


@pytest.mark.parametrize("yaml_text, message", [
    ("train:\n  mixed_precision: yes\n", r"c.yaml: train: mixed_precision: expected str, got True \(YAML reads "
                                         r"unquoted yes/no/on/off as a boolean: quote the value\)"),
    ("name: no\n", r"c.yaml: name: expected str, got False \(YAML reads unquoted .* quote the value\)"),
    ("prompts: {split: off}\n", r"c.yaml: prompts: split: expected str \| None, got False \(YAML reads"),
])
def test_a_boolean_for_a_string_field_without_that_word_says_quote_it(tmp_path, yaml_text, message):
    path = tmp_path / "c.yaml"
    path.write_text(yaml_text)
    with pytest.raises(RsftError, match=message) as e:
        load_config(path)
    assert "\n" not in str(e.value)


def test_several_rounds_train_in_yaml_as_on_the_command_line(tmp_path):
    from rsft.cli import build_parser
    from rsft.cli.options import config_from

    path = tmp_path / "c.yaml"
    path.write_text("rounds: {rounds: 2, control: true}\n")  # no rounds.train: several rounds mean training
    from_yaml = load_config(path).rounds
    assert from_yaml.train is True and from_yaml.rounds == 2
    (tmp_path / "plain.yaml").write_text("rounds: {control: true}\n")
    from_flag = config_from(build_parser().parse_args(["run", "--config", str(tmp_path / "plain.yaml"),
                                                       "--rounds", "2"])).rounds
    assert from_flag == from_yaml
    assert RunConfig().rounds.train is False  # one round, no train: data generation only
    path.write_text("rounds: {rounds: 1}\n")
    assert load_config(path).rounds.train is False


def test_several_rounds_with_train_false_is_refused(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("rounds:\n  rounds: 3\n  train: false\n")
    with pytest.raises(RsftError, match=r"/c.yaml: rounds: train: false contradicts rounds: 3 .*rounds.train"):
        load_config(path)


def test_rsft_run_with_two_yaml_rounds_runs_the_rounds_not_one_data_round(tmp_path, capsys):
    from rsft.cli import main

    path = tmp_path / "c.yaml"
    path.write_text(f"out: {tmp_path / 'runs'}\nrounds: {{rounds: 2}}\ntrain: {{epochs: 1}}\n")
    # the rounds loop starts by asking for held-out prompts: a one-round data run would have generated
    assert main(["run", "--config", str(path)]) == 2
    assert "eval.prompts: RSFT rounds need held-out eval prompts" in capsys.readouterr().err
    assert not (tmp_path / "runs").exists()
    path.write_text(f"out: {tmp_path / 'runs'}\nrounds: {{rounds: 2, train: false}}\n")
    assert main(["run", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rsft: error: ") and "train: false contradicts rounds: 2" in err and err.count("\n") == 1
    assert not (tmp_path / "runs").exists()


# --- the checks of config/checks.py: one line naming section.field, from YAML and from flags alike --------

CHECKS = [
    ("generation: {n: 0}", ["-n", "0"], "generation.n: must be >= 1, got 0"),
    ("generation: {sampling: {top_p: 0}}", ["--top-p", "0"], "generation.sampling: "),
    ("generation: {generator: {backend: nope}}", ["--backend", "nope"],
     "generation: unknown backend 'nope'; choose one of hf, openai, vllm"),
    ("generation: {n: 4, mix: [{model: a, n: 1}, {model: b, n: 2}]}", None,
     "generation.mix: each entry needs n >= 1 and they must sum to generation.n=4, got [1, 2]"),
    ("generation: {adaptive: {enabled: true, min_n: 0}}", ["--adaptive", "--min-n", "0"],
     "generation.adaptive: adaptive min_n must be a positive integer, got 0"),
    ("generation: {adaptive: {enabled: true, equivalence: nope}}", ["--adaptive", "--equivalence", "nope"],
     "generation.adaptive: unknown equivalence 'nope'; choose exact, math or pkg.module:name"),
    ("scoring: {scorer: nope}", ["--scorer", "nope"], "scoring.scorer: unknown scorer 'nope'; built in: code, exact"),
    ("scoring: {scorer: 3}", None, "scoring.scorer: expected a name or a mapping, got 3"),
    ("scoring: {on_error: skip}", None, "scoring.on_error: expected 'fail' or 'record', got 'skip'"),
    ("selection: {strategy: nope}", None, "selection.strategy: unknown selection strategy 'nope'; valid: best, top_k"),
    ("train: {learning_rate: 0}", None, "train.learning_rate: must be positive, got 0"),
    ("train: {lora_dropout: 1.0}", None, "train.lora_dropout: must be in [0, 1), got 1.0"),
    ("eval: {kl_prompts: 0}", None, "eval.kl_prompts: must be >= 1 (or null for all), got 0"),
    ("eval: {scorer: nope}", None, "eval.scorer: unknown scorer 'nope'"),
    ("rounds: {refresh: shuffle}", None, "rounds.refresh: expected 'subsample' or 'rotate', got 'shuffle'"),
    ("rounds: {control: true, control_mode: chian}", None,
     "rounds.control_mode: expected 'round' or 'chain', got 'chian'"),
    ("rounds: {rm_check: {min_accuracy: 0.5}}", None, "rounds.rm_check.pairs: give a chosen/rejected JSONL file"),
    ("tracking: {report_to: [neptune]}", ["--report-to", "neptune"],
     "tracking.report_to: unknown tracker 'neptune'; choose from tensorboard, mlflow, trackio, wandb"),
    ("prompts: {path: p.jsonl, task: {name: chain_sum}}", ["--prompts", "p.jsonl", "--task", "chain_sum"],
     "prompts: give either 'path' or 'task', not both"),
    ("prompts: {task: {size: 0}}", ["--task", "chain_sum", "--size", "0"], "prompts.task.size: must be >= 1, got 0"),
    ("executor: dask", ["--executor", "dask"], "executor: unknown executor 'dask'; choose one of local, ray"),
]


@pytest.mark.parametrize("text, flags, message", CHECKS, ids=[c[2].split(":")[0] for c in CHECKS])
def test_a_bad_value_is_one_line_naming_its_field_from_yaml_and_flags(tmp_path, text, flags, message):
    from rsft.cli import build_parser, main
    from rsft.cli.options import config_from

    path = tmp_path / "c.yaml"
    path.write_text(text + "\n")
    with pytest.raises(RsftError) as e:
        load_config(path)
    assert str(e.value).startswith(f"{path}: {message}") and "\n" not in str(e.value)
    if flags is None:
        return
    with pytest.raises(RsftError) as e:
        config_from(build_parser().parse_args(["run", *flags]))
    assert str(e.value).startswith(message)
    assert main(["select", str(tmp_path / "round"), "--config", str(path)]) == 2  # exit 2, before any work


def test_the_library_checks_a_section_changed_after_it_was_made(tmp_path):
    from rsft import pipeline, stages
    from rsft.config import check_run
    from rsft.train.sft import check_config

    config = RunConfig(out=str(tmp_path))
    assert check_run(config) is config
    config.generation.n = 0
    with pytest.raises(RsftError, match="generation.n: must be >= 1, got 0"):
        pipeline.run_round(config, quiet=True)
    with pytest.raises(RsftError, match="generation.n: must be >= 1, got 0"):
        stages.generate(tmp_path / "r", config.generation, lambda: None, [])
    with pytest.raises(RsftError, match="train.lora_dropout"):
        check_config(TrainConfig(lora_dropout=2.0))
    assert not (tmp_path / "run").exists() and not (tmp_path / "r").exists()
