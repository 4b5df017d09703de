"""Re-validating a reward model on preference pairs: ``rsft rm-check`` and the round gate.

An RM that selects completions for fine-tuning is only as good as its ranking, and that ranking
drifts out of its training distribution as the policy improves. Before a round, check it on pairs
whose order is known: accuracy is the fraction of pairs where the RM scores ``chosen`` above
``rejected`` (ties count as wrong, and are reported), with a Wilson 95% interval.

Pairs come from
- a chosen/rejected JSONL file (TRL's preference format): ``{"prompt", "chosen", "rejected"}`` as text,
  or conversational (``prompt`` a message list and ``chosen``/``rejected`` one assistant message each,
  or implicit-prompt rows whose ``chosen``/``rejected`` are whole conversations sharing all but the
  last message); other fields of a row are metadata for ``--checker``;
- a scored round and a checker: for each prompt with both a passing and a failing completion, a
  passing one is ``chosen`` and a failing one ``rejected`` (one random pair per prompt by default,
  so the pairs are independent and the interval means what it says). Then accuracy is the RM's
  agreement with the checker, and two more figures come for free: the all-pairs accuracy per prompt,
  and how often the RM's top-1 completion passes (Best-of-N with this RM vs a random pick).

``rounds.rm_check`` (config) runs the check at the start of each round of ``rsft run`` and refuses
the round when the RM's accuracy is below ``min_accuracy``; the report goes to ``rm_check.json``.
"""

from __future__ import annotations

import dataclasses
import json
import math
import random
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rsft import artifacts
from rsft.config.checks import check_rounds
from rsft.errors import RsftError, first_line
from rsft.registry import SCORERS
from rsft.stats import wilson_interval
from rsft.types import Prompt, PromptValue

if TYPE_CHECKING:
    from rsft.config import RunConfig
    from rsft.score import Scorer

RM_CHECK = "rm_check.json"
PAIR_FIELDS = ("prompt", "chosen", "rejected")


class RmGateError(RsftError):
    """The reward model fell below the required accuracy: exit code 1 (the input was fine)."""

    exit_code = 1


@dataclass(frozen=True)
class Pair:
    """One preference pair: ``chosen`` should score above ``rejected`` for ``prompt``."""

    prompt: PromptValue
    chosen: str
    rejected: str
    source: str
    """Where it came from: ``file.jsonl:12`` or ``round-000/<prompt_id>:3>5`` (sample indices)."""
    metadata: Mapping[str, Any] = field(default_factory=dict)
    """The row's other fields (e.g. a gold ``answer``), passed to a checker."""


# --- pairs from a file ---------------------------------------------------------------------------


def read_pairs(path: str | Path) -> list[Pair]:
    """The pairs of a chosen/rejected JSONL file; a bad row is an error naming the file and line."""
    path = Path(path)
    if not path.is_file():
        raise RsftError(f"{path}: no such pairs file")
    pairs = [_pair_from_row(row, f"{path}:{line}") for line, row in artifacts.read_jsonl(path)]
    if not pairs:
        raise RsftError(f"{path}: no pairs (expected JSON lines with prompt, chosen, rejected)")
    return pairs


def _pair_from_row(row: Mapping[str, Any], where: str) -> Pair:
    for key in ("chosen", "rejected"):
        if key not in row:
            raise RsftError(f"{where}: missing field {key!r} (expected prompt, chosen, rejected)")
    meta = {k: v for k, v in row.items() if k not in PAIR_FIELDS}
    chosen, rejected, prompt = row["chosen"], row["rejected"], row.get("prompt")
    if isinstance(chosen, str) and isinstance(rejected, str):
        if not isinstance(prompt, str):
            raise RsftError(f"{where}: field 'prompt' must be text when chosen/rejected are text "
                            f"(got {type(prompt).__name__})")
        return Pair(prompt, chosen, rejected, where, meta)
    if prompt is None:  # implicit prompt: two conversations that differ in their last message
        chosen, rejected = _messages(chosen, where, "chosen"), _messages(rejected, where, "rejected")
        if chosen[:-1] != rejected[:-1] or len(chosen) < 2:
            raise RsftError(f"{where}: without 'prompt', chosen and rejected must be conversations sharing "
                            "all but their last (assistant) message")
        prompt, chosen, rejected = chosen[:-1], chosen[-1:], rejected[-1:]
    if isinstance(prompt, str):
        prompt = [{"role": "user", "content": prompt}]
    return Pair(_messages(prompt, where, "prompt"), _assistant_text(chosen, where, "chosen"),
                _assistant_text(rejected, where, "rejected"), where, meta)


