"""demo_real's pieces that need no model: the answer-shuffle baseline and the RSFT run it configures."""

from __future__ import annotations

from rsft import stages
from rsft.config import GenerationConfig, GeneratorConfig, SamplingConfig, dump_config, load_config
from rsft.demos import demo_real
from rsft.types import Completion, Prompt


class FixedAnswers:
    """A generator that answers prompt i with ``texts[i]``."""

    name = "fixed"

    def __init__(self, texts: dict[str, str]) -> None:
        self.texts = texts

    def generate(self, prompts, n, sampling):
        return [[Completion(self.texts[p], 3, "stop") for _ in range(n)] for p in prompts]


def _eval_dir(tmp_path, answers: list[str]):
    prompts = [Prompt(f"{i:016x}", f"What is {g} + 0?", {"answer": g}) for i, g in enumerate(["1", "2", "3", "4"])]
    gen = FixedAnswers({p.prompt: f"so \\boxed{{{a}}}" for p, a in zip(prompts, answers, strict=True)})
    config = GenerationConfig(n=1, generator=GeneratorConfig("hf", "fixed"), sampling=SamplingConfig(temperature=0))
    stages.generate(tmp_path / "eval", config, lambda: gen, prompts)
    return tmp_path / "eval"


def test_shuffled_answers_score_only_what_the_answer_prior_gives(tmp_path):
    # every answer right for its own question, none right for another one (a derangement)
    assert demo_real.answer_shuffle_accuracy(_eval_dir(tmp_path / "a", ["1", "2", "3", "4"])) == 0.0
    # a policy that always says 2 is right on exactly one question whatever the pairing
    assert demo_real.answer_shuffle_accuracy(_eval_dir(tmp_path / "b", ["2", "2", "2", "2"])) == 0.25


def test_the_rsft_run_is_held_out_gated_with_a_chain_control(tmp_path):
    args = demo_real._parser().parse_args(["--rounds", "3", "--prompts-per-round", "24", "--eval-prompts", "96"])
    config = demo_real.rsft_config(tmp_path / "rsft", args)
    assert config.rounds.control and config.rounds.control_mode == "chain" and config.rounds.refresh == "rotate"
    assert config.prompts.task.size == 72 and config.eval.prompts.task.seed != config.prompts.task.seed
    assert config.eval.sampling.temperature == 0 and config.eval.pass_threshold == 1.0
    assert config.generation.generator.model == demo_real.MODEL
    (tmp_path / "c.yaml").write_text(dump_config(config))
    assert load_config(tmp_path / "c.yaml") == config  # the same run from its saved config.yaml


def test_the_qwen_sweep_reuses_the_demos_base_eval(tmp_path):
    """configs/qwen-sweep.yaml runs into make demo-real's run folder; the base's held-out eval is reused
    only when everything its key holds matches: the eval settings, the base model and the held-out
    prompts (the eval set minus the training pool)."""
    from pathlib import Path

    sweep = load_config(Path(__file__).resolve().parent.parent / "configs" / "qwen-sweep.yaml")
    demo = demo_real.rsft_config(tmp_path / "runs" / "demo-real" / "rsft", demo_real._parser().parse_args([]))
    assert sweep.run_dir == Path("runs") / "demo-real" / "rsft" and sweep.name == demo.name
    assert sweep.eval == demo.eval
    assert sweep.generation.generator.model == demo.generation.generator.model
    assert sweep.prompts == demo.prompts


def test_the_last_rsft_round_is_tested_against_the_control_and_base_question_by_question(tmp_path):
    from rsft import artifacts, pipeline
    from rsft.config import ScoringConfig

    def policy(name: str, answers: list[str]) -> dict:
        folder = tmp_path / name
        _eval_dir(folder, answers)  # writes folder/eval, the eval samples folder
        scoring = ScoringConfig(scorer="math")
        stages.score(folder / artifacts.EVAL_SAMPLES, scoring, pipeline.build_scorer(scoring))
        return {"policy": name, "folder": str(folder)}

    rows = [policy("base", ["1", "9", "9", "9"]), policy("RSFT round 1", ["1", "9", "3", "9"]),
            policy("control round 1", ["1", "2", "9", "9"]), policy("RSFT round 2", ["1", "2", "3", "4"]),
            policy("control round 2", ["1", "2", "9", "9"])]
    vs_control, vs_base = demo_real.paired_rows(rows)
    assert (vs_control["a"], vs_control["b"]) == ("RSFT round 2", "control round 2")
    assert (vs_control["a_only"], vs_control["b_only"]) == (2, 0)
    assert vs_control["p_value"] == 0.5  # 2 questions differ: 2 of the 4 sign patterns are as extreme
    assert (vs_base["b"], vs_base["a_only"], vs_base["b_only"], vs_base["p_value"]) == ("base", 3, 0, 0.25)
