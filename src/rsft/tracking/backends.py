"""The trackers of ``rsft.tracking``, each through its own client library, imported when opened;
``rsft.registry.TRACKERS`` registers each class under its ``tracking.report_to`` name.

Each backend is opened once per process for one rsft run, receives ``log(metrics, step, axis)``
(``axis`` is ``round`` for the per-round metrics and ``train_step`` for the train losses, two step
axes) and is closed after the last round. ``state`` is the backend's part of ``tracking.json``: what
it needs to find the same tracked run again after a restart (an MLflow run id, a W&B run id).

- ``tensorboard``: event files in ``RUN_DIR/tensorboard/`` (torch's ``SummaryWriter``); the config
  as a text summary ``config`` and the hash as ``config_hash``.
- ``mlflow``: ``MlflowClient`` on ``tracking.mlflow_tracking_uri``, else ``$MLFLOW_TRACKING_URI``,
  else a file store in ``RUN_DIR/mlruns`` (MLflow 3 keeps file stores in maintenance mode behind
  ``MLFLOW_ALLOW_FILE_STORE``, which rsft sets for its own default store only); params, a
  ``rsft.config_hash`` tag, metrics with their step.
- ``trackio``: ``trackio.init(project, name, config, resume="allow")``; its local store is trackio's
  own (``$TRACKIO_DIR``, by default under the Hugging Face cache).
- ``wandb``: ``wandb.init(project, name, id, resume="allow", dir=RUN_DIR)``; offline with
  ``WANDB_MODE=offline``. Per-round metrics are plotted against ``round``, train losses against
  ``train/global_step`` (``define_metric``).
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from rsft.errors import RsftError, one_line

AXES = {"round": "round", "train_step": "train/global_step"}
"""The step axis of each kind of record, as named where a tracker wants it named (W&B)."""


class Backend(Protocol):
    name: str

    def log(self, metrics: Mapping[str, float], step: int, axis: str) -> None: ...

    def close(self) -> None: ...


@dataclass
class RunInfo:
    """What every tracker is told about the run."""

    run_dir: Path
    project: str
    run_name: str
    params: dict[str, str]
    config_text: str
    config_hash: str
    mlflow_tracking_uri: str | None


def missing(name: str, error: Exception) -> RsftError:
    """The one-line error of a tracker whose library is not installed."""
    return RsftError(f"tracking.report_to {name}: needs the '{name}' extra: pip install 'rsft[{name}]' "
                     f"({one_line(error)})")


class TensorBoard:
    name = "tensorboard"

    def __init__(self, info: RunInfo, state: dict[str, Any]) -> None:
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise missing(self.name, e) from None
        self.writer = SummaryWriter(log_dir=str(info.run_dir / "tensorboard"))
        if state.get("config_hash") != info.config_hash:
            self.writer.add_text("config", "```yaml\n" + info.config_text + "```")
            self.writer.add_text("config_hash", info.config_hash)
            state["config_hash"] = info.config_hash

    def log(self, metrics: Mapping[str, float], step: int, axis: str) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class MLflow:
    name = "mlflow"

    def __init__(self, info: RunInfo, state: dict[str, Any]) -> None:
        try:
            from mlflow.entities import Param
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise missing(self.name, e) from None
        uri = info.mlflow_tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
        if not uri:
            uri = (info.run_dir / "mlruns").absolute().as_uri()
            os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
        self.client = MlflowClient(tracking_uri=uri)
        self.run_id = state.get("run_id") if state.get("uri") == uri else None
        if self.run_id is None:
            experiment = self.client.get_experiment_by_name(info.project)
            experiment_id = experiment.experiment_id if experiment else self.client.create_experiment(info.project)
            run = self.client.create_run(experiment_id, run_name=info.run_name,
                                         tags={"rsft.config_hash": info.config_hash})
            self.run_id = run.info.run_id
            params = [Param(k, v[:6000]) for k, v in info.params.items()]
            for start in range(0, len(params), 100):  # MLflow takes at most 100 params per batch
                self.client.log_batch(self.run_id, params=params[start : start + 100])
            state.update(uri=uri, run_id=self.run_id)
        else:
            self.client.update_run(self.run_id, status="RUNNING")

    def log(self, metrics: Mapping[str, float], step: int, axis: str) -> None:
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        self.client.log_batch(self.run_id, metrics=[Metric(k, v, now, step) for k, v in metrics.items()])

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


class Trackio:
    name = "trackio"

    def __init__(self, info: RunInfo, state: dict[str, Any]) -> None:
        try:
            import trackio
        except ImportError as e:
            raise missing(self.name, e) from None
        self.trackio = trackio
        config = {**info.params, "config_hash": info.config_hash}
        self.run = trackio.init(project=info.project, name=info.run_name, config=config, resume="allow", embed=False,
                                 auto_log_cpu=False, auto_log_gpu=False)
        state["run"] = info.run_name

    def log(self, metrics: Mapping[str, float], step: int, axis: str) -> None:
        self.trackio.log(dict(metrics), step=step)

    def close(self) -> None:
        self.trackio.finish()


class Wandb:
    name = "wandb"

    def __init__(self, info: RunInfo, state: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError as e:
            raise missing(self.name, e) from None
        state.setdefault("run_id", uuid.uuid4().hex[:12])
        self.run = wandb.init(project=info.project, name=info.run_name, id=state["run_id"], resume="allow",
                              dir=str(info.run_dir), config={**info.params, "config_hash": info.config_hash},
                              tags=[f"config_hash:{info.config_hash}"], reinit="create_new")
        self.defined: set[str] = set()

    def log(self, metrics: Mapping[str, float], step: int, axis: str) -> None:
        axis_name = AXES[axis]
        if axis_name not in self.defined:
            self.run.define_metric(axis_name)
            self.defined.add(axis_name)
        for key in metrics:
            if key not in self.defined:
                self.run.define_metric(key, step_metric=axis_name)
                self.defined.add(key)
        self.run.log({**metrics, axis_name: step})

    def close(self) -> None:
        self.run.finish()
