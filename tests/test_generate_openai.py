"""OpenAIGenerator against a real local HTTP server (FastAPI + uvicorn in a thread), offline."""

from __future__ import annotations

import asyncio
import json
import socket
import time
from collections.abc import Iterator

import pyarrow.parquet as pq
import pytest
from fake_openai_server import TOKEN_LOGPROB, FakeServer

from rsft.errors import RsftError
from rsft.generate import Generator, make_generator
from rsft.generate.openai import OpenAIGenerator, _parse_retry_after
from rsft.types import SamplingParams

CHAT = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hi"}]


@pytest.fixture(scope="module")
def _server() -> Iterator[FakeServer]:
    with FakeServer() as server:
        yield server


@pytest.fixture
def server(_server: FakeServer) -> FakeServer:
    _server.reset()
    return _server


def make(server: FakeServer, **options) -> OpenAIGenerator:
    options.setdefault("backoff", 0.01)
    return OpenAIGenerator(model="fake-model", base_url=server.base_url, **options)


def texts(rows):
    return [[c.text for c in row] for row in rows]


def test_text_prompts_exact_n_and_request_body(server: FakeServer) -> None:
    gen = make(server)
    sampling = SamplingParams(temperature=0.7, top_p=0.9, top_k=20, max_new_tokens=12, seed=3)
    rows = gen.generate(["a", "b"], 3, sampling)
    assert texts(rows) == [["a s3 c0", "a s3 c1", "a s3 c2"], ["b s3 c0", "b s3 c1", "b s3 c2"]]
    assert server.stats.requests == 2
    assert set(server.stats.paths) == {"/v1/completions"}
    body = server.stats.bodies[0]
    assert {k: body[k] for k in ("model", "temperature", "top_p", "top_k", "max_tokens", "seed", "n")} == {
        "model": "fake-model",
        "temperature": 0.7,
        "top_p": 0.9,
        "top_k": 20,
        "max_tokens": 12,
        "seed": 3,
        "n": 3,
    }
    assert "stop" not in body and "logprobs" not in body
    c = rows[0][0]
    assert (c.finish_reason, c.generator, c.logprob) == ("stop", "openai:fake-model", None)
    assert c.n_tokens is None  # usage covers 3 choices: no per-choice count to report
    assert isinstance(gen, Generator)


def test_chat_prompts_go_to_chat_endpoint(server: FakeServer) -> None:
    rows = make(server, name="srv").generate([CHAT], 2, SamplingParams(stop=("\n",)))
    assert texts(rows) == [["hi s0 c0", "hi s0 c1"]]
    assert server.stats.paths == ["/v1/chat/completions"]
    body = server.stats.bodies[0]
    assert body["messages"] == CHAT and body["stop"] == ["\n"] and "top_k" not in body
    assert rows[0][0].generator == "srv"


def test_many_prompts_keep_order(server: FakeServer) -> None:
    server.cfg.delay = 0.005
    prompts = [f"p{i}" if i % 3 else [{"role": "user", "content": f"p{i}"}] for i in range(40)]
    rows = make(server, concurrency=16).generate(prompts, 2, SamplingParams(seed=1))
    assert texts(rows) == [[f"p{i} s1 c0", f"p{i} s1 c1"] for i in range(40)]


def test_single_choice_server_is_topped_up(server: FakeServer) -> None:
    server.cfg.max_choices = 1  # like llama.cpp: ignores n
    rows = make(server).generate(["x", "y"], 4, SamplingParams(seed=10))
    assert texts(rows) == [[f"x s{10 + i} c0" for i in range(4)], [f"y s{10 + i} c0" for i in range(4)]]
    # one probe with n=4, then three follow-ups with n=1 and distinct seeds, per prompt
    assert server.stats.requests == 8
    x_bodies = sorted((b for b in server.stats.bodies if b["prompt"] == "x"), key=lambda b: b["seed"])
    assert [(b["n"], b["seed"]) for b in x_bodies] == [(4, 10), (1, 11), (1, 12), (1, 13)]
    assert all(c.n_tokens == 3 for row in rows for c in row)  # one choice each: usage is exact


