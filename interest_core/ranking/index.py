"""Ranking a platform's whole catalogue by dot product with a query interest vector, plus
an optional per-item blend, exactly; `top_k_bounded` often gets there scoring few items."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass

import numpy as np

from interest_core.catalogue import Catalogue
from interest_core.ranking.linalg import small_matvec


@dataclass(frozen=True)
class Ranked:
    item_id: str
    title: str
    score: float


class CatalogueIndex:
    """Item embeddings float32 [N, D] (unit rows) for one platform's catalogue. An indexed
    catalogue (ranking/ann.py) has none here (`embeddings` None): the caller passes scores."""

    def __init__(self, catalogue: Catalogue, embeddings: np.ndarray | None,
                 positions: Mapping[str, int] | None = None) -> None:
        """`positions`: an id -> position map to use instead of building one, which must give
        every item of `catalogue` its position; ids at or beyond len(catalogue) are taken as
        absent (a live catalogue's map, which only grows: building one of 10^6 ids took
        0.3-0.47 s of each update)."""
        if embeddings is not None and embeddings.shape[0] != len(catalogue):
            raise ValueError(f"{embeddings.shape[0]} embeddings for {len(catalogue)} items")
        self.catalogue = catalogue
        self._embeddings = (None if embeddings is None
                            else np.ascontiguousarray(embeddings, dtype=np.float32))
        self._pos = catalogue.index() if positions is None else positions
        # |item . query| <= max_norm * |query| for every item: the bound of top_k_bounded
        self.max_norm = 1.0 if embeddings is None else float(np.sqrt(np.einsum(
            "ij,ij->i", self.embeddings, self.embeddings).max(initial=0.0))) * (1 + 1e-5)

    @property
    def embeddings(self) -> np.ndarray:
        if self._embeddings is None:
            raise ValueError(f"the {self.catalogue.platform} catalogue is ranked through its "
                             "nearest-neighbour index: it keeps no embeddings here")
        return self._embeddings

    @property
    def exact(self) -> bool:
        """Whether the embeddings are here to score the catalogue whole."""
        return self._embeddings is not None

    def __len__(self) -> int:
        return len(self.catalogue)

    def position(self, item_id: str) -> int | None:
        pos = self._pos.get(item_id)
        return pos if pos is not None and pos < len(self.catalogue) else None

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
        banned = self._banned(exclude)
        if banned:
            scores[banned] = -np.inf
        k = min(k, len(scores) - len(set(banned)))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        return self.ranked(top, scores[top])

    def top_k_bounded(self, query: np.ndarray, blend: np.ndarray, k: int, exclude: Iterable[str] = (),
                      candidates: int = 1024, first: int = 256) -> list[Ranked] | None:
        """top_k(scores=embeddings @ query + blend), scoring only items of largest blend, when
        a bound proves that no other item can reach the top k; None when `candidates` items are
        not enough to prove it (the caller then scores the whole catalogue).

        The model term of any item is at most R = max_norm * |query|, so an item outside the
        m items of largest blend scores at most R + (the largest blend outside them). When the
        k-th best of the m beats that strictly, their top k is the catalogue's top k. It tries
        m = max(first, 4k), then 4x as many, up to `candidates`, scoring each item once. A blend
        led by co-occurrence usually proves it within the first m; with a weak blend it fails, at
        the cost of one partition of `blend` (how often, measured: docs/ranking.md).
        """
        limit = min(candidates, len(blend) - 1)
        if k <= 0 or limit < k:
            return None
        blend = blend.astype(np.float32)  # (a copy: banned entries are overwritten)
        banned = self._banned(exclude)
        if banned:
            blend[banned] = -np.inf  # never picked before a live item; scores -inf if picked
        order = np.argpartition(-blend, limit)
        head = order[:limit]
        head = head[np.argsort(-blend[head], kind="stable")]  # largest blend first
        outside = np.append(blend[head[1:]], blend[order[limit]])  # [m-1]: best blend after head[:m]
        reach = self.max_norm * float(np.linalg.norm(query))
        found = bounded_top_k(head, blend[head], outside, self.embeddings.__getitem__, query, k, reach, first)
        return None if found is None else self.ranked(*found)

    def _banned(self, exclude: Iterable[str]) -> list[int]:
        return [p for p in (self.position(i) for i in exclude) if p is not None]

    def ranked(self, items: np.ndarray, scores: np.ndarray) -> list[Ranked]:
        """Items (catalogue positions) with their scores, best first, ties by catalogue order."""
        order = np.lexsort((items, -scores))
        return [Ranked(self.catalogue.item_ids[i], self.catalogue.titles[i], float(scores[j]))
                for i, j in zip(items[order], order)]


def bounded_top_k(head: np.ndarray, head_blend: np.ndarray, outside: np.ndarray,
                  rows: Callable[[np.ndarray], np.ndarray], query: np.ndarray, k: int, reach: float,
                  first: int) -> tuple[np.ndarray, np.ndarray] | None:
    """The bound of CatalogueIndex.top_k_bounded, for any source of rows: `head` are positions
    by falling blend (`head_blend`; -inf for an item that must not be ranked), `outside[j]` an
    upper bound of the blend of every item not in head[:j + 1], `rows(positions)` their vectors
    and `reach` an upper bound of any item's model term. Scores the first m = max(first, 4k)
    of `head` (then 4x as many, each item once) until the k-th best of them beats
    reach + outside[m - 1]: then (positions, scores) of their top k are the catalogue's.
    None when all of `head` does not prove it (or holds fewer than k items)."""
    limit = len(head)
    if k <= 0 or limit < k:
        return None
    scores = np.empty(0, np.float32)
    m = min(max(first, 4 * k), limit)
    while True:
        done = len(scores)
        scores = np.concatenate([scores, small_matvec(rows(head[done:m]), query) + head_blend[done:m]])
        kth = np.partition(scores, m - k)[m - k]  # -inf while fewer than k live items
        if kth > reach + outside[m - 1]:
            top = np.argpartition(-scores, k - 1)[:k]
            return head[top], scores[top]
        if m == limit:
            return None
        m = min(4 * m, limit)
