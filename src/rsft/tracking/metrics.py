"""The per-round metrics of ``rsft.tracking``, computed from the files a round already wrote.

Nothing here runs a model: the round's ``manifest.json`` (stage counts and wall times, the reward
statistics), ``completions.parquet``, ``rewards.parquet`` and ``selection.parquet``, the eval
folders' manifests, ``eval.json`` (held-out metric with CI, KL, control, gate) and the train log.
Every name is the same in ``metrics.jsonl`` and in each tracker (``/`` groups them in the UIs; no
``@``, which MLflow rejects: ``pass@1`` is ``check/pass_at_1``). A value that does not exist for a
round (no training, no checker, no control) is left out, never logged as 0.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.parquet as pq

from rsft import artifacts
from rsft.config import RunConfig
from rsft.matrix import UNSAMPLED

STAGES = ("generate", "score", "select", "export", "train", "eval")
"""The stages whose prompts, samples, tokens, tokens/s and wall time are logged, in this order."""


def round_metrics(config: RunConfig, rd: Path, ev: Mapping[str, Any] | None) -> dict[str, float]:
    """Every metric of round folder ``rd`` (``ev``: its ``eval.json`` contents, None without training)."""
    manifest = artifacts.read_manifest(rd).get("stages", {})
    out: dict[str, float] = {}
    samples = _samples(rd)
    out.update(_stage_metrics(manifest, samples, rd))
    out.update(_reward_metrics(manifest.get("score", {})))
    out.update(_check_metrics(config, samples))
    out.update(_keep_metrics(manifest, samples, rd))
    out.update(_length_metrics(samples))
    if ev:
        out.update(eval_metrics(ev))
    out.update(_train_metrics(rd))
    return {k: float(v) for k, v in out.items() if _number(v)}


def eval_metrics(ev: Mapping[str, Any], prefix: str = "eval") -> dict[str, float]:
    """Held-out metric with its CI, KL, control and the gate, from ``eval.json``."""
    out: dict[str, Any] = {}
    m = ev.get("metric") or {}
    if m:
        out[f"{prefix}/{m['name']}"] = m.get("value")
        out.update({f"{prefix}/ci_low": m.get("ci_low"), f"{prefix}/ci_high": m.get("ci_high"),
                    f"{prefix}/prompts": m.get("n")})
    kl = ev.get("kl") if prefix == "eval" else None  # the base's KL from itself is 0
    if kl:
        out["kl/mean"], out["kl/stderr"] = kl.get("mean"), kl.get("stderr")
        if _number(kl.get("stderr")) and kl.get("n"):
            out["kl/std"] = kl["stderr"] * math.sqrt(kl["n"])
    control = ev.get("control")
    if control and control.get("metric"):
        cm = control["metric"]
        out.update({f"control/{cm['name']}": cm.get("value"), "control/ci_low": cm.get("ci_low"),
                    "control/ci_high": cm.get("ci_high")})
        if control.get("kl"):
            out["control/kl_mean"] = control["kl"].get("mean")
    if "promoted" in ev:
        out.update({"gate/promoted": int(bool(ev["promoted"])), "gate/best_before": ev.get("best_before"),
                    "gate/margin": ev.get("margin")})
    return {k: float(v) for k, v in out.items() if _number(v)}


def train_steps(rd: Path) -> list[dict[str, Any]]:
    """The logged optimizer steps of the round's training (``train_log.jsonl``), in order."""
    path = rd / artifacts.TRAIN_LOG
    if not path.is_file():
        return []
    return [row for _, row in artifacts.read_jsonl(path) if _number(row.get("loss"))]


# --- the parts -------------------------------------------------------------------------------------


def _samples(rd: Path) -> dict[str, Any]:
    """The round's sampled cells (adaptive N's unsampled ones left out): prompt id, sample index,
    tokens, finish reason and reward; ``rows`` are their rows in ``completions.parquet``."""
    comps = pq.read_table(rd / artifacts.COMPLETIONS,
                          columns=["prompt_id", "sample_idx", "n_tokens", "finish_reason"]).to_pydict()
    rewards = pq.read_table(rd / artifacts.REWARDS, columns=["prompt_id", "sample_idx", "reward"]).to_pydict()
    reward = dict(zip(zip(rewards["prompt_id"], rewards["sample_idx"], strict=True), rewards["reward"], strict=True))
    keep = [k for k, reason in enumerate(comps["finish_reason"]) if reason != UNSAMPLED]
    cols: dict[str, Any] = {name: [comps[name][k] for k in keep] for name in comps}
    cols["reward"] = [reward.get((p, j), math.nan) for p, j in zip(cols["prompt_id"], cols["sample_idx"], strict=True)]
    cols["rows"], cols["path"] = keep, rd / artifacts.COMPLETIONS
    return cols


def _stage_metrics(manifest: Mapping[str, Any], samples: Mapping[str, Any], rd: Path) -> dict[str, Any]:
    gen, score = manifest.get("generate", {}), manifest.get("score", {})
    tokens = sum(t or 0 for t in samples["n_tokens"])
    out: dict[str, Any] = {}
    counts = gen.get("counts", {})
    _stage(out, "generate", gen.get("wall_s"), counts.get("prompts"), counts.get("completions"), counts.get("tokens"))
    _stage(out, "score", score.get("wall_s"), counts.get("prompts"), score.get("counts", {}).get("pairs"), tokens)
    sel = manifest.get("select", {})
    _stage(out, "select", sel.get("wall_s"), sel.get("counts", {}).get("prompts"), sel.get("counts", {}).get("selected"))
    export = manifest.get("export", {})
    _stage(out, "export", export.get("wall_s"), None, export.get("counts", {}).get("rows"))
    train = manifest.get("train")
    if train:
        info = _json(rd / artifacts.CHECKPOINT / artifacts.TRAIN_INFO)
        seen = _kept_tokens(rd, samples) * float(info.get("epochs_done") or 0)  # completion tokens, every epoch
        _stage(out, "train", info.get("train_s", train.get("wall_s")), None, train.get("counts", {}).get("rows"), seen)
    walls, prompts, gens, tokens_eval = 0.0, None, 0, 0
    for folder in (artifacts.EVAL_SAMPLES, artifacts.KL_SAMPLES):
        stages = artifacts.read_manifest(rd / folder).get("stages", {})
        walls += sum(s.get("wall_s") or 0.0 for s in stages.values())
        c = stages.get("generate", {}).get("counts", {})
        prompts = c.get("prompts") if folder == artifacts.EVAL_SAMPLES else prompts
        gens += c.get("completions") or 0
        tokens_eval += c.get("tokens") or 0
    if gens:
        _stage(out, "eval", walls, prompts, gens, tokens_eval)
    return out


