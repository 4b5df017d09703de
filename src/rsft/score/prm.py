"""Process rewards: split a completion into steps, score every step, aggregate the step scores.

A process reward model (PRM) judges each reasoning step, not only the end; Best-of-N with a PRM
ranks candidates by an aggregate of their step scores (``min``: a chain is as good as its worst
step; ``prod``: the chance every step is right; ``last``; ``mean``). Step scorers:

- a token-classification PRM (``AutoModelForTokenClassification``): the probability of the
  positive label at each step's last token (after ``step_tag``, when one is set);
- a step-tag causal LM (Math-Shepherd style): each step is followed by ``step_tag`` (default
  ``" ки"``) and its score is P(``good_token``) at the tag's last token, normalised against
  ``bad_token`` (over the whole vocabulary when there is none);
- any callable ``fn(prompt, steps) -> list[float]`` (one score per step).

The model reads the prompt, then each step plus its tag, the pieces joined by ``step_sep``. Each
piece is tokenized on its own (so every step ends on a token boundary), and pairs are scored in
length-sorted batches like the reward model's (``rsft.score.reward_model.run_in_batches``).
"""

from __future__ import annotations

import inspect
import json
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol

from rsft.errors import RsftError, first_line
from rsft.score.reward_model import check_model_options, right_padded, run_in_batches
from rsft.types import PromptValue, Verdict

AGGREGATES = ("min", "prod", "last", "mean")


def parse_split(how: str) -> re.Pattern[str]:
    """The step separator for ``lines``, ``paragraphs`` (a blank line) or ``regex:PATTERN``."""
    if how == "lines":
        return re.compile(r"\n")
    if how == "paragraphs":
        return re.compile(r"\n[ \t]*\n")
    if how.startswith("regex:") and how[len("regex:") :]:
        try:
            return re.compile(how[len("regex:") :])
        except re.error as e:
            raise RsftError(f"prm: split {how!r}: bad regex: {e}") from None
    raise RsftError(f"prm: split must be 'lines', 'paragraphs' or 'regex:PATTERN', got {how!r}")


def split_steps(text: str, how: str | re.Pattern[str] = "lines") -> list[str]:
    """The non-empty steps of ``text``, stripped, cut at each match of the separator (which may be
    zero-width, e.g. ``regex:(?=Step \\d)``); capture groups in the pattern are not steps."""
    pattern = parse_split(how) if isinstance(how, str) else how
    pieces, pos = [], 0
    for m in pattern.finditer(text):
        pieces.append(text[pos : m.start()])
        pos = m.end()
    pieces.append(text[pos:])
    return [p.strip() for p in pieces if p.strip()]


def aggregate(scores: Sequence[float], how: str) -> float:
    """One number for a completion from its step scores. No steps: NaN. A NaN step (e.g. cut off by
    ``max_length``) makes ``min``/``prod``/``mean`` NaN; ``last`` is the last step's score."""
    if how not in AGGREGATES:
        raise RsftError(f"prm: aggregate must be one of {', '.join(AGGREGATES)}, got {how!r}")
    if not scores:
        return math.nan
    if how == "last":
        return float(scores[-1])
    if any(math.isnan(s) for s in scores):
        return math.nan
    if how == "min":
        return float(min(scores))
    if how == "prod":
        return float(math.prod(scores))
    return math.fsum(scores) / len(scores)


class StepScorer(Protocol):
    """Scores the steps of a flat batch of pairs: one list of floats per pair, one float per step."""

    name: str

    def score_steps(self, prompts: Sequence[PromptValue], steps: Sequence[Sequence[str]]) -> list[list[float]]: ...


