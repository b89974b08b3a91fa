"""What Recommend answers: the ranking policy, its explanation and the interest categories,
as a plain `Recommendation` (the gateway turns it into protobuf). docs/ranking.md tells how.

With trained ranking assets a personalised answer ranks by

    score = item_embedding . migrated_query + blend

where `blend` is the collaborative blend (ranking/blend.py) of the user's consented
source-platform items, in the served catalogue's order. A source platform is used only where
the user's consent to share its data with the target is on (interest_core/consent.py); the
others are named in `withheld`, with the reason. The top k of that score is exact
either way: from the items of largest blend when a bound proves no other item can get in
(CatalogueIndex.top_k_bounded, tried while its BoundGate says it pays), else from the whole
catalogue, scored in batches with concurrent requests (BatchScorer). A user with nothing that
may be used (no consented source and no activity on the target) gets the most popular items.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from interest_core.consent import Withheld, allowed, withheld_reason
from interest_core.errors import NotFound, Unavailable
from interest_core.migration import MigrationMap
from interest_core.profile_book import ProfileBook, StageTimer
from interest_core.profiles import Profile
from interest_core.ranking.assets import RankingAssets
from interest_core.ranking.blend import ServedBlend
from interest_core.ranking.index import CatalogueIndex, Ranked
from interest_core.ranking.scoring import BatchScorer, BoundGate

log = logging.getLogger("interest.gateway")
INTEREST_TOP = 3  # named interest categories reported per profile / recommendation


@dataclass(frozen=True)
class Category:
    """A named interest category and its probability (rounded to float32, as replied)."""

    name: str
    weight: float


@dataclass(frozen=True)
class RecommendedItem:
    item_id: str
    title: str
    score: float
    rank: int  # 1 for the best
    category: Category | None  # the item's own top category; None without trained assets


@dataclass(frozen=True)
class Recommendation:
    items: list[RecommendedItem]
    source_platforms: list[str]  # the platforms whose behaviour was migrated
    personalised: bool  # False: the most popular items
    explanation: str
    interests: list[Category]  # top categories of the migrated query
    withheld: list[Withheld] = field(default_factory=list)  # sources not used, with the reason


class Recommender:
    """Ranks each served platform's catalogue (`set_index`) for a user of `book`.

    `on_path(platform, 'bounded' | 'full')` counts how each personalised ranking was made;
    `batch_sizes(platform)` gives the observer of that catalogue's scoring batch sizes.
    """

    def __init__(
        self, book: ProfileBook, migration: MigrationMap, assets: RankingAssets | None,
        popularity: Mapping[str, np.ndarray], rank_candidates: int, rank_max_batch: int,
        timer: StageTimer, on_path: Callable[[str, str], None] = lambda platform, path: None,
        batch_sizes: Callable[[str], Callable[[int], None] | None] = lambda platform: None,
    ) -> None:
        self.book = book
        self.migration = migration
        self.assets = assets  # trained ranking: collaborative blend and interest categories
        self.popularity = popularity  # per-item fallback scores when nothing may be used
        self.rank_candidates = rank_candidates
        self.rank_max_batch = rank_max_batch
        self.timer = timer
        self.on_path = on_path
        self.batch_sizes = batch_sizes
        self.indexes: dict[str, CatalogueIndex] = {}
        self.scorers: dict[str, BatchScorer] = {}  # per platform: batched catalogue scoring
        self.bound_gates: dict[str, BoundGate] = defaultdict(BoundGate)  # per target platform
        self._asset_pos = ({p: {item: i for i, item in enumerate(ids)}
                            for p, ids in assets.item_ids.items()} if assets is not None else {})
        self._served: dict[str, tuple[CatalogueIndex, ServedBlend]] = {}
        # per platform: each catalogue item's own top interest category (index, probability)
        self._item_categories: dict[str, tuple[np.ndarray, np.ndarray]] = {}

    def set_index(self, platform: str, index: CatalogueIndex) -> None:
        """Serve `index` for `platform`, precomputing its collaborative blend (start-up)."""
        self.indexes[platform] = index
        old = self.scorers.get(platform)
        self.scorers[platform] = BatchScorer(index.embeddings, self.rank_max_batch,
                                             on_batch=self.batch_sizes(platform))
        if old is not None:
            old.close()
        categories = self.assets.item_categories(index.embeddings) if self.assets is not None else None
        if categories is None:
            self._item_categories.pop(platform, None)
        else:
            self._item_categories[platform] = categories
        if self.assets is not None:
            blend = self.served_blend(platform, index)
            log.info("ranking assets know %d of the %d %s catalogue items%s", blend.known, len(index),
                     platform, "" if blend.known else ": NO collaborative blend for this platform")

    def served_blend(self, target: str, index: CatalogueIndex) -> ServedBlend:
        """The precomputed blend of `index` (made once per served index)."""
        assert self.assets is not None
        cached = self._served.get(target)
        if cached is None or cached[0] is not index:
            cached = (index, ServedBlend(self.assets, target, index.catalogue.item_ids))
            self._served[target] = cached
        return cached[1]

    async def recommend(self, user_key: str, target: str, k: int, exclude_ids: Sequence[str],
                        time_left: Callable[[], float], rpc: str = "Recommend") -> Recommendation:
        """The top k of `target`'s catalogue for the user, never one of their own items there
        nor one of `exclude_ids`. `time_left()`: seconds left for a model call."""
        async with self.book.locked([user_key]):
            with self.timer("preprocess", rpc, target):
                profiles = await self.book.load(user_key)
            if not profiles:
                raise NotFound("no interest profile for this user: ingest their events first")
            profiles = await self.book.current(user_key, profiles, rpc, time_left())
        index = self.indexes.get(target)
        if index is None:
            raise Unavailable(f"the {target} catalogue is still loading; retry shortly")
        rules = await self.book.consent_rules(user_key)
        used = {p: v for p, v in profiles.items() if p == target or allowed(rules, p, target)}
        withheld = [Withheld(p, withheld_reason(rules, p, target)) for p in sorted(profiles) if p not in used]
        owned = profiles[target].items if target in profiles else []
        exclude = [*owned, *exclude_ids]
        if not used:
            with self.timer("rank", rpc, target):
                ranked = index.top_k(None, k, exclude, scores=self.popularity.get(target))
            return Recommendation(
                self.items(target, index, ranked), [], False, interests=[], withheld=withheld,
                explanation=(f"not personalised: {_withheld_text(withheld)} and there is no {target} "
                             "activity; most popular items"))
        with self.timer("migrate", rpc, target):
            query = self.migration.migrate({p: (prof.vector, prof.events) for p, prof in used.items()},
                                           target)
        with self.timer("rank", rpc, target):
            blend = self.blend(target, index, used)
            if blend is not None and not blend.any():
                blend = None  # zero blend weights: the model's own ranking
            ranked = await self._rank(target, index, query, blend, k, exclude)
        sources = sorted(p for p in used if p != target)
        explanation = (f"interests migrated from {', '.join(sources)}" if sources
                       else f"from this user's {target} activity")
        if blend is not None:
            explanation += " plus the trained co-occurrence/popularity blend"
        if withheld:
            explanation += f"; {_withheld_text(withheld)}"
        interests = self.interests(query)
        if interests:
            explanation += "; interests: " + ", ".join(f"{c.name} ({c.weight:.0%})" for c in interests)
        return Recommendation(self.items(target, index, ranked), sources, True, explanation, interests,
                              withheld)

    async def _rank(self, target: str, index: CatalogueIndex, query: np.ndarray,
                    blend: np.ndarray | None, k: int, exclude: list[str]) -> list[Ranked]:
        """The exact top k of item . query + blend: bounded when the gate lets it try and the
        bound holds, else the whole catalogue, batched."""
        ranked = None
        gate = self.bound_gates[target]
        if blend is not None and self.rank_candidates and gate.should_try():
            ranked = index.top_k_bounded(  # exact, from the largest-blend items only
                query, blend, k, exclude, max(self.rank_candidates, 8 * k))
            gate.record(ranked is not None)
        self.on_path(target, "full" if ranked is None else "bounded")
        if ranked is None:
            scores = await self.scorers[target].scores(query)  # item . query, batched
            if blend is not None:  # the served score: model cosine + the trained blend
                scores += blend
            ranked = index.top_k(None, k, exclude, scores=scores, copy=False)
        return ranked

    def blend(self, target: str, index: CatalogueIndex, used: Mapping[str, Profile]) -> np.ndarray | None:
        """The collaborative blend [N] of the user's (consented) source-platform items, or None
        without assets or without a source platform (target-only users get the model alone)."""
        if self.assets is None:
            return None
        histories: dict[str, np.ndarray] = {}
        for platform, profile in used.items():
            if platform == target:
                continue
            pos = self._asset_pos.get(platform, {})
            histories[platform] = np.fromiter(
                (pos[i] for i in profile.items if i in pos), dtype=np.int64)
        return self.served_blend(target, index)(histories)

    def interests(self, vector: np.ndarray) -> list[Category]:
        """The top named interest categories of a unit profile vector; [] without assets."""
        weights = self.assets.category_weights if self.assets is not None else None
        if self.assets is None or weights is None or weights.shape[1] != vector.shape[0]:
            return []
        return [Category(name, float(np.float32(weight)))
                for name, weight in self.assets.categories(vector, INTEREST_TOP)]

    def items(self, target: str, index: CatalogueIndex, ranked: list[Ranked]) -> list[RecommendedItem]:
        """The ranked items, each with its own top interest category when assets name them."""
        categories = self._item_categories.get(target)
        names = self.assets.category_names if self.assets is not None else []
        out = []
        for n, r in enumerate(ranked):
            category = None
            pos = index.position(r.item_id) if categories is not None else None
            if categories is not None and pos is not None:
                category = Category(names[int(categories[0][pos])], float(categories[1][pos]))
            out.append(RecommendedItem(r.item_id, r.title, r.score, n + 1, category))
        return out


def _withheld_text(withheld: Sequence[Withheld]) -> str:
    """The explanation's part on sources not used: "withheld food (no consent to share ...)"."""
    return "withheld " + ", ".join(f"{w.platform} ({w.reason})" for w in withheld)
