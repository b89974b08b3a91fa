"""Full-catalogue ranking metrics with binary relevance: NDCG@10, HR@10, Recall@50, MRR.

Ranking rule (every function here): items are sorted by score, highest first; items with equal
scores are ordered by one fixed random permutation of the item indices, drawn from `tie_seed`
(the same permutation for every user), so an all-equal row is a random ranking, never catalogue
order. A score smaller in magnitude than ROUND_OFF counts as exactly 0: a method that cannot
score an item (EMCDR's factors of an item no training user took are zero) leaves floating-point
round-off there, about 1e-16, and that noise must not rank items; every method's scores pass
through the same rule. Items scored -inf are never ranked: a relevant item at -inf counts as a
miss everywhere. NaN scores are an error.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Literal, overload

import numpy as np

METRICS = ("ndcg@10", "hr@10", "recall@50", "mrr")
_K_NDCG, _K_RECALL = 10, 50
_COMPARE_BUDGET = 1 << 23  # candidate x item comparisons per block in the exact-rank step
# Far below any score a method means (counts, cosines, ridge maps score 1e-6 and up) and far
# above float64 round-off of a zero (1e-16).
ROUND_OFF = 1e-12


def snap_round_off(scores: np.ndarray) -> np.ndarray:
    """`scores` with every entry of magnitude below ROUND_OFF set to exactly 0."""
    return np.where(np.abs(scores) < ROUND_OFF, 0.0, scores).astype(scores.dtype, copy=False)


def tie_keys(n_items: int, tie_seed: int = 0) -> np.ndarray:
    """int64 [n_items]: item i's position in the seeded permutation; lower key wins a tie."""
    perm = np.random.default_rng(tie_seed).permutation(n_items)
    keys = np.empty(n_items, dtype=np.int64)
    keys[perm] = np.arange(n_items)
    return keys


def expected_random(n_items: int, n_relevant: Sequence[int] | np.ndarray) -> dict[str, np.ndarray]:
    """Each metric's expected value, per user, for a uniformly random ranking of `n_items`
    items of which `n_relevant[u]` are user u's: what a method that cannot score the items
    is reported at (its tie order would be one draw of a random ranking, the same permutation
    for every user, so one lucky draw could rank a popular item first for all of them)."""
    r = np.asarray(n_relevant, dtype=np.int64)
    if r.size and (r.min() < 1 or r.max() > n_items):
        raise ValueError(f"relevant counts must lie in 1..{n_items}")
    out = {m: np.empty(r.size) for m in METRICS}
    discount = 1.0 / np.log2(np.arange(2, _K_NDCG + 2))
    for count in np.unique(r):
        at = r == count
        # survival[k]: no relevant item among the first k positions (k = 0..n_items)
        survival = np.concatenate([[1.0], np.cumprod(np.clip(n_items - count - np.arange(n_items), 0, None)
                                                     / (n_items - np.arange(n_items)))])
        first = survival[:-1] - survival[1:]  # P(the first relevant item is at position k), k = 1..n
        out["mrr"][at] = float((first / np.arange(1, n_items + 1)).sum())
        out["hr@10"][at] = 1.0 - survival[min(_K_NDCG, n_items)]
        out["ndcg@10"][at] = (count / n_items) * discount[: min(_K_NDCG, n_items)].sum() / discount[
            : min(count, _K_NDCG)].sum()
        out["recall@50"][at] = min(_K_RECALL, n_items) / n_items
    return out


def _flatten(relevant: Sequence[Sequence[int]], offset: int, n_items: int) -> tuple[np.ndarray, np.ndarray]:
    """Relevance lists -> (row, item) int64 arrays, de-duplicated; empty or out-of-range lists raise."""
    rows, items = [], []
    for r, rel in enumerate(relevant):
        arr = np.unique(np.asarray(rel, dtype=np.int64))
        if arr.size == 0:
            raise ValueError(f"user {offset + r} has no relevant items")
        if arr[0] < 0 or arr[-1] >= n_items:
            raise ValueError(f"user {offset + r}: relevant index outside 0..{n_items - 1}")
        rows.append(np.full(arr.size, r, dtype=np.int64))
        items.append(arr)
    return np.concatenate(rows), np.concatenate(items)


