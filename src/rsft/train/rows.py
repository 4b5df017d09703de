"""TRL-ready rows for the kept set.

Text prompts give ``{"prompt": str, "completion": str}`` (TRL's prompt-completion format: the
trainer masks the prompt, trains on the completion and appends EOS). Chat prompts give the
conversational form ``{"prompt": [messages], "completion": [{"role": "assistant", ...}]}``.
Preference pairs give ``{"prompt", "chosen", "rejected"}`` in the same two forms, for DPO.
"""

from __future__ import annotations

from typing import Any

from rsft.types import Prompt


def _answer(prompt: Prompt, text: str) -> Any:
    return [{"role": "assistant", "content": text}] if prompt.is_chat else text


def _prompt_value(prompt: Prompt) -> Any:
    return [dict(m) for m in prompt.prompt] if prompt.is_chat else prompt.prompt


def sft_row(prompt: Prompt, completion: str) -> dict[str, Any]:
    return {"prompt": _prompt_value(prompt), "completion": _answer(prompt, completion)}


def preference_row(prompt: Prompt, chosen: str, rejected: str) -> dict[str, Any]:
    return {"prompt": _prompt_value(prompt), "chosen": _answer(prompt, chosen), "rejected": _answer(prompt, rejected)}
