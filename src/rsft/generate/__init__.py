"""Generators: ``generate(prompts, n, sampling) -> list[list[Completion]]`` (M prompts -> M lists of N).

Backends are looked up by name in ``rsft.registry.BACKENDS``; each one's module is imported only
when it is used, so ``import rsft`` stays light and ``vllm`` is needed only by the ``vllm`` backend.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from rsft import registry
from rsft.errors import RsftError
from rsft.types import Completion, PromptValue, SamplingParams

if TYPE_CHECKING:
    from rsft.config import GeneratorConfig


@runtime_checkable
class Generator(Protocol):
    """Anything that samples ``n`` completions for each prompt."""

    name: str

    def generate(
        self, prompts: Sequence[PromptValue], n: int, sampling: SamplingParams
    ) -> list[list[Completion]]:
        """Return one list of exactly ``n`` completions per prompt, in prompt order."""
        ...


@runtime_checkable
class LocalModel(Protocol):
    """A generator whose model it can query, beyond sampling (``hf``, ``vllm``; not ``openai``).

    Rounds need it for KL on chat prompts (the exact text a prompt becomes) and for the log-probs of
    given completions; ``rsft serve`` for a request's prompt tokens and the chat template fallback.
    """

    tokenizer: Any
    """A transformers tokenizer (``chat_template`` may be set on it)."""

    def render(self, prompt: PromptValue) -> str:
        """The exact text the model is conditioned on (chat prompts through the chat template)."""
        ...

    def count_tokens(self, prompt: PromptValue) -> int:
        """Tokens of the rendered prompt."""
        ...

    def sequence_logprobs(self, prompts: Sequence[str], completions: Sequence[str]) -> list[float]:
        """``log p(completion | prompt)`` at temperature 1 for each pair of rendered prompt and completion."""
        ...


BACKENDS = registry.BACKENDS
"""The backends by name: ``rsft.registry.BACKENDS`` (each entry's class, its help, its GPUs)."""


def generator_gpus(backend: str, options: Mapping[str, Any]) -> float:
    """GPUs one ``backend`` generator with ``options`` wants where the cluster has them."""
    return BACKENDS[backend].gpus(options) if backend in BACKENDS else 0.0


def make_generator(backend: str, options: Mapping[str, Any] | None = None) -> Generator:
    """Build a generator from a backend name and its options (e.g. ``model``, ``batch_size``)."""
    factory = BACKENDS.get(backend).load()
    try:
        return factory(**dict(options or {}))
    except TypeError as e:
        raise RsftError(f"backend {backend!r}: bad option: {e}") from e


def generator_from_config(config: GeneratorConfig, **options: Any) -> Generator:
    """The generator a ``GeneratorConfig`` names: its ``backend`` with ``model`` and its ``options``
    (``--backend``, ``--model``, ``--option``); keyword ``options`` are added over those."""
    return make_generator(config.backend, {"model": config.model, **config.options, **options})
