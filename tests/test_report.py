"""``rsft report``: the HTML page and the terminal table of a run folder of RSFT rounds."""

from __future__ import annotations

import argparse
import base64
import contextlib
import io
import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from rsft import artifacts, matrix
from rsft.cli import report as report_cli
from rsft.errors import RsftError
from rsft.report import runs as report
from rsft.types import Prompt

NAN = float("nan")
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CONFIG = """name: demo
generation:
  n: 4
  options:
    base_url: http://localhost:8000/v1
scoring:
  scorer: exact
note: "a < b & c"
"""
R0 = [[1, 0, 0, 0], [0, 0, 1, 1], [0, 0, 0, 0], [1, 1, 1, 0]]  # mean 6/16 = 0.375
KEEP0 = [(0, 0), (1, 2), (3, 0)]
R1 = [[1, 1, 0, NAN], [0, 0, 0, 0], [1, 0, 1, 1], [0, 1, 0, 0]]  # 15 finite, mean 6/15 = 0.400
KEEP1 = [(0, 0), (0, 1), (2, 0), (2, 2), (3, 1)]


def metric(value, low, high, n=64):
    return {"name": "accuracy", "value": value, "ci_low": low, "ci_high": high, "n": n}


def write_round(round_dir: Path, rewards, keep, eval_json, control=False) -> None:
    prompts = [Prompt(f"p{i}", f"Q{i}: 2+{i}?\nA:", {"answer": str(2 + i)}) for i in range(len(rewards))]
    M, N = len(rewards), len(rewards[0])
    matrix.write_prompts(round_dir / artifacts.PROMPTS, prompts)
    pairs = [(i, j) for i in range(M) for j in range(N)]
    artifacts.write_table(round_dir / artifacts.COMPLETIONS, {
        "prompt_id": [f"p{i}" for i, _ in pairs], "sample_idx": [j for _, j in pairs],
        "text": [f" {i + j}" for i, j in pairs], "n_tokens": [4 + 3 * j + i for i, j in pairs],
        "finish_reason": ["stop"] * len(pairs), "logprob": [-1.5] * len(pairs),
        "generator": ["hf"] * len(pairs), "seed": [0] * len(pairs),
    }, matrix.COMPLETIONS_SCHEMA)
    artifacts.write_table(round_dir / artifacts.REWARDS, {
        "prompt_id": [f"p{i}" for i, _ in pairs], "sample_idx": [j for _, j in pairs],
        "reward": [rewards[i][j] for i, j in pairs], "scorer": ["exact"] * len(pairs),
        "details": [""] * len(pairs), "failed": [bool(np.isnan(rewards[i][j])) for i, j in pairs],
    }, matrix.REWARDS_SCHEMA)
    artifacts.write_table(round_dir / artifacts.SELECTION, {
        "prompt_id": [f"p{i}" for i, _ in keep], "sample_idx": [j for _, j in keep],
        "reward": [float(rewards[i][j]) for i, j in keep], "rank": list(range(len(keep))),
        "role": ["keep"] * len(keep), "pair": list(range(len(keep))),
    }, matrix.SELECTION_SCHEMA)
    artifacts.write_jsonl(round_dir / artifacts.SELECTED,
                          [{"prompt": prompts[i].prompt, "completion": f" {i + j}"} for i, j in keep])
    log = [{"step": s, "loss": 2.0 / s, "learning_rate": 1e-4, "epoch": s / 4} for s in range(1, 5)]
    artifacts.write_jsonl(round_dir / "train_log.jsonl", log)
    artifacts.write_json(round_dir / "eval.json", eval_json)
    if control:
        artifacts.write_jsonl(round_dir / "control" / "train_log.jsonl",
                              [dict(r, loss=r["loss"] + 0.3) for r in log])
        artifacts.write_json(round_dir / "control" / "eval.json", eval_json["control"])


def build_run(root: Path) -> Path:
    """A finished 2-round run: baseline, round 0 with a control arm (promoted), round 1 without (not)."""
    run = root / "runs" / "demo"
    run.mkdir(parents=True)
    (run / "config.yaml").write_text(CONFIG)
    artifacts.write_json(run / "baseline" / "eval.json", {
        "round": -1, "checkpoint": "base-model", "metric": metric(0.25, 0.16, 0.36), "kl": None,
        "warnings": []})
    write_round(run / "round-000", R0, KEEP0, {
        "round": 0, "checkpoint": str(run / "round-000" / "checkpoint"), "metric": metric(0.31, 0.22, 0.41),
        "kl": {"mean": 0.12, "stderr": 0.03, "n": 64}, "best_before": 0.25, "margin": 0.0, "promoted": True,
        "reason": "accuracy 0.310 > best 0.250 + margin 0.000", "kept": 3, "reward_mean_all": 0.375,
        "reward_mean_kept": 1.0,
        "control": {"metric": metric(0.28, 0.19, 0.38), "kl": {"mean": 0.09, "stderr": 0.02, "n": 64}, "kept": 3},
        "warnings": ["<b>only 64 eval prompts</b>: CI is wide"]}, control=True)
    write_round(run / "round-001", R1, KEEP1, {
        "round": 1, "checkpoint": str(run / "round-001" / "checkpoint"), "metric": metric(0.30, 0.21, 0.40),
        "kl": {"mean": 0.25, "stderr": 0.04, "n": 64}, "best_before": 0.31, "margin": 0.0, "promoted": False,
        "reason": "accuracy 0.300 <= best 0.310 + margin 0.000", "kept": 5, "reward_mean_all": 0.4,
        "reward_mean_kept": 1.0, "control": None, "warnings": []})
    artifacts.write_json(run / "rounds.json", {
        "current": str(run / "round-000" / "checkpoint"),
        "rounds": [{"round": 0, "promoted": True}, {"round": 1, "promoted": False}]})
    return run


