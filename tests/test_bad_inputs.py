"""Bad input through the real CLI: one line ``rsft: error: ...`` naming the file, line or field, exit
code 2, no temp file or partial artifact left, and the round's earlier files unchanged byte for byte.

Each case below runs ``python -m rsft.cli`` in a subprocess on a fresh copy of a finished tiny round
(or on new prompt files). Failing disks are real, not mocked: a file-size limit (``RLIMIT_FSIZE``,
so writes fail with EFBIG), a full tmpfs and a read-only bind mount, both mounted in a private mount
namespace (``unshare -m``) that vanishes with the process; those two are skipped where the machine
does not allow them. The last tests cover input that is not an error but must be reported: NaN and
infinite rewards, a prompt with no finite reward, and the left-truncation policy for long prompts.
"""

from __future__ import annotations

import json
import math
import os
import resource
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest
from test_cli import pythonpath, rsft

from rsft import pipeline
from rsft.artifacts import file_sha256
from rsft.config import load_config
from rsft.errors import RsftError

M, N = 4, 3
PLUGINS = Path(__file__).with_name("plugin_scorers.py")


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_lm) -> Path:
    """A workdir with plugins and prompt files, and a finished round at ``runs/base/round-000``."""
    d = tmp_path_factory.mktemp("bad_inputs")
    shutil.copy(PLUGINS, d / "plug.py")
    rows = [{"prompt": f"Q: What is {i} + 1?\nA:", "answer": str(i)} for i in range(M)]
    (d / "good.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    (d / "config.yaml").write_text(textwrap.dedent(f"""
        name: base
        out: {d / 'runs'}
        prompts: {{path: {d / 'good.jsonl'}}}
        generation:
          n: {N}
          shard_size: 2
          generator: {{backend: hf, model: {tiny_lm}}}
          sampling: {{temperature: 1.0, max_new_tokens: 6, seed: 3}}
        scoring: {{scorer: "plug:length"}}
    """))
    sys.path.insert(0, str(d))
    try:
        pipeline.run_round(load_config(d / "config.yaml"), quiet=True)
    finally:
        sys.path.remove(str(d))
        sys.modules.pop("plug", None)
    return d


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): file_sha256(p) for p in sorted(folder.rglob("*")) if p.is_file()}


def _one_error_line(stderr: str) -> str:
    lines = [x for x in stderr.splitlines() if x.startswith("rsft: error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr
    return lines[0]


@dataclass
class Case:
    args: list[str]
    """``rsft`` arguments; ``{R}`` is the round folder, ``{M}`` the tiny model, ``{T}`` the test's tmp folder."""
    message: str
    """Must appear in the error line (``{R}`` and ``{T}`` filled in)."""
    files: dict[str, str] = field(default_factory=dict)
    """Files to create in the test's tmp folder first."""
    round: str | None = None
    """``generated`` (a copy of the base round without scoring), ``finished`` (all of it), or None."""
    new_files: set[str] = field(default_factory=set)
    """Files the failing command may leave in the round folder (the prompts a generator was given)."""
    prepare: Callable[[Path], None] | None = None


def _jsonl(*rows: object) -> str:
    return "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)


def _corrupt(name: str) -> Callable[[Path], None]:
    def prepare(round_dir: Path) -> None:
        (round_dir / name).write_bytes(b"PAR1 not really parquet")
    return prepare


def _drop_last_row(round_dir: Path) -> None:
    table = pq.read_table(round_dir / "completions.parquet")
    pq.write_table(table.slice(0, table.num_rows - 1), round_dir / "completions.parquet")


GEN = ["generate", "{R}", "--model", "{M}", "-n", "2", "--max-new-tokens", "4"]
LONG_PROMPT = "Q: " + " ".join(str(i % 10) for i in range(700)) + "\nA:"

CASES: dict[str, Case] = {
    "malformed_jsonl": Case(GEN + ["--prompts", "{T}/p.jsonl"], "p.jsonl:2: malformed JSON",
                            {"p.jsonl": _jsonl({"prompt": "a"}, '{"prompt": "b"')}),
    "jsonl_line_not_an_object": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                                     "p.jsonl:2: expected a JSON object, got list",
                                     {"p.jsonl": _jsonl({"prompt": "a"}, ["b"])}),
    "prompt_of_wrong_type": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                                 "p.jsonl:1: field 'prompt': expected text or a list of messages, got int",
                                 {"p.jsonl": _jsonl({"prompt": 42})}),
    "message_with_unknown_role": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                                      "p.jsonl:1: field 'messages': message 0 must be {'role': one of",
                                      {"p.jsonl": _jsonl({"messages": [{"role": "robot", "content": "hi"}]})}),
    "missing_prompt_column": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                                  "p.jsonl:2: field 'prompt': missing (row has ['answer', 'question'])",
                                  {"p.jsonl": _jsonl({"prompt": "a"}, {"question": "b", "answer": "1"})}),
    "missing_column_in_csv": Case(GEN + ["--prompts", "{T}/p.csv"], "p.csv:1: field 'prompt': missing",
                                  {"p.csv": "question,answer\nwhat?,1\n"}),
    "empty_prompt": Case(GEN + ["--prompts", "{T}/p.jsonl"], "p.jsonl:2: field 'prompt': empty prompt",
                         {"p.jsonl": _jsonl({"prompt": "a"}, {"prompt": ""})}),
    "whitespace_prompt": Case(GEN + ["--prompts", "{T}/p.jsonl"], "p.jsonl:1: field 'prompt': empty prompt",
                              {"p.jsonl": _jsonl({"prompt": " \n\t "})}),
    "empty_message_list": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                               "p.jsonl:1: field 'messages': empty message list",
                               {"p.jsonl": _jsonl({"messages": []})}),
    "duplicate_prompts": Case(GEN + ["--prompts", "{T}/p.jsonl"],
                              "p.jsonl: rows 1 and 3 hold the same prompt (id ",
                              {"p.jsonl": _jsonl({"prompt": "a"}, {"prompt": "b"}, {"prompt": "a"})}),
    "unknown_prompt_file_type": Case(GEN + ["--prompts", "{T}/p.txt"], "unknown prompt file type '.txt'",
                                     {"p.txt": "a\n"}),
    "prompt_longer_than_the_context": Case(
        GEN + ["--prompts", "{T}/p.jsonl"],
        "tokens, but model '{M}' has a context of 512 and max_new_tokens=4 leaves 508 (1 of 2 prompts too long)",
        {"p.jsonl": _jsonl({"prompt": "short"}, {"prompt": LONG_PROMPT})}, new_files={"prompts.parquet"}),
    "n_zero": Case(GEN + ["--prompts", "{T}/p.jsonl", "-n", "0"], "generation.n: must be >= 1, got 0",
                   {"p.jsonl": _jsonl({"prompt": "a"})}),
    "unknown_config_key": Case(["run", "--config", "{T}/c.yaml"],
                               "c.yaml: generation: sampling: unknown key 'temprature'; did you mean 'temperature'?",
                               {"c.yaml": "generation:\n  sampling:\n    temprature: 0.5\n"}),
    "config_value_of_wrong_type": Case(["run", "--config", "{T}/c.yaml"],
                                       "c.yaml: generation: n: expected int, got 'eight'",
                                       {"c.yaml": "generation:\n  n: eight\n"}),
    "invalid_yaml": Case(["run", "--config", "{T}/c.yaml"], "c.yaml:2: invalid YAML",
                         {"c.yaml": "generation:\n\tn: 2\nscoring: {scorer: math}\n"}),
    "scorer_returns_wrong_count": Case(["score", "{R}", "--scorer", "plug:DropsOne"],
                                       "scorer 'drops_one' returned 11 scores for 12 pairs", round="generated"),
    "scorer_returns_a_string": Case(["score", "{R}", "--scorer", "plug:not_a_number"],
                                    "scorer 'not_a_number' returned 'high' (not a number) for prompt",
                                    round="generated"),
    "scorer_raises": Case(["score", "{R}", "--scorer", "plug:explode"],
                          "scorer 'explode' failed on prompt", round="generated"),
    "corrupt_completions": Case(["score", "{R}", "--scorer", "plug:length"],
                                "{R}/completions.parquet: not a readable Parquet file", round="generated",
                                prepare=_corrupt("completions.parquet")),
    "completions_not_a_matrix": Case(["score", "{R}", "--scorer", "plug:length"],
                                     "{R}/completions.parquet: 11 rows do not form a matrix over 4 prompts",
                                     round="generated", prepare=_drop_last_row),
    "select_before_score": Case(["select", "{R}"], "{R}/rewards.parquet: missing (run `rsft score` first)",
                                round="generated"),
    "top_k_without_k": Case(["select", "{R}", "--strategy", "top_k"], "selection strategy 'top_k' needs k",
                            round="finished"),
    "output_folder_under_a_file": Case(GEN + ["--prompts", "{T}/p.jsonl"], "cannot write here: Not a directory",
                                       {"p.jsonl": _jsonl({"prompt": "a"})}),
}


