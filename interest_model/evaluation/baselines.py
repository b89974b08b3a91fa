"""Cold-start cross-platform baselines: rank the whole target catalogue from a source history.

Every baseline: `fit(PairTrainData)` then `score(histories) -> float32 [len(histories), n_target]`.
Target items with no training interaction get a finite score (0 for the count and SVD
baselines). An empty history gives a zero row (count, zero-shot) or the mapping's intercept
(text_ridge, emcdr); ties are left to the metric's seeded permutation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import scipy.sparse as sp
from scipy.sparse.linalg import svds

from interest_core.ranking.sparse import binary_matrix


@dataclass
class PairTrainData:
    """Training users, local item indices. The caller swaps source/target for the other direction."""

    n_source: int
    n_target: int
    pairs: Sequence[tuple[Sequence[int], Sequence[int]]]  # users on both: (source items, target items)
    source_only: Sequence[Sequence[int]] = field(default_factory=list)
    target_only: Sequence[Sequence[int]] = field(default_factory=list)
    source_emb: np.ndarray | None = None  # float32 [n_source, D], unit rows (title embeddings)
    target_emb: np.ndarray | None = None  # float32 [n_target, D]


class Baseline(Protocol):
    name: str

    def fit(self, data: PairTrainData) -> Baseline: ...

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray: ...


def _mean_rows(m: sp.csr_matrix) -> sp.csr_matrix:
    """Row-normalise a binary matrix so each row averages its items (empty rows stay 0)."""
    counts = np.asarray(m.sum(axis=1)).ravel()
    return sp.csr_matrix(sp.diags(1.0 / np.maximum(counts, 1.0)) @ m)


def ridge(x: np.ndarray, y: np.ndarray, alpha: float) -> tuple[np.ndarray, np.ndarray]:
    """Closed-form ridge with intercept: returns (W [dx, dy], b [dy]) for y ≈ x W + b."""
    mx, my = x.mean(axis=0), y.mean(axis=0)
    xc = (x - mx).astype(np.float64)
    gram = xc.T @ xc + alpha * np.eye(x.shape[1])
    w = np.linalg.solve(gram, xc.T @ (y - my))
    return w.astype(np.float32), (my - mx @ w).astype(np.float32)


class Popularity:
    """Training interaction count of each target item, same for every user: counted over every
    training user on the target platform (`users="all"`: pairs + target-only users), or only
    over those also on the source platform (`users="both"`: what people who also use the source
    platform take there; tuned on validation users by `make eval`)."""

    name = "popularity"

    def __init__(self, users: str = "all") -> None:
        if users not in ("all", "both"):
            raise ValueError(f"users must be 'all' or 'both', got {users!r}")
        self.users = users

    def fit(self, data: PairTrainData) -> Popularity:
        rows = [t for _, t in data.pairs] + (list(data.target_only) if self.users == "all" else [])
        self.counts = np.asarray(binary_matrix(rows, data.n_target).sum(axis=0), np.float32).ravel()
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return np.tile(self.counts, (len(histories), 1))


class Cooccurrence:
    """score[t] = number of (history item s, user) with s and t taken by the same overlap user,
    divided by n_t^beta, n_t the overlap users who took t.

    C = Xs^T Xt over the training pairs (binary per user); score = (h C) / n^beta for binary
    history h. beta = 0 (the default) is pure counts; larger beta moves popular target items
    down (tuned on validation users by `make eval`). No popularity tie-breaker (ties are the
    metric's seeded random order).
    """

    name = "cooccurrence"

    def __init__(self, beta: float = 0.0) -> None:
        self.beta = beta

    def fit(self, data: PairTrainData) -> Cooccurrence:
        xs = binary_matrix([s for s, _ in data.pairs], data.n_source)
        xt = binary_matrix([t for _, t in data.pairs], data.n_target)
        self.n_source = data.n_source
        self.cooc = sp.csr_matrix(xs.T @ xt)  # float32 [n_source, n_target]
        taken = np.maximum(np.asarray(xt.sum(axis=0), np.float64).ravel(), 1.0)
        self.scale = (taken ** -self.beta).astype(np.float32)
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        h = binary_matrix(histories, self.n_source)
        counts = np.asarray((h @ self.cooc).toarray(), dtype=np.float32)
        return counts if self.beta == 0 else counts * self.scale


class _TextBaseline:
    name = "text"
    source_emb: np.ndarray  # float32 [n_source, D]
    target_emb: np.ndarray  # float32 [n_target, D]

    def _embeddings(self, data: PairTrainData) -> tuple[np.ndarray, np.ndarray]:
        if data.source_emb is None or data.target_emb is None:
            raise ValueError(f"{self.name} needs source_emb and target_emb")
        if data.source_emb.shape[0] != data.n_source or data.target_emb.shape[0] != data.n_target:
            raise ValueError("embedding rows must match n_source / n_target")
        return data.source_emb.astype(np.float32), data.target_emb.astype(np.float32)

    def _history_mean(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        """float32 [B, D]: mean source embedding of each history (0 for an empty one)."""
        h = _mean_rows(binary_matrix(histories, self.source_emb.shape[0]))
        return np.asarray(h @ self.source_emb, dtype=np.float32)


class ZeroShot(_TextBaseline):
    """query = normalise(mean source title embedding of the history); score = target_emb @ query."""

    name = "zero_shot"

    def fit(self, data: PairTrainData) -> ZeroShot:
        self.source_emb, self.target_emb = self._embeddings(data)
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        q = self._history_mean(histories)
        q /= np.maximum(np.linalg.norm(q, axis=1, keepdims=True), 1e-12)
        return q @ self.target_emb.T


class TextRidge(_TextBaseline):
    """Ridge map from a user's mean source title embedding to their mean target title embedding.

    Fit on the training pairs (closed form, with intercept); score = target_emb @ (x W + b).
    alpha=10 is a prior guess, not yet checked on real title embeddings: ~7.5k centred pairs of
    384-d means put the Gram matrix's leading eigenvalues well above 10 and its tail below, so it
    mainly damps the weakly determined directions. Pick one with `tune(..., [{"alpha": a}, ...])`.
    """

    name = "text_ridge"

    def __init__(self, alpha: float = 10.0) -> None:
        self.alpha = alpha

    def fit(self, data: PairTrainData) -> TextRidge:
        self.source_emb, self.target_emb = self._embeddings(data)
        x = self._history_mean([s for s, _ in data.pairs])
        y = np.asarray(_mean_rows(binary_matrix([t for _, t in data.pairs], data.n_target)) @ self.target_emb)
        self.w, self.b = ridge(x, y, self.alpha)
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        return (self._history_mean(histories) @ self.w + self.b) @ self.target_emb.T


def item_factors(m: sp.csr_matrix, rank: int, seed: int = 0) -> np.ndarray:
    """PureSVD item factors of a binary user-item matrix: float32 [n_items, k], k = min(rank, ...).

    R ≈ U S V^T; a user's factor is r V (fold-in), so r V V^T is their PureSVD score row.
    """
    k = max(1, min(rank, min(m.shape) - 1))
    _, _, vt = svds(m.astype(np.float64), k=k, rng=np.random.default_rng(seed))
    return np.ascontiguousarray(vt.T, dtype=np.float32)


class EMCDR:
    """EMCDR (Man et al., IJCAI 2017, "Cross-Domain Recommendation: An Embedding and Mapping
    Approach"): factorise each platform, learn a map from source to target user factors on the
    overlapping users, and score a cold user by mapping their source factor.

    Factorisation: PureSVD (rank `rank`; the paper uses MF/BPR) of the binary user-item matrix
    of all training users on that platform (pairs + single-platform users); a user's factor is
    folded in as r V, so unseen target items have zero factors and score 0.
    Mapping: `mapping="ridge"` (closed-form linear map with intercept, L2 penalty `alpha`; the
    paper's linear variant) or `mapping="mlp"` (scikit-learn MLP, one tanh hidden layer of
    2*rank units, L2 `alpha`: the paper's MLP variant). score = mapped factor @ target factors^T.
    Defaults (rank 64, ridge, alpha 10) were picked on the Food/Kitchen validation users, both
    directions: ranks 32/128/256, alpha 0.1-1e4 and the MLP were no better (rank 32 much worse).
    """

    name = "emcdr"

    def __init__(self, rank: int = 64, alpha: float = 10.0, mapping: str = "ridge", seed: int = 0) -> None:
        if mapping not in ("ridge", "mlp"):
            raise ValueError(f"mapping must be 'ridge' or 'mlp', got {mapping!r}")
        self.rank, self.alpha, self.mapping, self.seed = rank, alpha, mapping, seed

    def fit(self, data: PairTrainData) -> EMCDR:
        src = [s for s, _ in data.pairs]
        tgt = [t for _, t in data.pairs]
        self.n_source = data.n_source
        all_src = binary_matrix(src + list(data.source_only), data.n_source)
        all_tgt = binary_matrix(tgt + list(data.target_only), data.n_target)
        self.vs = item_factors(all_src, self.rank, self.seed)
        self.vt = item_factors(all_tgt, self.rank, self.seed)
        x = np.asarray(binary_matrix(src, data.n_source) @ self.vs)
        y = np.asarray(binary_matrix(tgt, data.n_target) @ self.vt)
        if self.mapping == "ridge":
            self.w, self.b = ridge(x, y, self.alpha)
        else:
            from sklearn.neural_network import MLPRegressor

            self.mlp = MLPRegressor(
                hidden_layer_sizes=(2 * x.shape[1],), activation="tanh", alpha=self.alpha, max_iter=300,
                early_stopping=True, random_state=self.seed,
            ).fit(x, y)
        return self

    def score(self, histories: Sequence[Sequence[int]]) -> np.ndarray:
        x = np.asarray(binary_matrix(histories, self.n_source) @ self.vs)
        mapped = x @ self.w + self.b if self.mapping == "ridge" else self.mlp.predict(x)
        return np.asarray(mapped @ self.vt.T, dtype=np.float32)


BASELINES: dict[str, Callable[..., Baseline]] = {
    "popularity": Popularity,
    "cooccurrence": Cooccurrence,
    "zero_shot": ZeroShot,
    "text_ridge": TextRidge,
    "emcdr": EMCDR,
}


def make_baseline(name: str, **options: Any) -> Baseline:
    """A new unfitted baseline by registry name, constructor options passed through."""
    if name not in BASELINES:
        raise KeyError(f"unknown baseline {name!r}; known: {sorted(BASELINES)}")
    return BASELINES[name](**options)


def tune(
    name: str,
    data: PairTrainData,
    grid: Sequence[Mapping[str, Any]],
    validate: Callable[[Baseline], float],
) -> tuple[Baseline, list[tuple[dict[str, Any], float]]]:
    """Fit `name` with each option set in `grid`; keep the one `validate` scores highest
    (e.g. NDCG@10 on validation users, never test). Returns (best fitted, [(options, value)])."""
    if not grid:
        raise ValueError("empty grid")
    tried: list[tuple[dict[str, Any], float]] = []
    best: Baseline | None = None
    for options in grid:
        model = make_baseline(name, **options).fit(data)
        value = float(validate(model))
        if best is None or value > max(v for _, v in tried):
            best = model
        tried.append((dict(options), value))
    assert best is not None
    return best, tried