class CallableStepScorer:
    """Adapts ``fn(prompt, steps) -> list[float]``, called once per pair."""

    def __init__(self, fn: Callable[[PromptValue, list[str]], Sequence[float]], name: str | None = None) -> None:
        if not callable(fn):
            raise RsftError(f"prm-fn: {fn!r} is not callable")
        self.fn = fn
        self.name = name or getattr(fn, "__qualname__", type(fn).__name__)

    def score_steps(self, prompts: Sequence[PromptValue], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        out = []
        for prompt, pair_steps in zip(prompts, steps, strict=True):
            values = [float(v) for v in self.fn(prompt, list(pair_steps))]
            if len(values) != len(pair_steps):
                raise RsftError(f"prm-fn {self.name!r} returned {len(values)} scores for {len(pair_steps)} steps")
            out.append(values)
        return out


class ModelStepScorer:
    """Step scores from a PRM checkpoint: a token classifier or a step-tag causal LM.

    Args:
        path: a local model folder (or a hub id already in the local cache).
        kind: ``"token"`` (``AutoModelForTokenClassification``), ``"tag"`` (a causal LM read at
            step tags) or ``"auto"`` (from the checkpoint's architecture name).
        step_tag: text after each step; scores are read at its last token. Default ``""`` for
            ``token`` (the step's own last token), ``" ки"`` for ``tag``.
        step_sep: text between the prompt and the first step and between steps.
        good_token, bad_token: ``tag`` only: single tokens; the score is
            ``P(good) / (P(good) + P(bad))``, or ``P(good)`` over the whole vocabulary when
            ``bad_token`` is None or empty.
        positive_label: ``token`` only: the label index (or name in ``id2label``) whose
            probability is the score; default 1 (a model with one label: sigmoid of its logit).
        batch_size, max_length, device, dtype, sort_by_length, max_batch_tokens: as for
            ``RewardModelScorer``. Longer inputs lose their start; a step cut off scores NaN.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        kind: str = "auto",
        step_tag: str | None = None,
        step_sep: str = "\n",
        good_token: str = "+",
        bad_token: str | None = "-",
        positive_label: int | str | None = None,
        batch_size: int = 8,
        max_length: int = 4096,
        device: str = "auto",
        dtype: str = "auto",
        sort_by_length: bool = True,
        max_batch_tokens: int | None = None,
    ) -> None:
        import torch
        from transformers import AutoConfig, AutoTokenizer

        path = str(path)
        check_model_options("prm", path, batch_size, max_length, max_batch_tokens, dtype)
        try:
            config = AutoConfig.from_pretrained(path)
            self.tokenizer = AutoTokenizer.from_pretrained(path)
        except (OSError, ValueError) as e:
            raise RsftError(f"prm: cannot load {path}: {first_line(e)}") from None
        self.kind = _kind(kind, config, path)
        self.name = f"prm:{path}"
        self.step_tag = step_tag if step_tag is not None else ("" if self.kind == "token" else " ки")
        self.step_sep = step_sep
        self.batch_size, self.max_length = batch_size, max_length
        self.sort_by_length, self.max_batch_tokens = sort_by_length, max_batch_tokens
        self.device = ("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device
        self.model = self._load(path, dtype if dtype == "auto" else getattr(torch, dtype)).to(self.device).eval()
        if self.kind == "token":
            self.positive = _positive_label(positive_label, self.model.config, path)
        else:
            self.good = self._single_token("good_token", good_token)
            self.bad = self._single_token("bad_token", bad_token) if bad_token else None
        pad = self.tokenizer.pad_token_id if self.tokenizer.pad_token_id is not None else self.tokenizer.eos_token_id
        self.pad_id = int(pad or 0)  # right padding: real positions never see it (causal attention)
        self._keeps_logits = self.kind == "tag" and "logits_to_keep" in inspect.signature(self.model.forward).parameters
        self.last_stats: dict[str, Any] = {}

    def _load(self, path: str, dtype: Any) -> Any:
        from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

        auto = AutoModelForTokenClassification if self.kind == "token" else AutoModelForCausalLM
        try:
            return auto.from_pretrained(path, dtype=dtype)
        except (OSError, ValueError) as e:
            raise RsftError(f"prm: cannot load {path} as a {self.kind} PRM: {first_line(e)}") from None

    def _single_token(self, option: str, text: str) -> int:
        ids = self.tokenizer.encode(text, add_special_tokens=False)
        if len(ids) != 1:
            found = self.tokenizer.convert_tokens_to_ids(text)
            if not isinstance(found, int) or found == self.tokenizer.unk_token_id:
                raise RsftError(f"prm: {option} {text!r} is {len(ids)} tokens in this tokenizer; it must be one")
            return found
        return int(ids[0])

    def _prompt_ids(self, prompt: PromptValue) -> list[int]:
        tok = self.tokenizer
        if isinstance(prompt, str):
            return list(tok(prompt)["input_ids"])
        messages = [dict(m) for m in prompt]
        if tok.chat_template:
            text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
            return list(tok(text, add_special_tokens=False)["input_ids"])
        return list(tok("\n\n".join(str(m["content"]) for m in messages))["input_ids"])

    def encode(self, prompt: PromptValue, steps: Sequence[str]) -> tuple[list[int], list[int]]:
        """Token ids of one pair and, per step, the position its score is read at (-1: cut off by
        ``max_length``, which drops tokens from the start)."""
        tok = self.tokenizer
        ids = self._prompt_ids(prompt)
        sep = list(tok(self.step_sep, add_special_tokens=False)["input_ids"]) if self.step_sep else []
        positions = []
        for step in steps:
            ids += sep
            ids += tok(step + self.step_tag, add_special_tokens=False)["input_ids"]
            positions.append(len(ids) - 1)
        cut = max(0, len(ids) - self.max_length)
        return ids[cut:], [p - cut if p >= cut else -1 for p in positions]

    def _forward(self, batch: Sequence[tuple[list[int], list[int]]]) -> list[list[float]]:
        """One right-padded forward pass; the step scores of each row."""
        import torch

        input_ids, attention_mask = right_padded([ids for ids, _ in batch], self.pad_id)
        keep = sorted({p for _, positions in batch for p in positions if p >= 0})
        if not keep:
            return [[math.nan] * len(positions) for _, positions in batch]
        column = {p: k for k, p in enumerate(keep)}
        kwargs: dict[str, Any] = {}
        if self._keeps_logits:  # a vocabulary-sized head: project only the positions read
            kwargs["logits_to_keep"] = torch.tensor(keep, device=self.device)
        with torch.inference_mode():
            logits = self.model(input_ids=input_ids.to(self.device), attention_mask=attention_mask.to(self.device),
                                **kwargs).logits.float()
        if not self._keeps_logits:
            logits = logits[:, keep, :]
        if self.kind == "tag":
            probs = self._tag_probs(logits)
        else:
            probs = torch.sigmoid(logits[..., 0]) if logits.shape[-1] == 1 else logits.softmax(-1)[..., self.positive]
        table = probs.cpu().tolist()
        return [[table[row][column[p]] if p >= 0 else math.nan for p in positions]
                for row, (_, positions) in enumerate(batch)]

    def _tag_probs(self, logits: Any) -> Any:
        """P(good) at each kept position, against ``bad_token`` or the whole vocabulary."""
        if self.bad is None:
            return logits.softmax(-1)[..., self.good]
        return logits[..., [self.good, self.bad]].softmax(-1)[..., 0]

    def score_steps(self, prompts: Sequence[PromptValue], steps: Sequence[Sequence[str]]) -> list[list[float]]:
        encoded = [self.encode(p, s) for p, s in zip(prompts, steps, strict=True)]
        lengths = [len(ids) for ids, _ in encoded]
        run = run_in_batches("prm", lengths, lambda index: self._forward([encoded[i] for i in index]),
                             self.batch_size, self.max_batch_tokens, self.sort_by_length)
        self.last_stats = {"real_tokens": sum(lengths), "padded_tokens": run.padded_tokens}
        return run.outputs


class ProcessRewardScorer:
    """A ``Scorer``: steps from ``split``, scored by ``step_scorer``, reduced by ``aggregate``.

    ``score`` returns Verdicts whose details list the step scores; ``score_steps`` gives them as
    numbers (for weighting candidates step by step, or for inspecting where a chain went wrong).
    """

    def __init__(self, step_scorer: StepScorer, split: str = "lines", aggregate: str = "min") -> None:
        self.check(split, aggregate)
        self.step_scorer = step_scorer
        self.split = split
        self._pattern = parse_split(split)
        self.aggregate = aggregate
        self.name = step_scorer.name

    @staticmethod
    def check(split: str, aggregate: str) -> None:
        """Raise ``RsftError`` on an unknown ``split`` or ``aggregate``."""
        parse_split(split)
        if aggregate not in AGGREGATES:
            raise RsftError(f"prm: aggregate must be one of {', '.join(AGGREGATES)}, got {aggregate!r}")

    @property
    def last_stats(self) -> dict[str, Any]:
        return getattr(self.step_scorer, "last_stats", {})

    def steps(self, completion: str) -> list[str]:
        return split_steps(completion, self._pattern)

    def score_steps(
        self, prompts: Sequence[PromptValue], completions: Sequence[str], metadata: Any = None
    ) -> list[list[float]]:
        """One score per step of each completion (an empty list for a completion without steps)."""
        steps = [self.steps(c) for c in completions]
        todo = [i for i, s in enumerate(steps) if s]
        scored = self.step_scorer.score_steps([prompts[i] for i in todo], [steps[i] for i in todo]) if todo else []
        out: list[list[float]] = [[] for _ in completions]
        for i, values in zip(todo, scored, strict=True):
            out[i] = list(values)
        return out

    def score(
        self,
        prompts: Sequence[PromptValue],
        completions: Sequence[str],
        metadata: Sequence[Mapping[str, Any]] | None = None,
    ) -> list[Verdict]:
        out = []
        for values in self.score_steps(prompts, completions):
            detail = f"{self.aggregate} of steps " + json.dumps([round(v, 6) for v in values]) if values else "no steps"
            out.append(Verdict(aggregate(values, self.aggregate), detail))
        return out


def _kind(kind: str, config: Any, path: str) -> str:
    if kind in ("token", "tag"):
        return kind
    if kind != "auto":
        raise RsftError(f"prm: kind must be 'auto', 'token' or 'tag', got {kind!r}")
    archs = list(getattr(config, "architectures", None) or [])
    if any(a.endswith("ForTokenClassification") for a in archs):
        return "token"
    if any(a.endswith(("ForCausalLM", "ForConditionalGeneration")) for a in archs):
        return "tag"
    raise RsftError(f"prm: cannot tell the kind of {path} (architectures {archs}); set kind to 'token' or 'tag'")


def _positive_label(label: int | str | None, config: Any, path: str) -> int:
    n = int(config.num_labels)
    if label is None:
        return 0 if n == 1 else 1
    if isinstance(label, str) and not label.isdigit():
        by_name = {str(v): int(k) for k, v in (config.id2label or {}).items()}
        if label not in by_name:
            raise RsftError(f"prm: positive_label {label!r} is not a label of {path} ({', '.join(by_name)})")
        return by_name[label]
    index = int(label)
    if not 0 <= index < n:
        raise RsftError(f"prm: positive_label {index} is out of range for {path} ({n} labels)")
    return index
