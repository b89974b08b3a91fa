"""Adapters, the error table and metrics, without Triton."""

from __future__ import annotations

import asyncio
import gc
import re
from typing import Any

import grpc
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry
from tritonclient.utils import InferenceServerException

from gateway.adapters import AdapterContext, adapter_for
from gateway.errors import ErrorAndMetricsInterceptor, from_triton, status_of
from gateway.metrics import STAGES, GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from interest_core import errors
from interest_core.privacy import Pseudonymiser

CTX = AdapterContext("food", ("review", "purchase"), 100, {"B000TEA": "Green Tea &amp; Mint"},
                     Pseudonymiser("k"))


def adapt(**kw: object) -> object:
    return adapter_for("amazon_review")(CTX).adapt(pb.BehaviorEvent(**kw))  # type: ignore[arg-type]


def test_adapter_resolves_catalogue_title_and_pseudonymises() -> None:
    event = adapt(user_id="alice", item_id="B000TEA", event_type="Review", position=4)
    assert event.text == "Green Tea & Mint" and event.event_type == "review"  # type: ignore[attr-defined]
    assert event.user_key == Pseudonymiser("k")("alice") and event.order == 4  # type: ignore[attr-defined]


def test_adapter_scrubs_pii_from_text() -> None:
    event = adapt(user_id="a", item_text="Tea for bob@mail.com", event_type="review")
    assert event.text == "Tea for [email]"  # type: ignore[attr-defined]


@pytest.mark.parametrize(("kw", "fragment"), [
    ({"user_id": "", "item_text": "t", "event_type": "review"}, "user_id is empty"),
    ({"user_id": "u" * 200, "item_text": "t", "event_type": "review"}, "user_id longer"),
    ({"user_id": "a", "item_text": "t", "event_type": "like"}, "event_type 'like' is not one of"),
    ({"user_id": "a", "event_type": "review"}, "neither item_id nor item_text"),
    ({"user_id": "a", "item_id": "B0NOPE", "event_type": "review"}, "not in the food catalogue"),
    ({"user_id": "a", "item_id": "../etc", "item_text": "t", "event_type": "review"}, "not a product id"),
    ({"user_id": "a", "item_text": "x" * 101, "event_type": "review"}, "longer than 100"),
    ({"user_id": "a", "item_text": "t", "event_type": "review", "timestamp_ms": -1}, "negative"),
    ({"user_id": "a", "item_text": " &nbsp; ", "event_type": "review"}, "neither item_id nor item_text"),
])
def test_adapter_rejects_malformed_events(kw: dict[str, object], fragment: str) -> None:
    with pytest.raises(errors.InvalidInput, match=fragment):
        adapt(**kw)


@pytest.mark.parametrize(("adapter", "platform", "types", "item", "bad_item", "kind"), [
    ("social_post", "social", ("like", "comment", "share"), "p001", "p/001", "post"),
    ("video_watch", "video", ("watch",), "-dQw4w9WgXc", "v 001", "video"),
])
def test_social_and_video_adapters(adapter: str, platform: str, types: tuple[str, ...], item: str,
                                   bad_item: str, kind: str) -> None:
    """Their ids and the event types of their config entry; the shared checks of base.py."""
    ctx = AdapterContext(platform, types, 100, {item: "Roast &amp; potatoes"}, Pseudonymiser("k"))
    adapt_to = adapter_for(adapter)(ctx).adapt
    event = adapt_to(pb.BehaviorEvent(user_id="u1", item_id=item, event_type=types[-1]))
    assert (event.platform, event.text, event.event_type) == (platform, "Roast & potatoes", types[-1])
    bad = {"review": f"event_type 'review' is not one of {', '.join(types)} for platform '{platform}'",
           "id": f"item_id '{bad_item}' is not a {kind} id"}
    for what, fragment in bad.items():
        wrong = pb.BehaviorEvent(user_id="u1", item_id=bad_item if what == "id" else item,
                                 event_type="review" if what == "review" else types[0])
        with pytest.raises(errors.InvalidInput, match=re.escape(fragment)):
            adapt_to(wrong)