def _per_user_block(
    scores: np.ndarray, relevant: Sequence[Sequence[int]], keys: np.ndarray, offset: int = 0
) -> dict[str, np.ndarray]:
    """Metrics for one block of users: scores float [u, N] -> dict of float64 [u]."""
    u, n = scores.shape
    if len(relevant) != u:
        raise ValueError(f"{u} score rows but {len(relevant)} relevance lists")
    if np.isnan(scores).any():
        raise ValueError("scores contain NaN")
    scores = snap_round_off(scores)
    rows, items = _flatten(relevant, offset, n)
    rel_scores = scores[rows, items]
    # An item scoring below the row's 50th-largest value cannot be in the top 50.
    k = min(_K_RECALL, n)
    kth = np.partition(scores, n - k, axis=1)[:, n - k]
    candidate = (rel_scores >= kth[rows]) & (rel_scores > -np.inf)
    ranks = np.full(rows.size, np.inf)
    # Also rank each user's best relevant item exactly (for MRR): max score, then lowest tie key.
    best = np.full(u, -1, dtype=np.int64)
    order = np.lexsort((keys[items], -rel_scores, rows))
    first = np.ones(order.size, dtype=bool)
    first[1:] = rows[order][1:] != rows[order][:-1]
    best[rows[order[first]]] = order[first]
    candidate[best] |= rel_scores[best] > -np.inf
    idx = np.flatnonzero(candidate)
    step = max(1, _COMPARE_BUDGET // n)
    for s in range(0, idx.size, step):
        j = idx[s : s + step]
        row_scores, own = scores[rows[j]], rel_scores[j][:, None]
        above = (row_scores > own).sum(axis=1)
        tied = ((row_scores == own) & (keys[None, :] < keys[items[j]][:, None])).sum(axis=1)
        ranks[j] = 1 + above + tied
    n_rel = np.bincount(rows, minlength=u).astype(np.float64)
    gain = np.where(ranks <= _K_NDCG, 1.0 / np.log2(ranks + 1.0), 0.0)
    ideal = np.cumsum(1.0 / np.log2(np.arange(2, _K_NDCG + 2)))
    idcg = ideal[np.minimum(n_rel, _K_NDCG).astype(np.int64) - 1]
    return {
        "ndcg@10": np.bincount(rows, gain, minlength=u) / idcg,
        "hr@10": (np.bincount(rows, ranks <= _K_NDCG, minlength=u) > 0).astype(np.float64),
        "recall@50": np.bincount(rows, ranks <= _K_RECALL, minlength=u) / n_rel,
        "mrr": 1.0 / ranks[best],
    }


@overload
def rank_metrics(
    scores: np.ndarray, relevant: Sequence[Sequence[int]], tie_seed: int = ..., *,
    per_user: Literal[False] = ...,
) -> dict[str, float]: ...
@overload
def rank_metrics(
    scores: np.ndarray, relevant: Sequence[Sequence[int]], tie_seed: int = ..., *, per_user: Literal[True]
) -> dict[str, np.ndarray]: ...
def rank_metrics(
    scores: np.ndarray, relevant: Sequence[Sequence[int]], tie_seed: int = 0, *, per_user: bool = False
) -> dict[str, float] | dict[str, np.ndarray]:
    """Mean NDCG@10, HR@10, Recall@50 and MRR over users (ranking rule: module docstring).

    scores: float [U, N], one row per user, higher = better. relevant: U lists of item indices.
    per_user=True returns float64 [U] arrays instead of means (e.g. for `bootstrap_ci`).
    """
    scores = np.asarray(scores)
    if scores.ndim != 2:
        raise ValueError(f"scores must be [users, items], got shape {scores.shape}")
    values = _per_user_block(scores, relevant, tie_keys(scores.shape[1], tie_seed))
    return values if per_user else summarize(values)


@overload
def evaluate(
    score_fn: Callable[[list[int]], np.ndarray], n_users: int, relevant: Sequence[Sequence[int]],
    chunk: int = ..., tie_seed: int = ..., *, per_user: Literal[False] = ...,
) -> dict[str, float]: ...
@overload
def evaluate(
    score_fn: Callable[[list[int]], np.ndarray], n_users: int, relevant: Sequence[Sequence[int]],
    chunk: int = ..., tie_seed: int = ..., *, per_user: Literal[True],
) -> dict[str, np.ndarray]: ...
def evaluate(
    score_fn: Callable[[list[int]], np.ndarray],
    n_users: int,
    relevant: Sequence[Sequence[int]],
    chunk: int = 256,
    tie_seed: int = 0,
    *,
    per_user: bool = False,
) -> dict[str, float] | dict[str, np.ndarray]:
    """`rank_metrics` over users 0..n_users-1, scoring `chunk` users at a time to bound memory.

    score_fn(user_ids) -> float [len(user_ids), N]; N must be the same for every chunk.
    """
    if len(relevant) != n_users:
        raise ValueError(f"n_users={n_users} but {len(relevant)} relevance lists")
    parts: list[dict[str, np.ndarray]] = []
    keys: np.ndarray | None = None
    for start in range(0, n_users, chunk):
        ids = list(range(start, min(start + chunk, n_users)))
        block = np.asarray(score_fn(ids))
        if block.ndim != 2 or block.shape[0] != len(ids):
            raise ValueError(f"score_fn returned shape {block.shape} for {len(ids)} users")
        if keys is None:
            keys = tie_keys(block.shape[1], tie_seed)
        elif block.shape[1] != keys.size:
            raise ValueError(f"score_fn returned {block.shape[1]} items, earlier chunks {keys.size}")
        parts.append(_per_user_block(block, relevant[ids[0] : ids[-1] + 1], keys, start))
    if not parts:
        raise ValueError("no users to evaluate")
    values = {m: np.concatenate([p[m] for p in parts]) for m in METRICS}
    return values if per_user else summarize(values)


def summarize(values: dict[str, np.ndarray]) -> dict[str, float]:
    """Per-user arrays -> their means."""
    return {m: float(np.mean(v)) for m, v in values.items()}


def _resampled_means(columns: Sequence[np.ndarray], n: int, seed: int) -> list[np.ndarray]:
    """For each of `columns` (per-user values float64 [U], the same users in the same order),
    its mean over each of `n` bootstrap resamples of the users, float64 [n]; every column is
    averaged over the same draws (in chunks that keep a draw's gather within the budget)."""
    size = columns[0].size
    rng = np.random.default_rng(seed)
    out = [np.empty(n) for _ in columns]
    step = max(1, _COMPARE_BUDGET // size)
    for s in range(0, n, step):
        m = min(step, n - s)
        draw = rng.integers(0, size, (m, size))
        for means, values in zip(out, columns):
            means[s : s + m] = values[draw].mean(axis=1)
    return out


def bootstrap_ci(
    per_user_values: Sequence[float] | np.ndarray, n: int = 1000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval (default 95%) for the mean of per-user metric values."""
    values = np.asarray(per_user_values, dtype=np.float64)
    if values.size == 0:
        raise ValueError("no values")
    (means,) = _resampled_means([values], n, seed)
    tail = (1.0 - level) / 2.0 * 100.0
    lo, hi = np.percentile(means, [tail, 100.0 - tail])
    return float(lo), float(hi)


def paired_ratio_ci(
    ours: Sequence[float] | np.ndarray, baseline: Sequence[float] | np.ndarray, n: int = 1000,
    seed: int = 0, level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of mean(ours) / mean(baseline), both per-user values of
    the same users in the same order: each resample draws users, and both methods are
    averaged over the same draw, so the interval reflects how the two differ user by user,
    not the spread of each mean alone. A resample whose baseline mean is 0 counts as +inf."""
    a = np.asarray(ours, dtype=np.float64)
    b = np.asarray(baseline, dtype=np.float64)
    if a.shape != b.shape or a.ndim != 1:
        raise ValueError(f"need two per-user arrays of one length, got {a.shape} and {b.shape}")
    if a.size == 0:
        raise ValueError("no values")
    num, den = _resampled_means([a, b], n, seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratios = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.inf)
    tail = (1.0 - level) / 2.0 * 100.0  # no interpolation: a bound may be +inf
    lo = np.percentile(ratios, tail, method="lower")
    hi = np.percentile(ratios, 100.0 - tail, method="higher")
    return float(lo), float(hi)
