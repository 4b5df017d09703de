"""``rsft status RUN``: each round's stages as done, partial (finished shards so far) or missing."""

from __future__ import annotations

from pathlib import Path

from rsft import artifacts
from rsft.errors import RsftError

STAGES: list[tuple[str, str, str | None]] = [
    ("generate", artifacts.COMPLETIONS, "completions"),
    ("score", artifacts.REWARDS, "rewards"),
    ("select", artifacts.SELECTION, None),
    ("export", artifacts.SELECTED, None),
    ("train", f"{artifacts.CHECKPOINT}/{artifacts.TRAIN_INFO}", None),
    ("eval", artifacts.EVAL, None),
]
"""(stage, the file that proves it finished, the shard folder prefix of a stage that works in shards)."""


def round_status(round_dir: Path) -> dict[str, str]:
    """``{stage: "done" | "partial (k shards)" | "missing"}`` for one round folder; a generate stage
    whose remote generator has journaled responses says so: ``partial (k shards, j responses journaled)``."""
    manifest = artifacts.read_manifest(round_dir).get("stages", {})
    out = {}
    for stage, proof, shard_kind in STAGES:
        path = round_dir / proof
        recorded = stage in manifest or stage == "eval"
        if path.exists() and recorded:
            out[stage] = "done"
            continue
        shards = sorted((round_dir / artifacts.SHARDS).glob(f"{shard_kind}-*/*.parquet")) if shard_kind else []
        journaled = _journaled_responses(round_dir) if stage == "generate" else 0
        extra = f", {journaled} responses journaled" if journaled else ""
        out[stage] = f"partial ({len(shards)} shards{extra})" if shards or journaled else "missing"
    return out


def _journaled_responses(round_dir: Path) -> int:
    """Responses a remote generator has journaled for the unfinished generate stage (one per line)."""
    count = 0
    for journal in (round_dir / artifacts.SHARDS).glob("journal-*.jsonl"):
        with open(journal, "rb") as f:
            count += sum(1 for line in f if line.endswith(b"\n"))
    return count


def run_status(path: Path) -> dict[str, dict[str, str]]:
    """Status of every round of a run folder (or of one round folder)."""
    path = Path(path)
    if not path.is_dir():
        raise RsftError(f"{path}: no such run or round folder")
    if (path / artifacts.MANIFEST).exists() or (path / artifacts.PROMPTS).exists():
        return {path.name: round_status(path)}
    rounds = sorted(p for p in path.glob("round-*") if p.is_dir())
    extra = [p for p in (path / artifacts.BASELINE, path / artifacts.GREEDY) if p.is_dir()]
    if not rounds and not extra:
        raise RsftError(f"{path}: not a run folder (no round-XXX folders)")
    return {p.name: round_status(p) for p in [*extra, *rounds]}


def format_status(status: dict[str, dict[str, str]]) -> str:
    names = [s for s, _, _ in STAGES]
    width = max(len(r) for r in status)
    lines = [f"{'round':{width}}  " + "  ".join(f"{n:18}" for n in names)]
    for round_name, stages in status.items():
        lines.append(f"{round_name:{width}}  " + "  ".join(f"{stages[n]:18}" for n in names))
    return "\n".join(line.rstrip() for line in lines)
