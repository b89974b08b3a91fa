"""What a trained checkpoint gives the gateway besides the encoder: the migration matrices,
the collaborative signals and their blend weights, and the named interest categories.

One file, `interest_assets.npz`, written by training next to the weights and installed by
`make engine` beside the model. The blend's formula is written once, in `ranking/blend.py`,
so offline evaluation and the served ranking compute the same scores.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import scipy.sparse as sp

from interest_core.ranking.blend import Blend, blend_terms
from interest_core.ranking.linalg import small_matvec
from interest_core.ranking.sparse import binary_matrix

__all__ = ["Blend", "RankingAssets"]  # Blend lives in ranking/blend.py, with the formula


@dataclass
class RankingAssets:
    """Everything indexed in each platform's catalogue order (`item_ids[platform]`)."""

    item_ids: dict[str, list[str]]
    migration: dict[tuple[str, str], np.ndarray]  # float32 [D, D], applied as W @ profile
    cooccurrence: dict[tuple[str, str], sp.csr_matrix]  # counts [n_source, n_target]
    popularity: dict[str, np.ndarray]  # training interactions per item, float32 [n]
    blend: dict[tuple[str, str], Blend]
    category_names: list[str] = field(default_factory=list)
    category_weights: np.ndarray | None = None  # float32 [K, D]: logits = W @ profile + b
    category_bias: np.ndarray | None = None  # float32 [K]
    # the last reorder() per platform: (the asset ids it read, ids, order), reused for a longer
    # list that starts with the same ids
    _reordered: dict[str, tuple[list[str], int, tuple[str, ...], np.ndarray]] = field(
        default_factory=dict, init=False, repr=False, compare=False)
    # positions() per platform: (the asset ids it read, their number, id -> position)
    _positions: dict[str, tuple[list[str], int, dict[str, int]]] = field(
        default_factory=dict, init=False, repr=False, compare=False)

    def positions(self, platform: str) -> Mapping[str, int]:
        """Each id's position in `item_ids[platform]` ({} for a platform without assets): built
        once and kept while that list is the same list of the same length. Shared by every
        caller: read it, never change it."""
        known = self.item_ids.get(platform, [])
        cached = self._positions.get(platform)
        if cached is None or cached[0] is not known or cached[1] != len(known):
            cached = (known, len(known), {item: i for i, item in enumerate(known)})
            self._positions[platform] = cached
        return cached[2]

    # --- scoring (shared by evaluation and the gateway) ---
    def collaborative(self, histories: Mapping[str, Sequence[Sequence[int]]], target: str) -> np.ndarray:
        """Blend terms for users [U] whose items per source platform are `histories`:
        float32 [U, n_target], added to the model's cosine scores."""
        n_users = len(next(iter(histories.values()))) if histories else 0
        weights = {s: b for (s, t), b in self.blend.items() if t == target}
        sums: dict[str, np.ndarray | None] = {}
        for source, rows in histories.items():
            matrix = self.cooccurrence.get((source, target))
            sums[source] = (None if matrix is None or weights.get(source, Blend()).cooc == 0.0
                            else (binary_matrix(rows, matrix.shape[0]) @ matrix).toarray())
        log_popularity = np.log1p(self.popularity[target]) if target in self.popularity else None
        return blend_terms(weights, sums, log_popularity, (n_users, len(self.item_ids[target])))

    def categories(self, profile: np.ndarray, top: int = 3) -> list[tuple[str, float]]:
        """The `top` named interest categories of a unit profile float32 [D], with probabilities."""
        if self.category_weights is None or not self.category_names:
            return []
        bias = self.category_bias if self.category_bias is not None else 0.0
        logits = small_matvec(self.category_weights, profile) + bias
        probs = np.exp(logits - logits.max())
        probs /= probs.sum()
        best = np.argsort(-probs)[:top]
        return [(self.category_names[k], float(probs[k])) for k in best]

    def item_categories(self, embeddings: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
        """Each item's most probable named interest category, from its unit embedding (rows of
        float32 [N, D]): (category index int64 [N], its probability float32 [N]); None without a
        classifier for D-dimensional vectors."""
        weights = self.category_weights
        if weights is None or not self.category_names or weights.shape[1] != embeddings.shape[1]:
            return None
        bias = self.category_bias if self.category_bias is not None else 0.0
        logits = embeddings.astype(np.float32) @ weights.T + bias
        logits -= logits.max(axis=1, keepdims=True)
        probs = np.exp(logits)
        best = probs.argmax(axis=1)
        share = probs[np.arange(len(best)), best] / probs.sum(axis=1)
        return best.astype(np.int64), share.astype(np.float32)

    # --- persistence ---
    def save(self, path: Path) -> None:
        arrays: dict[str, np.ndarray] = {}
        meta: dict[str, object] = {
            "item_ids": self.item_ids, "category_names": self.category_names,
            "blend": {f"{s}->{t}": [b.cooc, b.pop] for (s, t), b in self.blend.items()},
        }
        for (s, t), w in self.migration.items():
            arrays[f"migration/{s}->{t}"] = w.astype(np.float32)
        for (s, t), m in self.cooccurrence.items():
            m = m.tocsr()
            for part in ("data", "indices", "indptr"):
                arrays[f"cooc/{s}->{t}/{part}"] = getattr(m, part)
            arrays[f"cooc/{s}->{t}/shape"] = np.array(m.shape)
        for p, counts in self.popularity.items():
            arrays[f"popularity/{p}"] = counts.astype(np.float32)
        if self.category_weights is not None:
            arrays["categories/weights"] = self.category_weights.astype(np.float32)
            arrays["categories/bias"] = (self.category_bias if self.category_bias is not None
                                         else np.zeros(len(self.category_names), np.float32))
        arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("wb") as f:
            np.savez_compressed(f, **arrays)

    @classmethod
    def load(cls, path: Path) -> RankingAssets:
        with np.load(path) as npz:
            meta = json.loads(npz["meta"].tobytes().decode())
            names = set(npz.files)
            pair = lambda key: tuple(key.split("->", 1))  # noqa: E731
            migration = {pair(k.split("/", 1)[1]): npz[k].astype(np.float32)
                         for k in names if k.startswith("migration/")}
            cooc = {}
            for k in names:
                if k.startswith("cooc/") and k.endswith("/shape"):
                    base = k[: -len("/shape")]
                    cooc[pair(base.split("/", 1)[1])] = sp.csr_matrix(
                        (npz[f"{base}/data"], npz[f"{base}/indices"], npz[f"{base}/indptr"]),
                        shape=tuple(npz[k]))
            popularity = {k.split("/", 1)[1]: npz[k] for k in names if k.startswith("popularity/")}
            weights = npz["categories/weights"] if "categories/weights" in names else None
            bias = npz["categories/bias"] if "categories/bias" in names else None
        return cls(
            item_ids={p: list(ids) for p, ids in meta["item_ids"].items()},
            migration=migration,  # type: ignore[arg-type]
            cooccurrence=cooc,  # type: ignore[arg-type]
            popularity=popularity,
            blend={pair(k): Blend(*v) for k, v in meta["blend"].items()},  # type: ignore[misc]
            category_names=list(meta["category_names"]),
            category_weights=weights, category_bias=bias,
        )

    def reorder(self, platform: str, item_ids: Sequence[str]) -> np.ndarray:
        """Positions in this asset's order of the given catalogue ids (-1 where unknown), int64.

        A served catalogue changes by appending: each update's snapshot lists the ids of the
        one before and the new ones after them. So the last call's answer is kept, and when it
        is a prefix of `item_ids` only the tail is looked up: at 10^6 items the lookups took
        0.26 s of each catalogue update's 0.54 s."""
        ids = tuple(item_ids)
        known = self.item_ids.get(platform, [])
        last = self._reordered.get(platform)  # (a stale one from another thread is still right)
        start = 0
        if (last is not None and last[0] is known and last[1] == len(known)
                and len(last[2]) <= len(ids) and ids[:len(last[2])] == last[2]):
            start = len(last[2])
        pos = self.positions(platform)
        tail = np.array([pos.get(i, -1) for i in ids[start:]], dtype=np.int64)
        order = np.concatenate([last[3], tail]) if start and last is not None else tail
        self._reordered[platform] = (known, len(known), ids, order)
        return order.copy()
