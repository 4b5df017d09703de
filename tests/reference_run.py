"""A reference run for refactors: the same tiny run before and after, artifacts compared byte for byte.

    python tests/reference_run.py OUT_DIR                      # run, print {file: sha256} as JSON
    python tests/reference_run.py OUT_DIR --compare REF.json   # same OUT_DIR; exit 1 on any differing file

The rsft under test is the one this script imports: set PYTHONPATH to the checkout's src/ (the
``rsft`` commands it runs import that one too, not the checkout installed in the venv).

The run covers every stage through the CLI on a tiny random model built locally: `rsft run` with two
RSFT rounds, held-out eval, KL and the control arm; the single-stage commands (generate, score,
select, export) on a second run folder; `rsft stats` and `rsft bon`. Files whose bytes carry time,
host or pid (manifest.json, train logs, reports) are compared as JSON with those keys dropped.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import rsft

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
RSFT_SRC = str(Path(rsft.__file__).resolve().parents[1])
"""The rsft that runs: the one this script imports (PYTHONPATH), also in the ``rsft`` subprocesses."""

SCORERS = '''
def digits(prompt, completion):
    text = completion.strip()
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0
'''

VOLATILE = {"time", "started", "finished", "created", "updated", "seconds", "elapsed", "wall_s", "host", "pid",
            "duration", "duration_s", "timestamp", "peak_rss_mb", "train_runtime", "train_samples_per_second",
            "train_steps_per_second", "versions", "packages", "python", "at", "tok_per_s", "tokens_per_second",
            "path", "model_path", "base_model", "round_dir", "out", "model", "checkpoint", "source", "wall",
            "samples_per_s", "rows_per_s", "generation_s", "scoring_s", "load_s", "best_checkpoint", "epoch_time"}


VOLATILE_SUFFIXES = ("_s", "_at", "_time", "rsft_train.json", "train_log.jsonl", "eval_key")


def _scrub(obj):
    if isinstance(obj, dict):
        return {k: _scrub(v) for k, v in obj.items() if k not in VOLATILE and not k.endswith(VOLATILE_SUFFIXES)}
    if isinstance(obj, list):
        return [_scrub(v) for v in obj]
    if isinstance(obj, str) and ("/tmp" in obj or os.sep + "runs" + os.sep in obj):
        return "<path>"
    return obj


def _digest(path: Path) -> str:
    data = path.read_bytes()
    if path.suffix == ".json":
        data = json.dumps(_scrub(json.loads(data)), sort_keys=True).encode()
    elif path.suffix == ".jsonl" and path.name != "selected.jsonl":
        lines = [json.dumps(_scrub(json.loads(line)), sort_keys=True)
                 for line in data.decode().splitlines() if line.strip()]
        data = "\n".join(lines).encode()
    return hashlib.sha256(data).hexdigest()


SKIP_SUFFIXES = (".html", ".log", ".lock", ".yaml")
SKIP_PARTS = ("versions", ".shards", "tb", "logs")


def digests(root: Path) -> dict[str, str]:
    out = {}
    for p in sorted(root.rglob("*")):
        rel = p.relative_to(root)
        if not p.is_file() or p.suffix in SKIP_SUFFIXES or any(part in SKIP_PARTS for part in rel.parts):
            continue
        if p.name in ("training_args.bin", "rsft_train.json"):
            continue
        out[str(rel)] = _digest(p)
    return out


def _rsft(*args: str, cwd: Path, stdin: str | None = None) -> str:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), RSFT_SRC]), "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    r = subprocess.run([sys.executable, "-m", "rsft.cli", *args], cwd=cwd, env=env, capture_output=True,
                       text=True, input=stdin)
    if r.returncode != 0:
        raise SystemExit(f"rsft {' '.join(args)} failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return r.stdout


def run(d: Path) -> dict[str, str]:
    from tiny_models import build_causal_lm

    shutil.rmtree(d, ignore_errors=True)  # paths are part of the artifacts: reuse the same OUT_DIR to compare
    d.mkdir(parents=True)
    lm = build_causal_lm(d / "tiny_lm")
    (d / "myscorers.py").write_text(SCORERS)
    (d / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Q: count to {i}\nA:"}) + "\n" for i in range(8)))
    (d / "eval.jsonl").write_text("".join(json.dumps({"prompt": f"Q: list {i} numbers\nA:"}) + "\n" for i in range(4)))
    cfg = d / "ref.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: ref
        out: {d / 'runs'}
        prompts: {{path: {d / 'train.jsonl'}}}
        generation:
          n: 6
          generator: {{backend: hf, model: {lm}}}
          sampling: {{temperature: 1.0, top_k: 0, max_new_tokens: 8, seed: 3}}
          shard_size: 3
        scoring: {{scorer: "myscorers:digits"}}
        selection: {{strategy: best}}
        train: {{lora: false, learning_rate: 0.01, epochs: 2, batch_size: 4, max_length: 64}}
        eval:
          prompts: {{path: {d / 'eval.jsonl'}}}
          scorer: "myscorers:digits"
          n: 4
          sampling: {{temperature: 1.0, top_k: 0, max_new_tokens: 8, seed: 5}}
          kl_samples: 2
          kl_max_new_tokens: 8
        rounds: {{rounds: 2, prompts_per_round: 6, refresh: rotate, control: true}}
    """))
    _rsft("run", "--config", str(cfg), "--rounds", "2", cwd=d)
    stages = d / "stages" / "round-000"
    common = ["--config", str(cfg)]
    _rsft("generate", str(stages), *common, "-n", "5", "--top-k", "20", "--seed", "11", cwd=d)
    _rsft("score", str(stages), *common, cwd=d)
    _rsft("select", str(stages), *common, "--strategy", "top_k", "-k", "7", cwd=d)
    _rsft("export", str(stages), cwd=d)
    (d / "stats.txt").write_text(_rsft("stats", str(stages), cwd=d))
    bon = _rsft("bon", "--model", str(lm), "-n", "4", "--scorer", "myscorers:digits", "--seed", "1",
                "--max-new-tokens", "6", cwd=d, stdin="Q: count to 3\nA:\nQ: list 2 numbers\nA:\n")
    (d / "bon.jsonl").write_text(bon)
    out = digests(d / "runs")
    out.update({f"stages/{k}": v for k, v in digests(d / "stages").items()})
    out["stats.txt"] = _digest(d / "stats.txt")
    out["bon.jsonl"] = _digest(d / "bon.jsonl")
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--compare", type=Path, help="reference digests JSON from an earlier run")
    args = ap.parse_args()
    got = run(args.out)
    if not args.compare:
        print(json.dumps(got, indent=1, sort_keys=True))
        return 0
    ref = json.loads(args.compare.read_text())
    bad = sorted(k for k in ref.keys() | got.keys() if ref.get(k) != got.get(k))
    for k in bad:
        print(f"differs: {k} (ref {ref.get(k, 'missing')[:12]}, now {got.get(k, 'missing')[:12]})")
    print(f"{len(ref)} reference files, {len(bad)} differ")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
