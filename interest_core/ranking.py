"""Ranking a platform's whole catalogue by dot product with a query interest vector."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import numpy as np

from interest_core.data import Catalogue


@dataclass(frozen=True)
class Ranked:
    item_id: str
    title: str
    score: float


class CatalogueIndex:
    """Item embeddings float32 [N, D] (unit rows) for one platform's catalogue."""

    def __init__(self, catalogue: Catalogue, embeddings: np.ndarray) -> None:
        if embeddings.shape[0] != len(catalogue):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(catalogue)} items")
        self.catalogue = catalogue
        self.embeddings = np.ascontiguousarray(embeddings, dtype=np.float32)
        self._pos = catalogue.index()

    def __len__(self) -> int:
        return len(self.catalogue)

    def position(self, item_id: str) -> int | None:
        return self._pos.get(item_id)

    def top_k(self, query: np.ndarray | None, k: int, exclude: Iterable[str] = (),
              scores: np.ndarray | None = None, copy: bool = True) -> list[Ranked]:
        """The k best items by score (query . item, or the given per-item `scores`), never one
        in `exclude`; ties broken by catalogue order. copy=False lets it overwrite the
        excluded entries of a float32 `scores` the caller no longer needs."""
        if scores is None:
            assert query is not None
            scores = self.embeddings @ query.astype(np.float32)
        elif copy or scores.dtype != np.float32:
            scores = scores.astype(np.float32)  # (astype copies)
        banned = [p for p in (self._pos.get(i) for i in exclude) if p is not None]
        if banned:
            scores[banned] = -np.inf
        k = min(k, len(scores) - len(set(banned)))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        top = top[np.lexsort((top, -scores[top]))]
        return [
            Ranked(self.catalogue.item_ids[i], self.catalogue.titles[i], float(scores[i])) for i in top
        ]
