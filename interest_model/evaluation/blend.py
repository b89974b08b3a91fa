"""The served blend's weights (model cosine + co-occurrence + popularity), searched on a set of
users by NDCG@10. Training searches them on the valid users (what is served); `make eval`
searches the same grid on the test users as a ceiling, which says whether a missed target
needs better weights or a better model."""

from __future__ import annotations

import numpy as np

from interest_core.ranking.assets import Blend, RankingAssets
from interest_model.evaluation.metrics import evaluate
from interest_model.tasks import Direction, model_scores, pairs_of

# Model cosines lie in [-1, 1] and log1p(co-occurrence) reaches 3-5, so large cooc weights make
# co-occurrence lead with the model breaking its many ties.
BLEND_COOC = (0.0, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)
BLEND_POP = (0.0, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def search_blend(assets: RankingAssets, items: dict[str, np.ndarray], d: Direction,
                 rows: dict[str, list[list[int]]]) -> tuple[Blend, dict[str, float]]:
    """The blend weights of `d` on the BLEND_COOC x BLEND_POP grid with the highest NDCG@10 over
    the users of `rows`, and {"model": the model alone, "blend": that best, "cooc", "pop"}.
    `assets` keeps the weights it came with."""
    hist, rel = pairs_of(rows, d)
    base = model_scores(items, assets.migration[d.key], d, hist)
    came_with = assets.blend.get(d.key)
    best, model_only = (-1.0, Blend()), 0.0
    try:
        for cooc in BLEND_COOC:
            for pop in BLEND_POP:
                assets.blend[d.key] = Blend(cooc, pop)
                scores = base + assets.collaborative({d.source: hist}, d.target)
                value = float(evaluate(scores.__getitem__, len(hist), rel)["ndcg@10"])
                if cooc == 0.0 and pop == 0.0:
                    model_only = value
                if value > best[0]:
                    best = (value, Blend(cooc, pop))
    finally:
        if came_with is None:
            del assets.blend[d.key]
        else:
            assets.blend[d.key] = came_with
    return best[1], {"model": model_only, "blend": best[0], "cooc": best[1].cooc, "pop": best[1].pop}
