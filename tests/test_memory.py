"""Stages hold a shard (or a row group), not the round's M×N completions, and still write the same files.

``completions.parquet`` and ``rewards.parquet`` are streamed from the shards into one Parquet writer
(row groups as one ``pq.write_table`` would cut them), score reads the completion texts a shard at a
time and export only the selected rows' texts.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsft import artifacts, matrix, stages
from rsft.config import GenerationConfig, SamplingConfig, ScoringConfig, SelectionConfig
from rsft.stages import shards
from rsft.types import Completion, Prompt

M, N, SHARD = 23, 3, 4


class Varied:
    """A stand-in generator whose texts differ by prompt, sample and shard (and miss some token counts)."""

    name = "varied"

    def generate(self, prompts: Sequence[Any], n: int, sampling: Any) -> list[list[Completion]]:
        return [[Completion(text=f"{p} #{j} s{sampling.seed}", n_tokens=None if j == 1 else len(p) + j,
                            finish_reason="stop", generator=self.name) for j in range(n)] for p in prompts]


def _prompts() -> list[Prompt]:
    return [Prompt(prompt_id=f"p{i:03d}", prompt=f"question {i}") for i in range(M)]


def _round(round_dir: Path, strategy: str = "best") -> dict[str, Any]:
    generation = GenerationConfig(n=N, sampling=SamplingConfig(max_new_tokens=4, seed=0), shard_size=SHARD)
    counts = stages.generate(round_dir, generation, Varied, _prompts())
    summary = stages.score(round_dir, ScoringConfig(scorer="x"), lambda p, c: float(sum(map(ord, c)) % 7),
                           shard_size=SHARD)
    stages.select_completions(round_dir, SelectionConfig(strategy=strategy))
    stages.export_selected(round_dir)
    return {"generate": counts, "score": summary}


def _write_shards(folder: Path, sizes: Sequence[int]) -> list[pa.Table]:
    tables, start = [], 0
    for s, size in enumerate(sizes):
        columns = {"prompt_id": [f"p{i}" for i in range(start, start + size)],
                   "sample_idx": [0] * size, "reward": [i / 3 for i in range(start, start + size)],
                   "scorer": ["x"] * size, "details": [None] * size, "failed": [i % 5 == 0 for i in range(size)]}
        artifacts.write_table(shards.shard_path(folder, s), columns, matrix.REWARDS_SCHEMA)
        tables.append(pq.read_table(shards.shard_path(folder, s)))
        start += size
    return tables


@pytest.mark.parametrize("rows_per_group", [1024 * 1024, 10, 7])
def test_streamed_output_has_the_bytes_of_one_write_table_of_all_shards(tmp_path, monkeypatch, rows_per_group):
    monkeypatch.setattr(shards, "ROW_GROUP_ROWS", rows_per_group)
    tables = _write_shards(tmp_path / "shards", [4, 4, 3, 9, 1, 4])
    seen: list[int] = []
    shards.finish_shards(tmp_path / "shards", 6, matrix.REWARDS_SCHEMA, tmp_path / "out.parquet",
                         lambda t: seen.append(t.num_rows))
    pq.write_table(pa.concat_tables(tables), tmp_path / "expected.parquet", compression="zstd",
                   row_group_size=rows_per_group)
    assert (tmp_path / "out.parquet").read_bytes() == (tmp_path / "expected.parquet").read_bytes()
    assert seen == [4, 4, 3, 9, 1, 4]


def test_no_shards_give_an_empty_table(tmp_path):
    shards.finish_shards(tmp_path / "shards", 0, matrix.REWARDS_SCHEMA, tmp_path / "out.parquet", lambda t: None)
    assert pq.read_table(tmp_path / "out.parquet").schema == matrix.REWARDS_SCHEMA


def test_a_round_never_reads_every_completion_text_at_once(tmp_path, monkeypatch):
    expected = _round(tmp_path / "whole")

    def refuse(*args: Any) -> None:
        raise AssertionError("a stage read all of completions.parquet")

    monkeypatch.setattr(matrix, "read_completions", refuse)
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 1)  # a row group per shard: the texts come from many
    got = _round(tmp_path / "streamed")
    assert pq.ParquetFile(tmp_path / "streamed" / artifacts.COMPLETIONS).num_row_groups == -(-M // SHARD)
    for name in (artifacts.REWARDS, artifacts.SELECTION):
        assert pq.read_table(tmp_path / "streamed" / name).equals(pq.read_table(tmp_path / "whole" / name))
    for name in (artifacts.SELECTED,):
        assert (tmp_path / "streamed" / name).read_bytes() == (tmp_path / "whole" / name).read_bytes()
    for stage in ("generate", "score"):
        got[stage].pop("reused", None)
    assert got == expected
    assert got["generate"]["completions"] == M * N
    assert got["generate"]["tokens"] == sum(len(f"question {i}") + j for i in range(M) for j in (0, 2))


def test_export_of_preference_pairs_reads_the_right_texts(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 1)
    _round(tmp_path, strategy="dpo_pairs")
    comps = pq.read_table(tmp_path / artifacts.COMPLETIONS).to_pylist()
    text = {(r["prompt_id"], r["sample_idx"]): r["text"] for r in comps}
    selection = pq.read_table(tmp_path / artifacts.SELECTION).to_pylist()
    pairs: dict[int, dict[str, Any]] = {}
    for r in selection:
        pairs.setdefault(r["pair"], {})[r["role"]] = text[(r["prompt_id"], r["sample_idx"])]
    rows = [json.loads(line) for line in (tmp_path / artifacts.SELECTED).read_text().splitlines()]
    assert pairs and [(r["chosen"], r["rejected"]) for r in rows] == [(p["chosen"], p["rejected"])
                                                                     for p in pairs.values()]


def test_completion_texts_forward_with_gaps_and_back(tmp_path, monkeypatch):
    monkeypatch.setattr(shards, "ROW_GROUP_BYTES", 1)
    _round(tmp_path)
    path = tmp_path / artifacts.COMPLETIONS
    all_texts = pq.read_table(path).column("text").to_pylist()
    index = matrix.read_completion_index(path, _prompts())
    reader = matrix.CompletionTexts(index, batch_rows=5)
    want = [all_texts[i * N : (i + 1) * N] for i in range(M)]
    assert reader.rows(0, 4) == want[0:4]
    assert reader.rows(9, 13) == want[9:13]  # a gap: shards already scored on resume
    assert reader.rows(2, 3) == want[2:3]  # backwards: starts over
    assert reader.rows(20, 23) == want[20:23]
    assert reader.at([50, 1, 68, 1]) == {1: all_texts[1], 50: all_texts[50], 68: all_texts[68]}
    reader.close()
