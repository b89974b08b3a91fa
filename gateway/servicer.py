"""The InterestGateway servicer: validation, then the core steps, each timed as a stage.

1 adapt + pseudonymise + scrub (preprocess), 2-3 tokenize + infer (via TritonEncoder),
4 profile update, 5 migrate, 6 rank. Errors are domain exceptions; the interceptor maps them.

With trained ranking assets (interest_core.ranking.assets) a personalised Recommend ranks by

    score = item_embedding . migrated_query + blend

where `blend` is exactly `RankingAssets.collaborative(histories, target)` for the user's
consented source-platform items, put into the served catalogue's order (ServedBlend).
The top k of that score is exact either way: from the items of largest blend when a bound
proves no other item can get in (CatalogueIndex.top_k_bounded), else from the whole
catalogue, scored in batches with concurrent requests (gateway/scoring.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import zlib
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import grpc
import numpy as np
import scipy.sparse as sp

from gateway.adapters import AdapterContext, PlatformAdapter, adapter_for
from gateway.auth import ANY_PLATFORM, Authorizer
from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import Settings
from interest_core.errors import InterestError, InvalidInput, NotFound, Unavailable
from interest_core.events import UnifiedEvent
from interest_core.migration import MigrationMap
from interest_core.privacy import Pseudonymiser
from interest_core.profiles import Profile, ProfileStore
from interest_core.ranking.assets import Blend, RankingAssets
from interest_core.ranking.index import CatalogueIndex, Ranked
from interest_core.ranking.scoring import BatchScorer, BoundGate

log = logging.getLogger("interest.gateway")
INTEREST_TOP = 3  # named interest categories reported per profile / recommendation
# A user's profiles are read, changed and written back under one of these locks (by key
# hash), so two calls for one user never interleave and lose each other's events.
USER_LOCKS = 1024
T = TypeVar("T")


def lock_stripe(user_key: str) -> int:
    """The user lock of a pseudonymous key: the same in every process (unlike hash())."""
    return zlib.crc32(user_key.encode()) % USER_LOCKS


class ServedBlend:
    """`RankingAssets.collaborative` for ONE user and one served target catalogue, with
    everything that does not depend on the user precomputed at start-up.

    The co-occurrence matrices get their columns moved into the served catalogue's order
    (catalogue items the assets do not know get no blend) and log1p(popularity) is reordered
    the same way, so a request only sums the co-occurrence rows of the user's own items.
    Same terms as `collaborative`: per source, cooc * log1p(row sum); plus, when there is at
    least one source platform, max(pop over the sources) * log1p(popularity).
    """

    def __init__(self, assets: RankingAssets, target: str, catalogue_ids: Sequence[str]) -> None:
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
        self.popularity: np.ndarray | None = None
        if target in assets.popularity:
            self.popularity = np.zeros(self.size, np.float32)
            self.popularity[known] = np.log1p(assets.popularity[target])[order[known]]

    def __call__(self, histories: Mapping[str, np.ndarray]) -> np.ndarray | None:
        """The blend float32 [N] (catalogue order) of a user whose items per source platform
        are `histories` (positions in the assets' order); None without any source platform."""
        if not histories:
            return None
        out = np.zeros(self.size, np.float32)
        pop_weight = 0.0
        for source, rows in histories.items():
            weights = self.blends.get(source, Blend())
            pop_weight = max(pop_weight, weights.pop)
            matrix = self.cooc.get(source)
            if matrix is None or len(rows) == 0:
                continue
            sums = _row_sum(matrix, rows)
            touched = np.flatnonzero(sums != 0)  # (on a bool mask: 10x faster than on floats)
            out[touched] += weights.cooc * np.log1p(sums[touched]).astype(np.float32)
        if pop_weight and self.popularity is not None:
            out += np.float32(pop_weight) * self.popularity
        return out


_GATHER_MAX = 32_768  # stored entries up to which gather + bincount beats scipy's row slicing


def _row_sum(matrix: sp.csr_matrix, rows: np.ndarray) -> np.ndarray:
    """Sum of the given rows of a CSR matrix, dense [n_cols], reading only those rows."""
    starts = matrix.indptr[rows]
    lengths = matrix.indptr[rows + 1] - starts
    ends = np.cumsum(lengths)
    if int(ends[-1]) > _GATHER_MAX:  # many entries (popular items): scipy's C++ row slice + sum
        return np.asarray(matrix[rows].sum(axis=0)).ravel()
    picks = np.arange(int(ends[-1])) + np.repeat(starts - (ends - lengths), lengths)
    return np.bincount(matrix.indices[picks], weights=matrix.data[picks], minlength=matrix.shape[1])


class InterestGatewayService(pb_grpc.InterestGatewayServicer):
    def __init__(
        self, settings: Settings, store: ProfileStore, encoder: TritonEncoder,
        metrics: GatewayMetrics, migration: MigrationMap, titles: dict[str, dict[str, str]],
        popularity: dict[str, np.ndarray] | None = None, assets: RankingAssets | None = None,
    ) -> None:
        self.settings = settings
        self.store = store
        self.encoder = encoder
        self.metrics = metrics
        self.migration = migration
        self.pseudonymise = Pseudonymiser(settings.hmac_key.get_secret_value())
        self.auth = Authorizer(settings.api_keys)
        self.popularity = popularity or {}  # per-item fallback scores when nothing may be used
        self.indexes: dict[str, CatalogueIndex] = {}
        self.scorers: dict[str, BatchScorer] = {}  # per platform: batched catalogue scoring
        self.bound_gates: dict[str, BoundGate] = defaultdict(BoundGate)  # per target platform
        self.assets = assets  # trained ranking: collaborative blend and interest categories
        self._asset_pos = ({p: {item: i for i, item in enumerate(ids)}
                            for p, ids in assets.item_ids.items()} if assets is not None else {})
        self._served: dict[str, tuple[CatalogueIndex, ServedBlend]] = {}
        # per platform: each catalogue item's own top interest category (index, probability)
        self._item_categories: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        # Every store write commits (an fsync) on this one thread, off the event loop: a slow
        # disk then holds up only the calls that write, not every call in flight. Reads run
        # on the loop, on the store's own read connection (WAL: they never wait for a commit).
        self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="profile-writer")
        self._user_locks = [asyncio.Lock() for _ in range(USER_LOCKS)]
        self.model_version = ""
        self.adapters: dict[str, PlatformAdapter] = {}
        for name, platform in settings.platforms.items():
            ctx = AdapterContext(name, platform.event_types, settings.max_text_chars,
                                 titles.get(name, {}), self.pseudonymise)
            self.adapters[name] = adapter_for(platform.adapter)(ctx)

    # --- checks shared by the RPCs ---
    def _platform(self, name: str, field: str) -> str:
        if not name:
            raise InvalidInput(f"{field} is empty; known platforms: {', '.join(self.adapters)}")
        if name not in self.adapters:
            raise NotFound(f"unknown platform {name!r}; known: {', '.join(self.adapters)}")
        return name

    def _batch(self, n: int) -> None:
        if n == 0:
            raise InvalidInput("events is empty: send at least one behaviour event")
        if n > self.settings.max_events_per_request:
            raise InvalidInput(
                f"{n} events in one request; the limit is {self.settings.max_events_per_request}"
            )

    def _user(self, user_id: str) -> str:
        if not user_id.strip():
            raise InvalidInput("user_id is empty")
        if len(user_id) > 128:
            raise InvalidInput("user_id longer than 128 characters")
        return self.pseudonymise(user_id.strip())

    def _timeout(self, context: grpc.aio.ServicerContext) -> float:
        """Seconds left for the Triton call: the caller's deadline, capped by triton_timeout_s."""
        remaining = context.time_remaining()
        cap = self.settings.triton_timeout_s
        return cap if remaining is None else max(min(float(remaining), cap), 0.0)

    def close(self) -> None:
        """Finish the queued store writes, then close the store."""
        self._writer.shutdown(wait=True)
        self.store.close()

    @contextlib.asynccontextmanager
    async def _locked(self, user_keys: Iterable[str]) -> AsyncIterator[None]:
        """Hold the locks of these users (in one order everywhere, so no two calls deadlock)."""
        async with contextlib.AsyncExitStack() as stack:
            for n in sorted({lock_stripe(k) for k in user_keys}):
                await stack.enter_async_context(self._user_locks[n])
            yield

    async def _write(self, rpc: str, platform: str, write: Callable[..., T], *args: object) -> T:
        """Run a store write on the writer thread, timed as the `store` stage. If the call is
        cancelled meanwhile (deadline, client gone), the commit still goes on: it is waited
        for before the cancellation goes up, so the caller's user lock is held until then and
        no later call reads what this write replaces."""
        with self.metrics.stage("store", rpc, platform):
            future = asyncio.get_running_loop().run_in_executor(self._writer, write, *args)
            cancelled = False
            while True:  # however often the call is cancelled meanwhile
                try:
                    result = await asyncio.shield(future)
                    break
                except asyncio.CancelledError:
                    if future.done():
                        if not future.cancelled() and future.exception() is not None:
                            log.error("a %s store write of a cancelled call failed: %s", rpc,
                                      future.exception())
                        raise
                    cancelled = True
            if cancelled:  # committed; the call itself is still cancelled
                raise asyncio.CancelledError
            return result

    def set_index(self, platform: str, index: CatalogueIndex) -> None:
        """Serve `index` for `platform`, precomputing its collaborative blend (start-up)."""
        self.indexes[platform] = index
        old = self.scorers.get(platform)
        self.scorers[platform] = BatchScorer(
            index.embeddings, self.settings.rank_max_batch,
            on_batch=self.metrics.rank_batch.labels(platform=platform).observe)
        if old is not None:
            old.close()
        for path in ("bounded", "full"):  # both series exist from the start (dashboard ratios)
            self.metrics.rank_path.labels(platform=platform, path=path)
        categories = self.assets.item_categories(index.embeddings) if self.assets is not None else None
        if categories is None:
            self._item_categories.pop(platform, None)
        else:
            self._item_categories[platform] = categories
        if self.assets is not None:
            blend = self._served_blend(platform, index)
            log.info("ranking assets know %d of the %d %s catalogue items%s", blend.known, len(index),
                     platform, "" if blend.known else ": NO collaborative blend for this platform")

    def _served_blend(self, target: str, index: CatalogueIndex) -> ServedBlend:
        assert self.assets is not None
        cached = self._served.get(target)
        if cached is None or cached[0] is not index:
            cached = (index, ServedBlend(self.assets, target, index.catalogue.item_ids))
            self._served[target] = cached
        return cached[1]

    def _blend(self, target: str, index: CatalogueIndex, used: Mapping[str, Profile]) -> np.ndarray | None:
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
        return self._served_blend(target, index)(histories)

    def _interests(self, vector: np.ndarray) -> list[pb.InterestCategory]:
        """The top named interest categories of a unit profile vector; [] without assets."""
        weights = self.assets.category_weights if self.assets is not None else None
        if self.assets is None or weights is None or weights.shape[1] != vector.shape[0]:
            return []
        return [pb.InterestCategory(name=name, weight=weight)
                for name, weight in self.assets.categories(vector, INTEREST_TOP)]

    def _items(self, target: str, index: CatalogueIndex, ranked: list[Ranked]) -> list[pb.RecommendedItem]:
        """The reply's items, each with its own top interest category when assets name them."""
        categories = self._item_categories.get(target)
        names = self.assets.category_names if self.assets is not None else []
        out = []
        for n, r in enumerate(ranked):
            item = pb.RecommendedItem(item_id=r.item_id, title=r.title, score=r.score, rank=n + 1)
            if categories is not None:
                pos = index.position(r.item_id)
                if pos is not None:
                    item.category.name = names[int(categories[0][pos])]
                    item.category.weight = float(categories[1][pos])
            out.append(item)
        return out

    # --- RPCs ---
    async def IngestEvents(
        self, request: pb.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestEventsResponse:
        rpc = "IngestEvents"
        caller = self.auth.caller(context)
        platform = self._platform(request.platform, "platform")
        self.auth.require(caller, platform)
        self._batch(len(request.events))
        with self.metrics.stage("total", rpc, platform):
            results: list[pb.EventResult] = []
            good: list[UnifiedEvent] = []
            with self.metrics.stage("preprocess", rpc, platform):
                adapter = self.adapters[platform]
                for i, event in enumerate(request.events):
                    try:
                        good.append(adapter.adapt(event, index=i))
                        results.append(pb.EventResult(index=i, accepted=True))
                    except InvalidInput as exc:
                        results.append(pb.EventResult(index=i, accepted=False,
                                                      error_code="INVALID_ARGUMENT", error=str(exc)))
            users: set[str] = set()
            if good:
                vectors = await self.encoder.embed([e.text for e in good], rpc, platform,
                                                   self._timeout(context))
                users = await self._apply(platform, good, vectors, self._timeout(context))
        accepted = len(good)
        self.metrics.events.labels(platform=platform, outcome="accepted").inc(accepted)
        self.metrics.events.labels(platform=platform, outcome="rejected").inc(len(results) - accepted)
        return pb.IngestEventsResponse(
            accepted=accepted, rejected=len(results) - accepted, users_updated=len(users),
            results=results, model_version=self.model_version,
        )

    async def _apply(self, platform: str, events: list[UnifiedEvent], vectors: np.ndarray,
                     timeout: float) -> set[str]:
        """Fold event embeddings into each user's profile; one transaction for the batch, under
        the users' locks from load to commit."""
        by_user: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_user[event.user_key].append(i)
        async with self._locked(by_user):
            updated: list[tuple[str, Profile]] = []
            for user_key, rows in by_user.items():
                profile = self.store.load(user_key).get(platform)
                if profile is not None:  # brought to the served model in place; saved with the batch
                    await self._current(user_key, {platform: profile}, "IngestEvents", timeout, save=False)
                else:
                    profile = Profile(platform=platform, vec_sum=np.zeros(vectors.shape[1], dtype=np.float32),
                                      events=0, model_version=self.model_version)
                for i in sorted(rows, key=lambda r: events[r].order):
                    profile.add(vectors[i], events[i].item_id)
                updated.append((user_key, profile))
            await self._write("IngestEvents", platform, self.store.save_many, updated)
        return set(by_user)

    def _load(self, user_key: str) -> dict[str, Profile]:
        """The user's stored profiles on the platforms this gateway serves. A store shared with
        a gateway of other platforms (another config) may hold more: those rows are left as
        they are, neither re-embedded, emptied, shown nor migrated from; DeleteUser erases them."""
        return {p: prof for p, prof in self.store.load(user_key).items() if p in self.adapters}

    async def _current(self, user_key: str, profiles: dict[str, Profile], rpc: str,
                       timeout: float, save: bool = True) -> dict[str, Profile]:
        """`profiles` (of served platforms: see _load) in the served model's embedding space.

        A profile summed by another model (before `make engine` installed this one) would mix
        two embedding spaces, so it is re-embedded from the catalogue titles of its items
        (cache hits: no BERT) and saved; its event count, its weight in migration, is kept.
        Events without a catalogue item cannot be replayed (raw events are never stored): a
        profile with none is emptied. Rows from before versions were stored ('') are taken
        to be the served model's. Nothing happens until a model is being served. With
        `save=False` the caller saves the profiles itself. The caller holds the user's lock
        from loading `profiles` until they are saved."""
        if not self.model_version:
            return profiles
        stale: list[tuple[Profile, str]] = []
        for profile in profiles.values():
            if not profile.model_version:
                profile.model_version = self.model_version  # written with the next update
            elif profile.model_version != self.model_version:
                stale.append((profile, profile.model_version))
        for profile, old in stale:
            adapter = self.adapters[profile.platform]  # a served platform's (see _load)
            known = [adapter.catalogue_text(i) for i in profile.items]
            texts = [text for text in known if text is not None]
            if texts:
                vectors = await self.encoder.embed(texts, rpc, profile.platform, timeout)
                profile.vec_sum = vectors.mean(axis=0).astype(np.float32) * np.float32(profile.events)
            else:
                profile.vec_sum = np.zeros(self.migration.dim, dtype=np.float32)
            profile.model_version = self.model_version
            self.metrics.profiles_reembedded.labels(
                platform=profile.platform, outcome="rebuilt" if texts else "emptied").inc()
            log.info("a %s profile from model %s re-embedded for model %s from %d of its %d items",
                     profile.platform, old, self.model_version, len(texts), len(profile.items))
        if stale and save:
            await self._write(rpc, stale[0][0].platform, self.store.save_many,
                              [(user_key, profile) for profile, _ in stale])
        return profiles

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        rpc = "Recommend"
        caller = self.auth.caller(context)
        target = self._platform(request.target_platform, "target_platform")
        self.auth.require(caller, target)
        if not 1 <= request.k <= self.settings.max_k:
            raise InvalidInput(f"k={request.k} is out of range 1..{self.settings.max_k}")
        if len(request.exclude_item_ids) > self.settings.max_exclude_ids:
            raise InvalidInput(f"more than {self.settings.max_exclude_ids} exclude_item_ids")
        with self.metrics.stage("total", rpc, target):
            user_key = self._user(request.user_id)
            async with self._locked([user_key]):
                with self.metrics.stage("preprocess", rpc, target):
                    profiles = self._load(user_key)
                if not profiles:
                    raise NotFound("no interest profile for this user: ingest their events first")
                profiles = await self._current(user_key, profiles, rpc, self._timeout(context))
            index = self.indexes.get(target)
            if index is None:
                raise Unavailable(f"the {target} catalogue is still loading; retry shortly")
            consent = self.store.consent(user_key)
            used = profiles if consent else {p: v for p, v in profiles.items() if p == target}
            owned = profiles[target].items if target in profiles else []
            exclude = [*owned, *request.exclude_item_ids]
            interests: list[pb.InterestCategory] = []
            if used:
                with self.metrics.stage("migrate", rpc, target):
                    query = self.migration.migrate(
                        {p: (prof.vector, prof.events) for p, prof in used.items()}, target)
                with self.metrics.stage("rank", rpc, target):
                    blend = self._blend(target, index, used)
                    if blend is not None and not blend.any():
                        blend = None  # zero blend weights: the model's own ranking
                    ranked = None
                    gate = self.bound_gates[target]
                    if blend is not None and self.settings.rank_candidates and gate.should_try():
                        ranked = index.top_k_bounded(  # exact, from the largest-blend items only
                            query, blend, request.k, exclude,
                            max(self.settings.rank_candidates, 8 * request.k))
                        gate.record(ranked is not None)
                    self.metrics.rank_path.labels(
                        platform=target, path="full" if ranked is None else "bounded").inc()
                    if ranked is None:
                        scores = await self.scorers[target].scores(query)  # item . query, batched
                        if blend is not None:  # the served score: model cosine + the trained blend
                            scores += blend
                        ranked = index.top_k(None, request.k, exclude, scores=scores, copy=False)
                sources = sorted(p for p in used if p != target)
                explanation = (f"interests migrated from {', '.join(sources)}" if sources
                               else f"from this user's {target} activity")
                if blend is not None:
                    explanation += " plus the trained co-occurrence/popularity blend"
                if not consent and len(profiles) > len(used):
                    explanation += "; cross-platform migration is off (no consent)"
                interests = self._interests(query)
                if interests:
                    explanation += "; interests: " + ", ".join(
                        f"{c.name} ({c.weight:.0%})" for c in interests)
            else:
                with self.metrics.stage("rank", rpc, target):
                    ranked = index.top_k(None, request.k, exclude, scores=self.popularity.get(target))
                sources = []
                explanation = (f"not personalised: cross-platform migration is off for this user "
                               f"(no consent) and there is no {target} activity; most popular items")
        return pb.RecommendResponse(
            target_platform=target,
            items=self._items(target, index, ranked),
            source_platforms=sources, model_version=self.model_version,
            personalised=bool(used), explanation=explanation, interests=interests,
        )

    async def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        caller = self.auth.caller(context)
        # A user-wide write: its store metrics carry the platform that asked ('*': an operator).
        await self._write("SetConsent", caller, self.store.set_consent, self._user(request.user_id),
                          request.migrate)
        return pb.SetConsentResponse(migrate=request.migrate)

    async def EncodeInterest(
        self, request: pb.EncodeInterestRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeInterestResponse:
        rpc = "EncodeInterest"
        caller = self.auth.caller(context)
        platform = self._platform(request.platform, "platform")
        self.auth.require(caller, platform)
        self._batch(len(request.events))
        with self.metrics.stage("total", rpc, platform):
            with self.metrics.stage("preprocess", rpc, platform):
                events = []
                adapter = self.adapters[platform]
                for i, event in enumerate(request.events):
                    try:
                        events.append(adapter.adapt(event, index=i, require_user=False))
                    except InvalidInput as exc:
                        raise InvalidInput(f"event {i}: {exc}") from None
            vectors = await self.encoder.embed([e.text for e in events], rpc, platform,
                                               self._timeout(context))
            mean = vectors.sum(axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
        return pb.EncodeInterestResponse(embedding=mean.tolist(), dim=int(mean.shape[0]),
                                         events_used=len(events), model_version=self.model_version)

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        caller = self.auth.caller(context)
        user_key = self._user(request.user_id)
        async with self._locked([user_key]):
            profiles = self._load(user_key)
            if caller != ANY_PLATFORM:  # a platform sees only its own part of the profile
                profiles = {p: prof for p, prof in profiles.items() if p == caller}
            if not profiles:
                raise NotFound("no interest profile for this user")
            profiles = await self._current(user_key, profiles, "GetProfile", self._timeout(context))
        return pb.GetProfileResponse(
            migrate_consent=self.store.consent(user_key),
            platforms=[pb.PlatformProfile(platform=p.platform, event_count=p.events,
                                          item_count=len(p.items), updated_at_ms=p.updated_ms,
                                          interests=self._interests(p.vector))
                       for p in sorted(profiles.values(), key=lambda p: p.platform)],
            dim=int(next(iter(profiles.values())).vec_sum.shape[0]),
        )

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        caller = self.auth.caller(context)  # any authenticated platform may erase a user entirely
        user_key = self._user(request.user_id)
        async with self._locked([user_key]):  # after any update in flight, never before it
            removed = await self._write("DeleteUser", caller, self.store.delete, user_key)
        log.info("deleted %d platform profile(s) of one user", removed)
        return pb.DeleteUserResponse(platforms_removed=removed)


__all__ = ["InterestError", "InterestGatewayService"]
