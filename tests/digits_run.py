"""A tiny RSFT run the tiny random model can learn from, shared by the rounds and sweep tests.

The reward is the fraction of digits in a completion: trained on its digit-richest samples, the policy's
held-out digit rate rises within a few steps; trained on its digit-poorest ones (``no_digits``) it falls.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import rsft

RSFT_SRC = str(Path(rsft.__file__).resolve().parents[1])

SCORERS = '''
def digits(prompt, completion):
    text = completion.strip()
    return sum(ch.isdigit() for ch in text) / len(text) if text else 0.0

def no_digits(prompt, completion):
    return 1.0 - digits(prompt, completion)
'''


def write_run(d: Path, tiny_lm: Path, name: str, *, train_scorer: str = "digits", prompts: int = 8,
              eval_prompts: int = 4, n: int = 6, max_new_tokens: int = 8, epochs: int = 4, max_length: int = 64,
              eval_n: int = 8, kl_samples: int = 4, extra: str = "") -> Path:
    """Write the scorers, train/eval prompt files and ``NAME.yaml`` into ``d``; ``extra`` is appended
    YAML (e.g. a ``rounds:`` or ``sweep:`` section). Returns the config path."""
    (d / "myscorers.py").write_text(SCORERS)
    (d / "train.jsonl").write_text("".join(json.dumps({"prompt": f"Q: count to {i}\nA:"}) + "\n" for i in range(prompts)))
    (d / "eval.jsonl").write_text(
        "".join(json.dumps({"prompt": f"Q: list {i} numbers\nA:"}) + "\n" for i in range(eval_prompts)))
    cfg = d / f"{name}.yaml"
    cfg.write_text(textwrap.dedent(f"""
        name: {name}
        out: {d / 'runs'}
        prompts: {{path: {d / 'train.jsonl'}}}
        generation:
          n: {n}
          generator: {{backend: hf, model: {tiny_lm}}}
          sampling: {{temperature: 1.0, top_k: 0, max_new_tokens: {max_new_tokens}, seed: 3}}
        scoring: {{scorer: "myscorers:{train_scorer}"}}
        selection: {{strategy: best}}
        train: {{lora: false, learning_rate: 0.01, epochs: {epochs}, batch_size: 4, max_length: {max_length}}}
        eval:
          prompts: {{path: {d / 'eval.jsonl'}}}
          scorer: "myscorers:digits"
          n: {eval_n}
          sampling: {{temperature: 1.0, top_k: 0, max_new_tokens: {max_new_tokens}, seed: 5}}
          kl_samples: {kl_samples}
          kl_max_new_tokens: {max_new_tokens}
    """) + textwrap.dedent(extra))
    return cfg


def rsft_cli(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    """``python -m rsft.cli ARGS`` in ``cwd`` (which is on PYTHONPATH, for ``myscorers``), offline."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(cwd), RSFT_SRC]), "HF_HUB_OFFLINE": "1"}
    return subprocess.run([sys.executable, "-m", "rsft.cli", *args], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=600)
