"""Stages hold a shard (or a row group), not the round's M×N completions, and still write the same files.

``completions.parquet`` and ``rewards.parquet`` are streamed from the shards into one Parquet writer
(row groups as one ``pq.write_table`` would cut them), score reads the completion texts a shard at a
time and export only the selected rows' texts.
"""

from __future__ import annotations

import functools
import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from rsft import artifacts, matrix, pipeline, prompts, stages
from rsft.config import (
    GenerationConfig,
    PromptsConfig,
    RunConfig,
    SamplingConfig,
    ScoringConfig,
    SelectionConfig,
)
from rsft.errors import RsftError
from rsft.stages import export as stage_export
from rsft.stages import select as stage_select
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


def _reward(prompt: Any, completion: str) -> float:
    return float(sum(map(ord, completion)) % 7)


def _round(round_dir: Path, strategy: str = "best") -> dict[str, Any]:
    generation = GenerationConfig(n=N, sampling=SamplingConfig(max_new_tokens=4, seed=0), shard_size=SHARD)
    counts = stages.generate(round_dir, generation, Varied, _prompts())
    summary = stages.score(round_dir, ScoringConfig(scorer="x"), _reward, shard_size=SHARD)
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


# --- prompts a shard at a time ------------------------------------------------------------------


class Recording(Varied):
    """``Varied``, recording the prompts of each call."""

    calls: list[list[Any]] = []

    def generate(self, prompts: Sequence[Any], n: int, sampling: Any) -> list[list[Completion]]:
        Recording.calls.append(list(prompts))
        return super().generate(prompts, n, sampling)


def _bounded_reader(monkeypatch) -> list[int]:
    """Record how many rows each ``RowReader`` holds after a read beyond the rows asked for and one batch."""
    extra: list[int] = []
    take, at = matrix.RowReader.take, matrix.RowReader.at

    def checked_take(self, begin: int, end: int) -> pa.Table:
        out = take(self, begin, end)
        extra.append(self._buffer.num_rows - (end - begin) - self.batch_rows)
        return out

    def checked_at(self, rows: Any) -> dict[int, dict[str, Any]]:
        out = at(self, rows)
        extra.append((self._buffer.num_rows if self._buffer is not None else 0) - self.batch_rows)
        return out

    monkeypatch.setattr(matrix.RowReader, "take", checked_take)
    monkeypatch.setattr(matrix.RowReader, "at", checked_at)
    return extra


