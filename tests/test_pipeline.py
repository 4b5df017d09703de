"""``run_round`` through the library: heterogeneous generators, a reward model, a reasoning-gym task."""

from __future__ import annotations

import json

import numpy as np
import pyarrow.parquet as pq
import pytest
from fake_openai_server import FakeServer

from rsft import pipeline
from rsft.config import (
    GenerationConfig,
    GeneratorConfig,
    PromptsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
    TaskConfig,
)
from rsft.errors import RsftError


@pytest.fixture(scope="module")
def server():
    with FakeServer() as s:
        yield s


def _prompts_file(tmp_path, n=3):
    path = tmp_path / "p.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}", "answer": str(i)}) + "\n" for i in range(n)))
    return str(path)


def test_heterogeneous_matrix_hf_plus_openai_scored_by_a_reward_model(tmp_path, tiny_lm, tiny_rm, server):
    server.reset()
    config = RunConfig(
        name="mix",
        out=str(tmp_path),
        prompts=PromptsConfig(path=_prompts_file(tmp_path)),
        generation=GenerationConfig(
            n=4,
            mix=[
                GeneratorConfig(backend="hf", model=str(tiny_lm), n=3),
                GeneratorConfig(backend="openai", model="fake", n=1, options={"base_url": server.base_url}),
            ],
            sampling=SamplingConfig(max_new_tokens=5, seed=1),
        ),
        scoring=ScoringConfig(scorer=f"rm:{tiny_rm}", options={"batch_size": 4}),
        selection=SelectionConfig(strategy="k_per_prompt", k=2),
    )
    result = pipeline.run_round(config, quiet=True)
    comps = pq.read_table(result.round_dir / "completions.parquet").to_pylist()
    gens = [c["generator"] for c in comps]
    assert gens == ([f"hf:{tiny_lm}"] * 3 + ["openai:fake"]) * 3
    assert [c["text"] for c in comps[3::4]] == [f"question {i} s{1 + 7919} c0" for i in range(3)]
    rewards = pq.read_table(result.round_dir / "rewards.parquet").column("reward").to_numpy()
    assert np.isfinite(rewards).all() and len(set(rewards.round(6))) > 1
    assert 0 < result.reward_stats["padding_efficiency"] <= 1
    assert result.export["rows"] == 6
    # the kept pairs are the two best of each row, best first
    R = rewards.reshape(3, 4)
    sel = pq.read_table(result.round_dir / "selection.parquet").to_pylist()
    for i in range(3):
        picked = [s["sample_idx"] for s in sel[2 * i: 2 * i + 2]]
        assert picked == list(np.argsort(-R[i], kind="stable")[:2])


def test_reasoning_gym_task_with_its_own_scorer(tmp_path, tiny_lm):
    """A fake policy that answers correctly in one column: the task scorer must find exactly those."""

    class Oracle:
        name = "oracle"

        def generate(self, prompts, n, sampling):
            from rsft.types import Completion

            out = []
            for p in prompts:
                q = p.rsplit("Q: ", 1)[1]
                expr = q.split("problem: ")[1].split(" =")[0]
                right = str(eval(expr))  # noqa: S307 - chain_sum questions are digit +/- chains
                out.append([Completion(right if j == 2 else "wrong", 1, "stop") for j in range(n)])
            return out

    config = RunConfig(
        name="task", out=str(tmp_path),
        prompts=PromptsConfig(task=TaskConfig(name="chain_sum", size=6, options={"min_terms": 2, "max_terms": 3})),
        generation=GenerationConfig(n=4), scoring=ScoringConfig(scorer="task"),
    )
    result = pipeline.run_round(config, generator=Oracle(), quiet=True)
    R = pq.read_table(result.round_dir / "rewards.parquet").column("reward").to_numpy().reshape(6, 4)
    assert (R[:, 2] == 1).all() and (R[:, [0, 1, 3]] == 0).all()
    assert result.reward_stats["best_of_n_mean"] == 1.0
    assert result.reward_stats["per_prompt_mean"] == pytest.approx(0.25)
    rows = [json.loads(x) for x in (result.round_dir / "selected.jsonl").read_text().splitlines()]
    assert all(r["completion"] != "wrong" for r in rows) and len(rows) == 6


def test_mix_shares_must_sum_to_n(tmp_path):
    g = GenerationConfig(n=4, mix=[GeneratorConfig(n=1), GeneratorConfig(n=1)])
    with pytest.raises(RsftError, match="must sum to generation.n=4"):
        pipeline.build_generator(g)


def test_prompts_need_exactly_one_source():
    with pytest.raises(RsftError, match="give a 'path'"):
        pipeline.load_prompt_set(PromptsConfig())
    with pytest.raises(RsftError, match="not both"):
        pipeline.load_prompt_set(PromptsConfig(path="x", task=TaskConfig()))
