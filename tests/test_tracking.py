"""Experiment tracking of ``rsft run``, read back from the real stores with each library's own reader:
TensorBoard event files (EventAccumulator), the MLflow file store (MlflowClient), trackio's SQLite
store and W&B's offline transaction log. A tracker whose library is missing skips its test."""

from __future__ import annotations

import glob
import json
import os
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from digits_run import write_run

from rsft import artifacts, pipeline, tracking
from rsft.config import (
    GenerationConfig,
    PromptsConfig,
    RunConfig,
    ScoringConfig,
    TaskConfig,
    TrackingConfig,
    load_config,
    to_dict,
)
from rsft.errors import RsftError
from rsft.types import Completion

STAGE = {"wall_s", "prompts", "samples", "tokens", "tokens_per_s"}
ROUND_METRICS = (
    {f"{s}/{m}" for s in ("generate", "score", "eval") for m in STAGE}
    | {"select/wall_s", "select/prompts", "select/samples", "export/wall_s", "export/samples"}
    | {"train/wall_s", "train/samples", "train/tokens", "train/tokens_per_s", "train/loss_first", "train/loss_last",
       "train/steps"}
    | {"reward/mean", "reward/std", "reward/max", "reward/finite", "reward/failed"}
    | {"keep/rows", "keep/rate", "keep/reward_mean", "keep/length_mean"}
    | {"length/mean", "length/p95", "length/truncated_share"}
    | {"eval/mean_reward", "eval/ci_low", "eval/ci_high", "kl/mean", "kl/std", "kl/stderr"}
    | {"control/mean_reward", "control/ci_low", "control/ci_high", "control/kl_mean"}
    | {"gate/promoted", "gate/best_before", "gate/margin"}
)
"""What every round of the digits run (training, eval, KL and a control; no 0/1 checker) must log."""


def rsft(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """``python -m rsft.cli`` with this checkout's ``rsft`` and ``cwd`` (for ``myscorers``) importable."""
    env = {**os.environ, **(env or {}), "PYTHONPATH": os.pathsep.join([str(cwd), *sys.path]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rsft.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=900)


def ledger(run: Path, kind: str) -> list[dict[str, Any]]:
    return [r for r in tracking.read_ledger(run / "metrics.jsonl") if r["kind"] == kind]


def scalars(run: Path) -> Any:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "tensors": 0})
    acc.Reload()
    return acc


def mlflow_client(run: Path) -> tuple[Any, str]:
    from mlflow.tracking import MlflowClient

    state = json.loads((run / "tracking.json").read_text())["mlflow"]
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    return MlflowClient(tracking_uri=state["uri"]), state["run_id"]


@pytest.fixture(scope="module")
def tracked(tmp_path_factory, tiny_lm):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    pytest.importorskip("mlflow", reason="the mlflow extra is not installed")
    d = tmp_path_factory.mktemp("tracked")
    cfg = write_run(d, tiny_lm, "tr", extra="rounds: {rounds: 2, prompts_per_round: 6, refresh: rotate, control: true}\n")
    r = rsft("run", "--config", str(cfg), "--rounds", "2", "--report-to", "tensorboard,mlflow", cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    json.loads(r.stdout)  # the trackers print nothing on stdout
    return d, cfg, d / "runs" / "tr"


def test_every_round_metric_in_metrics_jsonl_tensorboard_and_mlflow(tracked):
    _, _, run = tracked
    rounds = ledger(run, "round")
    assert [(r["round"], r["step"]) for r in rounds] == [(0, 0), (1, 1)]
    for r in rounds:
        assert ROUND_METRICS <= set(r["metrics"]), ROUND_METRICS - set(r["metrics"])
        assert r["metrics"]["generate/samples"] == 36 and r["metrics"]["keep/rows"] == 6
        assert r["metrics"]["keep/rate"] == pytest.approx(6 / 36)
        eval_json = json.loads((run / f"round-{r['round']:03d}" / "eval.json").read_text())
        assert r["metrics"]["eval/mean_reward"] == eval_json["metric"]["value"]
        assert r["metrics"]["gate/promoted"] == float(eval_json["promoted"]) and r["gate"]["reason"] == eval_json["reason"]
    tb = scalars(run)
    client, run_id = mlflow_client(run)
    for name in sorted(ROUND_METRICS):
        want = [(r["step"], r["metrics"][name]) for r in rounds]
        assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in tb.Scalars(name)] == want, name
        assert [(m.step, m.value) for m in client.get_metric_history(run_id, name)] == want, name
    base = ledger(run, "base")[0]["metrics"]
    assert base["base/mean_reward"] == json.loads((run / "baseline" / "eval.json").read_text())["metric"]["value"]
    assert [m.value for m in client.get_metric_history(run_id, "base/mean_reward")] == [base["base/mean_reward"]]