def test_partial_choices_are_topped_up(server: FakeServer) -> None:
    server.cfg.max_choices = 2
    rows = make(server).generate(["x"], 5, SamplingParams())
    assert texts(rows) == [["x s0 c0", "x s0 c1", "x s1 c0", "x s1 c1", "x s2 c0"]]
    assert sorted(b["n"] for b in server.stats.bodies) == [1, 2, 5]


def test_max_n_per_request_splits(server: FakeServer) -> None:
    rows = make(server, max_n_per_request=2).generate(["x"], 5, SamplingParams(seed=0))
    assert texts(rows) == [["x s0 c0", "x s0 c1", "x s1 c0", "x s1 c1", "x s2 c0"]]
    assert sorted((b["seed"], b["n"]) for b in server.stats.bodies) == [(0, 2), (1, 2), (2, 1)]


def test_zero_choices_errors_out(server: FakeServer) -> None:
    server.cfg.max_choices = 0
    with pytest.raises(RsftError, match="no choices"):
        make(server, max_retries=2).generate(["x"], 2, SamplingParams())
    assert server.stats.requests == 3


@pytest.mark.parametrize("status", [500, 503, 429])
def test_transient_errors_are_retried(server: FakeServer, status: int) -> None:
    server.cfg.fail_first, server.cfg.fail_status = 2, status
    rows = make(server).generate(["a"], 2, SamplingParams())
    assert texts(rows) == [["a s0 c0", "a s0 c1"]]
    assert server.stats.requests == 3


def test_retry_after_is_honoured(server: FakeServer) -> None:
    server.cfg.fail_first, server.cfg.fail_status, server.cfg.retry_after = 1, 429, "0.4"
    start = time.monotonic()
    rows = make(server, backoff=0.001).generate(["a"], 1, SamplingParams())
    elapsed = time.monotonic() - start
    assert texts(rows) == [["a s0 c0"]]
    assert 0.4 <= elapsed < 3.0


def test_persistent_500_names_url(server: FakeServer) -> None:
    server.cfg.fail_first = 1000
    with pytest.raises(RsftError) as info:
        make(server, max_retries=2).generate(["a"], 1, SamplingParams())
    message = str(info.value)
    assert f"{server.base_url}/completions" in message and "HTTP 500" in message
    assert "simulated failure 3" in message and "\n" not in message
    assert server.stats.requests == 3


def test_400_fails_immediately_with_server_message(server: FakeServer) -> None:
    gen = make(server)
    gen.model = None  # type: ignore[assignment]  # the fake answers 400 without a model name
    with pytest.raises(RsftError) as info:
        gen.generate(["a"], 1, SamplingParams())
    assert (
        str(info.value) == f"{server.base_url}/completions: HTTP 400: missing required field model or prompt"
    )
    assert server.stats.requests == 1


