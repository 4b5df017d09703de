"""Pick completions from the M x N reward matrix R (rows = prompts, columns = samples).

Pure numpy, no model calls. Conventions shared by every function here:

- NaN (a failed scoring) counts as -inf, and is counted (``nan_count``).
- Ties resolve to the FIRST index: the lowest column within a row, the lowest flat index
  (``i * N + j``) across the matrix, as ``np.argmax`` does.
- Selectors that return ``(i, j)`` pairs only return *pickable* entries, whose value is above
  -inf: a NaN or -inf entry (a failed scoring, or a duplicate masked out by ``apply_mask``) is
  never selected, so a row may contribute nothing.

Large matrices are processed in blocks of rows, so the extra memory stays a small fraction of R
(``top_k_overall`` with k above M*N/16 needs one copy of R's values to find its k-th value).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from rsft import registry
from rsft.errors import RsftError

STRATEGIES = tuple(name for name in registry.STRATEGIES if not registry.STRATEGIES[name].pairs)
"""The built-in strategies ``select`` runs (each keeps single completions as ``(i, j)`` pairs); the
registry, ``rsft.registry.STRATEGIES``, holds every strategy, later registered ones too."""

PAIR_STRATEGIES = tuple(name for name in registry.STRATEGIES if registry.STRATEGIES[name].pairs)
"""The built-in strategies that keep (chosen, rejected) pairs of a prompt for DPO (``dpo_pairs``)."""

SELECTION_STRATEGIES = STRATEGIES + PAIR_STRATEGIES
"""Every built-in strategy the select stage runs."""

_BLOCK_ELEMS = 1 << 18
"""Entries per block of rows: small enough to stay in cache, large enough to amortise the loop."""


# --- input checks ------------------------------------------------------------------------------


def as_reward_matrix(R: npt.ArrayLike) -> np.ndarray:
    """Return R as a 2-D numeric array (no copy when it already is one).

    Booleans are viewed as uint8; ``None`` inside a list becomes NaN.

    Raises:
        RsftError: R is not numeric, not 2-D, or has prompts but no samples.
    """
    try:
        a = np.asarray(R)
        if a.dtype.kind == "O":
            a = a.astype(np.float64)
    except (TypeError, ValueError) as e:
        msg = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise RsftError(f"reward matrix R is not numeric: {msg}") from None
    if a.dtype.kind not in "biuf":
        raise RsftError(f"reward matrix R must hold real numbers, got dtype {a.dtype}")
    if a.ndim != 2:
        raise RsftError(f"reward matrix R must be 2-D (prompts x samples), got shape {a.shape}")
    if a.shape[0] > 0 and a.shape[1] == 0:
        raise RsftError(f"reward matrix R has {a.shape[0]} prompts but no samples (N=0)")
    if a.dtype.kind == "b":
        a = a.view(np.uint8)
    return a


def _number(value: object, name: str) -> float:
    """A real, non-NaN number given for ``name`` (infinities allowed)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise RsftError(f"{name} must be a number, got {value!r}")
    out = float(value)
    if np.isnan(out):
        raise RsftError(f"{name} must be a number, got NaN")
    return out


