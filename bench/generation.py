"""Generation of M x N completions: rsft's ``hf`` backend vs what a user would write instead.

Three sides, same model object, same prompts, same sampling (T=0.7, top-k 50, top-p 1, no stop,
a fixed ``max_new_tokens``), timed interleaved in one process, median of the repeats:

- ``rsft hf``: ``HFGenerator.generate(prompts, n, sampling)`` (src/rsft/generate/hf.py: the prompts'
  shared few-shot prefix is prefilled once, each prompt's suffix once, its KV cache copied to its N
  rows, finished rows leave the batch).
- ``per-query loop (TRL BestOfNSampler)``: the loop of TRL's removed ``trl.extras.BestOfNSampler``
  (trl/extras/best_of_n_sampler.py, TRL <= 0.19): for each prompt, ``query.repeat((N, 1))`` then one
  ``model.generate`` call (no attention mask, as TRL passed none). Reproduced here line for line
  (minus its scoring call) so it runs on the same transformers and model object; ``--trl-venv``
  also runs the original class from an old TRL in a separate venv (see ``bench/trl_best_of_n.py``).
- ``raw batched generate``: one ``model.generate`` over all prompts (left padding) with
  ``num_return_sequences=N``.

Tokens are counted honestly on every side: a completion's tokens run to its first EOS (included)
or to ``max_new_tokens``; pad tokens that ``generate`` keeps emitting after EOS are not counted.

    .venv/bin/python bench/generation.py --model tiny
    .venv/bin/python bench/generation.py --model gemma3-270m --prompts 16 -n 8 --tokens 16
"""

from __future__ import annotations

import argparse
import subprocess
import tempfile
from pathlib import Path
from typing import Any

from common import ROOT, demo_count_bits_prompts, header, interleaved, one_thread, table, verdict

SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 1.0}


def model_path(spec: str, workdir: Path) -> str:
    if spec == "tiny":
        from tiny_models import build_causal_lm

        return str(build_causal_lm(workdir / "tiny-lm"))
    from rsft.models import resolve_model_path

    return str(resolve_model_path(spec))


def count_new_tokens(new: Any, eos: set[int]) -> int:
    """Tokens of each generated row up to its first EOS (included), summed."""
    total = 0
    for row in new.tolist():
        length = len(row)
        for pos, tok in enumerate(row):
            if tok in eos:
                length = pos + 1
                break
        total += length
    return total


def per_query_loop(model: Any, tok: Any, prompts: list[str], n: int, tokens: int, eos: set[int]) -> tuple[int, int]:
    """TRL BestOfNSampler.generate's loop (its scoring and top-k of candidates left out)."""
    import torch

    done = count = 0
    seed = 0
    torch.manual_seed(seed)
    queries = [torch.tensor(tok(p)["input_ids"]).reshape((1, -1)) for p in prompts]
    for query in queries:
        batch = query.repeat((n, 1))
        output = model.generate(batch, max_new_tokens=tokens, do_sample=True, pad_token_id=tok.pad_token_id,
                                **SAMPLING).squeeze()
        tok.batch_decode(output, skip_special_tokens=True)
        done += output.shape[0]
        count += count_new_tokens(output[:, query.shape[1]:], eos)
    return done, count


def raw_batched(model: Any, tok: Any, prompts: list[str], n: int, tokens: int, eos: set[int]) -> tuple[int, int]:
    """One ``generate`` call over every prompt, ``num_return_sequences=n``."""
    import torch

    torch.manual_seed(0)
    tok.padding_side = "left"
    enc = tok(prompts, return_tensors="pt", padding=True)
    output = model.generate(**enc, max_new_tokens=tokens, do_sample=True, num_return_sequences=n,
                            pad_token_id=tok.pad_token_id, **SAMPLING)
    new = output[:, enc["input_ids"].shape[1]:]
    tok.batch_decode(new, skip_special_tokens=True)
    return output.shape[0], count_new_tokens(new, eos)


def run(model_spec: str, m: int, n: int, tokens: int, repeats: int, warmup: bool, trl_venv: str | None,
        trl_all: bool) -> list[list[Any]]:
    import torch

    from rsft.generate.hf import HFGenerator
    from rsft.types import SamplingParams

    with tempfile.TemporaryDirectory() as tmp:
        path = model_path(model_spec, Path(tmp))
        gen = HFGenerator(path, dtype="float32", device="cpu")
        model, tok = gen.model, gen.tokenizer
        prompts = demo_count_bits_prompts(m)
        eos = set(gen.eos_ids)

        def sides(prompts: list[str], n: int, tokens: int) -> dict[str, Any]:
            sampling = SamplingParams(temperature=SAMPLING["temperature"], top_k=SAMPLING["top_k"],
                                      max_new_tokens=tokens, seed=0)

            def rsft_side() -> tuple[int, int]:
                rows = gen.generate(prompts, n, sampling)
                return sum(len(r) for r in rows), sum(c.n_tokens or 0 for r in rows for c in r)

            return {
                "rsft hf": rsft_side,
                "per-query loop (TRL BestOfNSampler)": lambda: per_query_loop(model, tok, prompts, n, tokens, eos),
                "raw batched generate (num_return_sequences)": lambda: raw_batched(model, tok, prompts, n, tokens,
                                                                                   eos),
            }

        with torch.inference_mode():
            if not warmup:  # a cheap warm-up instead (1 prompt x 2 x 2 tokens): first-call costs hit no side
                for side in sides(prompts[:1], 2, 2).values():
                    side()
            results = interleaved(sides(prompts, n, tokens), repeats, warmup=warmup)
        if trl_venv and (model_spec == "tiny" or trl_all):
            results.update(run_trl(trl_venv, path, prompts, n, tokens, repeats))
    base = results["rsft hf"]
    rows = []
    for name, r in results.items():
        done, count = r["value"]
        rows.append([name, done, count, done / r["median"], count / r["median"],
                     r["median"], base["median"] and r["median"] / base["median"]])
    return rows


