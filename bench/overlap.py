"""Wall time of one round's generation + scoring: local, Ray stage after stage, Ray overlapped.

    .venv/bin/python bench/overlap.py [--prompts 24] [--n 4] [--shard-size 4] [--actors 2]

The same work three ways, each into a fresh round folder, on small random models built here (a
Llama policy and a Llama reward model, hidden 256, 4 layers; no downloads):

- ``local``: the default executor, generate then score in this process;
- ``ray staged``: ``executor: ray, ray.overlap: false``: a generator actor pool, then a scorer pool;
- ``ray overlapped``: one streaming Ray Data pipeline, shard k scored while shard k+1 generates.

Ray is started once before the timings (its start-up is reported on its own); actor start-up and
model loading are part of every Ray row, as they are for a user. The three rounds must write
byte-identical ``completions.parquet`` and ``rewards.parquet`` (checked and printed). Prints a
markdown table: wall time, ratio to local, and the overlap ratio (overlapped / staged).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))  # tiny_models.build_tokenizer
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("HF_HUB_OFFLINE", "1")


def build_models(out: Path) -> tuple[Path, Path]:
    """A random Llama policy and a random Llama reward model (num_labels=1), hidden 256, 4 layers."""
    import tiny_models
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM, LlamaForSequenceClassification

    paths = []
    for kind, cls in (("policy", LlamaForCausalLM), ("rm", LlamaForSequenceClassification)):
        path = out / kind
        tok = tiny_models.build_tokenizer(path)
        torch.manual_seed(0)
        config = LlamaConfig(vocab_size=len(tok), hidden_size=256, intermediate_size=512, num_hidden_layers=4,
                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512,
                             bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                             pad_token_id=tok.pad_token_id, num_labels=1, tie_word_embeddings=False)
        cls(config).save_pretrained(path)
        paths.append(path)
    return paths[0], paths[1]


def make_config(work: Path, name: str, policy: Path, rm: Path, args: argparse.Namespace, executor: str,
                overlap: bool):
    from rsft.config import (
        ActorPoolConfig,
        GenerationConfig,
        GeneratorConfig,
        PromptsConfig,
        RayConfig,
        RunConfig,
        SamplingConfig,
        ScoringConfig,
    )

    pool = ActorPoolConfig(actors=args.actors, num_cpus=args.actor_cpus)
    return RunConfig(
        name=name, out=str(work / "runs"), prompts=PromptsConfig(path=str(work / "prompts.jsonl")),
        generation=GenerationConfig(n=args.n, shard_size=args.shard_size,
                                    generator=GeneratorConfig(backend="hf", model=str(policy)),
                                    sampling=SamplingConfig(max_new_tokens=args.max_new_tokens, seed=3)),
        scoring=ScoringConfig(scorer=f"rm:{rm}", options={"batch_size": 8}),
        executor=executor, ray=RayConfig(generate=pool, score=pool, overlap=overlap))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=24)
    parser.add_argument("--n", type=int, default=4)
    parser.add_argument("--shard-size", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=24)
    parser.add_argument("--actors", type=int, default=2, help="actors per pool")
    parser.add_argument("--actor-cpus", type=float, default=None, help="CPUs per actor (default: sized to fit)")
    args = parser.parse_args()

    import ray

    from rsft import pipeline
    from rsft.artifacts import file_sha256

    work = Path(tempfile.mkdtemp(prefix="rsft-overlap-"))
    policy, rm = build_models(work)
    rows = [{"prompt": f"Q: What is {i} + {i % 7}?\nA:" + " x" * (i % 5), "answer": str(i + i % 7)}
            for i in range(args.prompts)]
    (work / "prompts.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))

    started = time.perf_counter()
    ray.init(include_dashboard=False, logging_level="WARNING", _temp_dir=str(work / "ray"),
             runtime_env={"env_vars": {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1"}})
    ray_start = time.perf_counter() - started
    cpus = int(ray.cluster_resources().get("CPU", 0))

    modes = [("local", "local", False), ("ray staged", "ray", False), ("ray overlapped", "ray", True)]
    wall: dict[str, float] = {}
    hashes: dict[str, tuple[str, str]] = {}
    for label, executor, overlap in modes:
        name = label.replace(" ", "-")
        config = make_config(work, name, policy, rm, args, executor, overlap)
        started = time.perf_counter()
        result = pipeline.run_round(config, quiet=True)
        wall[label] = time.perf_counter() - started
        hashes[label] = tuple(file_sha256(result.round_dir / f) for f in ("completions.parquet", "rewards.parquet"))
    ray.shutdown()

    load = ", ".join(f"{x:.1f}" for x in os.getloadavg())
    print(f"## generate + score: local vs Ray (this machine: {os.cpu_count()} cores, Ray sees {cpus} CPUs, "
          f"load average {load})\n")
    print(f"{args.prompts} prompts x {args.n} samples x {args.max_new_tokens} new tokens, shards of "
          f"{args.shard_size} prompts, {args.actors} actors per pool; Ray start-up {ray_start:.1f} s (not counted)\n")
    print("| mode | wall s | / local |")
    print("|---|---|---|")
    for label, _, _ in modes:
        print(f"| {label} | {wall[label]:.1f} | {wall[label] / wall['local']:.2f} |")
    print(f"\noverlap ratio (ray overlapped / ray staged): {wall['ray overlapped'] / wall['ray staged']:.2f}")
    same = len(set(hashes.values())) == 1
    print(f"identical completions.parquet and rewards.parquet in all three modes: {'yes' if same else 'NO'}")
    if not same:
        sys.exit(1)


if __name__ == "__main__":
    main()
