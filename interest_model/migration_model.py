"""The pieces `make train` and `make eval` share: the trainable migration model over frozen
title features, user rows, the new-items hold-out, collaborative signals and the blend search.
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from types import ModuleType

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn
from torch.nn import functional as F  # noqa: N812

from interest_core.ranking.assets import RankingAssets
from interest_core.ranking.sparse import binary_matrix
from interest_model.datasets import InteractionData
from interest_model.evaluation import evaluate
from interest_model.tasks import Direction, mask_to, model_scores, pairs_of, restrict


class MigrationModel(nn.Module):
    """Head H [D, D] shared by all platforms, a mapping W per direction and a temperature,
    over frozen unit title features float32 [n_p, D]."""

    def __init__(self, features: dict[str, np.ndarray], directions: Sequence[Direction],
                 removed: dict[str, np.ndarray]) -> None:
        super().__init__()
        dim = next(iter(features.values())).shape[1]
        self.features = {p: torch.from_numpy(np.ascontiguousarray(f)) for p, f in features.items()}
        self.head = nn.Parameter(torch.eye(dim))
        self.maps = nn.ParameterDict({d.param: nn.Parameter(torch.eye(dim))
                                      for d in directions})
        self.log_scale = nn.Parameter(torch.tensor(float(np.log(20.0))))  # 1 / temperature
        # Items held out of training (new items) take no part in any softmax.
        self.hidden = {p: torch.from_numpy(r) for p, r in removed.items() if len(r)}

    def embed(self, platform: str) -> torch.Tensor:
        """Unit item embeddings of a whole catalogue, [n, D]."""
        return F.normalize(self.features[platform] @ self.head.T, dim=-1)

    def query(self, items: torch.Tensor, histories: Sequence[Sequence[int]], d: Direction) -> torch.Tensor:
        """Migrated unit profiles [B, D] from item embeddings [n_source, D] and histories."""
        flat = torch.tensor([i for h in histories for i in h], dtype=torch.int64)
        seg = torch.tensor([n for n, h in enumerate(histories) for _ in h], dtype=torch.int64)
        profile = torch.zeros(len(histories), items.shape[1]).index_add_(0, seg, items[flat])
        profile = F.normalize(profile, dim=-1)
        return F.normalize(profile @ self.maps[d.param].T, dim=-1)

    def loss(self, batch: Sequence[tuple[Direction, Sequence[int], Sequence[int]]]) -> torch.Tensor:
        """Mean softmax cross-entropy of one random target item per example over its catalogue."""
        cache: dict[str, torch.Tensor] = {}
        total = torch.zeros(())
        # In order of first appearance: a set's order follows the per-process string hash
        # seed, and with it the order of the random picks below (a run would not reproduce).
        for d in dict.fromkeys(e[0] for e in batch):
            rows = [e for e in batch if e[0] == d]
            for p in (d.source, d.target):
                if p not in cache:
                    cache[p] = self.embed(p)
            q = self.query(cache[d.source], [e[1] for e in rows], d)
            logits = (q @ cache[d.target].T) * self.log_scale.exp()
            if d.target in self.hidden:
                logits[:, self.hidden[d.target]] = float("-inf")
            if d.within:  # the user's own visible items are neither negatives nor answers
                seen_rows = [n for n, e in enumerate(rows) for _ in e[1]]
                seen_items = [i for e in rows for i in e[1]]
                logits[seen_rows, seen_items] = float("-inf")
            picks = torch.randint(0, 1 << 30, (len(rows),))
            positives = torch.tensor([e[2][int(k) % len(e[2])] for e, k in zip(rows, picks)])
            total = total + F.cross_entropy(logits, positives, reduction="sum")
        return total / len(batch)

    def identity_penalty(self) -> torch.Tensor:
        """Squared Frobenius distance of the head and every mapping from the identity (the
        untrained model): weighted by --identity-decay, it keeps them near the pretrained
        space, for item texts that training never saw."""
        eye = torch.eye(self.head.shape[0])
        return ((self.head - eye) ** 2).sum() + sum(((m - eye) ** 2).sum() for m in self.maps.values())

    @torch.no_grad()
    def item_embeddings(self) -> dict[str, np.ndarray]:
        return {p: self.embed(p).numpy() for p in self.features}

    def migration(self, d: Direction) -> np.ndarray:
        return self.maps[d.param].detach().numpy().copy()

    @torch.no_grad()
    def set_weights(self, head: np.ndarray, maps: dict[Direction, np.ndarray]) -> None:
        """Replace the head and the given directions' mappings (e.g. by `merge_members`')."""
        self.head.copy_(torch.from_numpy(head))
        for d, w in maps.items():
            self.maps[d.param].copy_(torch.from_numpy(w))


def merge_members(heads: Sequence[np.ndarray], maps: Sequence[dict[Direction, np.ndarray]]
                  ) -> tuple[np.ndarray, dict[Direction, np.ndarray]]:
    """One head [D, D] and one mapping per direction [D, D] that rank as the ensemble of K
    members (heads H_k [D, D], mappings W_k).

    The ensemble embeds item f as normalise([H_1; ...; H_K] f), a [K*D] vector that lies in the
    D-dimensional column space of the stacked heads, and migrates with the block-diagonal
    diag(W_1, ..., W_K); its model score is the cosine of the two, which sums the members'
    bilinear scores. With U [K*D, D] an orthonormal basis of that column space (thin SVD),
    H = U^T [H_1; ...; H_K] gives the same item vectors in D coordinates (norms and inner
    products kept), and W = U^T diag(W_k) U = sum_k U_k^T W_k U_k the same profile-item inner
    products. Only the migrated profile's norm can differ, a positive factor per user that
    leaves each user's ranking by the model unchanged (the blend is tuned afterwards, on the
    merged model)."""
    if len(heads) == 1:
        return heads[0], dict(maps[0])
    stacked = np.concatenate([np.asarray(h, np.float64) for h in heads])
    basis = np.linalg.svd(stacked, full_matrices=False)[0]  # [K*D, D]
    # Each basis vector's sign is arbitrary: fix it (largest entry positive) so that the same
    # members always give the same bytes.
    basis *= np.sign(basis[np.abs(basis).argmax(axis=0), np.arange(basis.shape[1])])
    dim = heads[0].shape[0]
    blocks = [basis[k * dim:(k + 1) * dim] for k in range(len(heads))]
    head = (basis.T @ stacked).astype(np.float32)
    merged = {d: sum((b.T @ np.asarray(m[d], np.float64) @ b for b, m in zip(blocks, maps)),
                     np.zeros((dim, dim))).astype(np.float32) for d in maps[0]}
    return head, merged


def within_pool(rows: dict[str, list[list[int]]]) -> list[tuple[str, list[int]]]:
    """(platform, items) of every training user with at least 2 items on a platform."""
    return [(p, r) for p, users in rows.items() for r in users if len(r) >= 2]


def within_examples(rows: dict[str, list[list[int]]], count: int, rng: random.Random | ModuleType,
                    holdout: float = 0.2) -> list[tuple[Direction, list[int], list[int]]]:
    """`count` same-platform examples drawn from training users with at least 2 items on a
    platform (single-platform users included): a random `holdout` share of one user's items
    (at least one) is to be found from the rest. Redrawn every epoch, so each user's split
    varies."""
    pool = within_pool(rows)
    if not pool or count <= 0:
        return []
    out = []
    for p, r in rng.sample(pool, min(count, len(pool))):
        items = list(r)
        rng.shuffle(items)
        n_out = max(1, round(holdout * len(items)))
        out.append((Direction(p, p), items[n_out:], items[:n_out]))
    return out


def cosine_lr(base: float, step: int, total: int, floor: float = 0.05) -> float:
    """Cosine decay from `base` at step 0 to `floor * base` at step `total`."""
    progress = min(max(step / max(total, 1), 0.0), 1.0)
    return base * (floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress)))


def valid_ndcg(model: MigrationModel, items: dict[str, np.ndarray], d: Direction,
               rows: dict[str, list[list[int]]], only: np.ndarray | None = None) -> float:
    """Mean NDCG@10 of the model alone (item embeddings `items`, from `model.item_embeddings()`)
    on users with items on both platforms of `d`; with `only`, ranking just those target items
    for the users who took one of them."""
    hist, rel = pairs_of(rows, d)
    if only is not None:
        hist, rel = restrict(hist, rel, only)
    w = model.migration(d)

    def score(users: list[int]) -> np.ndarray:
        s = model_scores(items, w, d, [hist[u] for u in users])
        return s if only is None else mask_to(s, only)

    return float(evaluate(score, len(hist), rel)["ndcg@10"])


def collaborative_signals(rows: dict[str, list[list[int]]], directions: Sequence[Direction],
                          data: InteractionData) -> tuple[dict[tuple[str, str], sp.csr_matrix],
                                                          dict[str, np.ndarray]]:
    """Co-occurrence counts [n_s, n_t] over training users on both platforms, and per-item
    training popularity, from the training rows only (new items already removed)."""
    cooc: dict[tuple[str, str], sp.csr_matrix] = {}
    for d in directions:
        hist, tgt = pairs_of(rows, d)
        src = binary_matrix(hist, len(data.catalogues[d.source]))
        dst = binary_matrix(tgt, len(data.catalogues[d.target]))
        cooc[d.key] = (src.T @ dst).tocsr().astype(np.float32)
    popularity = {p: np.bincount([i for r in rows[p] for i in r],
                                 minlength=len(data.catalogues[p])).astype(np.float32)
                  for p in rows}
    return cooc, popularity


def blend_scores(assets: RankingAssets, items: dict[str, np.ndarray], d: Direction,
                 histories: Sequence[Sequence[int]]) -> np.ndarray:
    """The served ranking's scores: model cosine + the assets' collaborative blend, [U, n_t]."""
    scores = model_scores(items, assets.migration[d.key], d, histories)
    return scores + assets.collaborative({d.source: histories}, d.target)