def test_one_tracked_run_with_the_config_as_params_and_its_hash_as_a_tag(tracked):
    _, _, run = tracked
    client, run_id = mlflow_client(run)
    mlrun = client.get_run(run_id)
    config = load_config(run / "config.yaml")
    want_hash = artifacts.config_hash(to_dict(config))
    assert mlrun.info.run_name == "tr" and mlrun.info.status == "FINISHED"
    assert mlrun.data.tags["rsft.config_hash"] == want_hash
    params = mlrun.data.params
    assert params["generation.n"] == "6" and params["rounds.rounds"] == "2" and params["train.learning_rate"] == "0.01"
    assert params["tracking.report_to"] == '["tensorboard,mlflow"]'
    assert len(client.search_runs([mlrun.info.experiment_id])) == 1
    tb = scalars(run)
    text = tb.Tensors("config_hash/text_summary")[0].tensor_proto.string_val[0].decode()
    assert text == want_hash
    assert "learning_rate: 0.01" in tb.Tensors("config/text_summary")[0].tensor_proto.string_val[0].decode()


def test_train_steps_keep_counting_across_rounds(tracked):
    _, _, run = tracked
    losses = [row["loss"] for k in (0, 1) for _, row in artifacts.read_jsonl(run / f"round-{k:03d}" / "train_log.jsonl")]
    assert len(losses) == 16
    tb = scalars(run)
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in tb.Scalars("train/loss")] == list(
        zip(range(1, 17), losses, strict=True))
    client, run_id = mlflow_client(run)
    assert [(m.step, m.value) for m in client.get_metric_history(run_id, "train/loss")] == list(
        zip(range(1, 17), losses, strict=True))


def test_a_resumed_run_appends_and_never_logs_a_round_twice(tracked):
    d, cfg, run = tracked
    before = (run / "metrics.jsonl").read_text()
    again = rsft("run", "--config", str(cfg), "--rounds", "2", "--report-to", "tensorboard,mlflow", cwd=d)
    assert again.returncode == 0, again.stderr[-3000:]
    assert (run / "metrics.jsonl").read_text() == before
    more = rsft("run", "--config", str(cfg), "--rounds", "3", "--report-to", "tensorboard,mlflow", cwd=d)
    assert more.returncode == 0, more.stderr[-3000:]
    assert (run / "metrics.jsonl").read_text().startswith(before)
    assert [r["round"] for r in ledger(run, "round")] == [0, 1, 2]
    steps = [r["step"] for r in ledger(run, "train")]
    assert steps == list(range(1, 25))
    tb = scalars(run)
    client, run_id = mlflow_client(run)
    assert [e.step for e in tb.Scalars("eval/mean_reward")] == [0, 1, 2]
    assert [e.step for e in tb.Scalars("train/loss")] == steps
    assert [m.step for m in client.get_metric_history(run_id, "eval/mean_reward")] == [0, 1, 2]
    assert [m.step for m in client.get_metric_history(run_id, "train/loss")] == steps
    assert len(client.search_runs([client.get_run(run_id).info.experiment_id])) == 1  # the same tracked run


# --- metrics of a checker round, the ledger ---------------------------------------------------------


class Voters:
    """Per chain_sum question: the right answer, the same wrong answer twice, and an unfinished one."""

    name = "voters"

    def generate(self, prompts, n, sampling):
        out = []
        for p in prompts:
            right = eval(p.rsplit("problem: ", 1)[1].split(" =")[0])  # noqa: S307 - digit +/- chains
            wrong = right + 1 if right % 3 else right  # every third question: the majority is right
            out.append([Completion(f" {right}", 2, "stop"), Completion(f" {wrong}", 2, "stop"),
                        Completion(f" {wrong}", 4, "stop"), Completion(" thinking", 8, "length")][:n])
        return out


@pytest.fixture
def checker_round(tmp_path):
    config = RunConfig(
        name="check", out=str(tmp_path),
        prompts=PromptsConfig(task=TaskConfig(name="chain_sum", size=9, options={"min_terms": 2, "max_terms": 3})),
        generation=GenerationConfig(n=4), scoring=ScoringConfig(scorer="math"),
    )
    result = pipeline.run_round(config, generator=Voters(), quiet=True)
    return config, result.round_dir


