"""The shared-prefix KV helper used by generation and log-prob scoring: which prefix, and its fallbacks."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from rsft.generate.prefix_cache import (
    MIN_SHARED_PREFIX,
    cache_keyword,
    cache_of,
    prefix_cache,
    repeated,
    shared_prefix_length,
)

torch = pytest.importorskip("torch")

HEAD = list(range(100, 100 + MIN_SHARED_PREFIX + 4))


def test_shared_prefix_length():
    assert shared_prefix_length([HEAD + [1, 2], HEAD + [1, 3], HEAD + [4]]) == len(HEAD)
    assert shared_prefix_length([HEAD + [1, 2], HEAD + [1, 2, 3]]) == len(HEAD) + 1  # the shorter keeps its last
    assert shared_prefix_length([HEAD, HEAD]) == len(HEAD) - 1  # identical: each keeps one token of its own
    assert shared_prefix_length([HEAD + [1]]) == 0  # one sequence: nothing to share
    assert shared_prefix_length([]) == 0
    short = HEAD[: MIN_SHARED_PREFIX - 1]
    assert shared_prefix_length([short + [1], short + [2]]) == 0  # not worth a separate pass
    assert shared_prefix_length([HEAD[:MIN_SHARED_PREFIX] + [1], HEAD[:MIN_SHARED_PREFIX] + [2]]) == MIN_SHARED_PREFIX


class Cache:
    def __init__(self) -> None:
        self.rows = 1

    def batch_repeat_interleave(self, rows: int) -> None:
        self.rows *= rows


class Model:
    """Records its forward calls; returns ``cache`` as transformers 5.x does (or as ``past_key_values``)."""

    def __init__(self, cache: object, name: str = "cache") -> None:
        self.cache, self.name, self.calls = cache, name, []

    def forward(self, input_ids, use_cache, past_key_values=None):
        self.calls.append(input_ids.tolist())
        return SimpleNamespace(**{self.name: self.cache})

    __call__ = forward


def test_prefix_runs_once_and_repeats_per_row():
    model = Model(Cache(), name="past_key_values")
    shared, cache = prefix_cache(model, [HEAD + [1], HEAD + [2, 3]], "cpu")
    assert shared == len(HEAD) and model.calls == [[HEAD]]
    copy = repeated(cache, 4)
    assert (copy.rows, cache.rows) == (4, 1)  # the prefix stays one row for the next batch
    assert repeated(cache, 3, in_place=True) is cache and cache.rows == 3
    assert cache_keyword(model) == "past_key_values"
    assert cache_of(SimpleNamespace(cache=None, past_key_values=cache)) is cache


def test_no_prefix_cache_without_a_long_prefix_or_a_repeatable_cache():
    model = Model(Cache())
    assert prefix_cache(model, [[1, 2, 3], [1, 2, 4]], "cpu") == (0, None) and not model.calls
    assert prefix_cache(Model(object()), [HEAD + [1], HEAD + [2]], "cpu") == (0, None)  # no batch_repeat_interleave
    assert prefix_cache(Model(None), [HEAD + [1], HEAD + [2]], "cpu") == (0, None)
    assert cache_keyword(SimpleNamespace(forward=lambda input_ids: None)) is None
