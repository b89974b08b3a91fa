"""The collaborative blend added to the model's cosine scores, written once: `blend_terms` is
the formula, used by offline evaluation (`RankingAssets.collaborative`, many users) and by
the served ranking (`ServedBlend`, one user, columns already in the served catalogue's order).

    blend = sum over sources s of cooc_s * log1p(co-occurrence row sum of the user's s items)
            + max over sources s of pop_s * log1p(popularity)

The popularity term needs at least one source platform: a target-only user gets no blend.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import scipy.sparse as sp

from interest_core.catalogue import Prefix


@dataclass(frozen=True)
class Blend:
    """score = model + cooc * log1p(co-occurrence sum) + pop * log1p(popularity)."""

    cooc: float = 0.0
    pop: float = 0.0


def blend_terms(weights: Mapping[str, Blend], cooc_sums: Mapping[str, np.ndarray | None],
                 log_popularity: np.ndarray | None, shape: tuple[int, ...]) -> np.ndarray:
    """The blend float32 `shape` ([U, N] or [N]) for one entry per source platform in
    `cooc_sums`: the summed co-occurrence rows of the user's items there (shape `shape`;
    None when that source adds no co-occurrence term). `log_popularity` is log1p of the
    target items' popularity float32 [N] (None: no popularity term)."""
    out = np.zeros(shape, np.float32)
    flat = out.reshape(-1)  # a view: entries written through it land in `out`
    pop_weight = 0.0
    for source, sums in cooc_sums.items():
        weight = weights.get(source, Blend())
        pop_weight = max(pop_weight, weight.pop)
        if sums is None or weight.cooc == 0.0:
            continue
        sums = np.asarray(sums).reshape(-1)
        # Most items co-occur with none of the user's: log1p(0) adds nothing, so only the
        # touched entries are computed (found on a bool mask, cheaper than on the floats).
        touched = np.flatnonzero(sums != 0)
        flat[touched] += weight.cooc * np.log1p(sums[touched]).astype(np.float32)
    if pop_weight and log_popularity is not None:
        out += np.float32(pop_weight) * log_popularity
    return out


class BlendAssets(Protocol):
    """What ServedBlend reads of `RankingAssets` (named here, not imported: assets imports us)."""

    item_ids: dict[str, list[str]]
    cooccurrence: dict[tuple[str, str], sp.csr_matrix]
    popularity: dict[str, np.ndarray]
    blend: dict[tuple[str, str], Blend]

    def reorder(self, platform: str, item_ids: Sequence[str]) -> np.ndarray: ...
    def positions(self, platform: str) -> Mapping[str, int]: ...


