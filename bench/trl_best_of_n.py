"""Run the original ``trl.extras.BestOfNSampler`` (old TRL, in its own venv) for bench/generation.py.

Reads a JSON job (model path, prompts, n, tokens, repeats, sampling) and prints one JSON line:
the median wall time of ``BestOfNSampler.generate`` over the prompts, completions and tokens
generated (counted from the tensors its ``generate`` calls return: up to the first EOS, included).
Runs with OMP_NUM_THREADS=1 and one torch thread, like the other sides.

Set up the venv with ``make bench-trl-venv`` (torch 2.13.0 CPU, trl 0.11.4, transformers 4.50.3).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time

os.environ.setdefault("OMP_NUM_THREADS", "1")


def load_tokenizer(path: str) -> object:
    """The model's tokenizer; one saved by transformers 5 (class ``TokenizersBackend``, unknown to 4.x)
    is rebuilt from its ``tokenizer.json`` and the special tokens of its ``tokenizer_config.json``."""
    from pathlib import Path

    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    try:
        return AutoTokenizer.from_pretrained(path)
    except ValueError:
        config = json.loads((Path(path) / "tokenizer_config.json").read_text())
        special = {k: config[k] for k in ("bos_token", "eos_token", "pad_token", "unk_token")
                   if isinstance(config.get(k), str)}
        return PreTrainedTokenizerFast(tokenizer_file=str(Path(path) / "tokenizer.json"), **special)


def main() -> None:
    import torch
    import transformers
    import trl
    from trl import AutoModelForCausalLMWithValueHead
    from trl.extras.best_of_n_sampler import BestOfNSampler

    torch.set_num_threads(1)
    with open(sys.argv[1]) as f:
        job = json.load(f)
    tok = load_tokenizer(job["model"])
    model = AutoModelForCausalLMWithValueHead.from_pretrained(job["model"], torch_dtype=torch.float32)
    model.eval()
    eos = model.pretrained_model.generation_config.eos_token_id
    eos = {eos} if isinstance(eos, int) else set(eos or [tok.eos_token_id])
    counted = {"completions": 0, "tokens": 0}
    inner = model.generate

    def counting_generate(input_ids: torch.Tensor, **kwargs: object) -> torch.Tensor:
        out = inner(input_ids, **kwargs)
        counted["completions"] += out.shape[0]
        for row in out[:, input_ids.shape[1]:].tolist():
            ends = [p for p, t in enumerate(row) if t in eos]
            counted["tokens"] += ends[0] + 1 if ends else len(row)
        return out

    model.generate = counting_generate
    sampler = BestOfNSampler(model, tok, lambda texts: [0.0] * len(texts), length_sampler=lambda: job["tokens"],
                             sample_size=job["n"], seed=0)
    queries = [tok(p)["input_ids"] for p in job["prompts"]]
    kwargs = {"do_sample": True, "pad_token_id": tok.pad_token_id, **job["sampling"]}
    times = []
    with torch.inference_mode():
        sampler.generate(queries, device="cpu", **kwargs)  # warm-up
        for _ in range(job["repeats"]):
            counted.update(completions=0, tokens=0)
            started = time.perf_counter()
            sampler.generate(queries, device="cpu", **kwargs)
            times.append(time.perf_counter() - started)
    print(json.dumps({"median": statistics.median(times), **counted, "trl": trl.__version__,
                      "transformers": transformers.__version__}))


if __name__ == "__main__":
    main()