def test_unknown_adapter_name_is_clear() -> None:
    with pytest.raises(ValueError, match="no adapter named 'tiktok'"):
        adapter_for("tiktok")


@pytest.mark.parametrize(("exc", "code"), [
    (errors.InvalidInput("x"), grpc.StatusCode.INVALID_ARGUMENT),
    (errors.NotFound("x"), grpc.StatusCode.NOT_FOUND),
    (errors.Unavailable("x"), grpc.StatusCode.UNAVAILABLE),
    (errors.Overloaded("x"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (errors.DeadlineExceeded("x"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (errors.Unauthenticated("x"), grpc.StatusCode.UNAUTHENTICATED),
    (errors.PermissionDenied("x"), grpc.StatusCode.PERMISSION_DENIED),
    (errors.InterestError("x"), grpc.StatusCode.INTERNAL),
])
def test_status_table(exc: errors.InterestError, code: grpc.StatusCode) -> None:
    assert status_of(exc) == code


@pytest.mark.parametrize(("status", "cls"), [
    ("StatusCode.UNAVAILABLE", errors.Unavailable),
    ("StatusCode.DEADLINE_EXCEEDED", errors.DeadlineExceeded),
    ("StatusCode.INVALID_ARGUMENT", errors.InvalidInput),
    ("StatusCode.RESOURCE_EXHAUSTED", errors.Overloaded),
    (None, errors.Unavailable),  # connection refused has no status
])
def test_triton_errors_translate(status: str | None, cls: type) -> None:
    exc = InferenceServerException("failed to connect to all addresses", status=status)
    assert type(from_triton(exc)) is cls


def test_stage_metrics_on_a_fresh_registry() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    with metrics.stage("rank", "Recommend", "kitchen"):
        pass
    value = metrics.registry.get_sample_value(
        "interest_rank_seconds_count", {"rpc": "Recommend", "platform": "kitchen"})
    assert value == 1.0
    assert set(metrics.stages) == set(STAGES)


def test_embedding_cache_is_lru_and_can_be_off() -> None:
    import numpy as np

    from gateway.encoder import EmbeddingCache

    cache = EmbeddingCache(capacity=2)
    one, two, three = (np.full(2, v, dtype=np.float32) for v in (1, 2, 3))
    cache.put("a", one)
    cache.put("b", two)
    assert cache.get("a") is one  # "a" is now the most recent
    cache.put("c", three)
    assert cache.get("b") is None and cache.get("a") is one and len(cache) == 2
    off = EmbeddingCache(capacity=0)
    off.put("a", one)
    assert off.get("a") is None and len(off) == 0


@settings(max_examples=400, deadline=None)
@given(st.builds(
    pb.BehaviorEvent,
    user_id=st.text(max_size=140), item_id=st.text(max_size=140), item_text=st.text(max_size=150),
    event_type=st.sampled_from(["review", "purchase", "view", "Review", "", "like"]) | st.text(max_size=10),
    timestamp_ms=st.integers(-(2**63), 2**63 - 1), position=st.integers(-(2**63), 2**63 - 1),
))
def test_fuzzed_events_are_adapted_or_rejected_clearly(event: pb.BehaviorEvent) -> None:
    """Any event either becomes a valid UnifiedEvent or raises InvalidInput: nothing else."""
    adapter = adapter_for("amazon_review")(CTX)
    try:
        unified = adapter.adapt(event)
    except errors.InvalidInput as exc:
        assert str(exc)
        return
    assert unified.text and unified.user_key and unified.event_type in CTX.event_types


def test_gc_pauses_are_recorded_by_generation() -> None:
    metrics = GatewayMetrics(CollectorRegistry())
    metrics.watch_gc()
    try:
        gc.collect()  # a full collection: generation 2
    finally:
        metrics.unwatch_gc()
    count = metrics.registry.get_sample_value("interest_gc_pause_seconds_count", {"generation": "2"})
    total = metrics.registry.get_sample_value("interest_gc_pause_seconds_sum", {"generation": "2"})
    assert count is not None and count >= 1
    assert total is not None and total > 0.0


def test_settle_heap_freezes_what_start_up_built() -> None:
    from gateway.server import settle_heap

    kept = [{"item": i} for i in range(1000)]  # start-up state that lives on
    assert any(o is kept for o in gc.get_objects()), "tracked: a collection would walk it"
    try:
        assert settle_heap() >= len(kept)
        assert gc.get_freeze_count() >= len(kept)
        assert not any(o is kept for o in gc.get_objects()), "frozen: no collection walks it now"
    finally:
        gc.unfreeze()


class _Details:
    method = "/interest.v1.InterestGateway/EncodeInterest"


class _Ending:
    """A servicer context whose deadline has `remaining` seconds left (None: no deadline)."""

    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining


@pytest.mark.parametrize(("remaining", "code"), [(-0.002, "DEADLINE_EXCEEDED"), (0.0, "DEADLINE_EXCEEDED"),
                                                 (4.0, "CANCELLED"), (None, "CANCELLED")])
def test_a_call_grpc_cancels_is_counted_under_its_real_code(remaining: float | None, code: str) -> None:
    """gRPC cancels the handler when the client's deadline passes or the client goes away: such a
    call must not count as OK in grpc_server_handled_total (the dashboard's error panels and
    the server-error alerts read it); the cancellation itself still goes up."""
    metrics = GatewayMetrics(CollectorRegistry())
    interceptor = ErrorAndMetricsInterceptor(metrics)

    async def handler(request: object, context: object) -> None:
        raise asyncio.CancelledError

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    async def call() -> None:
        details: Any = _Details()
        wrapped: Any = (await interceptor.intercept_service(continuation, details)).unary_unary
        context: Any = _Ending(remaining)
        await wrapped(object(), context)

    with pytest.raises(asyncio.CancelledError):
        asyncio.run(call())
    labels = {"grpc_type": "unary", "grpc_service": "interest.v1.InterestGateway",
              "grpc_method": "EncodeInterest"}

    def count(grpc_code: str) -> float | None:
        return metrics.registry.get_sample_value("grpc_server_handled_total",
                                                 {**labels, "grpc_code": grpc_code})

    assert count(code) == 1.0 and count("OK") is None
    assert interceptor.in_flight == 0


def test_in_flight_gauge_counts_the_calls_being_handled() -> None:
    """interest_requests_in_flight is 1 while a call runs and 0 after, also after a failure;
    the limit gauge shows max_in_flight (the dashboard draws the two together)."""
    metrics = GatewayMetrics(CollectorRegistry())
    interceptor = ErrorAndMetricsInterceptor(metrics, max_in_flight=7)
    seen: list[float | None] = []

    async def handler(request: object, context: object) -> None:
        seen.append(metrics.registry.get_sample_value("interest_requests_in_flight"))
        if request == "fail":
            raise errors.NotFound("no such user")

    class Aborting(_Ending):
        async def abort(self, code: grpc.StatusCode, details: str) -> None:
            raise grpc.aio.AbortError(details)

        def code(self) -> grpc.StatusCode:
            return grpc.StatusCode.NOT_FOUND

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    async def call(request: str) -> None:
        details: Any = _Details()
        wrapped: Any = (await interceptor.intercept_service(continuation, details)).unary_unary
        context: Any = Aborting(None)
        await wrapped(request, context)

    asyncio.run(call("ok"))
    with pytest.raises(grpc.aio.AbortError):
        asyncio.run(call("fail"))
    assert seen == [1.0, 1.0]
    assert metrics.registry.get_sample_value("interest_requests_in_flight") == 0.0
    assert metrics.registry.get_sample_value("interest_requests_in_flight_limit") == 7.0
