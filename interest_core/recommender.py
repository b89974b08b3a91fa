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
catalogue, scored in batches with concurrent requests (BatchScorer). A catalogue of at least
`ann_min_items` items is never scored whole: the same bound is tried first (the blend kept
sparse), and where it proves nothing the ranking is approximate: candidates from the
catalogue's nearest-neighbour index (ranking/ann.py) for the model term, the items of largest
blend, and the items added or changed since the index was built (through the gateway's own
index of them once there are many), scored exactly together.
A user with nothing that may be used (no consented source and no activity on the target) gets
the most popular items.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from interest_core.consent import Withheld, allowed, withheld_reason
from interest_core.errors import NotFound, Unavailable
from interest_core.migration import MigrationMap
from interest_core.profile_book import ProfileBook, StageTimer
from interest_core.profiles import Profile
from interest_core.ranking.ann import AnnSnapshot
from interest_core.ranking.assets import RankingAssets
from interest_core.ranking.blend import ServedBlend, SparseBlend
from interest_core.ranking.index import CatalogueIndex, Ranked, bounded_top_k
from interest_core.ranking.linalg import small_matvec
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


@dataclass(frozen=True)
class ServedCatalogue:
    """Everything Recommend ranks one platform's catalogue with, made together and swapped in
    as one (a catalogue update replaces it whole): a call takes one snapshot and never mixes
    the positions of two versions of the catalogue."""

    index: CatalogueIndex
    scorer: BatchScorer | None  # None when ranked through `ann`
    popularity: np.ndarray | None  # per-item fallback scores, in the index's order
    categories: tuple[np.ndarray, np.ndarray] | None  # each item's top category (index, probability)
    blend: ServedBlend | None  # the collaborative blend over this index; None without assets
    ann: AnnSnapshot | None = None  # a large catalogue's nearest-neighbour index (ranked approximately)