def run_trl(venv: str, path: str, prompts: list[str], n: int, tokens: int, repeats: int) -> dict[str, Any]:
    """The original ``trl.extras.BestOfNSampler`` in an old-TRL venv (a subprocess; its own transformers)."""
    import json

    python = Path(venv) / "bin" / "python"
    if not python.exists():
        return {}
    with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as f:
        json.dump({"model": path, "prompts": prompts, "n": n, "tokens": tokens, "repeats": repeats,
                   "sampling": SAMPLING}, f)
    out = subprocess.run([str(python), str(ROOT / "bench" / "trl_best_of_n.py"), f.name],
                         capture_output=True, text=True, check=False)
    if out.returncode != 0:
        tail = (out.stderr.strip().splitlines() or ["?"])[-1]
        print(f"- original TRL BestOfNSampler: failed in {venv}: {tail}")
        return {}
    r = json.loads(out.stdout.strip().splitlines()[-1])
    name = f"TRL {r['trl']} BestOfNSampler, transformers {r['transformers']} (subprocess)"
    return {name: {"median": r["median"], "value": (r["completions"], r["tokens"])}}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", nargs="+", default=["tiny", "gemma3-270m"])
    parser.add_argument("--prompts", type=int, default=16, help="M for the tiny model")
    parser.add_argument("--gemma-prompts", type=int, default=8, help="M for other models (each costs minutes)")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=3, help="for the tiny model, after one warm-up call")
    parser.add_argument("--gemma-repeats", type=int, default=2, help="for other models, after a tiny warm-up")
    parser.add_argument("--trl-venv", default=str(ROOT / "bench" / ".venv-trl"),
                        help="a venv with an old TRL that still has trl.extras.best_of_n_sampler ('' to skip)")
    parser.add_argument("--trl-all", action="store_true", help="run the original TRL class on every model, "
                        "not only the tiny one")
    args = parser.parse_args()
    one_thread()
    header(f"1. Generation: M prompts x {args.n} samples x {args.tokens} new tokens (T=0.7, top-k 50), "
           "hf backend vs the alternatives")
    print("The per-query loop is TRL's removed BestOfNSampler loop reproduced on the same transformers "
          "(its source, trl/extras/best_of_n_sampler.py, minus scoring). The row for the original class "
          "runs it from TRL 0.11.4 in bench/.venv-trl (`make bench-trl-venv`; a subprocess with its own "
          "transformers, tiny model only by default). Prompts: 5-shot count_bits as in the demo; they share "
          "their few-shot prefix, which rsft prefills once and `generate` prefills N times per prompt.\n")
    goals = []
    for spec in args.model:
        tiny = spec == "tiny"
        repeats, m = (args.repeats, args.prompts) if tiny else (args.gemma_repeats, args.gemma_prompts)
        rows = run(spec, m, args.n, args.tokens, repeats, tiny, args.trl_venv or None, args.trl_all)
        warm = "after one warm-up call each" if tiny else "after a 1 x 2 x 2-token warm-up call each"
        print(f"### {spec}: {m} prompts x {args.n} x {args.tokens} tokens (median of {repeats}, {warm})\n")
        table(["side", "completions", "tokens", "completions/s", "tokens/s", "seconds", "time / rsft"], rows)
        by_name = {r[0]: r for r in rows}
        rsft_tps = by_name["rsft hf"][4]
        loop = rsft_tps / by_name["per-query loop (TRL BestOfNSampler)"][4]
        raw = rsft_tps / by_name["raw batched generate (num_return_sequences)"][4]
        goals.append([f"{spec}: rsft vs per-query loop (tokens/s)", f"{loop:.2f}x", ">= 3x", verdict(loop, 3.0)])
        goals.append([f"{spec}: rsft vs raw batched generate (tokens/s)", f"{raw:.2f}x", ">= 1.0x",
                      verdict(raw, 1.0)])
        for name, row in by_name.items():
            if name.startswith("TRL "):
                ratio = rsft_tps / row[4]
                goals.append([f"{spec}: rsft vs original {name.split(',')[0]} (tokens/s)", f"{ratio:.2f}x", ">= 3x",
                              verdict(ratio, 3.0)])
    print("#### Goals\n")
    table(["measure", "value", "goal", "met?"], goals)
    if any(g[3] != "met" and not g[0].startswith("tiny") for g in goals):
        print("- Where a larger-model ratio is missed: every side pays the same decode steps, and on Gemma-3-270M "
              "the output layer over its 262k-token vocabulary is most of each step's FLOPs; rsft saves the "
              "N-fold prefill of each prompt and batches several prompts per step, which weighs less at a "
              "small M (the bench keeps M small to fit `make bench` in 20 minutes; see --gemma-prompts).\n")


if __name__ == "__main__":
    main()
