"""``kill -9`` the real CLI at chosen points of a round, rerun the same command, and get the same round.

One round (6 prompts x 3 samples, shards of 1 prompt, a tiny random Llama on the ``hf`` backend) is
run once without interruption (in this process, through ``pipeline.run_round``, what ``rsft run``
calls). A second copy of the same run is then killed with SIGKILL at each
point below in turn, every time by rerunning the same ``rsft run`` command, which must resume from
what the previous process left. ``crash_hook.py`` stops the process at an exact point of an atomic
write (after a file is in place, or halfway through writing its temp file) so the kill lands there
every time. The finished round must equal the uninterrupted one record for record, with no temp
file, shard or partial artifact left, and ``rsft status`` must have shown the stage as partial.
A last test kills an ``openai``-backend generation while it waits on a stalled server: the
responses it had received come back from its journal instead of from the server.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_cli import pythonpath

from rsft import pipeline
from rsft.config import load_config
from rsft.report import status

HOOK = Path(__file__).with_name("crash_hook.py")
ROUND_FILES = {"prompts.parquet", "completions.parquet", "rewards.parquet", "selection.parquet",
               "selected.jsonl", "manifest.json"}
M, N = 6, 3
SHARD = r"[0-9a-f]{16}/"

KILL_POINTS = [
    # (what, where the process is stopped, stage -> status right after the kill)
    ("generation, 2 of 6 shards written, halfway through writing the 3rd",
     f"before:completions-{SHARD}00002\\.parquet$", {"generate": "partial (2 shards)", "score": "missing"}),
    ("generation, halfway through writing completions.parquet", "before:round-000/completions\\.parquet$",
     {"generate": "partial (6 shards)"}),
    ("generation, completions.parquet written, manifest entry halfway",
     "before:round-000/manifest\\.json$", {"generate": "partial (6 shards)", "score": "missing"}),
    ("scoring, after its 2nd of 6 shards", f"after:rewards-{SHARD}00001\\.parquet$",
     {"generate": "done", "score": "partial (2 shards)"}),
    ("scoring, halfway through writing its 5th shard", f"before:rewards-{SHARD}00004\\.parquet$",
     {"score": "partial (4 shards)"}),
    ("scoring, halfway through writing rewards.parquet", "before:round-000/rewards\\.parquet$",
     {"score": "partial (6 shards)"}),
    ("scoring, rewards.parquet written, manifest entry halfway", "before:round-000/manifest\\.json$",
     {"generate": "done", "select": "missing"}),
    ("selection, halfway through writing selection.parquet", "before:round-000/selection\\.parquet$",
     {"score": "done", "select": "missing"}),
    ("export, halfway through writing selected.jsonl", "before:round-000/selected\\.jsonl$",
     {"select": "done", "export": "missing"}),
]


def _env(workdir: Path, **extra: str) -> dict[str, str]:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "OMP_NUM_THREADS": "1", "PYTHONPATH": pythonpath(workdir), **extra}


def _rsft(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, str(HOOK), *args], cwd=workdir, env=_env(workdir),
                          capture_output=True, text=True, timeout=300)


def _run_and_kill(workdir: Path, config: str, hang: str) -> str:
    """Start ``rsft run``, wait until the hook holds it at ``hang``, SIGKILL it; return its stderr."""
    marker = workdir / "reached"
    marker.unlink(missing_ok=True)
    proc = subprocess.Popen([sys.executable, str(HOOK), "run", "--config", config], cwd=workdir,
                            env=_env(workdir, RSFT_TEST_HANG=hang, RSFT_TEST_HANG_MARKER=str(marker)),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 240
    while not marker.exists():
        if proc.poll() is not None:
            raise AssertionError(f"finished (rc {proc.returncode}) before reaching {hang}: {proc.stderr.read()}")
        if time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"never reached {hang}")
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL
    return proc.stderr.read()


def _tables(round_dir: Path) -> dict[str, list[dict]]:
    out = {name: pq.read_table(round_dir / name).to_pylist()
           for name in ("prompts.parquet", "completions.parquet", "rewards.parquet", "selection.parquet")}
    out["selected.jsonl"] = [json.loads(x) for x in (round_dir / "selected.jsonl").read_text().splitlines()]
    return out


def _leftovers(run_dir: Path) -> list[str]:
    return sorted(str(p.relative_to(run_dir)) for p in run_dir.rglob("*")
                  if p.name.endswith(".tmp") or ".shards" in p.parts)


@pytest.fixture
def workdir(tmp_path: Path, tiny_lm: Path) -> Path:
    rows = [{"prompt": f"Q: What is {i} + {i}?\nA:", "answer": str(2 * i)} for i in range(M)]
    (tmp_path / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (tmp_path / "lengthscore.py").write_text("def length(prompt, completion):\n    return float(len(completion))\n")
    for name in ("ref", "killed"):
        (tmp_path / f"{name}.yaml").write_text(textwrap.dedent(f"""
            name: {name}
            out: {tmp_path / 'runs'}
            prompts: {{path: {tmp_path / 'prompts.jsonl'}}}
            generation:
              n: {N}
              shard_size: 1
              generator: {{backend: hf, model: {tiny_lm}}}
              sampling: {{temperature: 1.0, top_k: 50, max_new_tokens: 8, seed: 5}}
            scoring: {{scorer: "lengthscore:length"}}
            selection: {{strategy: best}}
        """))
    return tmp_path


def test_kill_9_at_every_point_then_resume_gives_the_uninterrupted_round(workdir: Path, monkeypatch) -> None:
    monkeypatch.syspath_prepend(str(workdir))  # the uninterrupted run, in this process (saves a model load)
    pipeline.run_round(load_config(workdir / "ref.yaml"), quiet=True)
    reference = _tables(workdir / "runs" / "ref" / "round-000")
    assert len(reference["completions.parquet"]) == M * N and len(reference["selected.jsonl"]) == M

    run_dir = workdir / "runs" / "killed"
    round_dir = run_dir / "round-000"
    survived = []
    for what, hang, expected in KILL_POINTS:
        _run_and_kill(workdir, "killed.yaml", hang)
        if hang.startswith("before:"):  # caught mid-write: the half-written temp file is there
            assert any(p.name.endswith(".tmp") for p in round_dir.rglob("*")), what
        state = status.round_status(round_dir)
        assert {k: state[k] for k in expected} == expected, (what, state)
        if not survived:
            r = _rsft(workdir, "status", str(run_dir))
            assert r.returncode == 0 and "partial (2 shards)" in r.stdout, r.stdout + r.stderr
        survived.append(what)

    r = _rsft(workdir, "run", "--config", "killed.yaml")
    assert r.returncode == 0, r.stderr
    assert len(survived) == len(KILL_POINTS) == 9
    assert _leftovers(run_dir) == []
    assert {p.name for p in round_dir.iterdir()} == ROUND_FILES
    assert _tables(round_dir) == reference
    manifest = json.loads((round_dir / "manifest.json").read_text())
    # the resume after the manifest kill reused the finished completions: nothing was generated twice
    assert manifest["stages"]["generate"]["counts"]["shards_generated"] == 0
    assert manifest["stages"]["score"]["counts"]["shards_scored"] == 0
    r = _rsft(workdir, "status", str(run_dir), "--json")
    assert json.loads(r.stdout)["round-000"] == {"generate": "done", "score": "done", "select": "done",
                                                 "export": "done", "train": "missing", "eval": "missing"}


def test_kill_9_while_waiting_on_a_server_keeps_the_responses_received(tmp_path: Path) -> None:
    """``openai`` backend: the server answers 3 requests and then stalls; the CLI, killed while it
    waits, has journaled those 3 (fsynced as each arrived), so the rerun asks the server only for
    the other 2 and writes what an uninterrupted run writes."""
    from fake_openai_server import FakeServer

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))
    with FakeServer() as server:
        args = ["generate", "--prompts", str(prompts), "--backend", "openai", "--model", "fake-model", "-n", "2",
                "--shard-size", "2", "--seed", "3", "--option", f"base_url={server.base_url}",
                "--option", "concurrency=1"]
        round_dir = tmp_path / "killed" / "round-000"
        server.cfg.script, server.cfg.hang_seconds = ["ok"] * 3 + ["stall"] * 10, 30.0
        proc = subprocess.Popen([sys.executable, str(HOOK), args[0], str(round_dir), *args[1:]], cwd=tmp_path,
                                env=_env(tmp_path), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 120
        journals = round_dir / ".shards"
        while sum(len(j.read_text().splitlines()) for j in journals.glob("journal-*.jsonl")) < 3:
            assert proc.poll() is None and time.monotonic() < deadline, "never got 3 responses"
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        assert status.round_status(round_dir)["generate"] == "partial (1 shards, 3 responses journaled)"

        server.reset()
        r = _rsft(tmp_path, args[0], str(round_dir), *args[1:])
        assert r.returncode == 0, r.stderr
        assert server.stats.requests == 2  # of 5: the 3 journaled ones were not asked again
        assert _leftovers(round_dir.parent) == []
        server.reset()
        r = _rsft(tmp_path, args[0], str(tmp_path / "ref" / "round-000"), *args[1:])
        assert r.returncode == 0 and server.stats.requests == 5
    assert (pq.read_table(round_dir / "completions.parquet").to_pylist()
            == pq.read_table(tmp_path / "ref" / "round-000" / "completions.parquet").to_pylist())
