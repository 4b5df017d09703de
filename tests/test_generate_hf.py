"""The hf backend on a tiny random Llama: shapes, seeds, stop strings, logprobs against a forward pass."""

from __future__ import annotations

import math

import pytest
import torch

from rsft.errors import RsftError
from rsft.generate import make_generator
from rsft.generate.hf import HFGenerator, adds_bos
from rsft.generate.mixed import MixedGenerator
from rsft.types import SamplingParams

PROMPTS = ["Q: What is 2 + 3?\nA:", "hello world", "The quick brown fox"]


@pytest.fixture(scope="module")
def gen(tiny_lm) -> HFGenerator:
    return HFGenerator(str(tiny_lm), batch_size=2)


def test_shape_and_fields(gen):
    out = gen.generate(PROMPTS, 5, SamplingParams(max_new_tokens=6, seed=1))
    assert [len(row) for row in out] == [5, 5, 5]
    for row in out:
        for c in row:
            assert 1 <= c.n_tokens <= 6
            assert c.finish_reason in ("stop", "length")
            assert c.finish_reason == "stop" or c.n_tokens == 6
            assert c.logprob < 0 and math.isfinite(c.logprob)
            assert c.generator == gen.name
    assert gen.calls >= 2  # batch_size=2 prompts per call


def test_same_seed_same_completions_other_seed_differs(gen):
    s = SamplingParams(max_new_tokens=8, seed=3)
    a = gen.generate(PROMPTS, 4, s)
    b = gen.generate(PROMPTS, 4, s)
    c = gen.generate(PROMPTS, 4, SamplingParams(max_new_tokens=8, seed=4))
    assert a == b
    assert [x.text for r in a for x in r] != [x.text for r in c for x in r]


def test_greedy_gives_n_identical_copies_from_one_sequence(gen):
    out = gen.generate(PROMPTS[:1], 3, SamplingParams(temperature=0, max_new_tokens=5))
    assert len({c.text for c in out[0]}) == 1
    assert len(out[0]) == 3


def _forward_logprob(gen: HFGenerator, prompt: str, completion_ids: list[int]) -> float:
    enc = gen.tokenizer(prompt, return_tensors="pt")
    ids = torch.cat([enc["input_ids"], torch.tensor([completion_ids])], dim=1)
    with torch.inference_mode():
        logits = gen.model(ids).logits.float()
    logp = torch.log_softmax(logits[0, :-1], -1)
    start = enc["input_ids"].shape[1]
    return float(sum(logp[start - 1 + t, tok] for t, tok in enumerate(completion_ids)))


def test_logprob_is_the_models_own_not_the_tempered_one(gen):
    """Sampled at temperature 0.7 with top-k, the recorded logprob is still log p under the raw model."""
    prompt = PROMPTS[0]
    out = gen.generate([prompt], 3, SamplingParams(temperature=0.7, top_k=20, max_new_tokens=6, seed=5))
    for j, c in enumerate(out[0]):
        ids = gen.last_tokens[j].tolist()[: c.n_tokens]
        assert c.logprob == pytest.approx(_forward_logprob(gen, prompt, ids), abs=1e-3)


