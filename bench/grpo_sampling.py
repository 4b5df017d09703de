"""GRPO's sampling on a CPU: rsft's decoding loop (``train_grpo(sampler="rsft")``) vs TRL's ``model.generate``.

    python bench/grpo_sampling.py [--model qwen2.5-coder-0.5b] [--rows 48] [--tokens 48] [--repeats 2]

The policy is set up as ``rsft.train.sft.train_grpo`` sets it up on a CPU: the base's weights frozen
in bf16 (``_freeze_in_bf16``), a LoRA adapter (r 16, all linear layers, unmerged) in float32, wrapped
by peft. Both sides sample ``--rows`` completions of ``--tokens`` new tokens (T=0.8, top-k 50) for
``--rows / 4`` chat prompts repeated 4 times, as TRL passes a generation batch with groups of 4:

- ``rsft``: ``RsftRollout``, the TRL ``rollout_func`` train_grpo installs (each prompt prefilled once
  for its group, finished rows dropped, dropout off);
- ``trl``: ``model.generate`` on the same peft model with the same left-padded batch, what
  ``GRPOTrainer`` runs without a ``rollout_func`` (``min_new_tokens`` equal to ``--tokens`` so
  both sides decode the same number of tokens).

The sides run interleaved in one process; the table gives the median wall time and tokens/s, and
their ratio. ``--model`` takes any local checkpoint (``tests/tiny_models.py`` builds tiny ones).
"""

from __future__ import annotations

import argparse
from types import SimpleNamespace

from common import header, interleaved, table


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--model", default="qwen2.5-coder-0.5b")
    p.add_argument("--rows", type=int, default=48, help="completions per generation batch (a multiple of 4)")
    p.add_argument("--tokens", type=int, default=48, help="new tokens per completion")
    p.add_argument("--repeats", type=int, default=2)
    a = p.parse_args()

    import torch
    from peft import LoraConfig, get_peft_model

    from rsft.models import load_causal_lm
    from rsft.train.grpo import RsftRollout
    from rsft.train.sft import _freeze_in_bf16
    from rsft.types import SamplingParams

    header(f"GRPO sampling on {a.model}: rsft's loop (rollout_func) vs TRL's model.generate", ["trl", "peft"])
    model, tokenizer = load_causal_lm(a.model, dtype="float32")
    model = get_peft_model(model, LoraConfig(r=16, lora_alpha=32, target_modules="all-linear", task_type="CAUSAL_LM"))
    _freeze_in_bf16(model, torch)
    model.train()
    questions = [f"What is {7 * i + 3} + {11 * i + 5} - {i + 2}? Think step by step." for i in range(a.rows // 4)]
    prompts = [[{"role": "user", "content": q}] for q in questions for _ in range(4)]
    sampling = SamplingParams(temperature=0.8, top_k=50, max_new_tokens=a.tokens, seed=0)
    trainer = SimpleNamespace(model=model, accelerator=SimpleNamespace(unwrap_model=lambda m: m))
    rollout = RsftRollout(tokenizer, sampling, batch_size=len(questions))

    tokenizer.padding_side = "left"
    texts = [tokenizer.apply_chat_template(m, tokenize=False, add_generation_prompt=True) for m in prompts]
    batch = tokenizer(texts, return_tensors="pt", padding=True)

    def rsft_side() -> int:
        return sum(len(ids) for ids in rollout(prompts, trainer)["completion_ids"])

    def trl_side() -> int:
        with torch.no_grad():
            out = model.generate(**batch, do_sample=True, temperature=0.8, top_k=50, max_new_tokens=a.tokens,
                                 min_new_tokens=a.tokens, pad_token_id=tokenizer.pad_token_id)
        return int(out.shape[0] * (out.shape[1] - batch["input_ids"].shape[1]))

    # the rsft side may stop rows at EOS; compare time per token decoded
    runs = interleaved({"rsft": rsft_side, "trl": trl_side}, repeats=a.repeats, warmup=False)
    rate = {name: r["value"] / r["median"] for name, r in runs.items()}
    print(f"### {a.rows} completions ({len(questions)} prompts x 4) x {a.tokens} new tokens, median of {a.repeats}\n")
    table(["side", "tokens", "seconds", "tokens/s", "tokens/s vs trl"],
          [[name, r["value"], r["median"], rate[name], rate[name] / rate["trl"]] for name, r in runs.items()])


if __name__ == "__main__":
    main()