def _messages(value: Any, where: str, key: str) -> list[dict[str, Any]]:
    if (not isinstance(value, list) or not value
            or not all(isinstance(m, Mapping) and "role" in m and "content" in m for m in value)):
        raise RsftError(f"{where}: field {key!r} must be text or a list of {{role, content}} messages")
    return [dict(m) for m in value]


def _assistant_text(value: Any, where: str, key: str) -> str:
    """The completion of a conversational pair: one assistant message (or text)."""
    if isinstance(value, str):
        return value
    messages = _messages(value, where, key)
    if len(messages) != 1 or messages[0]["role"] != "assistant":
        raise RsftError(f"{where}: field {key!r} must be one assistant message, got roles "
                        f"{[m['role'] for m in messages]}")
    from rsft.train.grpo import message_text

    return message_text(messages[0]["content"])


# --- pairs from a scored round -------------------------------------------------------------------


@dataclass
class RoundVerdicts:
    """A round's completions and the checker's verdict on each: 1 pass, 0 fail, NaN unscored."""

    round_dir: Path
    prompts: list[Prompt]
    texts: list[list[str]]
    passed: np.ndarray
    checker: str
    pass_threshold: float


def round_verdicts(round_dir: Path, checker: str | None, options: Mapping[str, Any] | None = None,
                   pass_threshold: float = 1.0) -> RoundVerdicts:
    """Verdicts on the round's completions: the checker run on them, or (``checker`` None) the
    round's own ``rewards.parquet`` at ``pass_threshold``."""
    from rsft import matrix

    round_dir = Path(round_dir)
    prompts = matrix.read_prompts(round_dir / artifacts.PROMPTS)
    texts = matrix.read_completions(round_dir / artifacts.COMPLETIONS, prompts).texts
    if checker is None:
        R, table = matrix.read_rewards(round_dir / artifacts.REWARDS, [p.prompt_id for p in prompts])
        names = sorted(set(table.column("scorer").to_pylist())) if table.num_rows else []
        name = f"rewards.parquet ({', '.join(names)})"
    else:
        R, name = _run_checker(round_dir, checker, options, prompts, texts)
    passed = np.where(np.isnan(R), np.nan, (R >= pass_threshold).astype(float))
    return RoundVerdicts(round_dir, prompts, texts, passed, name, pass_threshold)


def _run_checker(round_dir: Path, spec: str, options: Mapping[str, Any] | None, prompts: list[Prompt],
                 texts: list[list[str]]) -> tuple[np.ndarray, str]:
    from rsft.score import as_scorer

    scorer = as_scorer(spec, options)
    n = len(texts[0]) if texts else 0
    try:
        values = _score_cells(scorer, prompts, texts, with_metadata=True)
    except RsftError:
        raise
    except Exception as e:  # noqa: BLE001 - user checkers may raise anything
        raise RsftError(f"{round_dir}: checker {spec!r} failed: {type(e).__name__}: {first_line(e)}") from e
    return values.reshape(len(prompts), n), scorer.name


def _score_cells(scorer: Scorer, prompts: Sequence[Prompt], texts: Sequence[Sequence[str | None]],
                 with_metadata: bool = False) -> np.ndarray:
    """The scores of every cell of ``texts`` (a row per prompt), flat; NaN where the text is None
    (a cell adaptive N did not sample), which the scorer never sees."""
    cells = [(p, t) for p, row in zip(prompts, texts, strict=True) for t in row]
    sampled = [k for k, (_, t) in enumerate(cells) if t is not None]
    out = np.full(len(cells), np.nan)
    out[sampled] = _score(scorer, [cells[k][0].prompt for k in sampled], [cells[k][1] for k in sampled],
                          [cells[k][0].metadata for k in sampled] if with_metadata else None)
    return out


