"""Tiny random models built locally in well under a second: no hub, no downloads.

A byte-level BPE tokenizer trained on a few lines, wrapped in ``PreTrainedTokenizerFast``, plus a
2-layer Llama (causal LM), a Llama sequence classifier (reward model, num_labels=1) and a Llama token
classifier (process reward model).
"""

from __future__ import annotations

from pathlib import Path

CORPUS = [
    "Q: What is 2 + 3?\nA: 5\n",
    "Q: What is 7 - 4?\nA: 3\n",
    "The quick brown fox jumps over the lazy dog.",
    "0 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20",
    "def add(a, b):\n    return a + b\n",
    "user assistant system: hello world, the answer is 42.",
]

CHAT_TEMPLATE = (
    "{% for m in messages %}<|{{ m['role'] }}|>{{ m['content'] }}\n{% endfor %}"
    "{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def build_tokenizer(out_dir: Path, chat_template: bool = True):
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=300,
        special_tokens=["<pad>", "<bos>", "<eos>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS * 4, trainer=trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>", padding_side="left"
    )
    if chat_template:
        fast.chat_template = CHAT_TEMPLATE
    fast.save_pretrained(out_dir)
    return fast


def build_causal_lm(out_dir: Path, seed: int = 0, chat_template: bool = True) -> Path:
    """A 2-layer Llama with random weights and its tokenizer, saved to ``out_dir``."""
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir, chat_template=chat_template)
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=512,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
        tie_word_embeddings=False,
    )
    model = LlamaForCausalLM(config)
    model.save_pretrained(out_dir)
    return out_dir


def _classifier_config(tok, num_labels: int):
    """The 2-layer Llama config of the tiny classifiers (reward model, token classifier)."""
    from transformers import LlamaConfig

    return LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                       num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=1024,
                       num_labels=num_labels, bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id,
                       pad_token_id=tok.pad_token_id)


def build_reward_model(out_dir: Path, seed: int = 0) -> Path:
    """A 2-layer Llama sequence classifier with one output (a reward model), saved to ``out_dir``."""
    import torch
    from transformers import LlamaForSequenceClassification

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir)
    torch.manual_seed(seed)
    LlamaForSequenceClassification(_classifier_config(tok, num_labels=1)).save_pretrained(out_dir)
    return out_dir


def build_token_classifier(out_dir: Path, seed: int = 0, num_labels: int = 2) -> Path:
    """A 2-layer Llama token classifier (a process reward model: a label per token), saved to ``out_dir``."""
    import torch
    from transformers import LlamaForTokenClassification

    out_dir = Path(out_dir)
    tok = build_tokenizer(out_dir, chat_template=False)
    torch.manual_seed(seed)
    LlamaForTokenClassification(_classifier_config(tok, num_labels=num_labels)).save_pretrained(out_dir)
    return out_dir