class ServedBlend:
    """`blend_terms` for ONE user and one served target catalogue, with everything that
    does not depend on the user precomputed at start-up.

    The co-occurrence matrices get their columns moved into the served catalogue's order
    (catalogue items the assets do not know get no blend) and log1p(popularity) is reordered
    the same way, so a request only sums the co-occurrence rows of the user's own items.
    `added` (bool [N]) marks items added while serving: those the assets do not know get no
    co-occurrence and the median popularity term of the known items (an item not seen yet is
    not an item nobody wants); those they know, their own.
    """

    def __init__(self, assets: BlendAssets, target: str, catalogue_ids: Sequence[str],
                 added: np.ndarray | None = None) -> None:
        self.assets = assets
        self.catalogue_ids = catalogue_ids
        self.target = target
        self.size = len(catalogue_ids)
        order = assets.reorder(target, catalogue_ids)  # asset position of each catalogue item
        known = order >= 0
        self.known = int(known.sum())
        n_assets = len(assets.item_ids.get(target, []))
        move = sp.csr_matrix(  # [n_assets, N]: column j picks asset item order[j]
            (np.ones(self.known, np.float32), (order[known], np.flatnonzero(known))),
            shape=(n_assets, self.size))
        self.blends = {s: b for (s, t), b in assets.blend.items() if t == target}
        self.cooc: dict[str, sp.csr_matrix] = {}
        for (source, t), matrix in assets.cooccurrence.items():
            if t != target or self.blends.get(source, Blend()).cooc == 0.0:
                continue
            moved = (matrix.tocsr() @ move).tocsr()
            moved.sum_duplicates()
            self.cooc[source] = moved
        self._pop_order: np.ndarray | None = None  # popularity_order(), made on first use
        self.popularity: np.ndarray | None = None  # log1p(popularity) float32 [N]
        self.new_item_popularity = 0.0  # the popularity term of an item added while serving
        if target in assets.popularity:
            self.popularity = np.zeros(self.size, np.float32)
            self.popularity[known] = np.log1p(assets.popularity[target])[order[known]]
            if self.known:
                # Items added while serving (UpdateCatalogue) have not been seen yet, which is
                # not the same as not being bought: they get the median popularity term of the
                # items the assets know, not the least, until `make train` counts them.
                self.new_item_popularity = float(np.median(self.popularity[known]))
            if added is not None:
                self.popularity[added & ~known] = self.new_item_popularity

    def grown(self, catalogue_ids: Sequence[str], added: np.ndarray) -> ServedBlend:
        """This blend for a catalogue that lists this one's items at the same positions and
        more after them (a live catalogue's next snapshot: `catalogue_ids` a Prefix that
        extends this one's); `added` as for the constructor, over all of them. When none of the
        new items is known to the assets (items added while serving), nothing is recomputed for
        the others: the co-occurrence columns and popularity terms are this one's, the new items
        get none and the new-item term, and the popularity order has them inserted: about 2 ms
        at 10^6 items, where the constructor took 23-55 ms a catalogue change (docs/catalogue.md).
        Otherwise it is the constructor's."""
        if not (isinstance(catalogue_ids, Prefix) and catalogue_ids.extends(self.catalogue_ids)):
            return ServedBlend(self.assets, self.target, catalogue_ids, added)
        pos = self.assets.positions(self.target)
        tail = range(self.size, len(catalogue_ids))
        if any(catalogue_ids[i] in pos for i in tail):
            return ServedBlend(self.assets, self.target, catalogue_ids, added)
        out = copy.copy(self)
        out.catalogue_ids, out.size = catalogue_ids, len(catalogue_ids)
        out.cooc = {source: sp.csr_matrix((m.data, m.indices, m.indptr), shape=(m.shape[0], out.size))
                    for source, m in self.cooc.items()}  # (no copy: no entries in the new columns)
        if self.popularity is not None:
            new = np.where(added[self.size:], np.float32(self.new_item_popularity), np.float32(0.0))
            out.popularity = np.concatenate([self.popularity, new])
            out._pop_order = None if self._pop_order is None else _merged_order(
                self._pop_order, self.popularity, new, self.size)
        return out

    def __call__(self, histories: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The blend float32 [N] (catalogue order) of a user whose items per source platform
        are `histories` (positions in the assets' order); None without any source platform."""
        if not histories:
            return None
        sums: dict[str, np.ndarray | None] = {}
        for source, rows in histories.items():
            matrix = self.cooc.get(source)
            sums[source] = None if matrix is None or len(rows) == 0 else _row_sum(matrix, rows)
        return blend_terms(self.blends, sums, self.popularity, (self.size,))

    def sparse(self, histories: Mapping[str, np.ndarray]) -> SparseBlend | None:
        """The same blend as __call__, kept sparse for a catalogue too large to fill [N] per
        request (one indexed through ranking/ann.py): values at chosen positions, and the
        positions of largest blend. None without any source platform."""
        if not histories:
            return None
        sums: dict[str, tuple[np.ndarray, np.ndarray] | None] = {}
        for source, rows in histories.items():
            matrix = self.cooc.get(source)
            sums[source] = None if matrix is None or len(rows) == 0 else _sparse_row_sum(matrix, rows)
        return SparseBlend(self, sums)

    def popularity_order(self) -> np.ndarray:
        """Positions by falling popularity term (made once, on first use)."""
        if self._pop_order is None:
            assert self.popularity is not None
            self._pop_order = np.argsort(-self.popularity, kind="stable")
        return self._pop_order


class SparseBlend:
    """One user's blend (ServedBlend.sparse): the co-occurrence sums kept as (positions, sums)
    per source; every item outside them has only the popularity term."""

    def __init__(self, served: ServedBlend, sums: Mapping[str, tuple[np.ndarray, np.ndarray] | None]) -> None:
        self.served = served
        self.sums = sums
        parts = [cols for pair in sums.values() if pair is not None for cols in pair[:1]]
        self.touched = np.unique(np.concatenate(parts)) if parts else np.zeros(0, np.int64)

    def any(self) -> bool:
        """Whether this blend is nonzero anywhere (dense: blend.any())."""
        weights = [self.served.blends.get(s, Blend()) for s in self.sums]
        popularity = self.served.popularity
        cooc = (w.cooc and pair is not None and pair[1].any() for w, pair in zip(weights, self.sums.values()))
        return (any(cooc)
                or (max((w.pop for w in weights), default=0.0) != 0.0 and popularity is not None
                    and bool(popularity.any())))

    def at(self, positions: np.ndarray) -> np.ndarray:
        """The blend float32 at `positions`: the dense blend's entries there (the same formula,
        blend_terms, over the chosen entries only; sums added in another order may differ in
        the last bit)."""
        picked: dict[str, np.ndarray | None] = {}
        for source, pair in self.sums.items():
            if pair is None or not len(pair[0]):  # (no co-occurrence with any target item)
                picked[source] = None
                continue
            cols, values = pair
            where = np.minimum(np.searchsorted(cols, positions), len(cols) - 1)
            picked[source] = np.where(cols[where] == positions, values[where], 0.0)
        popularity = self.served.popularity
        return blend_terms(self.served.blends, picked,
                           None if popularity is None else popularity[positions], (len(positions),))

    def leaders(self, m: int) -> tuple[np.ndarray, np.ndarray, float]:
        """(positions, blends, beyond): the m largest blends, largest first (fewer when the
        catalogue has fewer items), and the largest blend of any item not returned (-inf when
        none is left out). Outside the touched entries the blend is the popularity term alone,
        so the leaders are among the touched entries and the m + 1 most popular items, and the
        best untouched item left out is the most popular one not among them."""
        popularity = self.served.popularity
        pool = self.touched
        if popularity is not None:
            pool = np.union1d(pool, self.served.popularity_order()[:m + 1])
        values = self.at(pool)
        beyond = -np.inf
        if len(pool) > m:
            keep = np.argpartition(-values, m)[:m + 1]
            keep = keep[np.argsort(-values[keep], kind="stable")]
            beyond = float(values[keep[m]])
            pool, values = pool[keep[:m]], values[keep[:m]]
        else:
            order = np.argsort(-values, kind="stable")
            pool, values = pool[order], values[order]
        left_out = self._best_untouched_beyond(m)
        if left_out is not None:
            beyond = max(beyond, float(self.at(np.array([left_out]))[0]))
        return pool, values, beyond

    def _best_untouched_beyond(self, m: int) -> int | None:
        """The untouched position of largest popularity term outside leaders(m)'s pool (any
        untouched one without popularity); None when the pool holds every item."""
        popularity = self.served.popularity
        candidates = (self.served.popularity_order()[m + 1:m + 2 + len(self.touched)]
                      if popularity is not None else np.arange(min(self.served.size, len(self.touched) + 1)))
        untouched = candidates[~np.isin(candidates, self.touched)]
        return int(untouched[0]) if len(untouched) else None


def _merged_order(order: np.ndarray, values: np.ndarray, new: np.ndarray, start: int) -> np.ndarray:
    """argsort(-concat(values, new), stable) from `order` = argsort(-values, stable), `new` the
    values of positions start.. (all beyond those in `order`): each new position goes after every
    earlier one of equal or larger value, so the order of the rest is kept."""
    new_order = np.argsort(-new, kind="stable")
    keys = -values[order]  # ascending
    at = np.searchsorted(keys, -new[new_order], side="right")
    return np.insert(order, at, new_order + start)


def _sparse_row_sum(matrix: sp.csr_matrix, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The sum of the given CSR rows as (columns, sums), the columns sorted, none zero-summed
    away: _row_sum without the dense [n_cols] result."""
    sub = matrix[rows]
    cols, inverse = np.unique(sub.indices, return_inverse=True)
    return cols, np.bincount(inverse, weights=sub.data, minlength=len(cols))


# Stored entries up to which gather + bincount beats scipy's row slicing (docs/ranking.md).
_GATHER_MAX = 32_768


def _row_sum(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Sum of the given rows of a CSR matrix, dense [n_cols], reading only those rows."""
    starts = matrix.indptr[rows]
    lengths = matrix.indptr[rows + 1] - starts
    ends = np.cumsum(lengths)
    if int(ends[-1]) > _GATHER_MAX:  # many entries (popular items): scipy's C++ row slice + sum
        return np.asarray(matrix[rows].sum(axis=0)).ravel()
    picks = np.arange(int(ends[-1])) + np.repeat(starts - (ends - lengths), lengths)
    return np.bincount(matrix.indices[picks], weights=matrix.data[picks], minlength=matrix.shape[1])