def test_checker_metrics_of_a_round(checker_round):
    config, rd = checker_round
    from rsft.tracking.metrics import round_metrics

    m = round_metrics(config, rd, None)
    rewards = [r for _, r in sorted(_rewards(rd).items())]
    majority_right = sum(r[1] == 1.0 for r in rewards)  # the wrong answer was right after all
    assert m["check/pass_at_1"] == pytest.approx(sum(map(sum, rewards)) / 36)
    assert m["check/pass_at_n"] == 1.0 and m["check/none_right"] == 0.0
    assert m["check/all_right"] == 0.0  # the unfinished sample is never right
    assert m["check/maj_at_n"] == pytest.approx(majority_right / 9) and 0 < majority_right < 9
    assert m["length/mean"] == pytest.approx((2 + 2 + 4 + 8) / 4) and m["length/truncated_share"] == 0.25
    assert m["length/p95"] == pytest.approx(8.0)
    assert m["keep/rows"] == 9 and m["keep/rate"] == 0.25 and m["keep/reward_mean"] == 1.0
    assert m["keep/length_mean"] == 2.0  # the first right sample of each question: 2 tokens
    assert m["generate/prompts"] == 9 and m["generate/samples"] == 36 and m["generate/tokens"] == 9 * 16
    assert m["reward/finite"] == 36 and m["reward/failed"] == 0 and m["reward/max"] == 1.0
    assert not any(k.startswith(("train/", "eval/", "kl/", "gate/")) for k in m)


def _rewards(rd: Path) -> dict[str, list[float]]:
    import pyarrow.parquet as pq

    rows: dict[str, list[float]] = {}
    for row in pq.read_table(rd / "rewards.parquet").to_pylist():
        rows.setdefault(row["prompt_id"], []).append(row["reward"])
    return rows


def test_a_round_is_recorded_once_and_a_tracker_added_later_catches_up(checker_round):
    config, rd = checker_round
    tracking.start(config).round(0, rd)
    tracking.start(config).round(0, rd)
    assert [r["kind"] for r in tracking.read_ledger(config.run_dir / "metrics.jsonl")] == ["round"]
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    config.tracking = TrackingConfig(report_to=["tensorboard"])
    tracking.start(config).round(0, rd)
    tracking.start(config).round(0, rd)
    record = ledger(config.run_dir, "round")[0]
    tb = scalars(config.run_dir)
    assert [(e.step, pytest.approx(e.value, rel=1e-6)) for e in tb.Scalars("check/maj_at_n")] == [
        (0, record["metrics"]["check/maj_at_n"])]