def _stage(out: dict[str, Any], stage: str, wall: Any, prompts: Any, samples: Any, tokens: Any = None) -> None:
    out[f"{stage}/wall_s"], out[f"{stage}/prompts"], out[f"{stage}/samples"] = wall, prompts, samples
    if tokens is not None:
        out[f"{stage}/tokens"] = tokens
        if _number(wall) and wall > 0:
            out[f"{stage}/tokens_per_s"] = tokens / wall


def _reward_metrics(score: Mapping[str, Any]) -> dict[str, Any]:
    s = score.get("stats", {})
    return {"reward/mean": s.get("mean"), "reward/std": s.get("std"), "reward/max": s.get("max"),
            "reward/finite": s.get("n_finite"), "reward/failed": s.get("failed_pairs", s.get("nan_count"))}


def _check_metrics(config: RunConfig, samples: Mapping[str, Any]) -> dict[str, Any]:
    """pass@1, pass@N, maj@N and the shares of prompts with all / no samples right, at
    ``scoring.pass_threshold``; only where a checker grades the samples (every finite reward 0 or 1)."""
    rewards = np.asarray(samples["reward"], dtype=float)
    finite = rewards[np.isfinite(rewards)]
    if not finite.size or not np.isin(finite, (0.0, 1.0)).all():
        return {}
    from rsft.bon.answers import answer_extractor, answer_groups

    a = config.generation.adaptive
    extract = answer_extractor(a.answer)
    rows: dict[str, list[int]] = {}
    for k, pid in enumerate(samples["prompt_id"]):
        rows.setdefault(pid, []).append(k)
    right = rewards >= config.scoring.pass_threshold
    maj = []
    texts = pq.read_table(samples["path"], columns=["text"]).column("text").to_pylist()  # only for a checker
    texts = [texts[k] for k in samples["rows"]]
    for cells in rows.values():
        groups = answer_groups([extract(texts[k]) for k in cells], a.equivalence)
        votes = [g for g in groups if g is not None]
        leader = max(dict.fromkeys(votes), key=votes.count) if votes else None
        maj.append(leader is not None and bool(right[cells[leader]]))
    per_row = [right[cells] for cells in rows.values()]
    return {"check/pass_at_1": float(right.mean()), "check/pass_at_n": float(np.mean([r.any() for r in per_row])),
            "check/maj_at_n": float(np.mean(maj)), "check/all_right": float(np.mean([r.all() for r in per_row])),
            "check/none_right": float(np.mean([not r.any() for r in per_row]))}


def _keep_metrics(manifest: Mapping[str, Any], samples: dict[str, Any], rd: Path) -> dict[str, Any]:
    """Keep rate (kept / sampled), and the kept set's size, mean reward and mean length in tokens."""
    sel = manifest.get("select", {}).get("counts", {})
    kept, total = sel.get("selected"), len(samples["prompt_id"])
    out = {"keep/rows": kept, "keep/rate": kept / total if kept is not None and total else None,
           "keep/reward_mean": sel.get("mean_selected_reward")}
    if (rd / artifacts.SELECTION).is_file() and _kept_tokens(rd, samples):
        out["keep/length_mean"] = float(np.mean(samples["kept_lengths"]))
    return out


def _kept_tokens(rd: Path, samples: dict[str, Any]) -> int:
    """Tokens of the kept completions (also stored in ``samples["kept_lengths"]`` for their mean)."""
    if "kept_lengths" not in samples:
        sel = pq.read_table(rd / artifacts.SELECTION, columns=["prompt_id", "sample_idx"]).to_pydict()
        index = {(p, j): k for k, (p, j) in enumerate(zip(samples["prompt_id"], samples["sample_idx"], strict=True))}
        picked = [index[c] for c in zip(sel["prompt_id"], sel["sample_idx"], strict=True) if c in index]
        samples["kept_lengths"] = [samples["n_tokens"][k] for k in picked if samples["n_tokens"][k] is not None]
    return int(sum(samples["kept_lengths"]))


def _length_metrics(samples: Mapping[str, Any]) -> dict[str, Any]:
    lengths = np.asarray([t for t in samples["n_tokens"] if t is not None], dtype=float)
    reasons = samples["finish_reason"]
    out: dict[str, Any] = {"length/truncated_share": sum(r == "length" for r in reasons) / len(reasons)} if reasons else {}
    if lengths.size:
        out.update({"length/mean": float(lengths.mean()), "length/p95": float(np.percentile(lengths, 95))})
    return out


def _train_metrics(rd: Path) -> dict[str, Any]:
    steps = train_steps(rd)
    if not steps:
        return {}
    return {"train/loss_first": steps[0]["loss"], "train/loss_last": steps[-1]["loss"], "train/steps": steps[-1]["step"]}


def _json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def _number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool) and math.isfinite(v)