def test_each_shard_task_reads_only_its_rows_of_prompts_parquet(tmp_path, monkeypatch):
    """No stage holds the prompt list: generation's tasks are made from prompts.parquet a shard at a
    time (a forward reader holding at most a batch beyond the shard), and so are scoring's."""
    expected = _round(tmp_path / "whole")

    def refuse(*args: Any) -> None:
        raise AssertionError("a stage read every prompt")

    monkeypatch.setattr(matrix, "read_prompts", refuse)
    monkeypatch.setattr(matrix, "PROMPT_GROUP_ROWS", 5)  # prompts.parquet in many row groups
    monkeypatch.setattr(matrix, "PromptReader", functools.partial(matrix.PromptReader, batch_rows=3))
    extra = _bounded_reader(monkeypatch)
    Recording.calls = []
    rd = tmp_path / "streamed"
    generation = GenerationConfig(n=N, sampling=SamplingConfig(max_new_tokens=4, seed=0), shard_size=SHARD)
    counts = stages.generate(rd, generation, Recording, iter(_prompts()))  # any iterable, read once
    assert Recording.calls == [[f"question {i}" for i in range(s, min(M, s + SHARD))] for s in range(0, M, SHARD)]
    assert pq.ParquetFile(rd / artifacts.PROMPTS).num_row_groups == -(-M // 5)
    assert pq.read_table(rd / artifacts.PROMPTS).equals(pq.read_table(tmp_path / "whole" / artifacts.PROMPTS))
    stages.score(rd, ScoringConfig(scorer="x"), _reward, shard_size=SHARD)
    stages.select_completions(rd, SelectionConfig(strategy="best"))
    stages.export_selected(rd)
    assert extra and max(extra) < 0  # what was asked for, and less than a batch more
    assert counts == {**expected["generate"], "shards_generated": -(-M // SHARD)}
    for name in (artifacts.COMPLETIONS, artifacts.REWARDS, artifacts.SELECTION, artifacts.SELECTED):
        assert (rd / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


def test_a_round_from_a_prompt_file_never_lists_its_prompts(tmp_path, monkeypatch):
    path = tmp_path / "prompts.jsonl"
    path.write_text("".join(json.dumps({"prompt": f"question {i}", "answer": str(i)}) + "\n" for i in range(M)))

    def refuse(*args: Any) -> None:
        raise AssertionError("the prompt set was loaded as a list")

    monkeypatch.setattr(prompts, "load_prompts", refuse)
    monkeypatch.setattr(pipeline, "load_prompt_set", refuse)
    config = RunConfig(name="r", out=str(tmp_path / "runs"), prompts=PromptsConfig(path=str(path)),
                       generation=GenerationConfig(n=N, shard_size=SHARD), scoring=ScoringConfig(scorer="exact"))
    result = pipeline.run_round(config, generator=Varied(), quiet=True)
    assert result.generation["prompts"] == M and result.export["rows"] == M


def test_prompt_files_are_read_as_used_with_the_same_errors(tmp_path):
    path = tmp_path / "p.jsonl"
    path.write_text('{"prompt": "a"}\n{"prompt": "b"}\n{"text": "c"}\n')
    stream = prompts.open_prompts(path)
    assert [next(stream).prompt, next(stream).prompt] == ["a", "b"]  # the bad row is not read yet
    with pytest.raises(RsftError, match=r"p.jsonl:3: field 'prompt': missing"):
        next(stream)
    rows = [{"prompt": t} for t in ("a", "b", "c", "b", "a")]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(RsftError) as streamed:
        list(prompts.open_prompts(path))
    with pytest.raises(RsftError) as listed:  # the check on a list of prompts
        prompts.check_unique([prompts.row_to_prompt(r, prompts.FieldMap(), path, k) for k, r in enumerate(rows)], path)
    assert str(streamed.value) == str(listed.value) and "rows 2 and 4 hold the same prompt" in str(listed.value)


def test_the_shard_key_hashes_the_ids_as_one_list(tmp_path):
    for count in (0, 1, 8191, 8192, 20000):
        ids = [f"p{i}é\"" for i in range(count)]
        config = {"generation": {"n": 4, "seed": None, "b": [1, "x"]}}
        assert shards.hash_with_ids(config, "prompt_ids", pa.array(ids, pa.string())) == \
            artifacts.config_hash({**config, "prompt_ids": ids})


@pytest.mark.parametrize("strategy,options", [("best", {}), ("top_k", {"k": 40}), ("dpo_pairs", {"dedup": True}),
                                              ("k_per_prompt", {"k": 2, "dedup": True}), ("rso", {"k": 2, "beta": 2.0})])
def test_small_blocks_select_and_export_the_same(tmp_path, monkeypatch, strategy, options):
    """Selection, dedup, export and the id lookup work a block at a time; blocks of any size give
    the same files (a repeated prompt id maps to its last prompt, as before)."""
    dup = [*_prompts(), Prompt(prompt_id="p003", prompt="question 3 again")]

    def run(folder: Path) -> dict[str, Any]:
        generation = GenerationConfig(n=N, sampling=SamplingConfig(max_new_tokens=4, seed=0), shard_size=SHARD)
        stages.generate(folder, generation, Varied, dup)
        stages.score(folder, ScoringConfig(scorer="x"), lambda p, c: float(sum(map(ord, c)) % 3), shard_size=SHARD)
        counts = stages.select_completions(folder, SelectionConfig(strategy=strategy, **options))
        return {**counts, **stages.export_selected(folder), "path": None}

    whole = run(tmp_path / "whole")
    for module, name, size in [(shards, "ROW_GROUP_ROWS", 5), (stage_select, "SELECT_BLOCK", 4),
                               (stage_select, "DEDUP_BLOCK", 3), (stage_export, "EXPORT_BLOCK", 5),
                               (matrix, "ID_BLOCK", 4)]:
        monkeypatch.setattr(module, name, size)
    assert run(tmp_path / "blocks") == whole
    assert pq.ParquetFile(tmp_path / "blocks" / artifacts.SELECTION).num_row_groups == -(-whole["selected"] // 5)
    assert pq.read_table(tmp_path / "blocks" / artifacts.SELECTION).equals(
        pq.read_table(tmp_path / "whole" / artifacts.SELECTION))
    exported = (tmp_path / "blocks" / artifacts.SELECTED).read_bytes()
    assert exported == (tmp_path / "whole" / artifacts.SELECTED).read_bytes()
    if strategy == "best":
        assert exported.count(b'"prompt": "question 3 again"') == 2  # both prompts with id p003: the last


def test_the_ray_executor_takes_a_task_only_when_an_actor_has_room():
    """``_feed`` pulls the next task from the (lazy) task list only when every pool has an actor with
    room, so at most ``IN_FLIGHT`` shards per actor exist at once, however many shards a stage has."""
    from rsft.stages import ray_executor

    class Ref:
        def __init__(self, value: Any) -> None:
            self.value = value

    class FakeRay:
        def wait(self, refs: list[Any], num_returns: int) -> tuple[list[Any], list[Any]]:
            return [refs[-1]], refs[:-1]  # the newest finishes first

        def get(self, ref: Ref) -> Any:
            return ref.value

    pulled, finished, busy = [0], [], {"a": 0, "b": 0}

    def tasks() -> Any:
        for s in range(100):
            pulled[0] += 1
            yield s, f"task {s}"

    def submit(actors: list[str], task: str) -> Ref:
        busy[actors[0]] += 1
        assert busy[actors[0]] <= ray_executor.IN_FLIGHT
        return Ref((actors[0], task))

    def finish(s: int, ref: Ref) -> None:
        busy[ref.value[0]] -= 1
        finished.append(s)
        assert pulled[0] - len(finished) < 2 * ray_executor.IN_FLIGHT  # tasks made but not done

    ray_executor._feed(FakeRay(), tasks(), [["a", "b"]], submit, finish)
    assert sorted(finished) == list(range(100)) and busy == {"a": 0, "b": 0}
