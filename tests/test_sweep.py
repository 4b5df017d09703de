"""``rsft sweep`` end to end on a tiny model: one generation per temperature, selection on the first n
columns, identical kept sets trained once, a table with CIs, a rerun that trains nothing.

The reward is the fraction of digits in a completion (as in test_rounds). The thresholds ``null``
and ``-1`` keep the same rows (every reward is >= 0), so their cells must share checkpoints.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from digits_run import rsft_cli, write_run

from rsft import matrix
from rsft.config import load_config
from rsft.errors import RsftError
from rsft.rounds import sweep

TEMPS, NS, THRESHOLDS, EPOCHS = [0.7, 1.5], [2, 4], [None, -1.0], [1.0, 2.0]


def _write(d: Path, tiny_lm: Path, sweep_yaml: str, name: str = "sw") -> Path:
    return write_run(d, tiny_lm, name, prompts=5, eval_prompts=3, n=3, max_new_tokens=6, epochs=1, max_length=48,
                     eval_n=2, kl_samples=1, extra=sweep_yaml)


_rsft = rsft_cli


GRID = """
    sweep:
      n: [4, 2]
      temperature: [1.5, 0.7]
      threshold: [null, -1]
      epochs: [1, 2]
"""


@pytest.fixture(scope="module")
def swept(tmp_path_factory, tiny_lm):
    d = tmp_path_factory.mktemp("sweep")
    cfg = _write(d, tiny_lm, GRID)
    r = _rsft("sweep", "--config", str(cfg), cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    run = d / "runs" / "sw"
    return d, cfg, run, json.loads((run / "sweep.json").read_text()), r.stdout


def test_one_generation_per_temperature_at_n_max(swept):
    _, _, run, summary, _ = swept
    assert sorted(p.parent.name for p in (run / "sweep").glob("*/completions.parquet")) == ["T0.7", "T1.5"]
    for t in ("T0.7", "T1.5"):
        manifest = json.loads((run / "sweep" / t / "manifest.json").read_text())
        assert manifest["stages"]["generate"]["counts"]["n"] == 4
        assert manifest["stages"]["generate"]["counts"]["completions"] == 5 * 4
        assert set(manifest["stages"]) == {"generate", "score"}
    assert [g["temperature"] for g in summary["generations"]] == [0.7, 1.5]


def test_each_cell_selects_the_best_of_its_first_n_columns(swept):
    _, _, run, summary, _ = swept
    for t in ("T0.7", "T1.5"):
        folder = run / "sweep" / t
        prompts = matrix.read_prompts(folder / "prompts.parquet")
        R, _ = matrix.read_rewards(folder / "rewards.parquet", [p.prompt_id for p in prompts])
        assert R.shape == (5, 4)
        for n in NS:
            for thr in ("none", "-1"):
                sel = pq.read_table(folder / f"n{n}-thr{thr}" / "selection.parquet").to_pylist()
                assert [r["prompt_id"] for r in sel] == [p.prompt_id for p in prompts]
                assert [r["sample_idx"] for r in sel] == np.argmax(R[:, :n], axis=1).tolist()
                rows = (folder / f"n{n}-thr{thr}" / "selected.jsonl").read_text().splitlines()
                assert len(rows) == 5
    assert len(summary["cells"]) == 2 * 2 * 2 * 2


def test_identical_kept_sets_train_once(swept):
    _, _, run, summary, _ = swept
    cells = summary["cells"]
    by_key: dict[tuple[str, float], set[str]] = {}
    for c in cells:
        by_key.setdefault((c["kept_sha256"], c["epochs"]), set()).add(c["checkpoint"])
    assert all(len(v) == 1 for v in by_key.values())  # one checkpoint per kept set and epochs
    checkpoints = list((run / "sweep" / "train").glob("*/checkpoint/rsft_train.json"))
    assert len(checkpoints) == len(by_key) == summary["trainings"] <= len(cells) // 2
    none, minus = ({c["id"].replace(f"thr{t}", "thr*"): c for c in cells if f"thr{t}/" in c["id"]}
                   for t in ("none", "-1"))
    for key, c in none.items():
        assert minus[key]["checkpoint"] == c["checkpoint"] and minus[key]["reused_from"] == c["id"]
        assert c["reused_from"] is None
    epochs = {json.loads(p.read_text())["epochs"] for p in checkpoints}
    assert epochs == {1.0, 2.0}


def test_sweep_json_has_every_cell_with_cis(swept):
    _, _, run, summary, _ = swept
    seen = set()
    for c in summary["cells"]:
        seen.add((c["temperature"], c["n"], c["threshold"], c["epochs"]))
        m = c["metric"]
        assert m["ci_low"] <= m["value"] <= m["ci_high"] and m["n"] == 3
        assert c["kept"] == 5 and 0 <= c["pass_rate"] <= 1 and c["mean_reward_kept"] is not None
        assert c["kl"]["n"] == 3 and c["train_loss_first"] > 0 and c["train_loss_last"] > 0
        assert (c["wall_s"] is None) == (c["reused_from"] is not None)
    assert seen == {(t, n, thr, e) for t in TEMPS for n in NS for thr in THRESHOLDS for e in EPOCHS}
    grid_order = [(c["temperature"], c["n"], c["threshold"] is not None, c["epochs"]) for c in summary["cells"]]
    assert grid_order == sorted(grid_order)
    base = summary["baseline"]["metric"]
    assert base["ci_low"] <= base["value"] <= base["ci_high"] and abs(summary["baseline"]["kl"]["mean"]) < 1e-6
    assert summary["best"] == max(summary["cells"], key=lambda c: c["metric"]["value"])["id"]


def test_markdown_table_and_terminal(swept):
    _, _, run, summary, stdout = swept
    md = (run / "sweep.md").read_text()
    lines = [line for line in md.splitlines() if line.startswith("|")]
    assert lines[0].startswith("|  | temperature | n | threshold | epochs | kept |") and "[95% CI]" in lines[0]
    assert lines[2].startswith("| base |")
    assert len(lines) == 2 + 1 + 16
    assert sum(line.startswith("| * |") for line in lines) == 1
    assert md.strip() in stdout


def test_report_shows_the_sweep_table(swept):
    d, _, run, _, _ = swept
    r = _rsft("report", str(run), "--no-terminal", cwd=d)
    assert r.returncode == 0, r.stderr[-2000:]
    page = (run / "report.html").read_text()
    assert '<section id="sweep">' in page and page.count("<tr>", page.index('id="sweep-table"')) >= 18


def test_rerun_trains_nothing(swept):
    d, cfg, run, summary, _ = swept
    ckpts = sorted((run / "sweep" / "train").glob("*/checkpoint/rsft_train.json"))
    before = [p.stat().st_mtime_ns for p in ckpts]
    evals = [p.stat().st_mtime_ns for p in sorted((run / "sweep" / "train").glob("*/eval.json"))]
    gen = json.loads((run / "sweep" / "T0.7" / "manifest.json").read_text())["stages"]["generate"]["finished_at"]
    r = _rsft("sweep", "--config", str(cfg), cwd=d)
    assert r.returncode == 0, r.stderr[-3000:]
    assert [p.stat().st_mtime_ns for p in ckpts] == before
    assert [p.stat().st_mtime_ns for p in sorted((run / "sweep" / "train").glob("*/eval.json"))] == evals
    assert json.loads((run / "sweep" / "T0.7" / "manifest.json").read_text())["stages"]["generate"]["finished_at"] == gen
    again = json.loads((run / "sweep.json").read_text())
    assert [c["metric"] for c in again["cells"]] == [c["metric"] for c in summary["cells"]]
    assert [c["wall_s"] for c in again["cells"]] == [c["wall_s"] for c in summary["cells"]]


def test_bad_n_exits_2_naming_the_field(tmp_path, tiny_lm):
    cfg = _write(tmp_path, tiny_lm, "sweep: {n: [0]}\n")
    r = _rsft("sweep", "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 2
    errors = [line for line in r.stderr.splitlines() if line.startswith("rsft: error:")]
    assert len(errors) == 1 and "sweep.n" in errors[0] and "positive integer" in errors[0], r.stderr
    assert not (tmp_path / "runs").exists()


def test_dry_run_prints_the_counts(tmp_path, tiny_lm):
    cfg = _write(tmp_path, tiny_lm, GRID)
    r = _rsft("sweep", "--config", str(cfg), "--dry-run", cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "= 16 cells" in r.stdout
    assert "generations: 2 (one per temperature: 5 prompts x 4 samples" in r.stdout
    assert "selections: 8" in r.stdout and "trainings: at most 16" in r.stdout and "evals: at most 17" in r.stdout
    assert not (tmp_path / "runs").exists()


@pytest.mark.parametrize("sweep_yaml, message", [
    ("sweep: {temperature: [-0.5]}\n", "sweep.temperature: each value must be a number >= 0, got -0.5"),
    ("sweep: {epochs: [0]}\n", "sweep.epochs: each value must be a number > 0, got 0.0"),
    ("sweep: {n: []}\n", "sweep.n: give at least one value"),
    ("sweep: {n: [2, 2]}\n", "sweep.n: value 2 is given twice"),
    ("sweep: {n: [two]}\n", "sweep: expected"),  # config.from_dict names the section and shows the value
])
def test_bad_grids_name_the_field(tmp_path, tiny_lm, sweep_yaml, message):
    cfg = _write(tmp_path, tiny_lm, sweep_yaml)
    with pytest.raises(RsftError) as e:
        sweep.grid_of(load_config(cfg))
    assert message in str(e.value)


def test_missing_lists_take_the_base_values(tmp_path, tiny_lm):
    config = load_config(_write(tmp_path, tiny_lm, "sweep: {n: [8, 1]}\n"))
    grid = sweep.grid_of(config)
    assert grid == sweep.Grid(temperature=[1.0], n=[1, 8], threshold=[None], epochs=[1.0])
    config.sweep = None
    with pytest.raises(RsftError, match="no 'sweep:' section"):
        sweep.grid_of(config)


def test_select_cell_with_threshold_and_nan():
    R = np.array([[0.1, 0.9, 0.5], [0.2, 0.2, np.nan], [-np.inf, 0.3, 0.8]])
    from rsft.select import mask_non_finite

    clean, _, _ = mask_non_finite(R)
    assert sweep.select_cell(clean, 1, None) == [(0, 0), (1, 0)]  # row 2's first sample is -inf: never kept
    assert sweep.select_cell(clean, 2, 0.25) == [(0, 1), (2, 1)]
    assert sweep.select_cell(clean, 3, None) == [(0, 1), (1, 0), (2, 2)]


def test_shipped_sweep_config_plans_without_a_model():
    root = Path(__file__).parent.parent
    r = subprocess.run([sys.executable, "-m", "rsft.cli", "sweep", "--config", str(root / "configs" / "sweep.yaml"),
                        "--dry-run", "--out", "/nonexistent-never-written"], capture_output=True, text=True,
                       timeout=300, env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert r.returncode == 0, r.stderr
    assert "rsft sweep plan" in r.stdout and "generations:" in r.stdout
