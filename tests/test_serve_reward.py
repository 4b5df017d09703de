"""``rsft serve-reward`` on 127.0.0.1 and the ``http:URL`` scorer: both protocols, the limits, retries,
the journal, and a round scored through a served checker against the same checker in-process."""

from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from test_serve import KEY, Running, _wait_for, _wait_for_health

from rsft import pipeline
from rsft.config import GenerationConfig, PromptsConfig, RunConfig, ScoringConfig, TaskConfig
from rsft.errors import RsftError
from rsft.score import as_scorer
from rsft.serve.reward import create_reward_app
from rsft.types import Completion


def picky(prompt: Any, completion: str, answer: str) -> float:
    """A checker that fails (raises) on the completion 'boom': 1.0 when the completion is the answer."""
    if completion == "boom":
        raise ValueError("cannot grade 'boom'")
    return float(completion.strip() == answer)


class Blocking:
    """A scorer that waits for ``release`` on every call, so tests can hold the worker busy."""

    name = "blocking"

    def __init__(self) -> None:
        self.release, self.started = threading.Event(), threading.Event()

    def score(self, prompts, completions, metadata):
        self.started.set()
        self.release.wait(10)
        return [float(len(c)) for c in completions]


def post(server: Running, path: str, body: Any = None, key: str | None = KEY, **kwargs: Any) -> httpx.Response:
    return server.post(path, body, key=key, **kwargs)


@pytest.fixture(scope="module")
def math_server():
    with Running(create_reward_app("math", api_key=KEY, max_pairs=8, max_body_bytes=20_000)) as server:
        yield server


# --- the OpenRLHF protocol -------------------------------------------------------------------------


def test_openrlhf_protocol_scores_query_minus_prompt_against_the_label(math_server):
    body = {"query": ["Q: 1+1? A: \\boxed{2}", "Q: 2+2? A: 5", "Q: 3+3? A: 6"],
            "prompts": ["Q: 1+1? A:", "Q: 2+2? A:", "Q: 3+3? A:"], "labels": ["2", "4", '{"answer": "6"}']}
    r = post(math_server, "/get_reward", body)
    assert r.status_code == 200, r.text
    assert r.json()["rewards"] == [1.0, 0.0, 1.0] and r.json()["scores"] == [1.0, 0.0, 1.0]
    assert r.json()["details"] == ["answer: '2'", "answer: '5'", "answer: '6'"]


def test_openrlhf_failed_pairs_get_zero_and_the_plain_protocol_null():
    with Running(create_reward_app("test_serve_reward:picky")) as server:
        r = post(server, "/get_reward", {"query": ["Q: 7", "Q: boom"], "prompts": ["Q: ", "Q: "],
                                         "labels": ["7", "7"]})
        assert r.status_code == 200 and r.json()["rewards"] == [1.0, 0.0]
        assert r.json()["details"][1] == "error: ValueError: cannot grade 'boom'"
        r = post(server, "/score", {"prompts": ["a", "b", "c"], "completions": ["7", "boom", "8"],
                                    "answer": ["7", "7", "7"]})
        assert r.json() == {"rewards": [1.0, None, 0.0], "failed": [False, True, False], "scorer": "picky",
                            "details": [None, "error: ValueError: cannot grade 'boom'", None]}


# --- the plain protocol ----------------------------------------------------------------------------


def test_plain_protocol_takes_metadata_as_columns_or_objects_and_chat_prompts(math_server):
    chat = [{"role": "user", "content": "1+1?"}]
    by_columns = post(math_server, "/score", {"prompts": [chat, "2+2?"], "completions": ["\\boxed{2}", "3"],
                                              "answer": ["2", "4"]})
    by_objects = post(math_server, "/score", {"prompts": [chat, "2+2?"], "completions": ["\\boxed{2}", "3"],
                                              "metadata": [{"answer": "2"}, {"answer": "4"}]})
    assert by_columns.status_code == 200, by_columns.text
    assert by_columns.json() == by_objects.json() == {
        "rewards": [1.0, 0.0], "details": ["answer: '2'", "answer: '3'"], "failed": [False, False],
        "scorer": "math"}
    health = httpx.get(math_server.url + "/health").json()
    assert health["scorer"] == "math" and health["waiting"] == 0 and health["scored"] >= 2


