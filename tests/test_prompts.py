"""Prompt loading from every supported source, field mapping, stable ids, and bad input."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from rsft.errors import RsftError
from rsft.prompts import FieldMap, TaskSpec, load_prompts, prompt_id, task_prompts

ROWS = [
    {"question": "What is 1+1?", "gold": "2", "level": 1},
    {"question": "What is 2+2?", "gold": "4", "level": 2},
]


def _jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_ids_are_stable_content_hashes():
    assert prompt_id("abc") == prompt_id("abc")
    assert prompt_id("abc") != prompt_id("abd")
    msgs = [{"role": "user", "content": "abc"}]
    assert prompt_id(msgs) == prompt_id([{"content": "abc", "role": "user"}])
    assert prompt_id(msgs) != prompt_id("abc")
    assert len(prompt_id("x")) == 16
    assert prompt_id("abc") == "6cc43f858fbb7633"  # sha256 of the JSON text "abc": must never change


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "csv", "hf"])
def test_every_format_with_field_mapping(tmp_path, fmt):
    if fmt == "jsonl":
        path = _jsonl(tmp_path / "p.jsonl", ROWS)
    elif fmt == "parquet":
        path = tmp_path / "p.parquet"
        pq.write_table(pa.Table.from_pylist(ROWS), path)
    elif fmt == "csv":
        path = tmp_path / "p.csv"
        pacsv.write_csv(pa.Table.from_pylist(ROWS), path)
    else:
        import datasets

        path = tmp_path / "ds"
        datasets.Dataset.from_list(ROWS).save_to_disk(str(path))
    prompts = load_prompts(path, FieldMap(prompt="question", answer="gold"))
    assert [p.prompt for p in prompts] == ["What is 1+1?", "What is 2+2?"]
    assert [str(p.metadata["answer"]) for p in prompts] == ["2", "4"]
    assert [int(p.metadata["level"]) for p in prompts] == [1, 2]
    assert prompts[0].prompt_id == prompt_id("What is 1+1?")


def test_chat_messages_rows(tmp_path):
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"}]
    path = _jsonl(tmp_path / "c.jsonl", [{"messages": msgs, "answer": "hello"}])
    (p,) = load_prompts(path)
    assert p.is_chat and p.prompt == msgs and p.metadata == {"answer": "hello"}


def test_saved_dataset_dict_needs_a_split(tmp_path):
    import datasets

    dd = datasets.DatasetDict({"train": datasets.Dataset.from_list([{"prompt": "a"}]),
                               "test": datasets.Dataset.from_list([{"prompt": "b"}])})
    dd.save_to_disk(str(tmp_path / "dd"))
    with pytest.raises(RsftError, match="choose one with --split"):
        load_prompts(tmp_path / "dd")
    assert [p.prompt for p in load_prompts(tmp_path / "dd", split="test")] == ["b"]


@pytest.mark.parametrize(
    "content, match",
    [
        ('{"prompt": "ok"}\n{"prompt": "broken\n', r"p\.jsonl:2: malformed JSON"),
        ('{"prompt": "ok"}\n[1, 2]\n', r"p\.jsonl:2: expected a JSON object"),
        ('{"prompt": "ok"}\n{"text": "x"}\n', r"p\.jsonl:2: field 'prompt': missing"),
        ('{"prompt": "   "}\n', r"p\.jsonl:1: field 'prompt': empty prompt"),
        ('{"prompt": 42}\n', r"p\.jsonl:1: field 'prompt': expected text or a list of messages"),
        ('{"messages": [{"role": "bot", "content": "x"}]}\n', r"p\.jsonl:1: field 'messages': message 0"),
        ('{"messages": []}\n', r"empty message list"),
        ('{"prompt": "a"}\n{"prompt": "a"}\n', r"rows 1 and 2 hold the same prompt"),
        ("\n\n", r"no prompts"),
    ],
)
def test_bad_jsonl_names_file_and_line(tmp_path, content, match):
    path = tmp_path / "p.jsonl"
    path.write_text(content)
    with pytest.raises(RsftError, match=match):
        load_prompts(path)


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(RsftError, match="no such file"):
        load_prompts(tmp_path / "nope.jsonl")
    (tmp_path / "p.txt").write_text("x")
    with pytest.raises(RsftError, match="unknown prompt file type"):
        load_prompts(tmp_path / "p.txt")


def test_kept_columns_must_exist(tmp_path):
    path = _jsonl(tmp_path / "p.jsonl", [{"prompt": "a", "x": 1}])
    assert load_prompts(path, FieldMap(keep=("x",)))[0].metadata == {"x": 1}
    with pytest.raises(RsftError, match="field 'y': missing"):
        load_prompts(path, FieldMap(keep=("y",)))


def test_reasoning_gym_task_prompts_carry_gold_and_entry():
    spec = TaskSpec("chain_sum", size=6, seed=3, shots=2, options={"min_terms": 2, "max_terms": 2,
                                                                   "min_digits": 1, "max_digits": 1})
    prompts = task_prompts(spec)
    assert len(prompts) == 6 and len({p.prompt_id for p in prompts}) == 6
    p = prompts[0]
    assert p.prompt.count("Q: ") == 3 and p.prompt.endswith("A:")
    assert p.metadata["entry"]["answer"] == p.metadata["answer"]
    assert p.metadata["entry"]["question"] in p.prompt
    # the shots are solved examples, never one of the evaluated questions
    shots = p.prompt.split("\n\n")[:-1]
    questions = {q.metadata["entry"]["question"] for q in prompts}
    assert all(s.split("\nA:")[0].removeprefix("Q: ") not in questions for s in shots)
    assert task_prompts(spec) == prompts  # deterministic
    # another question seed shares the few-shot header (same shot_seed) but not the questions
    other = task_prompts(TaskSpec("chain_sum", size=6, seed=500, shots=2, options=spec.options))
    header = p.prompt.rsplit("Q: ", 1)[0]
    assert all(o.prompt.startswith(header) for o in other)
    with pytest.raises(RsftError, match="task 'no_such_task'"):
        task_prompts(TaskSpec("no_such_task"))


def test_humaneval_prompts_for_completion_and_chat():
    from rsft.prompts import humaneval_prompts

    plain = humaneval_prompts(40, 42, chat=False)
    chat = humaneval_prompts(40, 42, chat=True)
    assert [p.metadata["task_id"] for p in plain] == ["HumanEval/40", "HumanEval/41"]
    assert plain[0].prompt.rstrip().endswith('"""') and "def triples_sum_to_zero" in plain[0].prompt
    assert "code_prefix" not in plain[0].metadata and plain[0].metadata["entry_point"] == "triples_sum_to_zero"
    assert chat[0].is_chat and plain[0].prompt in chat[0].prompt[0]["content"]
    assert chat[0].metadata["code_prefix"] == plain[0].prompt and "def check" in chat[0].metadata["test"]
    assert len(humaneval_prompts()) == 164