class Recommender:
    """Ranks each served platform's catalogue (`set_index`, or `prepare` + `serve` for a
    catalogue that changes while serving) for a user of `book`.

    `on_path(platform, 'bounded' | 'full')` counts how each personalised ranking was made;
    `batch_sizes(platform)` gives the observer of that catalogue's scoring batch sizes.
    """

    def __init__(
        self, book: ProfileBook, migration: MigrationMap, assets: RankingAssets | None,
        popularity: Mapping[str, np.ndarray], rank_candidates: int, rank_max_batch: int,
        timer: StageTimer, on_path: Callable[[str, str], None] = lambda platform, path: None,
        batch_sizes: Callable[[str], Callable[[int], None] | None] = lambda platform: None,
        ann_candidates: int = 100,
    ) -> None:
        self.book = book
        self.migration = migration
        self.assets = assets  # trained ranking: collaborative blend and interest categories
        self.popularity = popularity  # per platform, in the installed catalogue's order
        self.rank_candidates = rank_candidates
        self.rank_max_batch = rank_max_batch
        self.timer = timer
        self.on_path = on_path
        self.batch_sizes = batch_sizes
        self.ann_candidates = ann_candidates
        self._ann_pool: ThreadPoolExecutor | None = None  # index searches (faiss releases the GIL)
        self.served: dict[str, ServedCatalogue] = {}
        self.bound_gates: dict[str, BoundGate] = defaultdict(BoundGate)  # per target platform

    @property
    def indexes(self) -> dict[str, CatalogueIndex]:
        """Each served platform's index now."""
        return {platform: served.index for platform, served in self.served.items()}

    def set_index(self, platform: str, index: CatalogueIndex) -> None:
        """Serve `index` for `platform` with the popularity given at creation (start-up)."""
        self.serve(platform, self.prepare(platform, index, self.popularity.get(platform)))

    def prepare(self, platform: str, index: CatalogueIndex, popularity: np.ndarray | None,
                added: np.ndarray | None = None, ann: AnnSnapshot | None = None) -> ServedCatalogue:
        """Everything `index` is ranked with: its scorer (a transposed copy), each item's
        category and the precomputed blend (`added`: items added while serving, ServedBlend);
        with `ann`, no scorer and each ranked item's category when it is ranked, and the blend
        grown from the one served now (ServedBlend.grown: right from any earlier snapshot of the
        same live catalogue, whose ids are only appended to). Callable off the event loop."""
        if self.assets is None:
            blend = None
        elif ann is not None and (last := self.served.get(platform)) is not None and last.blend is not None:
            # (an indexed catalogue's positions never move: new items come after the others)
            blend = last.blend.grown(index.catalogue.item_ids, np.zeros(len(index), bool) if added is None
                                     else added)
        else:
            blend = ServedBlend(self.assets, platform, index.catalogue.item_ids, added)
        if ann is not None:
            if blend is not None and blend.popularity is not None:
                blend.popularity_order()  # (here, off the event loop: not in the first call's search)
            return ServedCatalogue(index, None, popularity, None, blend, ann)
        categories = self.assets.item_categories(index.embeddings) if self.assets is not None else None
        scorer = BatchScorer(index.embeddings, self.rank_max_batch, on_batch=self.batch_sizes(platform))
        return ServedCatalogue(index, scorer, popularity, categories, blend)

    def serve(self, platform: str, served: ServedCatalogue) -> None:
        """Rank `platform` with `served` from the next call on (calls under way finish with
        the one they took)."""
        old = self.served.get(platform)
        self.served[platform] = served
        if old is not None and old.scorer is not None:
            old.scorer.close()
        if served.blend is not None and (old is None or len(old.index) != len(served.index)):
            log.info("ranking assets know %d of the %d %s catalogue items%s", served.blend.known,
                     len(served.index), platform,
                     "" if served.blend.known else ": NO collaborative blend for this platform")

    def served_blend(self, target: str, index: CatalogueIndex) -> ServedBlend:
        """The precomputed blend of the served `index` (made once per served index)."""
        served = self.served.get(target)
        if served is None or served.index is not index or served.blend is None:
            raise KeyError(f"{target}: this index is not served with a blend")
        return served.blend

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
        served = self.served.get(target)
        if served is None:
            raise Unavailable(f"the {target} catalogue is still loading; retry shortly")
        index = served.index
        rules = await self.book.consent_rules(user_key)
        used = {p: v for p, v in profiles.items() if p == target or allowed(rules, p, target)}
        withheld = [Withheld(p, withheld_reason(rules, p, target)) for p in sorted(profiles) if p not in used]
        owned = profiles[target].items if target in profiles else []
        exclude = [*owned, *exclude_ids]
        if not used:
            with self.timer("rank", rpc, target):
                ranked = index.top_k(None, k, exclude, scores=served.popularity)
            return Recommendation(
                self.items(served, ranked), [], False, interests=[], withheld=withheld,
                explanation=(f"not personalised: {_withheld_text(withheld)} and there is no {target} "
                             "activity; most popular items"))
        with self.timer("migrate", rpc, target):
            query = self.migration.migrate({p: (prof.vector, prof.events) for p, prof in used.items()},
                                           target)
        with self.timer("rank", rpc, target):
            if served.ann is not None:
                sparse = self.sparse_blend(served, target, used)
                blended = sparse is not None and sparse.any()
                ranked = await self._rank_ann(target, served, query, sparse if blended else None, k, exclude)
            else:
                blend = self.blend(served, target, used)
                if blend is not None and not blend.any():
                    blend = None  # zero blend weights: the model's own ranking
                blended = blend is not None
                ranked = await self._rank(target, served, query, blend, k, exclude)
        sources = sorted(p for p in used if p != target)
        explanation = (f"interests migrated from {', '.join(sources)}" if sources
                       else f"from this user's {target} activity")
        if blended:
            explanation += " plus the trained co-occurrence/popularity blend"
        if withheld:
            explanation += f"; {_withheld_text(withheld)}"
        interests = self.interests(query)
        if interests:
            explanation += "; interests: " + ", ".join(f"{c.name} ({c.weight:.0%})" for c in interests)
        return Recommendation(self.items(served, ranked), sources, True, explanation, interests,
                              withheld)

    async def _rank(self, target: str, served: ServedCatalogue, query: np.ndarray,
                    blend: np.ndarray | None, k: int, exclude: list[str]) -> list[Ranked]:
        """The exact top k of item . query + blend: bounded when the gate lets it try and the
        bound holds, else the whole catalogue, batched."""
        ranked = None
        index = served.index
        gate = self.bound_gates[target]
        if blend is not None and self.rank_candidates and gate.should_try():
            ranked = index.top_k_bounded(  # exact, from the largest-blend items only
                query, blend, k, exclude, max(self.rank_candidates, 8 * k))
            gate.record(ranked is not None)
        self.on_path(target, "full" if ranked is None else "bounded")
        if ranked is None:
            assert served.scorer is not None  # (an indexed catalogue is ranked by _rank_ann)
            scores = await served.scorer.scores(query)  # item . query, batched
            if blend is not None:  # the served score: model cosine + the trained blend
                scores += blend
            ranked = index.top_k(None, k, exclude, scores=scores, copy=False)
        return ranked

    async def _rank_ann(self, target: str, served: ServedCatalogue, query: np.ndarray,
                        blend: SparseBlend | None, k: int, exclude: list[str]) -> list[Ranked]:
        """The top k of item . query + blend of an indexed catalogue, on a worker thread (an
        index search takes milliseconds at 10^6 items; the loop goes on): exact from the items
        of largest blend when the bound holds (as _rank), else from the index's candidates."""
        if self._ann_pool is None:
            self._ann_pool = ThreadPoolExecutor(2, thread_name_prefix="ann-search")
        banned = np.array(sorted(p for p in (served.index.position(i) for i in exclude) if p is not None),
                          dtype=np.int64)
        gate = self.bound_gates[target]
        try_bound = blend is not None and self.rank_candidates > 0 and gate.should_try()
        ranked, bounded = await asyncio.get_running_loop().run_in_executor(
            self._ann_pool, self.ann_top_k, served, query, blend, k, banned, try_bound)
        if try_bound:
            gate.record(bounded)
        self.on_path(target, "bounded" if bounded else "ann")
        return ranked

    def ann_top_k(self, served: ServedCatalogue, query: np.ndarray, blend: SparseBlend | None, k: int,
                  banned: np.ndarray, try_bound: bool = False) -> tuple[list[Ranked], bool]:
        """(the top k of item . query + blend, whether a bound proved it). Never a removed or
        `banned` position. With `try_bound`, first the items of largest blend as
        CatalogueIndex.top_k_bounded does it; else (or when that proves nothing) the exact
        scores of the union of: the index's `ann_candidates` nearest items (more by the banned
        count, so that k still come back), as many of the items added or changed since the build
        (the nearest in the index of them the gateway built, if any, AddedIndex, and of those not
        in it, the ones of largest exact score: _delta_leaders), and the max(rank_candidates, 8k)
        items of largest blend."""
        ann = served.ann
        assert ann is not None
        if try_bound and blend is not None:
            ranked = self._ann_bounded(served, query, blend, k, banned)
            if ranked is not None:
                return ranked, True
        n = max(self.ann_candidates, k) + len(banned)
        parts = [ann.index.search(query, min(n, len(ann.index)), ann.banned),
                 self._delta_leaders(ann, query, blend, n)]
        if ann.added is not None:
            parts.append(ann.added.search(query, n, ann.added_banned))
        if blend is not None:
            parts.append(blend.leaders(max(self.rank_candidates, 8 * k))[0])
        union = np.unique(np.concatenate(parts))
        union = union[ann.live[union] & ~np.isin(union, banned)]
        scores = small_matvec(ann.vectors(union), query)
        if blend is not None:
            scores += blend.at(union)
        return self._top(served, union, scores, k), False

    @staticmethod
    def _delta_leaders(ann: AnnSnapshot, query: np.ndarray, blend: SparseBlend | None, n: int) -> np.ndarray:
        """The n items added or changed since the build, and not in the gateway's index of them,
        of largest exact score (all of them when there are no more): one product over their own
        contiguous vectors, not a gather of them all into the union (ann_top_k at 10^6 items
        with 50,000 such items: 10.4 against 52.5 ms, docs/catalogue.md). Exact: with n at least
        k plus the banned count, every such item of the true top k is among them."""
        if len(ann.delta) <= n:
            return ann.delta
        scores = small_matvec(ann.delta_vectors, query)
        if blend is not None:
            scores += blend.at(ann.delta)
        leaders: np.ndarray = ann.delta[np.argpartition(-scores, n - 1)[:n]]
        return leaders

    def _ann_bounded(self, served: ServedCatalogue, query: np.ndarray, blend: SparseBlend, k: int,
                     banned: np.ndarray) -> list[Ranked] | None:
        """CatalogueIndex.top_k_bounded on an indexed catalogue (index.bounded_top_k), its blend
        kept sparse: the up to max(rank_candidates, 8k) items of largest blend, less the removed
        and `banned` ones; reach |query| (unit rows) plus 0.1% for the float16 vectors."""
        ann = served.ann
        assert ann is not None
        head, values, beyond = blend.leaders(min(max(self.rank_candidates, 8 * k), len(ann.live) - 1))
        alive = ann.live[head] & ~np.isin(head, banned)  # a removed item has no row to score
        head, values = head[alive], values[alive].astype(np.float32)  # (still largest first)
        outside = np.maximum(np.append(values[1:], -np.inf), beyond)  # [j]: best blend after head[:j+1]
        found = bounded_top_k(head, values, outside, ann.vectors, query, k,
                              float(np.linalg.norm(query)) * 1.001, max(256, 4 * k))
        return None if found is None else served.index.ranked(*found)

    @staticmethod
    def _top(served: ServedCatalogue, positions: np.ndarray, scores: np.ndarray, k: int) -> list[Ranked]:
        k = min(k, len(positions))
        if k <= 0:
            return []
        top = np.argpartition(-scores, k - 1)[:k]
        return served.index.ranked(positions[top], scores[top])

    def histories(self, target: str, used: Mapping[str, Profile]) -> dict[str, np.ndarray]:
        """The user's (consented) items per source platform, as positions in the assets."""
        out: dict[str, np.ndarray] = {}
        for platform, profile in used.items():
            if platform == target:
                continue
            pos = self.assets.positions(platform) if self.assets is not None else {}
            out[platform] = np.fromiter((pos[i] for i in profile.items if i in pos), dtype=np.int64)
        return out

    def blend(self, served: ServedCatalogue, target: str, used: Mapping[str, Profile]) -> np.ndarray | None:
        """The collaborative blend [N] of the user's (consented) source-platform items, or None
        without assets or without a source platform (target-only users get the model alone)."""
        if served.blend is None:
            return None
        return served.blend(self.histories(target, used))

    def sparse_blend(self, served: ServedCatalogue, target: str,
                     used: Mapping[str, Profile]) -> SparseBlend | None:
        """blend() kept sparse, for an indexed catalogue."""
        if served.blend is None:
            return None
        return served.blend.sparse(self.histories(target, used))

    def interests(self, vector: np.ndarray) -> list[Category]:
        """The top named interest categories of a unit profile vector; [] without assets."""
        weights = self.assets.category_weights if self.assets is not None else None
        if self.assets is None or weights is None or weights.shape[1] != vector.shape[0]:
            return []
        return [Category(name, float(np.float32(weight)))
                for name, weight in self.assets.categories(vector, INTEREST_TOP)]

    def items(self, served: ServedCatalogue, ranked: list[Ranked]) -> list[RecommendedItem]:
        """The ranked items, each with its own top interest category when assets name them."""
        names = self.assets.category_names if self.assets is not None else []
        found = self.item_categories(served, [served.index.position(r.item_id) for r in ranked])
        out = []
        for n, r in enumerate(ranked):
            category = None
            if found is not None:
                category = Category(names[int(found[0][n])], float(found[1][n]))
            out.append(RecommendedItem(r.item_id, r.title, r.score, n + 1, category))
        return out

    def item_categories(self, served: ServedCatalogue,
                        positions: list[int | None]) -> tuple[np.ndarray, np.ndarray] | None:
        """(category index, probability) of the items at `positions`: precomputed for a catalogue
        scored whole, computed from the ranked items' vectors for an indexed one; None without
        named categories."""
        if self.assets is None or not positions or any(p is None for p in positions):
            return None
        at = np.array(positions, dtype=np.int64)
        if served.categories is not None:
            return served.categories[0][at], served.categories[1][at]
        if served.ann is not None:
            return self.assets.item_categories(served.ann.vectors(at))
        return None


def _withheld_text(withheld: Sequence[Withheld]) -> str:
    """The explanation's part on sources not used: "withheld food (no consent to share ...)"."""
    return "withheld " + ", ".join(f"{w.platform} ({w.reason})" for w in withheld)
