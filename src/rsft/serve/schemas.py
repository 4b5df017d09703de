"""What ``rsft serve`` reads and writes: the request models, the typed HTTP error and the response body.

pydantic is imported only when the request models are first built (the ``server`` extra).
"""

# No ``from __future__ import annotations``: pydantic reads the request models' annotations at runtime,
# and they name classes local to ``request_models``.
import functools
import time
import uuid
from typing import Any

from rsft.bon.infer import BoNResult, json_number

ROLES = ("system", "user", "assistant", "tool", "developer")


@functools.cache
def request_models() -> tuple[type, type]:
    """The pydantic models of the two POST bodies (built on first use: pydantic is optional)."""
    from typing import Literal

    from pydantic import BaseModel, ConfigDict, Field

    class _Request(BaseModel):
        # Unknown OpenAI fields (user, frequency_penalty, ...) are accepted and ignored.
        model_config = ConfigDict(extra="ignore")

        model: str | None = None
        n: int | None = Field(None, ge=1)
        best_of: int | None = Field(None, ge=1, description="rsft extension: candidates per prompt; wins over n")
        max_tokens: int | None = Field(None, ge=1)
        temperature: float | None = Field(None, ge=0, le=2)
        top_p: float | None = Field(None, gt=0, le=1)
        top_k: int | None = Field(None, ge=-1, description="vLLM-style extension; -1 or 0 disables")
        stop: str | list[str] | None = Field(None, max_length=16)
        seed: int | None = None
        stream: bool | None = False
        metadata: dict[str, Any] | None = Field(
            None, description="rsft extension: fields for the scorer, e.g. the gold 'answer' a checker needs")
        budget: int | None = Field(
            None, ge=1, description="rsft extension: adaptive N, at most this many candidates, sampled in growing "
                                    "batches until the answers agree (wins over n and best_of)")
        min_n: int | None = Field(None, ge=1, description="rsft extension, with budget: the first batch's size")
        supermajority: float | None = Field(
            None, gt=0, description="rsft extension, with budget: stop once the leading answer holds this share")

    class CompletionRequest(_Request):
        prompt: str | list[str] = Field(..., description="one prompt (a list must hold exactly one)")

    class TextPart(BaseModel):
        model_config = ConfigDict(extra="ignore")
        type: Literal["text"]
        text: str

    class ChatMessage(BaseModel):
        model_config = ConfigDict(extra="ignore")
        role: Literal[ROLES]  # type: ignore[valid-type]
        content: str | list[TextPart] | None = None

    class ChatRequest(_Request):
        messages: list[ChatMessage] = Field(..., min_length=1)
        max_completion_tokens: int | None = Field(None, ge=1)

    return CompletionRequest, ChatRequest


class HTTPError(Exception):
    """A request that ends in an OpenAI-style error body with this HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error",
                 code: str | None = None, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.code, self.headers = status, message, kind, code, headers

    def body(self) -> dict[str, Any]:
        """The JSON body OpenAI's clients parse into their typed errors."""
        return {"error": {"message": self.message, "type": self.kind, "param": None, "code": self.code}}


def parse_request(model: type, body: Any) -> Any:
    """``body`` validated as ``model``; the first five problems become one 422."""
    from pydantic import ValidationError

    try:
        return model.model_validate(body)
    except ValidationError as e:
        problems = "; ".join(f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}"
                             for err in e.errors()[:5])
        raise HTTPError(422, f"invalid request: {problems}") from None


def message_text(content: Any) -> str:
    """A chat message's content as plain text (its text parts joined)."""
    if content is None:
        return ""
    if isinstance(content, str):
        return content
    return "".join(part.text for part in content)


def completion_response(result: BoNResult, chat: bool, model_name: str, prompt_tokens: int,
                        budget: int | None = None) -> dict[str, Any]:
    """The OpenAI body: the chosen candidate as ``choices[0]``, every candidate under ``rsft``.

    An adaptive request (``budget``) also gets ``rsft.bon.adaptive``: the budget, the samples used, the saved.
    """
    completion_tokens = sum(c.n_tokens or 0 for c in result.completions)
    choice: dict[str, Any] = {"index": 0, "logprobs": None, "finish_reason": result.finish_reason}
    if chat:
        choice["message"] = {"role": "assistant", "content": result.chosen}
    else:
        choice["text"] = result.chosen
    scores = [json_number(s) for _, s in result.candidates]
    body: dict[str, Any] = {
        "id": f"{'chatcmpl' if chat else 'cmpl'}-{uuid.uuid4().hex}",
        "object": "chat.completion" if chat else "text_completion",
        "created": int(time.time()),
        "model": model_name,
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
                  "total_tokens": prompt_tokens + completion_tokens},
        "rsft": {
            "selector": result.selector,
            "n": len(result.candidates),
            "score": json_number(result.score),
            "scores": scores,
            "candidates": [{"text": t, "score": s} for (t, _), s in zip(result.candidates, scores, strict=True)],
            "chosen_index": result.index,
        },
    }
    if budget is not None:
        samples = len(result.candidates)
        body["rsft"]["adaptive"] = {"budget": budget, "samples": samples, "saved": budget - samples}
    return body
