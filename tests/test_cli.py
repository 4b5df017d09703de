"""The CLI end to end on a tiny model, as a user runs it: real subprocesses, real files."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pyarrow.parquet as pq
import pytest

import rsft
from rsft.artifacts import file_sha256

RSFT_SRC = str(Path(rsft.__file__).resolve().parents[1])
"""The source folder of the rsft this process imported: subprocesses import the same one (not the
checkout installed in the venv)."""


def pythonpath(*dirs: Path) -> str:
    """A PYTHONPATH of ``dirs`` (user scorers) and then ``RSFT_SRC``."""
    return os.pathsep.join([*map(str, dirs), RSFT_SRC])

ROUND_FILES = {"prompts.parquet", "completions.parquet", "rewards.parquet", "selection.parquet",
               "selected.jsonl", "manifest.json"}
M, N = 5, 4


def rsft(*args: str, cwd: Path, env_extra: dict | None = None) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": pythonpath(cwd), **(env_extra or {})}
    return subprocess.run([sys.executable, "-m", "rsft.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=300)


@pytest.fixture(scope="module")
def workdir(tmp_path_factory, tiny_lm) -> Path:
    d = tmp_path_factory.mktemp("cli")
    rows = [{"prompt": f"Q: What is {i} + 1?\nA:", "answer": str(i + 1)} for i in range(M - 1)]
    rows.append({"messages": [{"role": "user", "content": "Say hi"}], "answer": "hi"})
    (d / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    # a user scorer loaded by dotted path: prefers longer completions, deterministic
    shutil.copy(Path(__file__).with_name("plugin_scorers.py"), d / "myscorer.py")
    (d / "config.yaml").write_text(textwrap.dedent(f"""
        name: demo
        out: {d / 'runs'}
        prompts:
          path: {d / 'prompts.jsonl'}
        generation:
          n: {N}
          shard_size: 2
          generator:
            backend: hf
            model: {tiny_lm}
          sampling:
            temperature: 1.0
            top_k: 50
            max_new_tokens: 6
            seed: 11
        scoring:
          scorer: myscorer:length
        selection:
          strategy: best
    """))
    return d


@pytest.fixture(scope="module")
def finished_run(workdir) -> Path:
    r = rsft("run", "--config", "config.yaml", cwd=workdir)
    assert r.returncode == 0, r.stderr
    return workdir / "runs" / "demo" / "round-000"


def test_help_lists_every_command():
    r = subprocess.run([sys.executable, "-m", "rsft.cli", "--help"], capture_output=True, text=True)
    assert r.returncode == 0
    for cmd in ("generate", "score", "select", "export", "run"):
        assert cmd in r.stdout


def test_run_writes_exactly_the_round_files(finished_run):
    assert {p.name for p in finished_run.iterdir()} == ROUND_FILES
    assert (finished_run.parent / "config.yaml").exists()
    comps = pq.read_table(finished_run / "completions.parquet")
    assert comps.num_rows == M * N
    assert comps.column("sample_idx").to_pylist() == list(range(N)) * M
    assert set(comps.column("finish_reason").to_pylist()) <= {"stop", "length"}
    rewards = pq.read_table(finished_run / "rewards.parquet").to_pylist()
    assert [r["reward"] for r in rewards] == [float(len(t)) for t in comps.column("text").to_pylist()]
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert set(manifest["stages"]) == {"generate", "score", "select", "export"}
    for name, digest in manifest["stages"]["generate"]["outputs"].items():
        assert file_sha256(finished_run / name) == digest
    assert manifest["stages"]["score"]["stats"]["N"] == N
    assert manifest["stages"]["generate"]["counts"]["completions"] == M * N


def test_selected_is_the_longest_completion_per_prompt_first_on_ties(finished_run):
    comps = pq.read_table(finished_run / "completions.parquet").to_pylist()
    rows = [json.loads(line) for line in (finished_run / "selected.jsonl").read_text().splitlines()]
    assert len(rows) == M
    for i, row in enumerate(rows):
        texts = [c["text"] for c in comps[i * N:(i + 1) * N]]
        lengths = [len(t) for t in texts]
        best = texts[lengths.index(max(lengths))]
        if isinstance(row["prompt"], list):  # the chat prompt
            assert row["completion"] == [{"role": "assistant", "content": best}]
        else:
            assert row["completion"] == best


def test_reselect_does_not_regenerate_or_rescore(finished_run, workdir):
    before = {n: file_sha256(finished_run / n) for n in ("completions.parquet", "rewards.parquet")}
    r = rsft("select", str(finished_run), "--strategy", "top_k", "-k", "3", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["selected"] == 3
    r = rsft("export", str(finished_run), cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert len((finished_run / "selected.jsonl").read_text().splitlines()) == 3
    assert before == {n: file_sha256(finished_run / n) for n in before}
    # and a whole `rsft run` again reuses the finished generation and scoring
    r = rsft("run", "--config", "config.yaml", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert before == {n: file_sha256(finished_run / n) for n in before}
    manifest = json.loads((finished_run / "manifest.json").read_text())
    assert manifest["stages"]["select"]["config"]["strategy"] == "best"


def test_stage_commands_one_by_one(workdir, tiny_lm):
    rd = workdir / "staged" / "round-000"
    r = rsft("generate", str(rd), "--prompts", "prompts.jsonl", "--model", str(tiny_lm), "-n", "3",
             "--max-new-tokens", "4", "--stop", "\\n", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout)["completions"] == M * 3
    r = rsft("score", str(rd), "--scorer", "myscorer:length", cwd=workdir)
    assert r.returncode == 0, r.stderr
    assert "best-of-N" in r.stdout and "below 10" in r.stdout
    r = rsft("select", str(rd), "--strategy", "dpo_pairs", "--threshold", "1", cwd=workdir)
    assert r.returncode == 0, r.stderr
    r = rsft("export", str(rd), cwd=workdir)
    assert r.returncode == 0, r.stderr
    rows = [json.loads(x) for x in (rd / "selected.jsonl").read_text().splitlines()]
    assert rows and all(set(x) == {"prompt", "chosen", "rejected"} for x in rows)
    assert all(len(x["chosen"]) >= len(x["rejected"]) + 1 for x in rows if isinstance(x["chosen"], str))


@pytest.mark.parametrize(
    "args, message",
    [
        (["generate", "R/round-000", "--prompts", "missing.jsonl"], "missing.jsonl: no such file"),
        (["generate", "R/round-000", "--prompts", "prompts.jsonl", "--backend", "nope"], "unknown backend 'nope'"),
        (["generate", "R/round-000", "--prompts", "prompts.jsonl", "--temperature", "-1"], "temperature"),
        (["score", "R/round-000", "--scorer", "math"], "R/round-000/prompts.parquet: missing"),
        (["run", "--config", "bad.yaml"], "bad.yaml: scoring: unknown key 'scorr'; did you mean 'scorer'?"),
        (["run", "--config", "config.yaml", "--scorer", "nope"], "unknown scorer 'nope'"),
        (["run", "--config", "config.yaml", "--scorer", "myscorer:missing"], "has no attribute 'missing'"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(workdir, args, message):
    (workdir / "bad.yaml").write_text("scoring:\n  scorr: math\n")
    cfg_runs = workdir / "runs" / "demo" / "round-000"
    before = {p.name: file_sha256(p) for p in cfg_runs.glob("*")} if cfg_runs.exists() else {}
    r = rsft(*args, cwd=workdir)
    assert r.returncode == 2, r.stderr
    lines = [x for x in r.stderr.splitlines() if x.startswith("rsft: error")]
    assert len(lines) == 1 and message in lines[0], r.stderr
    assert not (workdir / "R").exists()
    after = {p.name: file_sha256(p) for p in cfg_runs.glob("*")} if cfg_runs.exists() else {}
    assert before == after


def test_failing_scorer_fails_clearly_or_is_recorded(finished_run, workdir, tmp_path):
    import shutil

    rd = tmp_path / "round-000"
    shutil.copytree(finished_run, rd)
    for name in ("rewards.parquet", "selection.parquet", "selected.jsonl"):
        (rd / name).unlink()
    r = rsft("score", str(rd), "--scorer", "myscorer:explode", cwd=workdir)
    assert r.returncode == 2
    assert "scorer 'explode' failed on prompt" in r.stderr and "ValueError: boom" in r.stderr
    assert not (rd / "rewards.parquet").exists()
    r = rsft("score", str(rd), "--scorer", "myscorer:not_a_number", cwd=workdir)
    assert r.returncode == 2 and "not a number" in r.stderr
    r = rsft("score", str(rd), "--scorer", "myscorer:explode", "--on-error", "record", cwd=workdir)
    assert r.returncode == 0, r.stderr
    rewards = pq.read_table(rd / "rewards.parquet").to_pylist()
    assert all(x["failed"] and x["details"].startswith("error: ValueError") for x in rewards)
    assert f"{M * N} NaN" in r.stdout


def test_changed_config_refuses_then_new_version_keeps_the_old_outputs(finished_run, workdir, tmp_path):
    import shutil

    rd = tmp_path / "round-000"
    shutil.copytree(finished_run, rd)
    old = {n: file_sha256(rd / n) for n in ("completions.parquet", "rewards.parquet")}
    r = rsft("score", str(rd), "--scorer", "myscorer:not_a_number", "--on-error", "record", cwd=workdir)
    assert r.returncode == 2
    assert "the score stage was run with another config (scoring.on_error, scoring.scorer, scoring.scorer_name)" in r.stderr
    assert file_sha256(rd / "rewards.parquet") == old["rewards.parquet"]
    r = rsft("score", str(rd), "--scorer", "myscorer:not_a_number", "--on-error", "record", "--new-version",
             cwd=workdir)
    assert r.returncode == 0, r.stderr
    kept = rd / "versions" / "v001"
    assert file_sha256(kept / "rewards.parquet") == old["rewards.parquet"]
    assert (kept / "selected.jsonl").exists() and not (rd / "selected.jsonl").exists()
    assert file_sha256(rd / "completions.parquet") == old["completions.parquet"]  # scoring only: kept in place
    r = rsft("generate", str(rd), "--config", "config.yaml", "--max-new-tokens", "3", cwd=workdir)
    assert r.returncode == 2 and "another config (generation.sampling.max_new_tokens)" in r.stderr