def test_api_key_header(server: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    server.cfg.api_key = "sekrit"
    monkeypatch.setenv("RSFT_TEST_KEY", "sekrit")
    assert texts(make(server, api_key_env="RSFT_TEST_KEY").generate(["a"], 1, SamplingParams())) == [
        ["a s0 c0"]
    ]
    assert server.stats.headers[0]["authorization"] == "Bearer sekrit"
    monkeypatch.delenv("RSFT_TEST_KEY")
    with pytest.raises(RsftError, match="HTTP 401: Incorrect API key provided"):
        make(server, api_key_env="RSFT_TEST_KEY").generate(["a"], 1, SamplingParams())
    assert "authorization" not in server.stats.headers[1]
    assert server.stats.requests == 2


def test_concurrency_bound(server: FakeServer) -> None:
    server.cfg.delay = 0.03
    rows = make(server, concurrency=3).generate([f"p{i}" for i in range(15)], 1, SamplingParams())
    assert len(rows) == 15
    assert server.stats.max_in_flight == 3  # bounded, and actually concurrent


def test_read_timeout_is_retried(server: FakeServer) -> None:
    server.cfg.hang_first, server.cfg.hang_seconds = 1, 0.6
    rows = make(server, timeout=0.2).generate(["a"], 1, SamplingParams())
    assert texts(rows) == [["a s0 c0"]]
    assert server.stats.requests == 2


def test_connection_refused_names_url() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed when the block ends: nothing listens there
    gen = OpenAIGenerator(model="m", base_url=f"http://127.0.0.1:{port}/v1", max_retries=1, backoff=0.01)
    with pytest.raises(
        RsftError, match=rf"127\.0\.0\.1:{port}/v1/completions: failed after 2 attempts.*Connect"
    ):
        gen.generate(["a"], 1, SamplingParams())


@pytest.mark.parametrize("chat", [False, True])
def test_logprobs_summed(server: FakeServer, chat: bool) -> None:
    prompt = CHAT if chat else "hi"
    rows = make(server, logprobs=True).generate([prompt], 2, SamplingParams(seed=5))
    body = server.stats.bodies[0]
    assert body["logprobs"] is True if chat else body["logprobs"] == 1
    for i, c in enumerate(rows[0]):
        assert c.text == f"hi s5 c{i}"
        assert c.n_tokens == 3 and c.logprob == pytest.approx(3 * TOKEN_LOGPROB)


@pytest.mark.parametrize("chat", [False, True])
def test_stop_strings_cut_client_side(server: FakeServer, chat: bool) -> None:
    server.cfg.suffix, server.cfg.finish_reason = " A: 42\nQ: next one", "length"
    prompt = [{"role": "user", "content": "Q"}] if chat else "Q"
    sampling = SamplingParams(stop=("\nQ:", "zzz"))
    rows = make(server, logprobs=True).generate([prompt], 1, sampling)
    c = rows[0][0]
    assert c.text == "Q s0 c0 A: 42" and c.finish_reason == "stop"
    # tokens: "Q", " s0", " c0", " A:", " 42", "\nQ:" (kept through the stop string)
    assert c.n_tokens == 6 and c.logprob == pytest.approx(6 * TOKEN_LOGPROB)
    # without logprobs the server's token count no longer applies to the cut text
    c = make(server).generate([prompt], 1, sampling)[0][0]
    assert (c.text, c.n_tokens, c.logprob) == ("Q s0 c0 A: 42", None, None)


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        ("stop", "stop"),
        ("eos", "stop"),
        (None, "stop"),
        ("length", "length"),
        ("content_filter", "content_filter"),
    ],
)
def test_finish_reason_mapping(server: FakeServer, given: str | None, expected: str) -> None:
    server.cfg.finish_reason = given
    c = make(server).generate(["a"], 1, SamplingParams())[0][0]
    assert c.finish_reason == expected and c.n_tokens == 3


def test_works_inside_running_event_loop(server: FakeServer) -> None:
    gen = make(server)

    async def main():
        return gen.generate(["a"], 1, SamplingParams())

    assert texts(asyncio.run(main())) == [["a s0 c0"]]


def test_registry_and_edge_cases(server: FakeServer) -> None:
    gen = make_generator("openai", {"model": "fake-model", "base_url": server.base_url + "/"})
    assert isinstance(gen, OpenAIGenerator) and gen.name == "openai:fake-model"
    assert gen.generate([], 3, SamplingParams()) == []
    assert gen.generate(["a"], 0, SamplingParams()) == [[]]
    assert server.stats.requests == 0
    with pytest.raises(RsftError, match="concurrency"):
        OpenAIGenerator(model="m", concurrency=0)
    assert _parse_retry_after("2") == 2.0 and _parse_retry_after("soon") is None
    assert _parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT") == 0.0



