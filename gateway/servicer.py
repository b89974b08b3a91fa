"""The InterestGateway servicer: each RPC checks its request, calls one core object, and
builds the reply. Errors are domain exceptions; the interceptor maps them to statuses.

Stages, each timed: 1 adapt + pseudonymise + scrub (preprocess), 2-3 tokenize + infer (via
TritonEncoder), 4 profile update (interest_core.profile_book), 5 migrate and 6 rank
(interest_core.recommender; how it ranks: docs/ranking.md).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

import grpc
import numpy as np

from gateway import replies
from gateway.adapters import AdapterContext, PlatformAdapter, adapter_for
from gateway.auth import ANY_PLATFORM, Authorizer
from gateway.catalogue import CatalogueFollower, unit_rows
from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import Settings
from interest_core.consent import shares_somewhere, visible_rules
from interest_core.errors import InterestError, InvalidInput, NotFound, Unavailable
from interest_core.events import UnifiedEvent
from interest_core.live_catalogue import check_changes
from interest_core.migration import MigrationMap
from interest_core.privacy import Pseudonymiser
from interest_core.profile_book import ProfileBook
from interest_core.profiles import ProfileStore
from interest_core.ranking.assets import RankingAssets
from interest_core.ranking.index import CatalogueIndex
from interest_core.recommender import Recommender

log = logging.getLogger("interest.gateway")


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
        self.assets = assets
        self.pseudonymise = Pseudonymiser(settings.hmac_key.get_secret_value())
        self.auth = Authorizer(settings.api_keys)
        self.adapters: dict[str, PlatformAdapter] = {}
        for name, platform in settings.platforms.items():
            ctx = AdapterContext(name, platform.event_types, settings.max_text_chars,
                                 titles.get(name, {}), self.pseudonymise)
            self.adapters[name] = adapter_for(platform.adapter)(ctx)
        self.book = ProfileBook(
            store, self._embed, {name: a.catalogue_text for name, a in self.adapters.items()},
            migration.dim, metrics.stage,
            on_reembedded=lambda platform, outcome: metrics.profiles_reembedded.labels(
                platform=platform, outcome=outcome).inc())
        self.recommender = Recommender(
            self.book, migration, assets, popularity or {}, settings.rank_candidates,
            settings.rank_max_batch, metrics.stage,
            on_path=lambda platform, path: metrics.rank_path.labels(platform=platform, path=path).inc(),
            batch_sizes=lambda platform: metrics.rank_batch.labels(platform=platform).observe,
            ann_candidates=settings.ann_candidates)
        self.catalogues: CatalogueFollower | None = None  # set when the catalogues are served

    @property
    def indexes(self) -> dict[str, CatalogueIndex]:
        """Each platform's catalogue index served now."""
        return self.recommender.indexes

    @property
    def model_version(self) -> str:
        """The served model's version ('' until the server knows it): what profiles are kept in."""
        return self.book.model_version

    @model_version.setter
    def model_version(self, version: str) -> None:
        self.book.model_version = version

    def set_index(self, platform: str, index: CatalogueIndex) -> None:
        """Serve a fixed `index` for `platform`, precomputing its collaborative blend (tests)."""
        self.recommender.set_index(platform, index)
        self.mark_rank_paths(platform)

    def mark_rank_paths(self, platform: str) -> None:
        for path in ("bounded", "full", "ann"):  # every series exists from the start (dashboard ratios)
            self.metrics.rank_path.labels(platform=platform, path=path)

    def close(self) -> None:
        """Finish the queued store writes, then close the store."""
        self.book.close()

    # --- checks shared by the RPCs ---
    def _authorise(self, context: grpc.aio.ServicerContext, platform: str | None = None,
                   field: str = "platform") -> str:
        """The platform the call acts on: the request's `platform` (a served one that the
        caller's key may act on), or without one the caller's own ('*': an operator)."""
        caller = self.auth.caller(context)
        if platform is None:
            return caller
        if not platform:
            raise InvalidInput(f"{field} is empty; known platforms: {', '.join(self.adapters)}")
        if platform not in self.adapters:
            raise NotFound(f"unknown platform {platform!r}; known: {', '.join(self.adapters)}")
        self.auth.require(caller, platform)
        return platform

    def _batch(self, events: Sequence[pb.BehaviorEvent]) -> None:
        """Refuse an empty or oversized batch before any work."""
        if not events:
            raise InvalidInput("events is empty: send at least one behaviour event")
        if len(events) > self.settings.max_events_per_request:
            raise InvalidInput(
                f"{len(events)} events in one request; the limit is {self.settings.max_events_per_request}"
            )

    def _adapt(self, rpc: str, platform: str, events: Sequence[pb.BehaviorEvent], require_user: bool
               ) -> tuple[list[UnifiedEvent], dict[int, str]]:
        """A request's events through the platform's adapter (the `preprocess` stage): the valid
        ones, and the error of each other one by index."""
        with self.metrics.stage("preprocess", rpc, platform):
            return self.adapters[platform].adapt_all(events, require_user)

    def _user(self, user_id: str) -> str:
        """The pseudonymous key of a request's user id."""
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

    async def _embed(self, texts: Sequence[str], rpc: str, platform: str, timeout: float) -> np.ndarray:
        return await self.encoder.embed(texts, rpc, platform, timeout)  # (self.encoder may be swapped)

    # --- RPCs ---
    async def IngestEvents(
        self, request: pb.IngestEventsRequest, context: grpc.aio.ServicerContext
    ) -> pb.IngestEventsResponse:
        rpc = "IngestEvents"
        platform = self._authorise(context, request.platform)
        self._batch(request.events)
        with self.metrics.stage("total", rpc, platform):
            good, bad = self._adapt(rpc, platform, request.events, require_user=True)
            users = (await self.book.ingest(platform, good, rpc, lambda: self._timeout(context))
                     if good else set())
        self.metrics.events.labels(platform=platform, outcome="accepted").inc(len(good))
        self.metrics.events.labels(platform=platform, outcome="rejected").inc(len(bad))
        return replies.ingested(len(request.events), bad, len(users), self.model_version)

    async def Recommend(
        self, request: pb.RecommendRequest, context: grpc.aio.ServicerContext
    ) -> pb.RecommendResponse:
        target = self._authorise(context, request.target_platform, "target_platform")
        if not 1 <= request.k <= self.settings.max_k:
            raise InvalidInput(f"k={request.k} is out of range 1..{self.settings.max_k}")
        if len(request.exclude_item_ids) > self.settings.max_exclude_ids:
            raise InvalidInput(f"more than {self.settings.max_exclude_ids} exclude_item_ids")
        with self.metrics.stage("total", "Recommend", target):
            answer = await self.recommender.recommend(
                self._user(request.user_id), target, request.k, request.exclude_item_ids,
                lambda: self._timeout(context))
        return replies.recommendation(target, answer, self.model_version)

    async def UpdateCatalogue(
        self, request: pb.UpdateCatalogueRequest, context: grpc.aio.ServicerContext
    ) -> pb.UpdateCatalogueResponse:
        rpc = "UpdateCatalogue"
        platform = self._authorise(context, request.platform)  # its own key, or the operator's
        changes = len(request.upserts) + len(request.remove_item_ids)
        if not changes:
            raise InvalidInput("nothing to change: send upserts or remove_item_ids")
        limit = self.settings.max_catalogue_changes_per_request
        if changes > limit:
            raise InvalidInput(f"{changes} catalogue changes in one request; the limit is {limit}: send "
                               f"them in calls of at most {limit} (python -m devtools.catalogue_load does)")
        follower = self.catalogues
        if follower is None or platform not in follower.live:
            raise Unavailable(f"the {platform} catalogue is still loading; retry shortly")
        upserts = [(u.item_id, u.title, dict(u.attributes)) for u in request.upserts]
        with self.metrics.stage("total", rpc, platform):
            await follower.sync(platform)  # what other gateways listed: removable here at once
            problems = check_changes(upserts, request.remove_item_ids, follower.live[platform],
                                     self.settings.max_text_chars)
            good = [u for i, u in enumerate(upserts) if i not in problems]
            gone = [r for j, r in enumerate(request.remove_item_ids, start=len(upserts)) if j not in problems]
            vectors = (unit_rows(await self._embed([title for _, title, _ in good], rpc, platform,
                                                   self._timeout(context)))
                       if good else np.zeros((0, self.migration.dim), np.float32))
            rows = [(item_id, title, attrs, vec) for (item_id, title, attrs), vec in zip(good, vectors)]
            version = (await follower.update(platform, rows, gone) if rows or gone
                       else follower.live[platform].version)
        ids = [*(u.item_id for u in request.upserts), *request.remove_item_ids]
        return replies.catalogue_updated(ids, problems, version, len(follower.live[platform]),
                                         self.model_version)

    async def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        caller = self._authorise(context)  # only the data's holder, or the operator (consent.py)
        scope = await self.book.set_consent(self._user(request.user_id), caller, request.source_platform,
                                            request.target_platforms, request.migrate)
        return pb.SetConsentResponse(migrate=request.migrate, source_platform=scope.source,
                                     target_platforms=scope.targets)

    async def EncodeInterest(
        self, request: pb.EncodeInterestRequest, context: grpc.aio.ServicerContext
    ) -> pb.EncodeInterestResponse:
        rpc = "EncodeInterest"
        platform = self._authorise(context, request.platform)
        self._batch(request.events)
        with self.metrics.stage("total", rpc, platform):
            events, bad = self._adapt(rpc, platform, request.events, require_user=False)
            if bad:
                first = min(bad)
                raise InvalidInput(f"event {first}: {bad[first]}")
            vectors = await self._embed([e.text for e in events], rpc, platform, self._timeout(context))
            mean = vectors.sum(axis=0)
            mean /= max(float(np.linalg.norm(mean)), 1e-12)
        return pb.EncodeInterestResponse(embedding=mean.tolist(), dim=int(mean.shape[0]),
                                         events_used=len(events), model_version=self.model_version)

    async def GetProfile(
        self, request: pb.GetProfileRequest, context: grpc.aio.ServicerContext
    ) -> pb.GetProfileResponse:
        caller = self._authorise(context)
        user_key = self._user(request.user_id)
        profiles = await self.book.read(  # a platform sees only its own part of the profile
            user_key, "GetProfile", lambda: self._timeout(context),
            only=None if caller == ANY_PLATFORM else caller)
        if not profiles:
            raise NotFound("no interest profile for this user")
        rules = await self.book.consent_rules(user_key)
        return pb.GetProfileResponse(
            migrate_consent=shares_somewhere(caller, rules, self.adapters),
            consents=replies.consent_rules(visible_rules(caller, rules)),
            platforms=[pb.PlatformProfile(
                platform=p.platform, event_count=p.events, item_count=len(p.items),
                updated_at_ms=p.updated_ms,
                interests=map(replies.category, self.recommender.interests(p.vector)))
                for p in sorted(profiles.values(), key=lambda p: p.platform)],
            dim=int(next(iter(profiles.values())).vec_sum.shape[0]),
        )

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        caller = self._authorise(context)  # a platform key erases its own rows, the operator all
        removed = await self.book.delete(self._user(request.user_id), caller, request.all_platforms)
        log.info("deleted %d platform profile(s) of one user for %r", len(removed), caller)
        return pb.DeleteUserResponse(platforms_removed=len(removed), removed_platforms=removed)

    async def ListAudit(
        self, request: pb.ListAuditRequest, context: grpc.aio.ServicerContext
    ) -> pb.ListAuditResponse:
        caller = self._authorise(context)  # the operator only (checked in ProfileBook.audit)
        user_key = self._user(request.user_id) if request.user_id else None
        return replies.audit(await self.book.audit(caller, user_key, request.since_ms, request.limit))


__all__ = ["InterestError", "InterestGatewayService"]
