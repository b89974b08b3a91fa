"""Every Prometheus metric of the gateway, on an injectable registry (tests use a fresh one).

RPC metrics follow go-grpc-prometheus naming; per-stage histograms are what the Grafana
p50/p95/p99 panels read (Triton itself exports latency only as counters).
"""

from __future__ import annotations

import gc
import time
from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

STAGES = ("preprocess", "tokenize", "infer", "migrate", "rank", "store", "total")

# Sub-millisecond stages (preprocess, migrate, rank over ~30k items, store: a commit's fsync) up to
# BERT calls (10-500 ms).
_FAST = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0)
_SLOW = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_BUCKETS = {"preprocess": _FAST, "tokenize": _FAST, "migrate": _FAST, "rank": _FAST,
            "store": _FAST, "infer": _SLOW, "total": _SLOW}


class GatewayMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        labels = ("grpc_type", "grpc_service", "grpc_method")
        self.started = Counter("grpc_server_started_total", "RPCs started on the server.",
                               labels, registry=self.registry)
        self.handled = Counter("grpc_server_handled_total", "RPCs completed, by status code.",
                               (*labels, "grpc_code"), registry=self.registry)
        self.handling = Histogram("grpc_server_handling_seconds",
                                  "Response latency of RPCs handled by the server.", labels,
                                  buckets=_SLOW, registry=self.registry)
        self.stages = {
            stage: Histogram(f"interest_{stage}_seconds", f"Time spent in the {stage} stage.",
                             ("rpc", "platform"), buckets=_BUCKETS[stage], registry=self.registry)
            for stage in STAGES
        }
        self.events = Counter("interest_events_total", "Ingested events by outcome.",
                              ("platform", "outcome"), registry=self.registry)
        self.item_cache = Counter("interest_item_cache_requests_total",
                                  "Item-embedding cache lookups (hit skips BERT).", ("result",),
                                  registry=self.registry)
        self.triton_ready = Gauge("interest_triton_ready", "1 when Triton answers ready.",
                                  registry=self.registry)
        self.store_up = Gauge("interest_profile_store_up",
                              "1 when the profile store answers (SELECT 1 each second).",
                              registry=self.registry)
        self.store_pool_connections = Gauge(
            "interest_profile_store_pool_connections",
            "The PostgreSQL connection pool's connections: 'open' (in the pool) and 'idle' (free "
            "for the next call).", ("state",), registry=self.registry)
        self.store_pool_waiting = Gauge(
            "interest_profile_store_pool_waiting",
            "Store calls waiting now for a free PostgreSQL connection (profile_store_pool_size "
            "too small, or the database slow).", registry=self.registry)
        self.store_pool_wait = Counter(
            "interest_profile_store_pool_wait_seconds",
            "Time store calls have waited for a free PostgreSQL connection, in all.",
            registry=self.registry)
        self.store_pool_requests = Counter(
            "interest_profile_store_pool_requests",
            "Connections asked of the PostgreSQL pool, in all.", registry=self.registry)
        self._pool_seen: dict[str, float] = {}
        self.in_flight = Gauge("interest_requests_in_flight",
                               "Calls of the gateway's service being handled now.", registry=self.registry)
        self.in_flight_limit = Gauge(
            "interest_requests_in_flight_limit",
            "max_in_flight: past it, new calls are refused at once with RESOURCE_EXHAUSTED.",
            registry=self.registry)
        self.caller_in_flight = Gauge(
            "interest_caller_requests_in_flight",
            "Calls being handled now by caller: the platform of the API key, '*' for operator keys, "
            "'unauthenticated' for a missing or unknown key, 'shared' when auth is off.",
            ("platform",), registry=self.registry)
        self.caller_in_flight_limit = Gauge(
            "interest_caller_requests_in_flight_limit",
            "The caller's share (platforms.<name>.max_in_flight, operator_max_in_flight): past it "
            "only that caller is refused with RESOURCE_EXHAUSTED.", ("platform",), registry=self.registry)
        self.refused = Counter(
            "interest_requests_refused_total",
            "Calls refused with RESOURCE_EXHAUSTED before any work, by caller and by the limit that "
            "refused them: 'platform' (the caller's share), 'rate' (its max_rps) or 'gateway' "
            "(max_in_flight).",
            ("platform", "limit"), registry=self.registry)
        self.api_keys = Gauge("interest_api_keys", "API keys served now, by platform ('*': operator).",
                              ("platform",), registry=self.registry)
        self.api_key_reloads = Counter(
            "interest_api_key_reloads_total",
            "Key set (re)loads: 'loaded', or 'rejected' (a bad keys file; the old keys stay served).",
            ("outcome",), registry=self.registry)
        for outcome in ("loaded", "rejected"):  # zero series from the start: the alert reads increase()
            self.api_key_reloads.labels(outcome=outcome)
        self.rank_batch = Histogram("interest_rank_batch_size",
                                    "Recommend queries scored together per catalogue pass.",
                                    ("platform",), buckets=(1, 2, 3, 4, 6, 8, 12, 16, 32, 64),
                                    registry=self.registry)
        self.rank_path = Counter("interest_rank_path_total",
                                 "Personalised Recommend rankings by how they were computed: bounded "
                                 "(exact from the largest-blend items), full (whole catalogue) or ann "
                                 "(candidates from a large catalogue's nearest-neighbour index).",
                                 ("platform", "path"), registry=self.registry)
        self.profiles_reembedded = Counter(
            "interest_profiles_reembedded_total",
            "Stored profiles of an older model re-embedded for the served one: rebuilt from their "
            "items' titles, or emptied (no catalogue item to rebuild from).",
            ("platform", "outcome"), registry=self.registry)
        self.catalogue_items = Gauge("interest_catalogue_items", "Items Recommend can rank now (removed "
                                     "ones not counted).", ("platform",), registry=self.registry)
        self.catalogue_unindexed = Gauge(
            "interest_catalogue_unindexed_items",
            "Items added or retitled since `make engine` built the platform's nearest-neighbour index: "
            "in the gateway's own index of them, or scored beside the indexes on every call until there "
            "are ann_added_index_min to index, until the next `make engine` folds them in (0 for a "
            "catalogue scored whole).", ("platform",), registry=self.registry)
        self.catalogue_added_index_build = Histogram(
            "interest_catalogue_added_index_build_seconds",
            "Builds of a gateway's index of the items added or retitled since `make engine` built the "
            "platform's nearest-neighbour index (in the background, at the lowest CPU priority): how "
            "long each took, how often they ran.", ("platform",),
            buckets=(0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600), registry=self.registry)
        self.catalogue_version = Gauge(
            "interest_catalogue_version",
            "The platform's catalogue-log version this gateway serves (0: as installed); gateways "
            "of one fleet agree within catalogue_poll_s.", ("platform",), registry=self.registry)
        self.catalogue_changes = Counter(
            "interest_catalogue_changes_total",
            "Catalogue items changed through UpdateCatalogue on this gateway: upsert (new or "
            "retitled) or remove.", ("platform", "change"), registry=self.registry)
        self.gc_pause = Histogram(
            "interest_gc_pause_seconds",
            "Python garbage-collector pauses by generation: every thread of the gateway stops for "
            "them, so a generation-2 pause shows up whole in the tail latency of calls in flight.",
            ("generation",), buckets=_FAST, registry=self.registry)
        self._gc_started = 0.0
        self._key_platforms: set[str] = set()

    def keys_loaded(self, outcome: str, keys: dict[str, str]) -> None:
        """Record a key set (re)load and the keys now served, per platform."""
        self.api_key_reloads.labels(outcome=outcome).inc()
        self._key_platforms.update(keys.values())
        for platform in self._key_platforms:  # a platform whose last key went shows 0
            self.api_keys.labels(platform=platform).set(sum(p == platform for p in keys.values()))

    def store_seen(self, up: bool, pool: dict[str, float]) -> None:
        """Record a health check of the profile store and its pool's figures
        (ProfileStore.pool_stats: cumulative counts become counter increments)."""
        self.store_up.set(1 if up else 0)
        if not pool:
            return
        self.store_pool_connections.labels(state="open").set(pool["pool_size"])
        self.store_pool_connections.labels(state="idle").set(pool["pool_available"])
        self.store_pool_waiting.set(pool["requests_waiting"])
        for key, counter, scale in (("requests_wait_ms", self.store_pool_wait, 1e-3),
                                    ("requests_num", self.store_pool_requests, 1.0)):
            grown = pool[key] - self._pool_seen.get(key, 0.0)
            if grown > 0:
                counter.inc(grown * scale)
            self._pool_seen[key] = pool[key]

    def watch_gc(self) -> None:
        """Record every collection's pause in `gc_pause` (one process-wide callback)."""
        gc.callbacks.append(self._on_gc)

    def unwatch_gc(self) -> None:
        gc.callbacks.remove(self._on_gc)

    def _on_gc(self, phase: str, info: dict[str, int]) -> None:
        if phase == "start":
            self._gc_started = time.perf_counter()
        else:
            self.gc_pause.labels(generation=str(info["generation"])).observe(
                time.perf_counter() - self._gc_started)

    @contextmanager
    def stage(self, stage: str, rpc: str, platform: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.stages[stage].labels(rpc=rpc, platform=platform).observe(time.perf_counter() - start)
