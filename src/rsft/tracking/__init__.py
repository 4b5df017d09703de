"""Experiment tracking of ``rsft run``: ``metrics.jsonl`` always, TensorBoard, MLflow, trackio, W&B.

One rsft run is one tracked run: the resolved config (``config.yaml``'s text, secrets redacted) as
parameters, its hash as a tag, and one record per round with the metrics of
``rsft.tracking.metrics`` at step = the round's index; the baseline's eval as ``base/*`` at step 0;
the train losses of each round (``train_log.jsonl``) as ``train/loss``, ``train/learning_rate`` and
``train/grad_norm`` on a second axis, ``train/global_step``, that keeps counting across rounds.

``metrics.jsonl`` in the run folder is the ledger: every record is appended to it (atomically, one
line each) before any tracker sees it, and ``tracking.json`` keeps how many of its records each
tracker has received. A resumed run skips the rounds the ledger already has and sends each tracker
only the records it has not received, into the same tracked run: no round is ever logged twice,
and a tracker added later catches up from the ledger.

TRL's own ``train.report_to`` is separate: it opens a tracker run per training with its step
restarting at 0, so the run-level train curves are rsft's (the same losses TRL logs).
"""

from __future__ import annotations

import atexit
import contextlib
import importlib.util
import json
import os
import sys
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from rsft import artifacts
from rsft.config import RunConfig, dump_config, to_dict
from rsft.config.checks import tracker_names
from rsft.errors import RsftError
from rsft.registry import TRACKERS
from rsft.tracking.backends import RunInfo

__all__ = ["Tracker", "read_ledger", "start"]


def backend_names(config: RunConfig) -> list[str]:
    """``tracking.report_to`` as a list of registered trackers (``a,b`` entries split), checked."""
    return tracker_names(config.tracking)


def start(config: RunConfig) -> Tracker:
    """The tracker of ``config``'s run; fails at once, naming the extra, when a library is missing."""
    for name in backend_names(config):
        if not _available(TRACKERS[name].library):
            raise RsftError(f"tracking.report_to {name}: needs the '{name}' extra: pip install 'rsft[{name}]'")
    return Tracker(config)


def _available(module: str) -> bool:
    if module in sys.modules:
        return sys.modules[module] is not None
    return importlib.util.find_spec(module) is not None


def read_ledger(path: Path) -> list[dict[str, Any]]:
    """The records of ``metrics.jsonl``; a last line torn by a kill is dropped (and cut off the file)."""
    if not path.is_file():
        return []
    text = path.read_text(encoding="utf-8")
    lines = text.splitlines()
    records = []
    for i, line in enumerate(lines):
        try:
            records.append(json.loads(line))
        except ValueError:
            if i != len(lines) - 1:
                raise RsftError(f"{path}:{i + 1}: not a JSON line; the metrics ledger is damaged") from None
            artifacts.write_text(path, "".join(f"{x}\n" for x in lines[:-1]))
    return records


