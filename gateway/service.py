"""The InterestGateway servicer: validation, then the core steps, each timed as a stage.

1 adapt + pseudonymise + scrub (preprocess), 2-3 tokenize + infer (via TritonEncoder),
4 profile update, 5 migrate, 6 rank. Errors are domain exceptions; the interceptor maps them.
"""

from __future__ import annotations

import logging
from collections import defaultdict

import grpc
import numpy as np

from gateway.adapters import AdapterContext, PlatformAdapter, adapter_for
from gateway.auth import ANY_PLATFORM, Authorizer
from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import Settings
from interest_core.errors import InterestError, InvalidInput, NotFound, Unavailable
from interest_core.migration import MigrationMap
from interest_core.privacy import Pseudonymiser
from interest_core.profiles import Profile, ProfileStore
from interest_core.ranking import CatalogueIndex
from interest_core.schemas import UnifiedEvent

log = logging.getLogger("interest.gateway")


class InterestGatewayService(pb_grpc.InterestGatewayServicer):
    def __init__(
        self, settings: Settings, store: ProfileStore, encoder: TritonEncoder,
        metrics: GatewayMetrics, migration: MigrationMap, titles: dict[str, dict[str, str]],
        popularity: dict[str, np.ndarray] | None = None,
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
                users = self._apply(platform, good, vectors)
        accepted = len(good)
        self.metrics.events.labels(platform=platform, outcome="accepted").inc(accepted)
        self.metrics.events.labels(platform=platform, outcome="rejected").inc(len(results) - accepted)
        return pb.IngestEventsResponse(
            accepted=accepted, rejected=len(results) - accepted, users_updated=len(users),
            results=results, model_version=self.model_version,
        )

    def _apply(self, platform: str, events: list[UnifiedEvent], vectors: np.ndarray) -> set[str]:
        """Fold event embeddings into each user's profile; one transaction for the batch."""
        by_user: dict[str, list[int]] = defaultdict(list)
        for i, event in enumerate(events):
            by_user[event.user_key].append(i)
        updated: list[tuple[str, Profile]] = []
        for user_key, rows in by_user.items():
            profile = self.store.load(user_key).get(platform) or Profile(
                platform=platform, vec_sum=np.zeros(vectors.shape[1], dtype=np.float32), events=0)
            for i in sorted(rows, key=lambda r: events[r].order):
                profile.add(vectors[i], events[i].item_id)
            updated.append((user_key, profile))
        self.store.save_many(updated)
        return set(by_user)

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
            with self.metrics.stage("preprocess", rpc, target):
                user_key = self._user(request.user_id)
                profiles = self.store.load(user_key)
            if not profiles:
                raise NotFound("no interest profile for this user: ingest their events first")
            index = self.indexes.get(target)
            if index is None:
                raise Unavailable(f"the {target} catalogue is still loading; retry shortly")
            consent = self.store.consent(user_key)
            used = profiles if consent else {p: v for p, v in profiles.items() if p == target}
            owned = profiles[target].items if target in profiles else []
            exclude = [*owned, *request.exclude_item_ids]
            if used:
                with self.metrics.stage("migrate", rpc, target):
                    query = self.migration.migrate(
                        {p: (prof.vector, prof.events) for p, prof in used.items()}, target)
                with self.metrics.stage("rank", rpc, target):
                    ranked = index.top_k(query, request.k, exclude)
                sources = sorted(p for p in used if p != target)
                explanation = (f"interests migrated from {', '.join(sources)}" if sources
                               else f"from this user's {target} activity")
                if not consent and len(profiles) > len(used):
                    explanation += "; cross-platform migration is off (no consent)"
            else:
                with self.metrics.stage("rank", rpc, target):
                    ranked = index.top_k(None, request.k, exclude, scores=self.popularity.get(target))
                sources = []
                explanation = (f"not personalised: cross-platform migration is off for this user "
                               f"(no consent) and there is no {target} activity; most popular items")
        return pb.RecommendResponse(
            target_platform=target,
            items=[pb.RecommendedItem(item_id=r.item_id, title=r.title, score=r.score, rank=n + 1)
                   for n, r in enumerate(ranked)],
            source_platforms=sources, model_version=self.model_version,
            personalised=bool(used), explanation=explanation,
        )

    async def SetConsent(
        self, request: pb.SetConsentRequest, context: grpc.aio.ServicerContext
    ) -> pb.SetConsentResponse:
        self.auth.caller(context)
        self.store.set_consent(self._user(request.user_id), request.migrate)
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
        profiles = self.store.load(user_key)
        if caller != ANY_PLATFORM:  # a platform sees only its own part of the profile
            profiles = {p: prof for p, prof in profiles.items() if p == caller}
        if not profiles:
            raise NotFound("no interest profile for this user")
        return pb.GetProfileResponse(
            migrate_consent=self.store.consent(user_key),
            platforms=[pb.PlatformProfile(platform=p.platform, event_count=p.events,
                                          item_count=len(p.items), updated_at_ms=p.updated_ms)
                       for p in sorted(profiles.values(), key=lambda p: p.platform)],
            dim=int(next(iter(profiles.values())).vec_sum.shape[0]),
        )

    async def DeleteUser(
        self, request: pb.DeleteUserRequest, context: grpc.aio.ServicerContext
    ) -> pb.DeleteUserResponse:
        self.auth.caller(context)  # any authenticated platform may erase a user entirely
        removed = self.store.delete(self._user(request.user_id))
        log.info("deleted %d platform profile(s) of one user", removed)
        return pb.DeleteUserResponse(platforms_removed=removed)


__all__ = ["InterestError", "InterestGatewayService"]
