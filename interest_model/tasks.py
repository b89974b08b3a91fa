"""The migration task, shared by training and evaluation: directions between platforms, each
user's items per platform, the (source history, target items) pairs a direction learns and is
judged on, the new-items restriction, and the model's cosine scores."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, replace

import numpy as np

from interest_model.datasets import InteractionData, UserHistory


@dataclass(frozen=True)
class Direction:
    source: str
    target: str

    @property
    def key(self) -> tuple[str, str]:
        return (self.source, self.target)

    @property
    def param(self) -> str:
        """Its mapping's name in `MigrationModel.maps` (and, after "maps.", in a state dict)."""
        return f"{self.source}__{self.target}"

    @property
    def within(self) -> bool:
        """A same-platform direction: an auxiliary training task (held-out items of a user's
        history), never migrated or served."""
        return self.source == self.target

    def __str__(self) -> str:
        return f"{self.source}->{self.target}"


def holdout_items(n_items: int, fraction: float, seed: int) -> np.ndarray:
    """A seeded `fraction` of item indices 0..n_items-1 (sorted int64): the 'new' items."""
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n_items, round(fraction * n_items), replace=False)).astype(np.int64)


def user_rows(users: Sequence[UserHistory], platforms: Sequence[str],
              removed: dict[str, np.ndarray]) -> dict[str, list[list[int]]]:
    """Per platform, each user's items (same user order on every platform), minus `removed`."""
    drop = {p: set(removed.get(p, np.array([], np.int64)).tolist()) for p in platforms}
    return {p: [[i for i in u.on(p) if i not in drop[p]] for u in users] for p in platforms}


def model_scores(items: dict[str, np.ndarray], migration: np.ndarray, d: Direction,
                 histories: Sequence[Sequence[int]]) -> np.ndarray:
    """Cosine of each user's migrated profile with every target item, float32 [U, n_target]."""
    source = items[d.source]
    profiles = np.stack([source[list(h)].sum(axis=0) for h in histories])
    profiles /= np.maximum(np.linalg.norm(profiles, axis=1, keepdims=True), 1e-12)
    mapped = profiles @ migration.T
    mapped /= np.maximum(np.linalg.norm(mapped, axis=1, keepdims=True), 1e-12)
    return (mapped @ items[d.target].T).astype(np.float32)


def pairs_of(rows: dict[str, list[list[int]]], d: Direction) -> tuple[list[list[int]], list[list[int]]]:
    """(source histories, target items) of the users with items on both platforms of `d`."""
    keep = [n for n, (h, t) in enumerate(zip(rows[d.source], rows[d.target])) if h and t]
    return [rows[d.source][n] for n in keep], [rows[d.target][n] for n in keep]


def restrict(hist: list[list[int]], rel: list[list[int]], only: np.ndarray
             ) -> tuple[list[list[int]], list[list[int]]]:
    """Users with at least one relevant item in `only`, relevance cut down to those items."""
    keep = set(only.tolist())
    pairs = [(h, [i for i in r if i in keep]) for h, r in zip(hist, rel)]
    pairs = [(h, r) for h, r in pairs if r]
    return [h for h, _ in pairs], [r for _, r in pairs]


def mask_to(scores: np.ndarray, only: np.ndarray) -> np.ndarray:
    """Scores [U, n] with every item outside `only` set to -inf (never ranked)."""
    out = np.full_like(scores, -np.inf)
    out[:, only] = scores[:, only]
    return out


def few_overlap(data: InteractionData, fraction: float, seed: int) -> InteractionData:
    """`data` with only a seeded `fraction` of its training users on two or more platforms
    (the rest removed, single-platform users and the valid and test splits kept): a new pair of
    platforms that shares few users. The subsets are nested (one seeded order, its first
    round(fraction * n) users), so 1% is inside 5% for a given seed, and every method trained
    on the returned data sees the same users."""
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"overlap fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return data
    overlap = [n for n, u in enumerate(data.users)
               if u.split == "train" and sum(1 for p in data.platforms if u.on(p)) >= 2]
    order = np.random.default_rng(seed).permutation(len(overlap))
    keep = max(1, round(fraction * len(overlap)))
    dropped = {overlap[i] for i in order[keep:]}
    return replace(data, users=[u for n, u in enumerate(data.users) if n not in dropped])