def test_extra_body_fields_are_sent_and_rsft_fields_win(server: FakeServer) -> None:
    """A server's own sampling settings (llama.cpp's min_p, repeat_penalty) ride along in every request."""
    from rsft.config import key_value

    server.cfg.max_choices = 1  # the top-up requests carry them too
    key, extra = key_value("extra_body={min_p: 0.0, repeat_penalty: 1.0, temperature: 9, n: 7}")
    gen = make_generator("openai", {"model": "fake-model", "base_url": server.base_url, key: extra})
    rows = gen.generate(["a"], 2, SamplingParams(temperature=0.5, seed=4))
    assert texts(rows) == [["a s4 c0", "a s5 c0"]]
    assert [(b["min_p"], b["repeat_penalty"], b["temperature"], b["n"], b["seed"]) for b in server.stats.bodies] == [
        (0.0, 1.0, 0.5, 2, 4), (0.0, 1.0, 0.5, 1, 5)]
    with pytest.raises(RsftError, match="extra_body"):
        OpenAIGenerator(model="m", extra_body=["min_p"])  # type: ignore[arg-type]

# --- a misbehaving server: survived while it recovers, a clear error when it does not -----------


def test_dropped_connections_are_retried(server: FakeServer) -> None:
    server.cfg.script = ["drop", "drop"]
    rows = make(server).generate(["a"], 2, SamplingParams())
    assert texts(rows) == [["a s0 c0", "a s0 c1"]]
    assert (server.stats.requests, server.stats.served) == (3, 1)


def test_server_misbehaving_for_a_while_is_survived(server: FakeServer) -> None:
    server.cfg.script, server.cfg.hang_seconds = ["drop", "stall", "429", "503", "500"], 0.5
    rows = make(server, timeout=0.2, max_retries=5).generate(["a"], 1, SamplingParams())
    assert texts(rows) == [["a s0 c0"]]
    assert server.stats.requests == 6  # the stalled one may still answer, after the client gave up on it


@pytest.mark.parametrize(("action", "error"), [("drop", "RemoteProtocolError"), ("stall", "ReadTimeout"),
                                               ("429", "HTTP 429: simulated failure 3")])
def test_server_that_never_recovers_is_a_clear_error(server: FakeServer, action: str, error: str) -> None:
    server.cfg.script, server.cfg.hang_seconds = [action] * 3, 0.4
    with pytest.raises(RsftError) as info:
        make(server, timeout=0.1, max_retries=2).generate(["a"], 1, SamplingParams())
    message = str(info.value)
    assert message.startswith(f"{server.base_url}/completions: failed after 3 attempts; last error: {error}")
    assert "\n" not in message and server.stats.requests == 3


# --- the journal: what a dying server sent is kept, and a rerun asks only for the rest ----------


def test_journal_keeps_what_a_dying_server_sent(server: FakeServer, tmp_path) -> None:
    journal = tmp_path / "journal.jsonl"
    prompts = [f"p{i}" if i % 2 else [{"role": "user", "content": f"p{i}"}] for i in range(5)]
    sampling = SamplingParams(seed=4, stop=("\n",))
    healthy = make(server).generate(prompts, 2, sampling)
    server.reset()
    server.cfg.fail_after = 3  # answers 3 requests, then 500 for good
    with pytest.raises(RsftError, match="failed after 2 attempts; last error: HTTP 500"):
        make(server, concurrency=1, max_retries=1, journal=journal).generate(prompts, 2, sampling)
    assert len(journal.read_text().splitlines()) == 3
    with open(journal, "a") as f:  # and a line torn by a kill in the middle of an append
        f.write('{"key": "0123", "choi')
    with FakeServer() as restarted:  # a healthy server, at another address
        gen = make(restarted, journal=journal)
        assert gen.generate(prompts, 2, sampling) == healthy
        assert restarted.stats.requests == 2 and gen.journal is not None and gen.journal.reused == 3
    lines = journal.read_text().splitlines()
    assert len(lines) == 6 and all(json.loads(x)["choices"] for x in lines[:3] + lines[4:])