def _positive_int(value: object, name: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise RsftError(f"{name} must be a positive integer, got {value!r}")
    return int(value)


# --- helpers -----------------------------------------------------------------------------------


def _row_blocks(R: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """Yield ``(first_row, block)`` views of consecutive rows of R."""
    step = max(1, _BLOCK_ELEMS // max(R.shape[1], 1))
    for start in range(0, R.shape[0], step):
        yield start, R[start : start + step]


def _clean(a: np.ndarray) -> np.ndarray:
    """``a`` with NaN replaced by -inf; a copy only when ``a`` holds a NaN."""
    if a.dtype.kind == "f" and a.size and np.isnan(a.min()):
        return np.fmax(a, -np.inf)
    return a


def _descending_first(values: np.ndarray) -> np.ndarray:
    """Order of ``values`` from highest to lowest, equal values in index order.

    Sorting the reversed array stably and reversing the result puts ties in index order without
    negating (which would wrap unsigned integers).
    """
    order = np.argsort(values[::-1], kind="stable")[::-1]
    return len(values) - 1 - order


def _pairs(rows: np.ndarray, cols: np.ndarray) -> list[tuple[int, int]]:
    return list(zip(rows.tolist(), cols.tolist(), strict=True))


# --- selectors ---------------------------------------------------------------------------------


def nan_count(R: npt.ArrayLike) -> int:
    """Number of NaN entries (failed scorings) in R."""
    R = as_reward_matrix(R)
    if R.dtype.kind != "f":
        return 0
    return sum(int(np.count_nonzero(np.isnan(block))) for _, block in _row_blocks(R))


def best_per_prompt(R: npt.ArrayLike) -> np.ndarray:
    """Column index of each row's highest reward, shape (M,).

    Ties go to the first column. NaN counts as -inf, so a row whose entries are all NaN or -inf
    still gets an index (the first column holding its maximum, 0 for an all-NaN row); use
    ``keep_above`` or ``select`` to drop such rows.
    """
    R = as_reward_matrix(R)
    out = np.zeros(R.shape[0], dtype=np.intp)
    for start, block in _row_blocks(R):
        out[start : start + len(block)] = np.argmax(_clean(block), axis=1)
    return out


def top_k_overall(R: npt.ArrayLike, k: int) -> np.ndarray:
    """Flat indices (into ``R.ravel()``) of the k highest rewards, highest first.

    Equal rewards go to the lower flat index first; NaN counts as -inf. k above M*N returns all
    M*N indices; k <= 0 returns none. This is a ranking: it does return NaN and -inf entries when
    k reaches them (``select(..., "top_k")`` drops them).

    O(M*N) plus O(k log k), never a full sort. For k up to M*N/16, one pass over blocks of rows
    keeps a pool of at most about 2k candidates (extra memory O(k)); for larger k, a partition of
    one copy of R's values finds the k-th value first.
    """
    R = as_reward_matrix(R)
    n = R.size
    k = min(int(k), n)
    if k <= 0:
        return np.empty(0, dtype=np.intp)
    if 16 * k <= n:
        idx, values = _top_k_streaming(R, k)
    else:
        idx, values = _top_k_by_partition(R, k)
    return idx[_descending_first(values)]


def _keep_top(idx: np.ndarray, values: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """The k best of candidates listed in index order (ties to the lower index), order kept."""
    kth = len(values) - k
    v = np.partition(values, kth)[kth]
    keep = values > v
    equal = np.flatnonzero(values == v)[: k - int(np.count_nonzero(keep))]
    keep[equal] = True
    return idx[keep], values[keep]


def _top_k_streaming(R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k (in index order, with values) by one pass over row blocks.

    Once the pool holds k entries with k-th value v, a later entry can only enter when it is
    strictly above v: an equal one has a higher index than every pooled entry equal to v.
    """
    N = R.shape[1]
    pool_idx: list[np.ndarray] = []
    pool_val: list[np.ndarray] = []
    size, v = 0, None
    for start, block in _row_blocks(R):
        flat = _clean(block).ravel()
        new = np.arange(flat.size) if v is None else np.flatnonzero(flat > v)
        if new.size:
            pool_idx.append(new + start * N)
            pool_val.append(flat[new])
            size += new.size
        if size >= (k if v is None else 2 * k):
            idx, values = _keep_top(np.concatenate(pool_idx), np.concatenate(pool_val), k)
            pool_idx, pool_val, size, v = [idx], [values], k, values.min()
    idx, values = np.concatenate(pool_idx), np.concatenate(pool_val)
    return _keep_top(idx, values, k) if size > k else (idx, values)


def _top_k_by_partition(R: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Top k (in index order, with values): partition a copy to find the k-th value v, then scan."""
    M, N = R.shape
    work = np.empty(M * N, dtype=R.dtype)
    if R.dtype.kind == "f":
        np.fmax(R, -np.inf, out=work.reshape(M, N))
    else:
        np.copyto(work.reshape(M, N), R)
    kth = M * N - k
    work.partition(kth)
    v = work[kth]
    need_equal = k - int(np.count_nonzero(work[kth:] > v))
    del work

    idx_parts, val_parts = [], []
    for start, block in _row_blocks(R):
        flat = _clean(block).ravel()
        keep = flat > v
        if need_equal > 0:
            equal = np.flatnonzero(flat == v)[:need_equal]
            keep[equal] = True
            need_equal -= len(equal)
        idx_parts.append(np.flatnonzero(keep) + start * N)
        val_parts.append(flat[keep])
    return np.concatenate(idx_parts), np.concatenate(val_parts)


def mask_non_finite(R: npt.ArrayLike) -> tuple[np.ndarray, int, int]:
    """R with every NaN, +inf and -inf set to -inf (never picked), and how many NaN and +-inf it held.

    For rewards straight from a scorer, where an infinity is as untrustworthy as a NaN (an overflow,
    a log of 0): ``select_completions`` applies it, so neither is ever selected. The library
    selectors themselves rank +inf above every finite reward.
    """
    R = as_reward_matrix(R)
    if R.dtype.kind != "f":
        return R, 0, 0
    nans = nan_count(R)
    infs = int(np.count_nonzero(np.isinf(R)))
    if not nans and not infs:
        return R, 0, 0
    return np.where(np.isfinite(R), R, -np.inf), nans, infs


def keep_above(R: npt.ArrayLike, threshold: float) -> list[tuple[int, int]]:
    """``(i, j)`` of each row's best completion (ties to the first) whose reward >= threshold.

    A NaN or -inf best is never kept, even with ``threshold=-inf``. Rows in order.
    """
    R = as_reward_matrix(R)
    t = _number(threshold, "threshold")
    best = best_per_prompt(R)
    values = R[np.arange(R.shape[0]), best]
    keep = (values >= t) & (values > -np.inf)
    return _pairs(np.flatnonzero(keep), best[keep])


def k_per_prompt(R: npt.ArrayLike, k: int, threshold: float | None = None) -> list[tuple[int, int]]:
    """Up to k ``(i, j)`` per row: the row's highest rewards, descending, ties to the first column.

    Rows in order. NaN and -inf entries are never picked; with ``threshold``, only rewards
    >= threshold are. k <= 0 picks nothing.
    """
    R = as_reward_matrix(R)
    t = -np.inf if threshold is None else _number(threshold, "threshold")
    N = R.shape[1]
    k = min(int(k), N)
    if k <= 0:
        return []
    rows, cols = [np.empty(0, dtype=np.intp)], [np.empty(0, dtype=np.intp)]
    for start, block in _row_blocks(R):
        values = _clean(block)
        order = (N - 1 - np.argsort(values[:, ::-1], axis=1, kind="stable")[:, ::-1])[:, :k]
        ranked = np.take_along_axis(values, order, axis=1)
        r, c = np.nonzero((ranked > -np.inf) & (ranked >= t))
        rows.append(r + start)
        cols.append(order[r, c])
    return _pairs(np.concatenate(rows), np.concatenate(cols))


def dedup_mask(texts: Sequence[Sequence[str]]) -> np.ndarray:
    """M x N booleans: True for the first occurrence of each completion text within its row.

    Raises:
        RsftError: rows of different lengths, or an entry that is not a string.
    """
    rows = list(texts)
    if not rows:
        return np.zeros((0, 0), dtype=bool)
    n = len(rows[0])
    mask = np.zeros((len(rows), n), dtype=bool)
    for i, row in enumerate(rows):
        if isinstance(row, str) or len(row) != n:
            raise RsftError(f"texts[{i}] must be a list of {n} completion texts like texts[0]")
        seen: set[str] = set()
        for j, text in enumerate(row):
            if not isinstance(text, str):
                raise RsftError(f"texts[{i}][{j}] must be a string, got {type(text).__name__}")
            if text not in seen:
                seen.add(text)
                mask[i, j] = True
    return mask


def apply_mask(R: npt.ArrayLike, mask: npt.ArrayLike) -> np.ndarray:
    """A float copy of R with the entries where ``mask`` is False set to -inf.

    With ``dedup_mask``, any selector then runs on the deduplicated matrix.
    """
    R = as_reward_matrix(R)
    keep = np.asarray(mask, dtype=bool)
    if keep.shape != R.shape:
        raise RsftError(f"mask shape {keep.shape} does not match reward matrix shape {R.shape}")
    out = R.astype(R.dtype if R.dtype.kind == "f" else np.float64, copy=True)
    out[~keep] = -np.inf
    return out


def dpo_pairs(R: npt.ArrayLike, min_margin: float = 0.0) -> list[tuple[int, int, int]]:
    """``(i, chosen_j, rejected_j)`` preference pairs, one per row at most, rows in order.

    Chosen is the row's first highest reward and rejected its first lowest, among FINITE entries
    only: a NaN is a failed scoring, not evidence that a completion is bad, so it is neither
    chosen nor rejected (and -inf, a masked duplicate, is skipped likewise). A pair is kept when
    its margin ``R[i, chosen] - R[i, rejected]`` is > 0 and >= ``min_margin``; a row whose finite
    rewards are all equal, or that has fewer than two, gives no pair.
    """
    R = as_reward_matrix(R)
    m = _number(min_margin, "min_margin")
    out: list[tuple[int, int, int]] = []
    for start, block in _row_blocks(R):
        rows = np.arange(len(block))
        if block.dtype.kind == "f":
            finite = np.isfinite(block)
            hi = np.argmax(np.where(finite, block, -np.inf), axis=1)
            lo = np.argmin(np.where(finite, block, np.inf), axis=1)
            enough = np.count_nonzero(finite, axis=1) >= 2
        else:
            hi, lo = np.argmax(block, axis=1), np.argmin(block, axis=1)
            enough = np.ones(len(block), dtype=bool)
        with np.errstate(invalid="ignore"):  # inf - inf in rows without finite entries
            margin = block[rows, hi].astype(np.float64) - block[rows, lo].astype(np.float64)
        keep = np.flatnonzero(enough & (margin > 0) & (margin >= m))
        out.extend(zip((keep + start).tolist(), hi[keep].tolist(), lo[keep].tolist(), strict=True))
    return out


def rso_per_prompt(
    R: npt.ArrayLike, k: int = 1, beta: float = 0.5, seed: int = 0, threshold: float | None = None
) -> list[tuple[int, int]]:
    """Statistical rejection sampling (RSO, Liu et al. 2023): up to k ``(i, j)`` per row.

    The N samples of a row come from the policy pi; RSO turns them into samples of the optimal
    KL-regularised policy ``pi(y) * exp(r(y) / beta)`` (normalised). As in the paper's Algorithm 1,
    per row: draw a candidate uniformly from the remaining ones and accept it with probability
    ``exp((r_j - max r) / beta)`` (max over the remaining); an accepted candidate leaves the pool,
    until k are accepted or none remain. So the first pick is column j with probability
    ``exp(r_j / beta) / sum``, and each later one the same over what remains. Small beta approaches
    the best per prompt, large beta uniform draws. Rows in order, each row's picks in acceptance
    order; the same ``seed`` and R give the same picks. NaN and -inf entries (and, with
    ``threshold``, rewards below it) are never candidates. k <= 0 picks nothing.
    """
    R = as_reward_matrix(R)
    b = _number(beta, "beta")
    if not 0 < b < np.inf:
        raise RsftError(f"beta must be a positive finite number, got {beta!r}")
    t = -np.inf if threshold is None else _number(threshold, "threshold")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)):
        raise RsftError(f"seed must be an integer, got {seed!r}")
    rng = np.random.default_rng(int(seed))
    rows, cols = [np.empty(0, dtype=np.intp)], [np.empty(0, dtype=np.intp)]
    for start, block in _row_blocks(R):
        values = _clean(block).astype(np.float64)
        alive = (values > -np.inf) & (values >= t)
        for _ in range(min(int(k), R.shape[1])):  # one acceptance per row and round
            r, c = _rso_round(values, alive, b, rng)
            if not r.size:
                break
            alive[r, c] = False
            rows.append(r + start)
            cols.append(c)
    r, c = np.concatenate(rows), np.concatenate(cols)
    order = np.argsort(r, kind="stable")  # rows in order, rounds (acceptance order) within a row
    return _pairs(r[order], c[order])


def _rso_round(
    values: np.ndarray, alive: np.ndarray, beta: float, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One accepted column for each row that has candidates left: ``(rows, columns)``.

    Every such row draws columns uniformly and accepts column j with probability
    ``exp((r_j - max) / beta)``, 0 for a column no longer in its pool, which is the same as drawing
    from the pool alone. Draws come in batches of N per row; the pool's maximum is always
    accepted, so a batch succeeds with probability at least ``1 - (1 - 1/N)^N`` (about 63%).
    """
    rows = np.flatnonzero(alive.any(axis=1))
    live = np.where(alive[rows], values[rows], -np.inf)
    top = live.max(axis=1, keepdims=True)
    with np.errstate(invalid="ignore"):  # inf - inf when the top is +inf
        accept = np.where(live == top, 1.0, np.exp((live - top) / beta))
    accept[~alive[rows]] = 0.0
    chosen = np.empty(len(rows), dtype=np.intp)
    pending = np.arange(len(rows))
    n = values.shape[1]
    while pending.size:
        draws = rng.integers(n, size=(len(pending), n))
        hit = rng.random((len(pending), n)) < np.take_along_axis(accept[pending], draws, axis=1)
        done = hit.any(axis=1)
        first = hit.argmax(axis=1)
        chosen[pending[done]] = draws[done, first[done]]
        pending = pending[~done]
    return rows, chosen


# --- one entry point ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Selection:
    """What ``select`` picked, with the counts worth reporting."""

    pairs: list[tuple[int, int]]
    """``(prompt row i, sample column j)`` in selection order."""
    strategy: str
    """The strategy name that produced ``pairs``."""
    nan_count: int
    """NaN rewards in R (failed scorings, counted as -inf)."""
    n_rows_without_pick: int
    """Prompts that contributed no pair."""


def select(
    R: npt.ArrayLike,
    strategy: str,
    *,
    k: int | None = None,
    threshold: float | None = None,
    texts: Sequence[Sequence[str]] | None = None,
    dedup: bool = False,
    beta: float | None = None,
    seed: int = 0,
) -> Selection:
    """Run one selection strategy of ``rsft.registry.STRATEGIES`` that keeps single completions over R.

    Built in (``pick_*`` below): ``best``: each row's best (at ``threshold``, or at -inf without one).
    ``threshold``: each row's best when >= ``threshold`` (required). ``top_k``: the ``k`` (required)
    highest rewards overall, highest first. ``k_per_prompt``: up to ``k`` (required) best per row.
    ``rso``: up to ``k`` (default 1) per row by statistical rejection sampling at ``beta``
    (required) with ``seed`` (``rso_per_prompt``).

    ``threshold``, when given, filters every strategy. With ``dedup=True`` (needs ``texts``),
    repeated completion texts within a row are masked to -inf first. NaN and -inf entries are
    never picked.

    Raises:
        RsftError: unknown strategy, missing ``k``/``threshold``/``texts``/``beta``, or a bad R.
    """
    entry = registry.STRATEGIES.entries.get(strategy)
    if entry is None or entry.pairs:
        valid = [name for name in registry.STRATEGIES if not registry.STRATEGIES[name].pairs]
        raise RsftError(f"unknown selection strategy {strategy!r}; valid: {', '.join(valid)}")
    R = as_reward_matrix(R)
    nans = nan_count(R)
    if dedup:
        if texts is None:
            raise RsftError("dedup=True needs the completion texts (texts=...)")
        R = apply_mask(R, dedup_mask(texts))
    pairs = entry.load()(R, k=k, threshold=threshold, beta=beta, seed=seed)
    n_picked_rows = len({i for i, _ in pairs})
    return Selection(pairs, strategy, nans, R.shape[0] - n_picked_rows)


# --- the built-in strategies: pick(R, *, k, threshold, beta, seed), as rsft.registry.STRATEGIES names them


def _min_reward(threshold: float | None) -> float:
    return -np.inf if threshold is None else _number(threshold, "threshold")


def pick_best(R: np.ndarray, *, k: int | None = None, threshold: float | None = None, beta: float | None = None,
              seed: int = 0) -> list[tuple[int, int]]:
    """``best``: each row's best, at or above ``threshold`` when given."""
    return keep_above(R, _min_reward(threshold))


def pick_threshold(R: np.ndarray, *, k: int | None = None, threshold: float | None = None,
                   beta: float | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """``threshold``: each row's best when it is at or above ``threshold`` (required)."""
    if threshold is None:
        raise RsftError("selection strategy 'threshold' needs a threshold")
    return keep_above(R, _min_reward(threshold))


def pick_top_k(R: np.ndarray, *, k: int | None = None, threshold: float | None = None, beta: float | None = None,
               seed: int = 0) -> list[tuple[int, int]]:
    """``top_k``: the ``k`` (required) highest rewards overall, highest first."""
    if k is None:
        raise RsftError("selection strategy 'top_k' needs k")
    t = _min_reward(threshold)
    idx = top_k_overall(R, _positive_int(k, "k"))
    rows, cols = np.divmod(idx, R.shape[1])
    values = R[rows, cols]
    keep = (values > -np.inf) & (values >= t)
    return _pairs(rows[keep], cols[keep])


def pick_k_per_prompt(R: np.ndarray, *, k: int | None = None, threshold: float | None = None,
                      beta: float | None = None, seed: int = 0) -> list[tuple[int, int]]:
    """``k_per_prompt``: up to ``k`` (required) best per row."""
    if k is None:
        raise RsftError("selection strategy 'k_per_prompt' needs k")
    _min_reward(threshold)
    return k_per_prompt(R, _positive_int(k, "k"), threshold)


def pick_rso(R: np.ndarray, *, k: int | None = None, threshold: float | None = None, beta: float | None = None,
             seed: int = 0) -> list[tuple[int, int]]:
    """``rso``: up to ``k`` (default 1) per row by statistical rejection sampling at ``beta`` (required)."""
    _min_reward(threshold)
    if beta is None:
        raise RsftError("selection strategy 'rso' needs beta")
    return rso_per_prompt(R, 1 if k is None else _positive_int(k, "k"), beta, seed, threshold)


def pick_dpo_pairs(R: np.ndarray, *, k: int | None = None, threshold: float | None = None,
                   beta: float | None = None, seed: int = 0) -> list[tuple[int, int, int]]:
    """``dpo_pairs``: each row's best vs worst, ``threshold`` the least margin (``dpo_pairs``)."""
    return dpo_pairs(R, min_margin=threshold or 0.0)