def sample_pairs(verdicts: RoundVerdicts, per_prompt: int = 1, seed: int = 0) -> list[tuple[int, int, int]]:
    """``(prompt index, passing sample, failing sample)`` for each prompt with both: ``per_prompt``
    distinct random combinations of a passing and a failing completion (0: every combination)."""
    if per_prompt < 0:
        raise RsftError(f"pairs per prompt must be >= 0, got {per_prompt}")
    out = []
    for i, (prompt, row) in enumerate(zip(verdicts.prompts, verdicts.passed, strict=True)):
        good, bad = np.flatnonzero(row == 1.0), np.flatnonzero(row == 0.0)
        combos = [(int(g), int(b)) for g in good for b in bad]
        if per_prompt and len(combos) > per_prompt:
            combos = sorted(random.Random(f"{seed}:{prompt.prompt_id}").sample(combos, per_prompt))
        out += [(i, g, b) for g, b in combos]
    return out


# --- scoring and the figures ---------------------------------------------------------------------


def rm_path(spec: Any) -> str | None:
    """The PATH of a scorer spec ``rm:PATH``; None for any other spec."""
    entry, arg = SCORERS.split(spec)
    return arg if entry is not None and entry.name == "rm" else None


def load_rm(spec: str, options: Mapping[str, Any] | None = None) -> Scorer:
    """A reward model from ``rm:PATH`` or a model folder (any other scorer spec also works)."""
    from rsft.score import as_scorer

    if rm_path(spec) is None and Path(spec).is_dir():
        spec = f"rm:{spec}"
    return as_scorer(spec, options)


def _score(scorer: Scorer, prompts: Sequence[PromptValue], completions: Sequence[str],
           metadata: Sequence[Mapping[str, Any]] | None = None) -> np.ndarray:
    from rsft.score.combine import score_value

    if not completions:
        return np.zeros(0)
    out = scorer.score(prompts, completions, metadata or [{}] * len(completions))
    return np.array([score_value(v) for v in out], dtype=float)


def _num(x: float) -> float | None:
    return float(x) if math.isfinite(x) else None


def accuracy_summary(chosen: np.ndarray, rejected: np.ndarray) -> dict[str, Any]:
    """Accuracy of ``chosen > rejected`` with its Wilson 95% interval; ties count as wrong (and
    as half right in ``accuracy_ties_half``); NaN pairs are left out and counted."""
    chosen, rejected = np.asarray(chosen, dtype=float), np.asarray(rejected, dtype=float)
    ok = np.isfinite(chosen) & np.isfinite(rejected)
    c, r = chosen[ok], rejected[ok]
    n, wins, ties = int(ok.sum()), int((c > r).sum()), int((c == r).sum())
    low, high = wilson_interval(wins, n)
    return {"n": n, "wins": wins, "losses": n - wins - ties, "ties": ties, "unscored": int((~ok).sum()),
            "accuracy": wins / n if n else None, "ci_low": _num(low), "ci_high": _num(high),
            "accuracy_ties_half": (wins + ties / 2) / n if n else None,
            "mean_margin": _num(float(np.mean(c - r))) if n else None}


def check_pairs(rm: Scorer, pairs: Sequence[Pair], checker: str | None = None,
                checker_options: Mapping[str, Any] | None = None, pass_threshold: float = 1.0) -> dict[str, Any]:
    """The RM's accuracy on ``pairs``; with a checker, also how often the RM orders a pair like the
    checker does, on the pairs the checker decides (one passes, the other fails)."""
    prompts = [p.prompt for p in pairs]
    scores = _score(rm, prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs])
    chosen, rejected = scores[: len(pairs)], scores[len(pairs):]
    report: dict[str, Any] = {"rm": rm.name, "pairs": accuracy_summary(chosen, rejected)}
    if checker is not None:
        from rsft.score import as_scorer

        judge = as_scorer(checker, checker_options)
        meta = [p.metadata for p in pairs] * 2
        verdict = _score(judge, prompts * 2, [p.chosen for p in pairs] + [p.rejected for p in pairs], meta)
        c_pass, r_pass = verdict[: len(pairs)] >= pass_threshold, verdict[len(pairs):] >= pass_threshold
        decided = c_pass != r_pass
        # flip the decided pairs the checker orders the other way, so "chosen" is the checker's pick
        ch = np.where(c_pass, chosen, rejected)[decided]
        rj = np.where(c_pass, rejected, chosen)[decided]
        report["checker"] = {"checker": judge.name, "pass_threshold": pass_threshold, "decided": int(decided.sum()),
                             "agrees_with_labels": int((c_pass & decided).sum()),
                             "agreement": accuracy_summary(ch, rj)}
    return report