@pytest.mark.parametrize("name", list(CASES))
def test_bad_input_is_one_line_exit_2_and_leaves_nothing(name: str, base: Path, tmp_path: Path, tiny_lm: Path):
    case = CASES[name]
    for file_name, text in case.files.items():
        (tmp_path / file_name).write_text(text)
    round_dir = tmp_path / "r" / "round-000"
    if name == "output_folder_under_a_file":
        (tmp_path / "r").write_text("a regular file where the run folder should be")
    if case.round:
        _copy_round(base, round_dir, finished=case.round == "finished")
    if case.prepare:
        case.prepare(round_dir)

    def fill(text: str) -> str:
        return text.replace("{R}", str(round_dir)).replace("{M}", str(tiny_lm)).replace("{T}", str(tmp_path))

    before = _snapshot(round_dir) if round_dir.is_dir() else {}
    r = rsft(*[fill(a) for a in case.args], cwd=base)
    assert r.returncode == 2, r.stderr
    assert fill(case.message) in _one_error_line(r.stderr)
    after = _snapshot(round_dir) if round_dir.is_dir() else {}
    assert {k: v for k, v in after.items() if k not in case.new_files} == before
    assert not [p for p in tmp_path.rglob("*") if p.name.endswith(".tmp")]


def _copy_round(base: Path, round_dir: Path, finished: bool) -> None:
    shutil.copytree(base / "runs" / "base" / "round-000", round_dir)
    if not finished:
        for name in ("rewards.parquet", "selection.parquet", "selected.jsonl"):
            (round_dir / name).unlink()