@pytest.mark.parametrize("path, body, status, message", [
    ("/score", {"prompts": ["a"], "completions": ["1"]}, 400, "needs the metadata field 'answer'"),
    ("/score", {"prompts": ["a"], "completions": "1"}, 422, "completions: expected a list"),
    ("/score", {"prompts": ["a", "b"], "completions": ["1"], "answer": ["1"]}, 422,
     "prompts: expected 1 values (one per pair), got 2"),
    ("/score", {"prompts": [3], "completions": ["1"], "answer": ["1"]}, 422, "prompts[0]: expected a string"),
    ("/score", {"prompts": ["a"], "completions": ["1"], "metadata": [3]}, 422, "metadata[0]: expected an object"),
    ("/score", [1, 2], 422, "body: expected a JSON object"),
    ("/get_reward", {"query": ["a", 5]}, 422, "query[1]: expected a string, got int"),
    ("/get_reward", {"prompts": ["a"]}, 422, "query: expected a list"),
    ("/get_reward", {"query": ["a"] * 9}, 422, "9 pairs exceed this server's max_pairs=8"),
])
def test_bad_requests_get_one_line_errors(math_server, path, body, status, message):
    r = post(math_server, path, body)
    assert r.status_code == status, r.text
    error = r.json()["error"]["message"]
    assert message in error and "\n" not in error


def test_auth_body_limit_and_malformed_json(math_server):
    body = {"query": ["x"], "labels": ["1"]}
    assert post(math_server, "/get_reward", body, key=None).status_code == 401
    assert post(math_server, "/get_reward", body, key="wrong").json()["error"]["code"] == "invalid_api_key"
    assert httpx.get(math_server.url + "/health").status_code == 200  # health stays open
    big = post(math_server, "/score", {"prompts": ["x" * 30_000], "completions": ["1"], "answer": ["1"]})
    assert big.status_code == 413 and big.json()["error"]["code"] == "request_too_large"
    bad = post(math_server, "/score", content=b'{"prompts": [', headers={"content-type": "application/json"})
    assert bad.status_code == 422 and "malformed JSON" in bad.json()["error"]["message"]


def test_full_queue_503_with_retry_after_then_everyone_answered():
    scorer = Blocking()
    with Running(create_reward_app(scorer, max_queue=1)) as server:
        statuses: dict[str, int] = {}

        def send(name: str) -> threading.Thread:
            t = threading.Thread(target=lambda: statuses.__setitem__(
                name, post(server, "/score", {"prompts": [name], "completions": [name]}).status_code))
            t.start()
            return t

        try:
            threads = [send("a")]
            assert scorer.started.wait(10)  # "a" holds the worker
            threads.append(send("b"))
            _wait_for(lambda: httpx.get(server.url + "/health").json()["waiting"] == 1)
            r = post(server, "/score", {"prompts": ["c"], "completions": ["c"]})
            assert r.status_code == 503 and r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "queue_full"
        finally:
            scorer.release.set()
        for t in threads:
            t.join(10)
    assert statuses == {"a": 200, "b": 200}


def test_request_timeout_504():
    scorer = Blocking()
    with Running(create_reward_app(scorer, request_timeout=0.3)) as server:
        try:
            r = post(server, "/score", {"prompts": ["a"], "completions": ["a"]})
            assert r.status_code == 504 and r.json()["error"]["code"] == "timeout"
        finally:
            scorer.release.set()


# --- the http:URL scorer ---------------------------------------------------------------------------


class Flaky:
    """ASGI wrapper: the first ``failures`` POSTs get 500, the rest reach the app; counts the POSTs."""

    def __init__(self, app: Any, failures: int) -> None:
        self.app, self.failures, self.posts = app, failures, 0

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            self.posts += 1
            if self.posts <= self.failures:
                await send({"type": "http.response.start", "status": 500,
                            "headers": [(b"content-type", b"application/json")]})
                await send({"type": "http.response.body", "body": b'{"error": {"message": "flaky"}}'})
                return
        await self.app(scope, receive, send)


