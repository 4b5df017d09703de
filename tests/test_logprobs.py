"""``sequence_logprobs`` against a slow per-token reference, batching invariance, and the KL estimate."""

from __future__ import annotations

import math

import pytest

from rsft.train.logprobs import kl_estimate, sequence_logprobs

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["Q: What is 2 + 3?\nA:", "The quick brown", "def add(a, b):\n", "Q: What is 7 - 4?\nA:"]
COMPLETIONS = [" 5", " fox jumps over the lazy dog.", "    return a + b\n", " 3 and the answer is 42."]


@pytest.fixture(scope="module")
def lm(tiny_lm):
    tok = transformers.AutoTokenizer.from_pretrained(str(tiny_lm))
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm), dtype=torch.float32).eval()
    return model, tok


def reference_logprob(model, tok, prompt: str, completion: str) -> float:
    """One forward pass per completion token, no padding, no batching: the definition itself."""
    prompt_ids = tok(prompt)["input_ids"]
    completion_ids = tok(completion, add_special_tokens=False)["input_ids"]
    total = 0.0
    with torch.no_grad():
        for t, token in enumerate(completion_ids):
            context = torch.tensor([prompt_ids + completion_ids[:t]])
            logits = model(input_ids=context).logits[0, -1]
            total += torch.log_softmax(logits.double(), dim=-1)[token].item()
    return total


def test_matches_per_token_reference(lm):
    model, tok = lm
    got = sequence_logprobs(model, tok, PROMPTS, COMPLETIONS, batch_size=8)
    want = [reference_logprob(model, tok, p, c) for p, c in zip(PROMPTS, COMPLETIONS, strict=True)]
    assert got == pytest.approx(want, abs=1e-4)
    assert all(x < 0 for x in got)


def test_boundary_is_where_the_caller_put_it(lm):
    """Prompt and completion are tokenized apart: moving text across the boundary changes the score."""
    model, tok = lm
    whole = sequence_logprobs(model, tok, ["Q: What is 2 + 3?\nA:"], [" 5"])[0]
    moved = sequence_logprobs(model, tok, ["Q: What is 2 + 3?\nA: "], ["5"])[0]
    assert whole == pytest.approx(reference_logprob(model, tok, "Q: What is 2 + 3?\nA:", " 5"), abs=1e-5)
    assert moved == pytest.approx(reference_logprob(model, tok, "Q: What is 2 + 3?\nA: ", "5"), abs=1e-5)


def test_padded_batches_equal_one_at_a_time(lm):
    model, tok = lm
    prompts, completions = PROMPTS * 2, COMPLETIONS[::-1] * 2  # mixed lengths in every batch
    lengths = {len(tok(p)["input_ids"]) + len(tok(c, add_special_tokens=False)["input_ids"])
               for p, c in zip(prompts, completions, strict=True)}
    assert len(lengths) > 2
    batched = sequence_logprobs(model, tok, prompts, completions, batch_size=3)
    single = [sequence_logprobs(model, tok, [p], [c], batch_size=1)[0] for p, c in zip(prompts, completions, strict=True)]
    assert batched == pytest.approx(single, abs=1e-4)
    assert sequence_logprobs(model, tok, prompts, completions, batch_size=16) == pytest.approx(single, abs=1e-4)


def test_empty_completion_scores_zero_and_empty_input(lm):
    model, tok = lm
    assert sequence_logprobs(model, tok, ["Q:", "The"], ["", " quick"])[0] == 0.0
    assert sequence_logprobs(model, tok, [], []) == []
    with pytest.raises(ValueError, match="2 prompts but 1 completions"):
        sequence_logprobs(model, tok, ["a", "b"], ["c"])


def test_kl_estimate_arithmetic():
    est = kl_estimate([-1.0, -2.0, -3.0], [-2.0, -2.5, -4.5])
    assert est["n"] == 3
    assert est["mean"] == pytest.approx(1.0)  # diffs 1.0, 0.5, 1.5
    assert est["stderr"] == pytest.approx(math.sqrt(0.25 / 3))
    assert math.isnan(kl_estimate([-1.0], [-1.5])["stderr"])
    with pytest.raises(ValueError):
        kl_estimate([], [])
    with pytest.raises(ValueError):
        kl_estimate([-1.0], [])


