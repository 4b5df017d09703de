"""Generation of M x N completions on Gemma-3-270M: rsft's ``hf`` backend vs a llama.cpp server.

Two sides, same prompts (5-shot reasoning-gym ``count_bits``, as in the demo), same N, same
sampling (T=0.7, top-k 50, top-p 1, ``max_new_tokens`` tokens, no stop), timed interleaved in one
process, median of the repeats:

- ``rsft hf``: ``HFGenerator("gemma3-270m").generate(prompts, n, sampling)``, what
  ``rsft generate --backend hf --model gemma3-270m`` runs (the float32 checkpoint rsft dequantises
  from the GGUF once; shared few-shot prefix prefilled once, N rows per prompt in one batch).
- ``llama.cpp server via rsft openai``: ``python -m llama_cpp.server`` (llama-cpp-python, the
  ``llamacpp`` extra) on the same GGUF file (Q4_K_M weights), in a subprocess on 127.0.0.1, asked by
  ``OpenAIGenerator`` (``--backend openai``). The server ignores ``n`` and answers one request at a
  time, so each prompt costs N requests (a probe and N-1 top-ups, 8 in flight); it reuses the KV
  cache of the longest prefix shared with the previous request. llama.cpp's own ``min_p=0.05`` and
  ``repeat_penalty=1.1`` are turned off (``extra_body``) so both sides sample the same way.

Both use ``--threads`` CPU threads (torch/OpenMP in this process; ``n_threads`` and
``n_threads_batch`` for llama.cpp). Tokens are what each side reports per completion (``n_tokens``:
to EOS or ``max_new_tokens``). Accuracy is the share of completions whose first line is the right
bit count, a check that the quantised model samples as well, not a goal. Needs llama-cpp-python;
without it the script prints a skip line and exits 0.

    .venv/bin/python bench/llamacpp_vs_hf.py                       # 8 x 8 x 32 tokens, 2 repeats, ~3 min
    .venv/bin/python bench/llamacpp_vs_hf.py --prompts 4 --tokens 16 --threads 2
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import socket
import subprocess
import sys
import time
from typing import Any

from common import header, interleaved, one_thread, table

SAMPLING = {"temperature": 0.7, "top_k": 50, "top_p": 1.0}
PLAIN_SAMPLING = {"min_p": 0.0, "repeat_penalty": 1.0}
"""llama.cpp's extra samplers off: temperature, top-k and top-p only, as the hf backend samples."""
ALIAS = "gemma3-270m"


class LlamaServer:
    """``python -m llama_cpp.server`` on a GGUF in a subprocess; ``load_s`` is its time to first answer."""

    def __init__(self, gguf: str, threads: int, n_ctx: int = 2048) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        self.base_url = f"http://127.0.0.1:{port}/v1"
        env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
        cmd = [sys.executable, "-m", "llama_cpp.server", "--model", gguf, "--model_alias", ALIAS,
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", str(n_ctx), "--n_threads", str(threads),
               "--n_threads_batch", str(threads), "--verbose", "False"]
        started = time.perf_counter()
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        self._wait(180)
        self.load_s = time.perf_counter() - started

    def _wait(self, timeout: float) -> None:
        import httpx

        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise SystemExit(f"llama.cpp server exited {self.proc.returncode}: {self.proc.communicate()[1][-2000:]}")
            try:
                if httpx.get(self.base_url + "/models", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        self.stop()
        raise SystemExit(f"llama.cpp server not up after {timeout:g} s")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.communicate()


def first_line_accuracy(rows: list[list[Any]], answers: list[str]) -> float:
    """Share of completions whose first line, stripped, is the gold answer."""
    hits = [c.text.strip().split("\n", 1)[0].strip() == answer for row, answer in zip(rows, answers, strict=True)
            for c in row]
    return sum(hits) / max(1, len(hits))


def run(m: int, n: int, tokens: int, repeats: int, threads: int, concurrency: int) -> None:
    from rsft.generate.hf import HFGenerator
    from rsft.generate.openai import OpenAIGenerator
    from rsft.models import EMBEDDED
    from rsft.prompts import TaskSpec, task_prompts
    from rsft.types import SamplingParams

    spec = TaskSpec(name="count_bits", size=m, seed=1, shot_seed=2, shots=5, options={"max_n": 127})
    tasks = task_prompts(spec)
    prompts, answers = [str(p.prompt) for p in tasks], [str(p.metadata["answer"]) for p in tasks]
    sampling = SamplingParams(**SAMPLING, max_new_tokens=tokens, seed=0)
    t0 = time.perf_counter()
    hf = HFGenerator(ALIAS, device="cpu")
    hf_load = time.perf_counter() - t0
    server = LlamaServer(str(EMBEDDED[ALIAS].assemble()), threads)
    try:
        remote = OpenAIGenerator(model=ALIAS, base_url=server.base_url, concurrency=concurrency, timeout=600,
                                 extra_body=PLAIN_SAMPLING)
        sides = {"rsft hf": lambda: hf.generate(prompts, n, sampling),
                 "llama.cpp server via rsft openai": lambda: remote.generate(prompts, n, sampling)}
        warm = SamplingParams(**SAMPLING, max_new_tokens=2, seed=0)
        hf.generate(prompts[:1], 2, warm)  # first-call costs hit neither timed side
        remote.generate(prompts[:1], 2, warm)
        results = interleaved(sides, repeats, warmup=False)
    finally:
        server.stop()
    print(f"### {m} prompts x {n} samples x {tokens} new tokens, {threads} thread(s) each "
          f"(median of {repeats}, after a 1 x 2 x 2-token warm-up call each)\n")
    print(f"- load: hf {hf_load:.1f} s (cached float32 checkpoint), llama.cpp server {server.load_s:.1f} s "
          "(process start to first answer)\n")
    base = results["rsft hf"]["median"]
    rows = []
    for name, r in results.items():
        done = sum(len(row) for row in r["value"])
        count = sum(c.n_tokens or 0 for row in r["value"] for c in row)
        rows.append([name, done, count, count / r["median"], r["median"], r["median"] / base,
                     first_line_accuracy(r["value"], answers)])
    table(["side", "completions", "tokens", "tokens/s", "seconds", "time / rsft hf", "first-line accuracy"], rows)
    speed = rows[1][3] / rows[0][3]
    print("#### Goals\n")
    table(["measure", "value", "goal", "met?"],
          [[f"llama.cpp server / rsft hf, gemma3-270m {m}x{n}x{tokens} (tokens/s)", f"{speed:.2f}x",
            "reported (no target)", "-"]])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=8, help="M")
    parser.add_argument("-n", type=int, default=8)
    parser.add_argument("--tokens", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1, help="CPU threads for each side")
    parser.add_argument("--concurrency", type=int, default=8, help="requests in flight to the llama.cpp server")
    args = parser.parse_args()
    one_thread()
    if args.threads != 1:
        import torch

        torch.set_num_threads(args.threads)
    header("6. Generation on Gemma-3-270M: rsft hf backend vs a llama.cpp server through rsft's openai backend",
           extra_versions=("llama_cpp_python",))
    if importlib.util.find_spec("llama_cpp") is None:
        print("- skipped: llama-cpp-python is not installed (pip install 'rsft[llamacpp]')\n")
        return
    run(args.prompts, args.n, args.tokens, args.repeats, args.threads, args.concurrency)


if __name__ == "__main__":
    main()