@pytest.fixture
def run_dir(tmp_path) -> Path:
    return build_run(tmp_path)


class Page(HTMLParser):
    """Tags with their attributes, all text, and the text of the config block."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.tags: list[tuple[str, dict[str, str]]] = []
        self.chunks: list[str] = []
        self.config = ""
        self._in_config = False
        self.feed(text)
        self.close()
        self.text = "".join(self.chunks)

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append((tag, attrs))
        self._in_config = attrs.get("id") == "config-yaml"

    def handle_endtag(self, tag):
        if tag == "pre":
            self._in_config = False

    def handle_data(self, data):
        self.chunks.append(data)
        if self._in_config:
            self.config += data

    def images(self) -> dict[str, str]:
        return {a["id"]: a["src"] for tag, a in self.tags if tag == "img"}


def run_report(run: Path, output: Path | None = None, no_terminal: bool = False) -> tuple[Page, str]:
    """Run ``rsft report`` through its own argument parser; the parsed page and what it printed."""
    parser = argparse.ArgumentParser()
    report_cli.add_arguments(parser)
    argv = [str(run)] + (["--output", str(output)] if output else []) + (["--no-terminal"] if no_terminal else [])
    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        report_cli.main(parser.parse_args(argv))
    return Page((output or run / "report.html").read_text(encoding="utf-8")), printed.getvalue()


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> tuple[Path, Page, str]:
    """The finished run, its page and its terminal output, rendered once for the read-only tests."""
    run = build_run(tmp_path_factory.mktemp("rendered"))
    return (run, *run_report(run))


def table_rows(out: str) -> dict[str, list[str]]:
    """Terminal table rows by their first cell, split on runs of 2+ spaces."""
    rows = [re.split(r"\s{2,}", line.strip()) for line in out.splitlines() if line.strip()]
    assert rows[0] == report.COLUMNS
    return {row[0]: row for row in rows[1:] if not row[0].startswith("report:")}


def test_page_has_every_plot_as_an_inline_png(rendered):
    _, page, _ = rendered
    images = page.images()
    expected = {"eval-metric", "kl", "kept"} | {
        f"{kind}-round-{k:03d}" for kind in ("reward-dist", "lengths", "loss") for k in (0, 1)}
    assert expected <= set(images)
    for plot_id, src in images.items():
        prefix, payload = src.split(",", 1)
        assert prefix == "data:image/png;base64", plot_id
        png = base64.b64decode(payload, validate=True)
        assert png[:8] == PNG_SIGNATURE and png[12:16] == b"IHDR", plot_id


def test_page_is_self_contained(rendered):
    _, page, _ = rendered
    assert not [tag for tag, _ in page.tags if tag in ("script", "link", "iframe", "object")]
    for tag, attrs in page.tags:
        for name in ("src", "href"):
            value = attrs.get(name) or ""
            assert not value.startswith(("http://", "https://", "//")), (tag, name, value)


def test_page_shows_numbers_decision_warnings_and_config(rendered):
    _, page, _ = rendered
    summary = page.text
    for number in ("0.310 [0.220, 0.410]", "0.280 [0.190, 0.380]", "0.300 [0.210, 0.400]",
                   "0.250 [0.160, 0.360]", "0.120 ± 0.030", "0.250 ± 0.040", "0.375/1.000", "0.400/1.000"):
        assert number in summary, number
    assert "accuracy 0.310 > best 0.250 + margin 0.000" in summary
    assert "accuracy 0.300 <= best 0.310 + margin 0.000" in summary
    assert "round-000: promoted" in summary and "round-001: not promoted" in summary
    # a warning with markup is shown as text, never as a tag
    assert "<b>only 64 eval prompts</b>: CI is wide" in summary
    assert "b" not in [tag for tag, _ in page.tags]
    assert page.config == CONFIG
    assert "failed scorings (NaN rewards)" in summary  # round 1 has one NaN


def test_terminal_table(rendered):
    run_dir, _, out = rendered
    rows = table_rows(out)
    assert rows["base"] == ["base", "—", "—", "0.250 [0.160, 0.360]", "—", "—", "—"]
    assert rows["0"] == ["0", "3", "0.375/1.000", "0.310 [0.220, 0.410]", "0.280 [0.190, 0.380]",
                         "0.120 ± 0.030", "yes"]
    assert rows["1"] == ["1", "5", "0.400/1.000", "0.300 [0.210, 0.400]", "—", "0.250 ± 0.040", "no"]
    assert f"report: {run_dir / 'report.html'}" in out


def test_unfinished_round_renders_with_dashes(run_dir):
    (run_dir / "round-001" / "eval.json").unlink()
    (run_dir / "round-001" / "train_log.jsonl").unlink()
    artifacts.write_json(run_dir / "rounds.json", {"current": "base-model", "rounds": [{"round": 0, "promoted": True}]})
    page, out = run_report(run_dir)
    assert table_rows(out)["1"] == ["1", "5", "0.400/1.000", "—", "—", "—", "—"]
    assert "round-001: — unfinished (no eval.json yet)" in page.text
    images = page.images()
    assert {"reward-dist-round-001", "lengths-round-001", "eval-metric", "loss-round-000"} <= set(images)
    assert "loss-round-001" not in images
    assert "training loss, RSFT and control: — (no train_log.jsonl yet)" in page.text


def test_run_without_baseline_control_or_rewards(tmp_path):
    run = tmp_path / "fresh"
    (run / "round-000").mkdir(parents=True)
    (run / "config.yaml").write_text("name: fresh\n")
    matrix.write_prompts(run / "round-000" / artifacts.PROMPTS, [Prompt("p0", "Q: 1+1?\nA:")])
    page, out = run_report(run, no_terminal=True)
    assert out.strip() == f"report: {run / 'report.html'}"
    assert report.format_table(report.load_run(run)).splitlines()[1].split() == ["0"] + ["—"] * 6
    assert page.images() == {}
    assert "current policy: —" in page.text and page.config == "name: fresh\n"


def test_without_matplotlib_the_page_says_so(run_dir, monkeypatch):
    monkeypatch.setattr(report, "_has_matplotlib", lambda: False)
    page, out = run_report(run_dir)
    assert page.images() == {}
    assert "plots need matplotlib" in page.text
    assert table_rows(out)["0"][3] == "0.310 [0.220, 0.410]"


def test_unreadable_files_are_reported_not_raised(run_dir):
    (run_dir / "round-001" / "eval.json").write_text("{not json")
    (run_dir / "round-001" / "rewards.parquet").write_bytes(b"garbage")
    page, out = run_report(run_dir)
    assert "round-001/eval.json:1: not valid JSON" in page.text
    assert "rewards.parquet: not a readable Parquet file" in page.text
    assert table_rows(out)["1"][3] == "—"
    assert "reward-dist-round-001" not in page.images()


def test_output_path_and_atomic_write(run_dir, tmp_path):
    out_path = tmp_path / "site" / "demo.html"
    page, out = run_report(run_dir, output=out_path, no_terminal=True)
    assert "eval-metric" in page.images()
    assert not (run_dir / "report.html").exists()
    assert sorted(p.name for p in out_path.parent.iterdir()) == ["demo.html"]  # no temp file left
    assert "round" not in out and out.strip() == f"report: {out_path}"


@pytest.mark.parametrize("case", ["missing", "file", "empty", "round"])
def test_not_a_run_folder(run_dir, tmp_path, case):
    path = {"missing": tmp_path / "nope", "file": run_dir / "config.yaml", "empty": tmp_path / "empty",
            "round": run_dir / "round-000"}[case]
    if case == "empty":
        path.mkdir()
    with pytest.raises(RsftError) as info:
        report.load_run(path)
    message = str(info.value)
    assert "\n" not in message and str(path) in message
    if case == "round":
        assert "give its run folder" in message


def test_kept_set_comes_from_keep_rows_only(run_dir):
    sel = run_dir / "round-000" / artifacts.SELECTION
    artifacts.write_table(sel, {
        "prompt_id": ["p0", "p0", "p1"], "sample_idx": [0, 1, 2], "reward": [1.0, 0.0, 1.0], "rank": [0, 1, 2],
        "role": ["keep", "dropped", "keep"], "pair": [0, 1, 2]}, matrix.SELECTION_SCHEMA)
    rd = report.load_run(run_dir).rounds[0]
    assert rd.kept == 2
    np.testing.assert_array_equal(rd.rewards_kept, [1.0, 1.0])
    np.testing.assert_array_equal(np.sort(rd.lengths_kept), [4, 11])  # n_tokens = 4 + 3j + i
    assert json.loads((run_dir / "round-000" / "eval.json").read_text())["kept"] == 3  # eval.json untouched