# --- failing disks ------------------------------------------------------------------------------


def _check_disk_failure(r_rc: int, stderr: str, before: dict[str, str], after: dict[str, str], message: str):
    assert r_rc == 2, stderr
    line = _one_error_line(stderr)
    assert message in line and "rewards" in line, line
    assert after == before  # no new file (no shard, no temp file), the earlier ones unchanged


def test_file_size_limit_fails_the_write_cleanly(base: Path, tmp_path: Path):
    """RLIMIT_FSIZE of 512 bytes: the kernel refuses the shard's Parquet write (EFBIG)."""
    round_dir = tmp_path / "round-000"
    _copy_round(base, round_dir, finished=False)
    before = _snapshot(round_dir)

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (512, 512))

    env = {**os.environ, "PYTHONPATH": pythonpath(base), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run([sys.executable, "-m", "rsft.cli", "score", str(round_dir), "--scorer", "plug:length"],
                       cwd=base, env=env, capture_output=True, text=True, timeout=120, preexec_fn=limit)
    _check_disk_failure(r.returncode, r.stderr, before, _snapshot(round_dir), "File too large")


DRIVER = '''
import hashlib, json, shutil, subprocess, sys
from pathlib import Path

mode, src, mnt, cmd = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3]), sys.argv[4:]


def snapshot(folder):
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


mounts = {"full": [["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)]],
          "readonly": [["mount", "--bind", str(mnt), str(mnt)], ["mount", "-o", "remount,bind,ro", str(mnt)]]}
round_dir = mnt / "round-000"
if mode == "readonly":
    shutil.copytree(src, round_dir)
for argv in mounts[mode]:
    if subprocess.run(argv, capture_output=True).returncode:
        sys.exit(99)
if mode == "full":
    shutil.copytree(src, round_dir)
    with open(mnt / "filler", "wb", buffering=0) as f:  # fill the disk to the last byte
        try:
            while f.write(b"0" * 4096):
                pass
        except OSError:
            pass
before = snapshot(round_dir)
r = subprocess.run(cmd + [str(round_dir)], capture_output=True, text=True)
print(json.dumps({"rc": r.returncode, "stderr": r.stderr, "before": before, "after": snapshot(round_dir)}))
'''


@pytest.mark.parametrize(("mode", "message"), [("full", "No space left on device"),
                                               ("readonly", "Read-only file system")])
def test_full_or_read_only_disk_fails_cleanly(base: Path, tmp_path: Path, mode: str, message: str):
    """A real full disk (a 2 MB tmpfs filled to the last byte) and a read-only folder (a read-only bind
    mount: read-only even for root, which chmod is not), each in a private mount namespace."""
    src = tmp_path / "src"
    _copy_round(base, src, finished=False)
    if mode == "readonly" and os.geteuid() != 0:  # not root: chmod is enough
        before = _snapshot(src)
        src.chmod(0o555)
        try:
            r = rsft("score", str(src), "--scorer", "plug:length", cwd=base)
        finally:
            src.chmod(0o755)
        _check_disk_failure(r.returncode, r.stderr, before, _snapshot(src), "Permission denied")
        return
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare(1)")
    (tmp_path / "driver.py").write_text(DRIVER)
    (tmp_path / "mnt").mkdir()
    env = {**os.environ, "PYTHONPATH": pythonpath(base), "PYTHONDONTWRITEBYTECODE": "1"}
    r = subprocess.run(["unshare", "-m", "--propagation", "private", sys.executable, str(tmp_path / "driver.py"),
                        mode, str(src), str(tmp_path / "mnt"), sys.executable, "-m", "rsft.cli", "score",
                        "--scorer", "plug:length"], cwd=base, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        pytest.skip(f"cannot mount in a private namespace here (rc {r.returncode}): {r.stderr.strip()[-200:]}")
    out = json.loads(r.stdout)
    assert out["before"] == _snapshot(src)
    _check_disk_failure(out["rc"], out["stderr"], out["before"], out["after"], message)


# --- reported, not errors -----------------------------------------------------------------------


def test_nan_and_inf_rewards_are_counted_reported_and_never_selected(base: Path, tmp_path: Path):
    round_dir = tmp_path / "round-000"
    _copy_round(base, round_dir, finished=False)
    r = rsft("score", str(round_dir), "--scorer", "plug:non_finite", cwd=base)
    assert r.returncode == 0, r.stderr
    R = pq.read_table(round_dir / "rewards.parquet").column("reward").to_pylist()
    assert all(map(math.isnan, R[:N])) and R[N : 2 * N] == [math.inf] * N  # kept as the scorer gave them
    assert f"{N} NaN, {N} inf" in r.stdout
    assert "2 of 4 prompts have no finite reward: selection takes nothing from them" in r.stdout
    manifest = json.loads((round_dir / "manifest.json").read_text())
    stats = manifest["stages"]["score"]["stats"]
    assert (stats["nan_count"], stats["inf_count"], stats["prompts_without_finite"]) == (N, N, 2)
    ids = pq.read_table(round_dir / "prompts.parquet").column("prompt_id").to_pylist()

    for strategy in (["--strategy", "best"], ["--strategy", "top_k", "-k", "100"]):
        r = rsft("select", str(round_dir), *strategy, cwd=base)
        assert r.returncode == 0, r.stderr
        counts = json.loads(r.stdout)
        assert (counts["nan_rewards"], counts["inf_rewards"], counts["prompts_without_finite_reward"]) == (N, N, 2)
        assert f"{N} NaN and {N} infinite rewards were counted as -inf (never selected); 2 of 4 prompts" in r.stderr
        picked = pq.read_table(round_dir / "selection.parquet").to_pylist()
        assert all(math.isfinite(p["reward"]) for p in picked)
        assert {p["prompt_id"] for p in picked} == set(ids[2:])  # nothing from the NaN and the +inf prompt
        assert counts["selected"] == (M - 2 if strategy[1] == "best" else (M - 2) * N)


def test_long_prompts_can_be_cut_at_the_start_instead(tiny_lm: Path, capsys):
    """``truncate=left`` (backend option): the prompt's last tokens that fit are kept, with a warning."""
    from rsft.generate.hf import HFGenerator
    from rsft.types import SamplingParams

    gen = HFGenerator(str(tiny_lm), truncate="left")
    sampling = SamplingParams(temperature=0.0, max_new_tokens=4)
    tail = " ".join(str(i % 10) for i in range(300))  # well under the 508-token budget by itself
    long_prompt = " ".join(str(i % 7) for i in range(900)) + " " + tail
    budget = 512 - 4
    encoded = gen.tokenizer(long_prompt, add_special_tokens=True)["input_ids"]
    assert len(encoded) > budget
    prefilled = []
    gen.model.register_forward_pre_hook(lambda mod, args, kwargs: prefilled.append(kwargs["input_ids"][0].tolist()),
                                        with_kwargs=True)
    [[c]] = gen.generate([long_prompt], 1, sampling)
    assert "1 prompts are longer than 508 tokens" in capsys.readouterr().err
    assert prefilled[0] == encoded[-budget:]  # the prompt's last 508 tokens, its start cut
    assert c.n_tokens == 4 or c.finish_reason == "stop"
    with pytest.raises(RsftError, match="prompt [0-9a-f]{16} is [0-9]+ tokens"):
        HFGenerator(str(tiny_lm)).generate([long_prompt], 1, sampling)
    with pytest.raises(RsftError, match="truncate must be 'error' or 'left'"):
        HFGenerator(str(tiny_lm), truncate="right")