def test_a_torn_last_ledger_line_is_dropped(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"kind": "round", "round": 0, "step": 0, "metrics": {}}\n{"kind": "rou')
    assert [r["round"] for r in tracking.read_ledger(path)] == [0]
    assert path.read_text() == '{"kind": "round", "round": 0, "step": 0, "metrics": {}}\n'


def test_a_missing_tracker_library_is_one_line_naming_the_extra(monkeypatch, tmp_path):
    config = RunConfig(out=str(tmp_path), tracking=TrackingConfig(report_to=["tensorboard,wandb"]))
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if it were not installed
    with pytest.raises(RsftError) as e:
        tracking.start(config)
    assert str(e.value) == "tracking.report_to wandb: needs the 'wandb' extra: pip install 'rsft[wandb]'"
    config.tracking.report_to = ["neptune"]
    with pytest.raises(RsftError, match="unknown tracker 'neptune'; choose from tensorboard, mlflow, trackio, wandb"):
        tracking.start(config)


def test_bad_report_to_on_the_command_line_exits_2_before_any_work(tmp_path):
    r = rsft("run", "--prompts", str(tmp_path / "none.jsonl"), "--out", str(tmp_path), "--report-to", "mlflow,nope",
             cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.strip().splitlines()[-1].startswith("rsft: error: tracking.report_to: unknown")
    assert not (tmp_path / "run").exists()


# --- trackio and W&B ---------------------------------------------------------------------------------


def wandb_records(path: str) -> list[Any]:
    """The protobuf records of a W&B offline run file (its LevelDB-style log: 32 KiB blocks of
    records, each a 7-byte header of CRC, length and type FULL/FIRST/MIDDLE/LAST)."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, out, buf = 7, [], b""
    while pos + 7 <= len(data):
        if 32768 - pos % 32768 < 7:
            pos += 32768 - pos % 32768
            continue
        _, length, kind = struct.unpack("<IHB", data[pos : pos + 7])
        buf, pos = buf + data[pos + 7 : pos + 7 + length], pos + 7 + length
        if kind in (1, 4):
            record = pb.Record()
            record.ParseFromString(buf)
            out.append(record)
            buf = b""
    return out


def test_trackio_store_and_wandb_offline_files(tmp_path, tiny_lm):
    pytest.importorskip("trackio", reason="the trackio extra is not installed")
    pytest.importorskip("wandb", reason="the wandb extra is not installed")
    cfg = write_run(tmp_path, tiny_lm, "tw", extra="rounds: {rounds: 1, prompts_per_round: 4}\ntracking: {project: rsft-t}\n")
    env = {"TRACKIO_DIR": str(tmp_path / "trackio"), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    r = rsft("run", "--config", str(cfg), "--rounds", "1", "--report-to", "trackio", "--report-to", "wandb",
             cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    # trackio's and wandb's messages went to stderr; transformers itself prints one line when it is
    # imported with WANDB_MODE=offline
    json.loads(r.stdout.removeprefix("[INFO] Running in WANDB offline mode\n"))
    run = tmp_path / "runs" / "tw"
    round0 = ledger(run, "round")[0]["metrics"]
    losses = [row["metrics"]["train/loss"] for row in ledger(run, "train")]
    assert ROUND_METRICS - {n for n in ROUND_METRICS if n.startswith("control/")} <= set(round0)

    read = ("import json, sys\nfrom trackio.sqlite_storage import SQLiteStorage as S\n"
            "print(json.dumps({'runs': S.get_runs('rsft-t'), 'logs': S.get_logs('rsft-t', run='tw'),"
            " 'config': S.get_run_config('rsft-t', 'tw')}, default=str))")
    out = subprocess.run([sys.executable, "-c", read], env={**os.environ, **env}, capture_output=True, text=True,
                         timeout=120)
    store = json.loads(out.stdout)
    assert store["runs"] == ["tw"] and store["config"]["config_hash"] == ledger_hash(run)
    logged = [row for row in store["logs"] if "eval/mean_reward" in row]
    assert [(row["step"], row["eval/mean_reward"]) for row in logged] == [(0, round0["eval/mean_reward"])]
    assert [row["train/loss"] for row in store["logs"] if "train/loss" in row] == pytest.approx(losses)

    (path,) = glob.glob(str(run / "wandb" / "offline-run-*" / "run-*.wandb"))
    records = wandb_records(path)
    (first,) = [x.run for x in records if x.WhichOneof("record_type") == "run"]
    assert first.project == "rsft-t" and first.display_name == "tw"
    assert f"config_hash:{ledger_hash(run)}" in list(first.tags)
    history = [{i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in x.history.item} for x in records
               if x.WhichOneof("record_type") == "history"]
    rounds = [h for h in history if "eval/mean_reward" in h]
    assert [(h["round"], h["eval/mean_reward"]) for h in rounds] == [(0, round0["eval/mean_reward"])]
    assert ROUND_METRICS - {n for n in ROUND_METRICS if n.startswith("control/")} <= set(rounds[0])
    train = [h for h in history if "train/loss" in h]
    assert [h["train/global_step"] for h in train] == list(range(1, len(losses) + 1))
    assert [h["train/loss"] for h in train] == pytest.approx(losses)


def ledger_hash(run: Path) -> str:
    return artifacts.config_hash(to_dict(load_config(run / "config.yaml")))


def test_tracking_and_the_reward_server_import_no_heavy_library():
    code = ("import sys, rsft.tracking, rsft.tracking.metrics, rsft.tracking.backends, rsft.serve.reward, "
            "rsft.score.http, rsft.cli\n"
            "print(sorted(m for m in ('torch', 'transformers', 'fastapi', 'mlflow', 'wandb', 'trackio', "
            "'tensorboard', 'httpx') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[]"


def test_a_single_round_run_is_tracked_too(tmp_path, tiny_lm):
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    cfg = write_run(tmp_path, tiny_lm, "one")
    r = rsft("run", "--config", str(cfg), "--report-to", "tensorboard", cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    run = tmp_path / "runs" / "one"
    (record,) = tracking.read_ledger(run / "metrics.jsonl")
    assert (record["kind"], record["round"], record["step"]) == ("round", 0, 0)
    assert record["metrics"]["generate/samples"] == 48 and record["metrics"]["keep/rows"] == 8
    assert not any(k.startswith(("train/", "eval/", "gate/")) for k in record["metrics"])
    assert [(e.step, e.value) for e in scalars(run).Scalars("keep/rows")] == [(0, 8.0)]