@pytest.mark.parametrize("protocol", ["rsft", "openrlhf"])
def test_http_scorer_retries_then_scores_like_the_checker_in_process(protocol):
    flaky = Flaky(create_reward_app("math"), failures=2)
    prompts, completions = ["Q: 1+1?", "Q: 2+2?", "Q: 3+3?"], ["\\boxed{2}", "5", " 6"]
    metadata = [{"answer": "2"}, {"answer": "4"}, {"answer": "6"}]
    with Running(flaky) as server:
        remote = as_scorer("http:" + server.url.removeprefix("http:"),
                           {"protocol": protocol, "backoff": 0.01, "batch_size": 2, "concurrency": 1})
        got = remote.score(prompts, completions, metadata)
    local = as_scorer("math").score(prompts, completions, metadata)
    assert [(v.score, v.details) for v in got] == [(v.score, v.details) for v in local]
    assert [v.score for v in got] == [1.0, 0.0, 1.0]
    assert flaky.posts == 4  # two 500s, then two batches of at most 2 pairs


def test_http_scorer_journal_answers_a_rerun_without_the_server(tmp_path):
    journal = tmp_path / "j.jsonl"
    with Running(create_reward_app("math")) as server:
        url = server.url
        first = as_scorer(f"http:{url.removeprefix('http:')}", {"journal": str(journal)}).score(
            ["a", "b"], ["\\boxed{2}", "3"], [{"answer": "2"}, {"answer": "2"}])
    again = as_scorer(f"http:{url.removeprefix('http:')}", {"journal": str(journal), "max_retries": 0})
    assert again.score(["a", "b"], ["\\boxed{2}", "3"], [{"answer": "2"}, {"answer": "2"}]) == first
    assert again.last_stats == {"requests": 1, "journal_reused": 1}
    with pytest.raises(RsftError, match="failed after 1 attempts"):  # a pair not in the journal needs the server
        again.score(["c"], ["4"], [{"answer": "4"}])


def test_http_scorer_rejects_a_bad_url_protocol_and_option():
    with pytest.raises(RsftError, match="expected http://HOST:PORT"):
        as_scorer("http:nowhere")
    with pytest.raises(RsftError, match="protocol must be one of rsft, openrlhf"):
        as_scorer("http://127.0.0.1:1", {"protocol": "grpc"})
    with pytest.raises(RsftError, match="unknown option"):
        as_scorer("http://127.0.0.1:1", {"retries": 3})


# --- a round scored through the server -------------------------------------------------------------


class Oracle:
    """Answers chain_sum questions right in column 1, off by one in column 2, 'boom' in column 3."""

    name = "oracle"

    def generate(self, prompts, n, sampling):
        out = []
        for p in prompts:
            expr = p.rsplit("problem: ", 1)[1].split(" =")[0]
            right = eval(expr)  # noqa: S307 - chain_sum questions are digit +/- chains
            texts = [f" {right}", f" {right + 1}", "boom", f" {right} and more"]
            out.append([Completion(texts[j % 4], 2, "stop") for j in range(n)])
        return out


def _round(tmp_path: Path, name: str, scorer: str, options: dict[str, Any] | None = None) -> Path:
    config = RunConfig(
        name=name, out=str(tmp_path),
        prompts=PromptsConfig(task=TaskConfig(name="chain_sum", size=10, options={"min_terms": 2, "max_terms": 3})),
        generation=GenerationConfig(n=4, shard_size=4),
        scoring=ScoringConfig(scorer=scorer, options=options or {}, on_error="record"),
    )
    return pipeline.run_round(config, generator=Oracle(), quiet=True).round_dir


@pytest.mark.parametrize("checker, protocol", [("task", "rsft"), ("math", "openrlhf"),
                                               ("test_serve_reward:picky", "rsft")])