def test_journal_resumes_a_topped_up_prompt_at_the_missing_sample(server: FakeServer, tmp_path) -> None:
    """A server that returns one choice per request (llama.cpp): the rerun asks only for the samples
    (seeds) it never got, so the prompt's completions are those of a run that never failed."""
    journal = tmp_path / "journal.jsonl"
    server.cfg.max_choices, server.cfg.fail_after = 1, 2
    with pytest.raises(RsftError):
        make(server, concurrency=1, max_retries=0, journal=journal).generate(["x"], 4, SamplingParams(seed=10))
    with FakeServer() as restarted:  # fresh: a request the failed run still had in flight cannot count
        restarted.cfg.max_choices = 1
        rows = make(restarted, journal=journal).generate(["x"], 4, SamplingParams(seed=10))
        assert texts(rows) == [[f"x s{10 + i} c0" for i in range(4)]]
        assert sorted(b["seed"] for b in restarted.stats.bodies) == [12, 13]


def test_journal_is_keyed_by_everything_that_decides_a_response(server: FakeServer, tmp_path) -> None:
    journal = tmp_path / "journal.jsonl"
    make(server, journal=journal).generate(["a"], 2, SamplingParams(seed=1))
    for changed in (SamplingParams(seed=2), SamplingParams(seed=1, temperature=0.5),
                    SamplingParams(seed=1, max_new_tokens=3)):
        make(server, journal=journal).generate(["a"], 2, changed)
    make(server, journal=journal).generate(["a"], 3, SamplingParams(seed=1))
    OpenAIGenerator(model="other", base_url=server.base_url, journal=journal).generate(["a"], 2, SamplingParams(seed=1))
    assert server.stats.requests == 6  # none of them was answered from the journal
    make(server, journal=journal).generate(["a"], 2, SamplingParams(seed=1))
    assert server.stats.requests == 6


def test_cli_resumes_from_the_journal_after_the_server_dies(tmp_path) -> None:
    """``rsft generate --backend openai``: the server answers 3 requests and dies -> one-line error,
    exit 2; restarted healthy at the same address, the rerun asks only for the 2 it never answered
    and writes the completions of a run that never failed; the journal is gone afterwards."""
    from test_cli import rsft

    from rsft.report import status

    prompts = tmp_path / "p.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"q{i}"}) + "\n" for i in range(5)))

    def generate(round_dir, base_url):
        return rsft("generate", str(round_dir), "--prompts", str(prompts), "--backend", "openai", "--model",
                    "fake-model", "-n", "2", "--shard-size", "2", "--seed", "7", "--option", f"base_url={base_url}",
                    "--option", "max_retries=1", "--option", "backoff=0.01", cwd=tmp_path)

    rd = tmp_path / "run" / "round-000"
    with FakeServer() as dying:
        port, base_url = dying.port, dying.base_url
        dying.cfg.fail_after = 3
        r = generate(rd, base_url)
        assert r.returncode == 2
        error = [x for x in r.stderr.splitlines() if x.startswith("rsft: error:")]
        assert len(error) == 1, r.stderr
        assert error[0].startswith(f"rsft: error: {base_url}/completions: failed after 2 attempts; last error: "
                                   "HTTP 500: simulated failure ")
    assert status.round_status(rd)["generate"] == "partial (1 shards, 3 responses journaled)"
    [journal] = (rd / ".shards").glob("journal-*.jsonl")
    assert len(journal.read_text().splitlines()) == 3  # 2 in the finished shard, 1 of the failed shard
    assert not (rd / "completions.parquet").exists()

    with FakeServer(port=port) as healthy:
        r = generate(rd, base_url)
        assert r.returncode == 0, r.stderr
        assert healthy.stats.requests == 2
        assert not (rd / ".shards").exists()  # shards and journal dropped once the stage is recorded
        healthy.reset()
        r = generate(tmp_path / "ref" / "round-000", base_url)
        assert r.returncode == 0 and healthy.stats.requests == 5
    resumed = pq.read_table(rd / "completions.parquet").to_pylist()
    assert resumed == pq.read_table(tmp_path / "ref" / "round-000" / "completions.parquet").to_pylist()
    assert [c["text"] for c in resumed[:4]] == ["q0 s7 c0", "q0 s7 c1", "q1 s7 c0", "q1 s7 c1"]