def test_logprob_matches_forward_pass_in_a_padded_batch(tiny_lm):
    """Unequal prompts (left padding) and a KV cache copied to N rows: logprobs still match a fresh forward."""
    gen = HFGenerator(str(tiny_lm), batch_size=2)
    prompts = ["hi", "The quick brown fox jumps over"]
    out = gen.generate(prompts, 3, SamplingParams(temperature=0.8, top_k=30, max_new_tokens=5, seed=0))
    for k in range(6):
        ids = gen.last_tokens[k].tolist()[: out[k // 3][k % 3].n_tokens]
        assert out[k // 3][k % 3].logprob == pytest.approx(_forward_logprob(gen, prompts[k // 3], ids), abs=1e-3)


def _transformers_greedy(gen: HFGenerator, prompts: list[str], max_new_tokens: int) -> list[list[int]]:
    """Reference: transformers' own greedy ``generate`` on a left-padded batch (new ids per prompt)."""
    enc = gen.tokenizer(prompts, return_tensors="pt", padding=True)
    with torch.inference_mode():
        ref = gen.model.generate(**enc, do_sample=False, max_new_tokens=max_new_tokens,
                                 pad_token_id=gen.tokenizer.pad_token_id, eos_token_id=sorted(gen.eos_ids))
    return [row[enc["input_ids"].shape[1]:].tolist() for row in ref]


def test_greedy_equals_transformers_generate(gen):
    prompts = ["hi", "The quick brown fox jumps over", "Q: What is 2 + 3?\nA:"]
    ours = gen.generate(prompts, 1, SamplingParams(temperature=0, max_new_tokens=8))
    for row, ref_ids in zip(ours, _transformers_greedy(gen, prompts, 8), strict=True):
        assert row[0].text == gen.tokenizer.decode(ref_ids[: row[0].n_tokens], skip_special_tokens=True)


FEW_SHOT = "Q: What is 2 + 3?\nA: 5\n\nQ: What is 7 - 4?\nA: 3\n\nQ: the quick brown fox?\nA: dog\n\n"


def test_shared_few_shot_prefix_is_encoded_once_and_changes_nothing(tiny_lm):
    """Prompts sharing a long prefix take the prefix-cache path; results equal a plain forward/generate."""
    gen = HFGenerator(str(tiny_lm))  # one batch, so last_tokens covers every row
    prompts = [FEW_SHOT + "Q: What is 1 + 1?\nA:", FEW_SHOT + "Q: hi\nA:", FEW_SHOT + "Q: What is 10 - 4 - 3?\nA:"]
    encoded = [gen.tokenizer(p)["input_ids"] for p in prompts]
    from rsft.generate.prefix_cache import MIN_SHARED_PREFIX, shared_prefix_length

    assert shared_prefix_length(encoded) >= MIN_SHARED_PREFIX
    ours = gen.generate(prompts, 1, SamplingParams(temperature=0, max_new_tokens=8))
    for i, (row, ref_all) in enumerate(zip(ours, _transformers_greedy(gen, prompts, 8), strict=True)):
        ref_ids = ref_all[: row[0].n_tokens]
        assert gen.last_tokens[i].tolist()[: row[0].n_tokens] == ref_ids
        assert row[0].logprob == pytest.approx(_forward_logprob(gen, prompts[i], ref_ids), abs=1e-3)
    sampled = gen.generate(prompts, 4, SamplingParams(temperature=1.0, max_new_tokens=6, seed=9))
    for k in range(12):
        c = sampled[k // 4][k % 4]
        ids = gen.last_tokens[k].tolist()[: c.n_tokens]
        assert c.logprob == pytest.approx(_forward_logprob(gen, prompts[k // 4], ids), abs=1e-3)


def test_stop_string_cuts_text_and_counts_tokens(gen):
    out = gen.generate(PROMPTS, 6, SamplingParams(max_new_tokens=16, seed=2, stop=(" ",)))
    cut = [c for row in out for c in row if c.finish_reason == "stop"]
    assert cut, "expected some completions to hit the stop string"
    for row in out:
        for c in row:
            assert " " not in c.text
            assert c.n_tokens <= 16


def test_multi_character_stop_strings(gen):
    """Stops longer than one character are checked on the decoded text; text is cut before them."""
    free = gen.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, seed=4))
    pair = next(c.text[1:3] for row in free for c in row if len(c.text) >= 4)  # a 2-char string that occurs
    out = gen.generate(PROMPTS, 4, SamplingParams(max_new_tokens=10, seed=4, stop=(pair,)))
    assert any(c.finish_reason == "stop" for row in out for c in row)
    for row in out:
        for c in row:
            assert pair not in c.text


def test_chat_prompts_use_the_template_and_plain_fallback(gen, tiny_lm_no_template):
    msgs = [{"role": "user", "content": "hi"}]
    assert gen.render(msgs) == "<|user|>hi\n<|assistant|>"
    out = gen.generate([msgs], 2, SamplingParams(max_new_tokens=4))
    assert len(out[0]) == 2
    plain = HFGenerator(str(tiny_lm_no_template))
    with pytest.raises(RsftError, match="no chat template"):
        plain.generate([msgs], 1, SamplingParams(max_new_tokens=2))
    plain2 = HFGenerator(str(tiny_lm_no_template), chat_template="plain")
    assert plain2.render(msgs) == "hi\n"


def test_registry_and_bad_options(tiny_lm):
    g = make_generator("hf", {"model": str(tiny_lm), "batch_size": 4})
    assert isinstance(g, HFGenerator)
    with pytest.raises(RsftError, match="unknown backend"):
        make_generator("nope", {"model": "x"})
    with pytest.raises(RsftError, match="bad option"):
        make_generator("hf", {"model": str(tiny_lm), "batch_sise": 4})
    with pytest.raises(RsftError):
        make_generator("hf", {"model": "/does/not/exist"})


def test_mixed_generator_splits_columns(gen, tiny_lm):
    other = HFGenerator(str(tiny_lm), name="second")
    mixed = MixedGenerator([(gen, 3), (other, 1)])
    out = mixed.generate(PROMPTS[:2], 4, SamplingParams(max_new_tokens=3))
    assert [[c.generator for c in row] for row in out] == [[gen.name] * 3 + ["second"]] * 2
    assert mixed.counts(8) == [6, 2]
    assert mixed.counts(3) == [3, 0] or sum(mixed.counts(3)) == 3


def test_vllm_backend_says_what_it_needs():
    try:
        import vllm  # noqa: F401
    except ImportError:
        with pytest.raises(RsftError, match="rsft\\[vllm\\]"):
            make_generator("vllm", {"model": "x"})
    else:
        pytest.skip("vllm installed; the backend itself is tested in tests/test_vllm.py")




def test_sample_ids_are_the_tokens_generate_decodes(gen):
    """sample_ids (what GRPO's rollouts train on) draws the same tokens as generate with the same seed:
    the prompt's ids as rendered, each completion up to and including its end token."""
    s = SamplingParams(max_new_tokens=10, seed=4)
    prompts = [PROMPTS[0], [{"role": "user", "content": "hi"}]]
    out = gen.generate(prompts, 3, s)
    prompt_ids, completion_ids = gen.sample_ids(prompts, 3, s)
    texts = [gen.render(p) for p in prompts]
    assert prompt_ids == [gen.tokenizer(t, add_special_tokens=adds_bos(gen.tokenizer, texts))["input_ids"] for t in texts]
    assert len(completion_ids) == 6
    for k, ids in enumerate(completion_ids):
        c = out[k // 3][k % 3]
        assert len(ids) == c.n_tokens
        assert gen.tokenizer.decode(ids, skip_special_tokens=True) == c.text
        assert (ids[-1] in gen.eos_ids) == (c.finish_reason == "stop")
    with pytest.raises(RsftError, match="stop strings"):
        gen.sample_ids(prompts, 1, SamplingParams(stop=("\n",)))


def test_from_model_generates_with_a_model_in_memory(gen):
    other = HFGenerator.from_model(gen.model, gen.tokenizer, name="policy", batch_size=2)
    s = SamplingParams(max_new_tokens=6, seed=7)
    assert [c.text for c in other.generate(PROMPTS, 2, s)[0]] == [c.text for c in gen.generate(PROMPTS, 2, s)[0]]
    assert other.generate(PROMPTS[:1], 1, s)[0][0].generator == "policy"


def test_the_output_layer_never_gets_a_strided_slice(gen):
    """oneDNN's bf16 matmul copies the weights once per row of a strided 3-D input; at 96 rows of a real
    model that allocation fails and torch turns oneDNN off for the whole process. Prefill and decode
    hand the output layer contiguous hidden states only."""
    seen = []
    head = gen.model.get_output_embeddings()
    handle = head.register_forward_pre_hook(lambda module, args: seen.append(args[0].is_contiguous()))
    try:
        gen.generate(PROMPTS, 2, SamplingParams(max_new_tokens=4, seed=0))
    finally:
        handle.remove()
    assert seen and all(seen)


def test_onednn_is_turned_back_on_before_generating(gen):
    if not torch.backends.mkldnn.is_available():
        pytest.skip("torch built without oneDNN")
    torch.backends.mkldnn.enabled = False  # what torch does after one failed oneDNN matmul
    try:
        gen.generate(PROMPTS[:1], 1, SamplingParams(max_new_tokens=2))
        assert torch.backends.mkldnn.enabled
    finally:
        torch.backends.mkldnn.enabled = True