class Tracker:
    """Appends a run's records to ``metrics.jsonl`` and forwards them to the configured trackers."""

    def __init__(self, config: RunConfig) -> None:
        import yaml

        self.config = config
        self.run_dir = config.run_dir
        self.names = backend_names(config)
        self.ledger_path = self.run_dir / artifacts.METRICS
        self.state_path = self.run_dir / artifacts.TRACKING
        self.records = read_ledger(self.ledger_path)
        self.state: dict[str, Any] = json.loads(self.state_path.read_text()) if self.state_path.is_file() else {}
        text = dump_config(config)
        flat = _flatten(yaml.safe_load(text))
        self.info = RunInfo(self.run_dir, config.tracking.project, config.name, flat, text,
                            artifacts.config_hash(to_dict(config)), config.tracking.mlflow_tracking_uri)
        self.open: dict[str, Any] = {}
        atexit.register(self.close)

    def logged(self, kind: str, index: int) -> bool:
        return any(r.get("kind") == kind and r.get("round") == index for r in self.records)

    def round(self, index: int, rd: Path, ev: Mapping[str, Any] | None = None) -> None:
        """Record round ``index`` (folder ``rd``, its ``eval.json`` contents ``ev``) unless the ledger
        has it, then bring every tracker up to date; after the run's last round, close them."""
        from rsft.tracking.metrics import eval_metrics, round_metrics, train_steps

        base = self.run_dir / artifacts.BASELINE / artifacts.EVAL
        if ev is not None and base.is_file() and not self.logged("base", -1):
            metrics = eval_metrics(json.loads(base.read_text(encoding="utf-8")), prefix="base")
            self._append({"kind": "base", "round": -1, "step": 0, "axis": "round", "metrics": metrics})
        if not self.logged("round", index):
            offset = max((r["step"] for r in self.records if r.get("kind") == "train"), default=0)
            for row in train_steps(rd):
                metrics = {f"train/{k}": float(row[k]) for k in ("loss", "learning_rate", "grad_norm")
                           if isinstance(row.get(k), int | float)}
                self._append({"kind": "train", "round": index, "step": offset + int(row["step"]),
                              "axis": "train_step", "metrics": metrics})
            record = {"kind": "round", "round": index, "step": index, "axis": "round",
                      "metrics": round_metrics(self.config, rd, ev), "time": time.time()}
            if ev is not None and "promoted" in ev:
                record["gate"] = {"promoted": bool(ev["promoted"]), "reason": ev.get("reason")}
            self._append(record)
        self.sync()
        if ev is None or index >= self.config.rounds.rounds - 1:
            self.close()

    def sync(self) -> None:
        """Send every tracker the ledger records it has not received, saving its progress after each."""
        for name in self.names:
            state = self.state.setdefault(name, {})
            if int(state.get("sent", 0)) >= len(self.records):
                continue
            try:
                with stdout_to_stderr():  # stdout is the command's JSON summary
                    self._send(name, state)
            except RsftError:
                raise
            except Exception as e:  # noqa: BLE001 - a tracker's outage must not stop the run: it catches up later
                print(f"rsft: warning: {name}: {type(e).__name__}: {e} (metrics.jsonl has every record; the "
                      "next run of this config sends what is missing)", file=sys.stderr)

    def _send(self, name: str, state: dict[str, Any]) -> None:
        backend = self._backend(name, state)
        for record in self.records[int(state.get("sent", 0)):]:
            backend.log(record["metrics"], int(record["step"]), record.get("axis", "round"))
            state["sent"] = int(state.get("sent", 0)) + 1
            artifacts.write_json(self.state_path, self.state)

    def close(self) -> None:
        for name, backend in list(self.open.items()):
            try:
                with stdout_to_stderr():
                    backend.close()
            except Exception as e:  # noqa: BLE001 - closing a tracker must not fail the run
                print(f"rsft: warning: closing {name}: {type(e).__name__}: {e}", file=sys.stderr)
            del self.open[name]

    def _backend(self, name: str, state: dict[str, Any]) -> Any:
        if name not in self.open:
            self.open[name] = TRACKERS[name].load()(self.info, state)
            artifacts.write_json(self.state_path, self.state)
        return self.open[name]

    def _append(self, record: dict[str, Any]) -> None:
        artifacts.append_jsonl(self.ledger_path, record)
        self.records.append(record)


@contextlib.contextmanager
def stdout_to_stderr() -> Iterator[None]:
    """Send what trackers print (their own and their helper processes', at the file-descriptor level)
    to stderr, so stdout keeps only the command's output."""
    sys.stdout.flush()
    saved = os.dup(1)
    try:
        os.dup2(2, 1)
        with contextlib.redirect_stdout(sys.stderr):
            yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)


def _flatten(obj: Any, prefix: str = "") -> dict[str, str]:
    """A nested config as ``{"generation.n": "8", ...}``; lists and empty mappings as JSON text."""
    if isinstance(obj, Mapping) and obj:
        out: dict[str, str] = {}
        for k, v in obj.items():
            out.update(_flatten(v, f"{prefix}{k}."))
        return out
    value = obj if isinstance(obj, str) else json.dumps(obj)
    return {prefix.rstrip("."): value}