def check_round(rm: Scorer, verdicts: RoundVerdicts, per_prompt: int = 1, seed: int = 0) -> dict[str, Any]:
    """The RM on pairs built from a round's checker verdicts: accuracy on the sampled pairs (its
    agreement with the checker), the all-pairs accuracy per mixed prompt, and top-1 pass rates."""
    pairs = sample_pairs(verdicts, per_prompt, seed)
    mixed = [i for i, row in enumerate(verdicts.passed) if (row == 1.0).any() and (row == 0.0).any()]
    n = verdicts.passed.shape[1] if mixed else 0
    flat = _score_cells(rm, [verdicts.prompts[i] for i in mixed], [verdicts.texts[i] for i in mixed])
    S = dict(zip(mixed, flat.reshape(len(mixed), n), strict=True))
    report: dict[str, Any] = {
        "rm": rm.name,
        "pairs": accuracy_summary(np.array([S[i][g] for i, g, _ in pairs]), np.array([S[i][b] for i, _, b in pairs])),
        "round": _round_counts(verdicts, len(mixed), per_prompt, seed),
    }
    report["all_pairs"] = _all_pairs(S, verdicts)
    return report


def _round_counts(v: RoundVerdicts, mixed: int, per_prompt: int, seed: int) -> dict[str, Any]:
    passed = v.passed
    return {"round_dir": str(v.round_dir), "checker": v.checker, "pass_threshold": v.pass_threshold,
            "prompts": len(v.prompts), "completions": int(passed.size), "passing": int((passed == 1.0).sum()),
            "failing": int((passed == 0.0).sum()), "unscored": int(np.isnan(passed).sum()),
            "mixed_prompts": mixed, "pairs_per_prompt": per_prompt, "seed": seed}


def _all_pairs(scores: Mapping[int, np.ndarray], v: RoundVerdicts) -> dict[str, Any]:
    """Per mixed prompt: the fraction of (pass, fail) combinations the RM orders right (ties half),
    and whether its top-1 completion (first index on ties) passes; averaged over those prompts."""
    if not scores:
        return {"prompts": 0, "accuracy": None, "top1_pass_rate": None, "random_pass_rate": None}
    acc, top1, rand = [], [], []
    for i, s in scores.items():
        row = v.passed[i]
        g, b = s[row == 1.0], s[row == 0.0]
        diff = g[:, None] - b[None, :]
        acc.append(float(((diff > 0) + 0.5 * (diff == 0)).mean()))
        scored = np.where(np.isnan(row), -np.inf, s)
        top1.append(float(row[int(np.argmax(scored))] == 1.0))
        rand.append(float(np.nanmean(row)))
    return {"prompts": len(scores), "accuracy": float(np.mean(acc)), "top1_pass_rate": float(np.mean(top1)),
            "random_pass_rate": float(np.mean(rand))}


# --- the report as text --------------------------------------------------------------------------


def percent(x: float | None) -> str:
    """``x`` as a percentage with one decimal, or ``-`` when there is none."""
    return "-" if x is None else f"{x:.1%}"


def _accuracy_line(label: str, a: Mapping[str, Any], what: str) -> str:
    ci = f"[{percent(a['ci_low'])}, {percent(a['ci_high'])}]" if a["n"] else ""
    line = f"{label:14}{percent(a['accuracy']):>7}  {ci:18} {a['wins']} right, {a['losses']} wrong, {a['ties']} ties {what}"
    return line + (f"; {a['unscored']} unscored" if a["unscored"] else "")