def test_a_round_scored_through_the_served_checker_matches_the_checker_in_process(tmp_path, checker, protocol):
    local = pq.read_table(_round(tmp_path, "local", checker) / "rewards.parquet").to_pylist()
    with Running(create_reward_app(checker, api_key=KEY)) as server:
        os.environ["RSFT_REWARD_API_KEY"] = KEY
        try:
            rd = _round(tmp_path, "remote", "http:" + server.url.removeprefix("http:"), {"protocol": protocol})
        finally:
            del os.environ["RSFT_REWARD_API_KEY"]
    remote = pq.read_table(rd / "rewards.parquet").to_pylist()
    assert len(local) == 40
    drop = ("scorer",) if protocol == "rsft" else ("scorer", "details")  # openrlhf answers rewards only
    def comparable(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:  # NaN != NaN: compare it as "nan"
        return [{k: "nan" if isinstance(v, float) and math.isnan(v) else v for k, v in row.items() if k not in drop}
                for row in rows]

    assert comparable(remote) == comparable(local)
    rewards = [row["reward"] for row in local]
    assert rewards[0::4] == [1.0] * 10 and 0.0 <= max(rewards[1::4]) < 1.0
    failed = [row["details"] for row in local if row["failed"]]
    assert failed == (["error: ValueError: cannot grade 'boom'"] * 10 if "picky" in checker else [])
    assert not (rd / ".shards").exists()  # the journal goes once the stage is recorded


# --- the command -----------------------------------------------------------------------------------


def test_rsft_serve_reward_command_with_a_user_scorer(tmp_path):
    (tmp_path / "my_checks.py").write_text("def ends_with_answer(prompt, completion, answer):\n"
                                           "    return float(completion.endswith(str(answer)))\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    env = {**os.environ, "RSFT_TEST_KEY": KEY, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    cmd = [sys.executable, "-m", "rsft.cli", "serve-reward", "--scorer", "my_checks:ends_with_answer",
           "--port", str(port), "--api-key-env", "RSFT_TEST_KEY", "--max-pairs", "2"]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    url = f"http://127.0.0.1:{port}"
    auth = {"Authorization": f"Bearer {KEY}"}
    try:
        _wait_for_health(proc, url)
        r = httpx.post(url + "/get_reward", json={"query": ["Q: x A: 12", "Q: y A: 13"], "prompts": ["Q: x A:"] * 2,
                                                  "labels": ["12", "12"]}, headers=auth)
        assert r.json()["rewards"] == [1.0, 0.0]
        assert httpx.post(url + "/get_reward", json={"query": ["a"] * 3}, headers=auth).status_code == 422
        assert httpx.post(url + "/score", json={"prompts": ["a"], "completions": ["1"]}).status_code == 401
    finally:
        proc.terminate()
        _, err = proc.communicate(timeout=20)
    lines = [json.loads(line) for line in err.splitlines() if line.startswith("{")]
    assert [(e["path"], e["status"], e["n"]) for e in lines] == [
        ("/health", 200, None), ("/get_reward", 200, 2), ("/get_reward", 422, None), ("/score", 401, None)]


def test_rsft_serve_reward_needs_its_key_variable(tmp_path):
    r = subprocess.run([sys.executable, "-m", "rsft.cli", "serve-reward", "--scorer", "math", "--api-key-env",
                        "RSFT_UNSET_VARIABLE_X"], capture_output=True, text=True, timeout=60,
                       env={k: v for k, v in os.environ.items() if k != "RSFT_UNSET_VARIABLE_X"})
    assert r.returncode == 2 and r.stderr.strip().splitlines() == [
        "rsft: error: --api-key-env RSFT_UNSET_VARIABLE_X: that environment variable is unset or empty"]


class DiesAfter:
    """ASGI wrapper: answers the first ``answers`` POSTs, then 500 until ``revived``; counts what it answered."""

    def __init__(self, app: Any, answers: int) -> None:
        self.app, self.answers, self.answered, self.revived = app, answers, 0, False

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and scope["method"] == "POST":
            if not self.revived and self.answered >= self.answers:
                await send({"type": "http.response.start", "status": 500, "headers": []})
                await send({"type": "http.response.body", "body": b"down"})
                return
            self.answered += 1
        await self.app(scope, receive, send)


def test_a_rerun_after_the_reward_service_failed_asks_only_for_what_it_never_answered(tmp_path):
    server_app = DiesAfter(create_reward_app("math"), answers=5)
    options = {"batch_size": 4, "concurrency": 1, "max_retries": 0}
    with Running(server_app) as server:
        spec = "http:" + server.url.removeprefix("http:")
        with pytest.raises(RsftError, match="failed after 1 attempts; last error: HTTP 500"):
            _round(tmp_path, "remote", spec, options)
        (journal,) = (tmp_path / "remote" / "round-000" / ".shards").glob("score-journal-*.jsonl")
        assert len(journal.read_text().splitlines()) == 5
        server_app.revived = True
        rd = _round(tmp_path, "remote", spec, options)
    assert server_app.answered == 10  # 40 pairs in batches of 4: the 5 answered before were not asked again
    local = pq.read_table(_round(tmp_path, "local", "math") / "rewards.parquet").column("reward").to_pylist()
    assert pq.read_table(rd / "rewards.parquet").column("reward").to_pylist() == local
    assert not (rd / ".shards").exists()
