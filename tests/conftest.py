from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
# Tiny models gain nothing from threads, and on a loaded 2-core machine OpenMP spinning makes them
# orders of magnitude slower; subprocesses (the CLI tests) inherit this too.
os.environ.setdefault("OMP_NUM_THREADS", "1")

sys.path.insert(0, str(Path(__file__).parent))

import tiny_models  # noqa: E402


@pytest.fixture(scope="session")
def tiny_lm(tmp_path_factory) -> Path:
    """Path to a tiny random causal LM with a chat template."""
    return tiny_models.build_causal_lm(tmp_path_factory.mktemp("tiny_lm"))


@pytest.fixture(scope="session")
def tiny_lm_no_template(tmp_path_factory) -> Path:
    return tiny_models.build_causal_lm(tmp_path_factory.mktemp("tiny_lm_plain"), chat_template=False)


@pytest.fixture(scope="session")
def tiny_rm(tmp_path_factory) -> Path:
    """Path to a tiny random sequence-classification reward model (num_labels=1)."""
    return tiny_models.build_reward_model(tmp_path_factory.mktemp("tiny_rm"))