def format_report(rep: Mapping[str, Any]) -> str:
    """One screen: the source, accuracy with its interval, ties, margin, and the checker figures."""
    a = rep["pairs"]
    lines = [f"{'reward model':14}{rep['rm']}"]
    src = rep.get("source", {})
    if "round" in rep:
        r = rep["round"]
        lines.append(f"{'pairs from':14}{r['round_dir']}: checker {r['checker']} (pass >= {r['pass_threshold']:g}); "
                     f"{r['prompts']} prompts, {r['passing']} pass, {r['failing']} fail, {r['unscored']} unscored")
        lines.append(f"{'':14}{r['mixed_prompts']} prompts with both; "
                     f"{r['pairs_per_prompt'] or 'every'} pair(s) per prompt, seed {r['seed']}")
    elif src:
        lines.append(f"{'pairs':14}{src.get('path')}")
    lines.append(_accuracy_line("accuracy", a, f"of {a['n']} pairs (95% Wilson CI)"))
    lines.append(f"{'ties as half':14}{percent(a['accuracy_ties_half']):>7}")
    margin = a["mean_margin"]
    lines.append(f"{'mean margin':14}{'-' if margin is None else f'{margin:.4g}':>7}  (chosen - rejected)")
    if "checker" in rep:
        c = rep["checker"]
        lines.append(f"{'checker':14}{c['checker']}: decides {c['decided']} of {a['n'] + a['unscored']} pairs, "
                     f"agrees with the labels on {c['agrees_with_labels']}")
        lines.append(_accuracy_line("agreement", c["agreement"], f"of {c['decided']} decided pairs"))
    if "all_pairs" in rep and rep["all_pairs"]["prompts"]:
        p = rep["all_pairs"]
        lines.append(f"{'all pairs':14}{percent(p['accuracy']):>7}  mean over {p['prompts']} prompts of every "
                     "(pass, fail) combination (ties half)")
        lines.append(f"{'best-of-N':14}{percent(p['top1_pass_rate']):>7}  the RM's top-1 passes "
                     f"(a random pick: {percent(p['random_pass_rate'])})")
    if "gate" in rep:
        g = rep["gate"]
        lines.append(f"{'gate':14}{'passed' if g['passed'] else 'REFUSED'}: {g['metric']} {percent(g['value'])} "
                     f"vs min_accuracy {percent(g['min_accuracy'])}")
    return "\n".join(lines)


# --- the gate ------------------------------------------------------------------------------------


def rm_spec_for(config: RunConfig) -> str:
    """The RM the gate checks: ``rounds.rm_check.model``, else the ``rm:PATH`` the round scores with."""
    c = config.rounds.rm_check
    assert c is not None
    if c.model:
        return c.model
    scorer = config.scoring.scorer
    inner = scorer.get("inner") if isinstance(scorer, Mapping) else scorer
    if rm_path(inner) is not None:
        return inner
    raise RsftError("rounds.rm_check.model: give the reward model to check (scoring.scorer is not 'rm:PATH')")


def _model_fingerprint(spec: str) -> list[Any]:
    """Names, sizes and mtimes of a local model folder's files: a retrained RM at the same path differs."""
    path = Path(p if (p := rm_path(spec)) is not None else spec)
    if not path.is_dir():
        return [spec]
    return [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in sorted(path.iterdir()) if f.is_file()]


def gate_round(config: RunConfig, round_dir: Path) -> dict[str, Any] | None:
    """``rounds.rm_check``: check the RM on the configured pairs into ``round_dir/rm_check.json`` and
    refuse the round (``RmGateError``) when it is below ``min_accuracy``. A rerun with the same RM
    files, pairs and settings reuses the file. None when no check is configured."""
    c = config.rounds.rm_check
    if c is None:
        return None
    check_rounds(config.rounds)
    spec = rm_spec_for(config)
    key = artifacts.config_hash({"rm_check": dataclasses.asdict(c), "rm": spec, "files": _model_fingerprint(spec),
                                 "pairs": artifacts.file_sha256(c.pairs) if Path(c.pairs).is_file() else None})
    path = Path(round_dir) / RM_CHECK
    try:
        rep = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):  # missing, or not ours to trust: check again
        rep = {}
    if not isinstance(rep, dict) or rep.get("key") != key:
        pairs = read_pairs(c.pairs)
        rep = {**check_pairs(load_rm(spec, c.options), pairs), "source": file_source(c.pairs), "key": key}
        value = rep["pairs"]["ci_low" if c.use_ci_low else "accuracy"]
        rep["gate"] = {"metric": "ci_low" if c.use_ci_low else "accuracy", "value": value,
                       "min_accuracy": c.min_accuracy, "passed": value is not None and value >= c.min_accuracy}
        artifacts.write_json(path, rep)
    g = rep["gate"]
    if not g["passed"]:
        raise RmGateError(f"{round_dir}: refused: reward model {spec} has {g['metric']} {percent(g['value'])} on "
                          f"{c.pairs}, below rounds.rm_check.min_accuracy {percent(c.min_accuracy)} (see {path})")
    return rep


def file_source(path: str | Path) -> dict[str, Any]:
    """The ``source`` entry of a report on a pairs file: its path and content hash."""
    return {"kind": "file", "path": str(path), "sha256": artifacts.file_sha256(path)}
