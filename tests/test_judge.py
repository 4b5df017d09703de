"""The LLM-as-judge scorer against real HTTP servers: the fake OpenAI server (exact replies, failures)
and ``rsft serve`` of the tiny random model as the judge (the whole wiring, its reply unparseable)."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fake_openai_server import FakeServer

from rsft.errors import RsftError
from rsft.score import as_scorer
from rsft.score.judge import DEFAULT_RUBRIC, JudgeScorer, fill_rubric, parse_score

REPLIES = {
    "good": "Clear and right.\nScore: 9",
    "bad": "Wrong: the sum is 5, not 6. Score: 2/10",
    "hopeless": "I would rather not say.",
}


def judge_reply(body: dict[str, Any]) -> str:
    """The fake judge: a fixed reply per completion; ``noisy`` parses only when asked again (seed > 0)."""
    completion = body["messages"][-1]["content"]
    if completion == "noisy":
        return "Score: 5" if body["seed"] > 0 else "hmm, hard to say"
    return REPLIES[completion]


@pytest.fixture(scope="module")
def module_server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def server(module_server: FakeServer) -> FakeServer:
    module_server.reset()
    module_server.cfg.reply = judge_reply
    return module_server


def make(server: FakeServer, **options: Any) -> JudgeScorer:
    return JudgeScorer("fake-judge", base_url=server.base_url, rubric="{completion}", backoff=0.01, **options)


def test_parse_score() -> None:
    assert parse_score("fine.\nScore: 7", 1, 10) == 7
    assert parse_score("**Score:** 8.5 / 10", 1, 10) == 8.5
    assert parse_score("Score: 3. On reflection, score = 4", 1, 10) == 4  # the last labelled one
    assert parse_score("Score: 42 but really 6", 1, 10) == 6  # labelled, out of range: the last number in range
    assert parse_score("I'd give it an 8.", 1, 10) == 8
    assert parse_score("step12 has 3.5.1 items", 1, 10) is None  # numbers glued to words or dots are not scores
    assert parse_score("Score: -1", -1, 1) == -1
    assert parse_score("no number here", 1, 10) is None


def test_fill_rubric_is_one_pass() -> None:
    values = {"prompt": "say {completion}", "completion": "x {answer}", "answer": "A", "low": "1", "high": "10"}
    assert fill_rubric("P={prompt} C={completion} {json: 1} {low}-{high}", values) == (
        "P=say {completion} C=x {answer} {json: 1} 1-10")


def test_scores_parsed_normalised_retried_and_nan_counted(server: FakeServer, capsys) -> None:
    scorer = make(server, parse_retries=2)
    out = scorer.score(["q"] * 4, ["good", "bad", "noisy", "hopeless"], [{}] * 4)
    assert [v.score for v in out[:3]] == [8 / 9, 1 / 9, 4 / 9]  # (x - 1) / (10 - 1)
    assert math.isnan(out[3].score) and out[3].details.startswith("unparseable after 3 tries: I would rather")
    assert out[0].details == "judge 9"
    assert scorer.last_stats == {"pairs": 4, "unparseable": 1, "journal_reused": 0}
    assert "judge:fake-judge: 1 of 4 replies had no score in [1, 10] after 3 tries" in capsys.readouterr().err
    bodies = server.stats.bodies
    assert len(bodies) == 1 + 1 + 2 + 3  # the noisy pair once more, the hopeless one twice more
    by_seed = sorted((b["seed"], b["temperature"]) for b in bodies if b["messages"][-1]["content"] == "hopeless")
    assert by_seed == [(0, 0.0), (1, 0.7), (2, 0.7)]
    assert all(b["model"] == "fake-judge" and b["n"] == 1 and b["max_tokens"] == 256 for b in bodies)
    assert set(server.stats.paths) == {"/v1/chat/completions"}


def test_http_errors_and_dropped_connections_are_retried(server: FakeServer) -> None:
    server.cfg.script = ["500", "drop", "429"]
    out = make(server, concurrency=1).score(["q"], ["good"], [{}])
    assert out[0].score == 8 / 9 and server.stats.requests == 4
    server.reset()
    server.cfg.fail_status = 400
    server.cfg.fail_first = 1
    with pytest.raises(RsftError, match="HTTP 400"):  # not retried: the request itself is wrong
        make(server).score(["q"], ["good"], [{}])


def test_journal_replays_a_crashed_run_without_paying_twice(server: FakeServer, tmp_path: Path) -> None:
    journal = tmp_path / "judge.jsonl"
    pairs = ["good", "bad", "noisy", "hopeless", "good"]
    server.cfg.fail_after = 3  # the server dies after 3 replies
    server.cfg.fail_status = 503
    with pytest.raises(RsftError, match="failed after 2 attempts"):
        make(server, journal=journal, concurrency=1, max_retries=1).score(["q"] * 5, pairs, [{}] * 5)
    paid = server.stats.served
    assert paid == 3 and len(journal.read_text().splitlines()) == 3
    server.reset()
    server.cfg.reply = judge_reply
    scorer = make(server, journal=journal, concurrency=3)
    out = scorer.score(["q"] * 5, pairs, [{}] * 5)
    # 1 + 1 + 2 + 3 + 0 requests in all (the second "good" is the same request as the first), 3 from the journal
    assert server.stats.served == 7 - paid and scorer.last_stats["journal_reused"] >= paid
    assert [v.score for v in out if not math.isnan(v.score)] == [8 / 9, 1 / 9, 4 / 9, 8 / 9]
    served = server.stats.served
    again = make(server, journal=journal).score(["q"] * 5, pairs, [{}] * 5)
    assert server.stats.served == served  # everything replayed, the NaN pair's retries too
    assert [v.details for v in again] == [v.details for v in out]


def test_concurrency_is_a_bounded_thread_pool(server: FakeServer) -> None:
    server.cfg.delay = 0.2
    started = time.monotonic()
    out = make(server, concurrency=4).score(["q"] * 8, ["good"] * 4 + ["bad"] * 4, [{}] * 8)
    assert [v.score for v in out] == [8 / 9] * 4 + [1 / 9] * 4
    assert server.stats.max_in_flight == 4
    assert time.monotonic() - started < 8 * 0.2  # not one after the other


def test_spec_options_default_rubric_and_key(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.cfg.reply = lambda body: "Score: 4"
    server.cfg.api_key = "sk-env"
    monkeypatch.setenv("OPENAI_API_KEY", "sk-env")
    scorer = as_scorer("judge:my:judge-model", {"base_url": server.base_url, "scale": [0, 8], "concurrency": 2.0})
    assert scorer.name == "judge:my:judge-model" and isinstance(scorer, JudgeScorer) and scorer.concurrency == 2
    chat = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "2+2?"}]
    out = scorer.score([chat], ["4"], [{"answer": 4}])
    assert out[0].score == 0.5
    body = server.stats.bodies[-1]
    assert body["model"] == "my:judge-model" and body["messages"] == [{"role": "user", "content": fill_rubric(
        DEFAULT_RUBRIC, {"prompt": "system: be brief\nuser: 2+2?", "completion": "4", "answer": "4",
                         "low": "0", "high": "8"})}]
    assert "[Reference answer (may be empty)]\n4\n" in body["messages"][0]["content"]
    monkeypatch.delenv("OPENAI_API_KEY")
    server.cfg.api_key = "sk-opt"
    as_scorer("judge:m", {"base_url": server.base_url, "api_key": "sk-opt", "system": "grade"}).score(["q"], ["a"], [{}])
    assert server.stats.headers[-1]["authorization"] == "Bearer sk-opt"
    assert server.stats.bodies[-1]["messages"][0] == {"role": "system", "content": "grade"}


def test_bad_options(tmp_path: Path) -> None:
    with pytest.raises(RsftError, match="unknown option.*rubrik"):
        as_scorer("judge:m", {"rubrik": "x"})
    with pytest.raises(RsftError, match=r"must contain \{completion\}"):
        as_scorer("judge:m", {"rubric": "rate {prompt}"})
    with pytest.raises(RsftError, match="needs the judge's model"):
        as_scorer("judge", {})
    with pytest.raises(RsftError, match="scale needs low < high"):
        as_scorer("judge:m", {"scale": [5, 1]})
    with pytest.raises(RsftError, match="rubric_file .*missing"):
        as_scorer("judge:m", {"rubric_file": str(tmp_path / "missing")})
    (tmp_path / "rubric.txt").write_text("Grade {completion} from {low} to {high}")
    assert as_scorer("judge:m", {"rubric_file": str(tmp_path / "rubric.txt")}).rubric.startswith("Grade")


# --- rsft serve of the tiny model as the judge ---------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_judge(tiny_lm: Path) -> Iterator[str]:
    """``python -m rsft.serve`` of the tiny random Llama on a free port; yields its ``/v1`` URL."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "rsft.serve", "--model", str(tiny_lm), "--port", str(port), "--max-tokens", "8",
           "--max-n", "1"]
    proc = subprocess.Popen(cmd, env=dict(os.environ), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, proc.communicate()[1]
            try:
                if httpx.get(url + "/health").status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "rsft serve did not come up"
            time.sleep(0.2)
        yield url + "/v1"
    finally:
        proc.terminate()
        proc.communicate(timeout=30)


def test_rsft_serve_of_the_tiny_model_as_judge(tiny_judge: str, tmp_path: Path, capsys) -> None:
    """The random model never writes a score in [1000, 2000]: every pair goes the NaN path, retried,
    journaled, counted; a rerun replays the journal (a request less would show in the count)."""
    options = {"base_url": tiny_judge, "max_tokens": 8, "parse_retries": 1, "scale": [1000, 2000],
               "journal": str(tmp_path / "j.jsonl"), "concurrency": 2}
    scorer = as_scorer("judge:tiny", options)
    out = scorer.score(["Q: What is 2 + 3?\nA:", "Q: What is 7 - 4?\nA:"], [" 5", " 3"], [{}, {}])
    assert all(math.isnan(v.score) and v.details.startswith("unparseable after 2 tries") for v in out)
    assert "judge:tiny: 2 of 2 replies had no score in [1000, 2000] after 2 tries" in capsys.readouterr().err
    lines = [json.loads(line) for line in (tmp_path / "j.jsonl").read_text().splitlines()]
    assert len(lines) == 4 and all(len(e["choices"]) == 1 for e in lines)
    rerun = as_scorer("judge:tiny", options)
    assert [v.details for v in rerun.score(["Q: What is 2 + 3?\nA:", "Q: What is 7 - 4?\nA:"], [" 5", " 3"],
                                           [{}, {}])] == [v.details for v in out]
    assert rerun.last_stats["journal_reused"] == 4


def test_rsft_bon_with_a_judge_from_the_cli(server: FakeServer, tmp_path: Path) -> None:
    """`rsft bon --scorer judge:...`: candidates and judge from the fake server; the judge prefers seed 2."""
    server.cfg.max_choices = 1  # one choice per request: each candidate its own seed

    def reply(body: dict[str, Any]) -> str:
        if "messages" not in body:
            return f"candidate s{body['seed']}"
        graded = body["messages"][-1]["content"]
        return f"Score: {8 if 'candidate s2' in graded else 3}"

    server.cfg.reply = reply
    (tmp_path / "p.jsonl").write_text(json.dumps({"prompt": "Q: 1 + 1?\nA:"}) + "\n")
    cmd = [sys.executable, "-m", "rsft.cli", "bon", "--prompts", "p.jsonl", "--backend", "openai",
           "--model", "gen", "--option", f"base_url={server.base_url}", "-n", "3", "--scorer", "judge:grader",
           "--scorer-option", f"base_url={server.base_url}", "--scorer-option", "scale=[0, 10]",
           "--output", "out.jsonl"]
    r = subprocess.run(cmd, cwd=tmp_path, env={**os.environ, "HF_HUB_OFFLINE": "1"}, capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    row = json.loads((tmp_path / "out.jsonl").read_text())
    assert [c["text"] for c in row["candidates"]] == ["candidate s0", "candidate s1", "candidate s2"]
    assert [c["score"] for c in row["candidates"]] == [0.3, 0.3, 0.8] and row["index"] == 2
    judged = [b for b in server.stats.bodies if "messages" in b]
    assert len(judged) == 3 and {b["model"] for b in judged} == {"grader"}
