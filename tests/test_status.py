"""`rsft status`: done / partial / missing per stage, from the files a run really holds."""

from __future__ import annotations

import json
import shutil

import pytest

from rsft import pipeline
from rsft.config import GenerationConfig, PromptsConfig, RunConfig
from rsft.errors import RsftError
from rsft.report import status
from rsft.types import Completion


class Echo:
    name = "echo"

    def generate(self, prompts, n, sampling):
        return [[Completion(f"{p}-{j}", 1, "stop") for j in range(n)] for p in prompts]


def test_status_of_a_finished_round_and_an_interrupted_one(tmp_path):
    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    config = RunConfig(name="r", out=str(tmp_path), prompts=PromptsConfig(path=str(prompts)),
                       generation=GenerationConfig(n=2, shard_size=2))
    pipeline.run_round(config, generator=Echo(), scorer=lambda p, c: float(len(c)), quiet=True)
    run = tmp_path / "r"
    done = status.run_status(run)["round-000"]
    assert done == {"generate": "done", "score": "done", "select": "done", "export": "done", "train": "missing",
                    "eval": "missing"}
    # simulate a scoring run killed after two of its three shards
    rd = run / "round-000"
    (rd / "rewards.parquet").unlink()
    shard_dir = rd / ".shards" / "rewards-0123456789abcdef"
    shard_dir.mkdir(parents=True)
    for k in range(2):
        shutil.copy(rd / "prompts.parquet", shard_dir / f"{k:05d}.parquet")
    assert status.run_status(run)["round-000"]["score"] == "partial (2 shards)"
    table = status.format_status(status.run_status(run))
    assert "partial (2 shards)" in table and table.splitlines()[0].startswith("round")


def test_not_a_run_folder(tmp_path):
    with pytest.raises(RsftError, match="no such run"):
        status.run_status(tmp_path / "nope")
    with pytest.raises(RsftError, match="not a run folder"):
        status.run_status(tmp_path)


def test_journaled_responses_make_generation_partial(tmp_path):
    """A remote generator killed before its first shard finished has still kept what it received."""
    rd = tmp_path / "round-000"
    (rd / ".shards").mkdir(parents=True)
    assert status.round_status(rd)["generate"] == "missing"
    (rd / ".shards" / "journal-0123456789abcdef.jsonl").write_text('{"key": "a"}\n{"key": "b"}\n{"key": "c", "ch')
    assert status.round_status(rd)["generate"] == "partial (0 shards, 2 responses journaled)"
    assert status.round_status(rd)["score"] == "missing"