def _sample(model, tok, prompts: list[str], n: int) -> tuple[list[str], list[str]]:
    """Pure temperature-1 samples (no top-k/top-p), as the KL estimate requires."""
    torch.manual_seed(0)
    out_prompts, out_completions = [], []
    for prompt in prompts:
        ids = tok(prompt, return_tensors="pt")
        gen = model.generate(**ids, do_sample=True, temperature=1.0, top_k=0, top_p=1.0, max_new_tokens=8,
                             num_return_sequences=n, pad_token_id=tok.pad_token_id)
        for row in gen[:, ids["input_ids"].shape[1]:]:
            text = tok.decode(row, skip_special_tokens=True)
            if text:
                out_prompts.append(prompt)
                out_completions.append(text)
    return out_prompts, out_completions


def _trained_copy(tiny_lm, tok):
    """The tiny model after a few Adam steps towards one answer: a policy that moved away from the base."""
    model = transformers.AutoModelForCausalLM.from_pretrained(str(tiny_lm), dtype=torch.float32)
    ids = tok("Q: What is 2 + 3?\nA: 5 5 5 5 5", return_tensors="pt")["input_ids"]
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    model.train()
    for _ in range(10):
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        opt.step()
        opt.zero_grad()
    return model.eval()


def test_kl_of_model_against_itself_is_zero(lm):
    model, tok = lm
    prompts, completions = _sample(model, tok, PROMPTS[:2], n=4)
    assert len(completions) >= 4
    lp = sequence_logprobs(model, tok, prompts, completions)
    est = kl_estimate(lp, sequence_logprobs(model, tok, prompts, completions, batch_size=3))
    assert abs(est["mean"]) < 1e-5
    assert est["n"] == len(completions)


def test_kl_of_trained_model_is_positive_on_its_own_samples(lm, tiny_lm):
    base, tok = lm
    policy = _trained_copy(tiny_lm, tok)
    prompts, completions = _sample(policy, tok, ["Q: What is 2 + 3?\nA:", "Q: What is 7 - 4?\nA:"], n=8)
    assert len(completions) >= 8
    est = kl_estimate(sequence_logprobs(policy, tok, prompts, completions),
                      sequence_logprobs(base, tok, prompts, completions))
    assert est["mean"] > 1.0
    assert est["mean"] > 3 * est["stderr"]


def test_models_without_logits_to_keep_give_the_same_scores(lm):
    """The output head runs only at completion positions; a model that cannot be asked for that is sliced after."""
    model, tok = lm

    class NoLogitsToKeep(torch.nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner

        def forward(self, input_ids, attention_mask, use_cache):
            return self.inner(input_ids=input_ids, attention_mask=attention_mask, use_cache=use_cache)

    want = sequence_logprobs(model, tok, PROMPTS, COMPLETIONS, batch_size=3)
    assert sequence_logprobs(NoLogitsToKeep(model), tok, PROMPTS, COMPLETIONS, batch_size=3) == pytest.approx(want, abs=1e-5)


def test_a_shared_few_shot_header_runs_once_and_scores_the_same(lm):
    """Prompts with a common header (few-shot examples) share its KV cache; scores equal the definition."""
    from rsft.generate import prefix_cache

    model, tok = lm
    header = "Q: What is 1 + 1?\nA: 2\n\nQ: What is 2 + 2?\nA: 4\n\nQ: What is 3 + 3?\nA: 6\n\n"
    prompts = [header + q for q in ("Q: What is 4 + 4?\nA:", "Q: And 10 - 7?\nA:", "Q: 5 x 5?\nA:")] * 2
    completions = [" 8", " 3 of them", " 25, I think", " nine", " 3", " twenty-five\n"]
    ids = [tok(p)["input_ids"] for p in prompts]
    shared, cache = prefix_cache.prefix_cache(model, ids, model.device)
    assert shared >= prefix_cache.MIN_SHARED_PREFIX and cache is not None
    got = sequence_logprobs(model, tok, prompts, completions, batch_size=4)
    want = [reference_logprob(model, tok, p, c) for p, c in zip(prompts, completions, strict=True)]
    assert got == pytest.approx(want, abs=1e-4)
