"""Every error kind answers with its gRPC status and a message that says what was wrong,
and the server stays up."""

from __future__ import annotations

import asyncio
import uuid

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.readiness import wait_serving
from devtools.triton_launcher import free_port, start_triton
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import create_server
from tests.integration.conftest import Stack, metric_total, scrape_metrics, unseen_events

pytestmark = pytest.mark.integration

TEA = pb.BehaviorEvent(user_id="it-errors", item_text="green tea", event_type="review")


async def expect(call: object, code: grpc.StatusCode, fragment: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await call  # type: ignore[misc]
    assert err.value.code() == code, err.value.details()
    assert fragment in (err.value.details() or ""), err.value.details()


async def test_bad_requests_get_clear_statuses(stack: Stack) -> None:
    s = stack.stub
    await s.IngestEvents(pb.IngestEventsRequest(platform="food", events=[TEA]), timeout=30)
    cases = [
        (s.EncodeInterest(pb.EncodeInterestRequest(platform="food"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "events is empty"),
        (s.IngestEvents(pb.IngestEventsRequest(platform="food"), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "events is empty"),
        (s.EncodeInterest(pb.EncodeInterestRequest(platform="video", events=[TEA]), timeout=5),
         grpc.StatusCode.NOT_FOUND, "unknown platform 'video'"),
        (s.IngestEvents(pb.IngestEventsRequest(platform="", events=[TEA]), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "platform is empty"),
        (s.Recommend(pb.RecommendRequest(user_id="it-errors", target_platform="books", k=5), timeout=5),
         grpc.StatusCode.NOT_FOUND, "unknown platform 'books'"),
        (s.Recommend(pb.RecommendRequest(user_id="nobody-ever", target_platform="kitchen", k=5), timeout=5),
         grpc.StatusCode.NOT_FOUND, "no interest profile"),
        (s.Recommend(pb.RecommendRequest(user_id="it-errors", target_platform="kitchen", k=0), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "k=0 is out of range 1..200"),
        (s.Recommend(pb.RecommendRequest(user_id="it-errors", target_platform="kitchen", k=10_000),
                     timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "out of range"),
        (s.Recommend(pb.RecommendRequest(user_id="", target_platform="kitchen", k=5), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "user_id is empty"),
        (s.IngestEvents(pb.IngestEventsRequest(platform="food", events=[TEA] * 513), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "513 events in one request; the limit is 512"),
        (s.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[
            pb.BehaviorEvent(item_text="x" * 5000, event_type="view")]), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "event 0: item_text longer than 1000"),
        (s.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[
            pb.BehaviorEvent(item_text="tea", event_type="")]), timeout=5),
         grpc.StatusCode.INVALID_ARGUMENT, "event_type '' is not one of"),
        (s.GetProfile(pb.GetProfileRequest(user_id="nobody-ever"), timeout=5),
         grpc.StatusCode.NOT_FOUND, "no interest profile"),
    ]
    for call, code, fragment in cases:
        await expect(call, code, fragment)
    reply = await stack.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING, "still serving after bad input"


def handled(stack: Stack, method: str, code: str) -> float:
    """grpc_server_handled_total of one method and code, read from the gateway's /metrics."""
    return metric_total(scrape_metrics(stack.metrics_port), "grpc_server_handled_total",
                        grpc_method=method, grpc_code=code)


async def test_short_deadline_answers_deadline_exceeded(stack: Stack) -> None:
    """A deadline far too short for 500 long unseen texts (seconds of BERT on any CPU this runs
    on, against 0.3 s): the client sees DEADLINE_EXCEEDED, and so does the gateway's own count
    (whether the Triton call ran out of the propagated deadline or gRPC cancelled the handler):
    such a call is never counted as OK. The server stays up. (That the deadline reaches the
    Triton call is asserted in tests/unit/test_service.py.)"""
    events = unseen_events(f"deadline {uuid.uuid4().hex[:8]}", 500, long=True)
    before = handled(stack, "EncodeInterest", "DEADLINE_EXCEEDED")
    await expect(stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="kitchen", events=events),
                                           timeout=0.3),
                 grpc.StatusCode.DEADLINE_EXCEEDED, "")
    for _ in range(100):  # the handler may finish just after the client has given up
        if handled(stack, "EncodeInterest", "DEADLINE_EXCEEDED") > before:
            break
        await asyncio.sleep(0.1)
    assert handled(stack, "EncodeInterest", "DEADLINE_EXCEEDED") == before + 1
    reply = await stack.health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_dead_triton_answers_unavailable(stack: Stack) -> None:
    """A gateway whose Triton is not there: UNAVAILABLE with a message, health NOT_SERVING."""
    gateway = create_server(stack.settings, triton_url=f"127.0.0.1:{free_port()}", port=0)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            stub = pb_grpc.InterestGatewayStub(channel)
            await expect(stub.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[TEA]),
                                             timeout=10),
                         grpc.StatusCode.UNAVAILABLE, "Triton) is unavailable")
            await expect(stub.Recommend(pb.RecommendRequest(user_id="it-errors", target_platform="kitchen",
                                                            k=5), timeout=10),
                         grpc.StatusCode.UNAVAILABLE, "catalogue is still loading")
            health = health_pb2_grpc.HealthStub(channel)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
    finally:
        await gateway.stop(grace=0.5)


async def test_triton_killed_then_restarted_recovers_by_itself(stack: Stack) -> None:
    """Kill the real Triton under load: UNAVAILABLE (never a hang or INTERNAL) and NOT_SERVING;
    restart it: SERVING and answers again, with nothing restarted on the gateway side."""
    codes: list[grpc.StatusCode] = []
    stop = asyncio.Event()

    async def load() -> None:
        n = 0
        while not stop.is_set():
            n += 1
            try:
                event = pb.BehaviorEvent(item_text=f"load during the outage {n}", event_type="view")
                await stack.stub.EncodeInterest(
                    pb.EncodeInterestRequest(platform="food", events=[event]), timeout=10)
                codes.append(grpc.StatusCode.OK)
            except grpc.aio.AioRpcError as err:
                codes.append(err.code())
            await asyncio.sleep(0.01)

    loader = asyncio.ensure_future(load())
    while grpc.StatusCode.OK not in codes:
        await asyncio.sleep(0.05)
    await asyncio.to_thread(stack.triton.kill)
    unseen = pb.BehaviorEvent(item_text="never embedded before: rooibos", event_type="view")
    await expect(stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[unseen]),
                                           timeout=10), grpc.StatusCode.UNAVAILABLE, "unavailable")
    await wait_serving(stack.health, timeout_s=30, want=health_pb2.HealthCheckResponse.NOT_SERVING)
    # Recommend needs no BERT: a stored profile is still served while Triton is down.
    rec = await stack.stub.Recommend(pb.RecommendRequest(user_id="it-errors", target_platform="kitchen", k=3),
                                     timeout=10)
    assert len(rec.items) == 3
    restarted = await asyncio.to_thread(
        start_triton, stack.settings, http_port=stack.triton.http_port, grpc_port=stack.triton.grpc_port,
        metrics_port=stack.triton.metrics_port)
    stack.triton.process = restarted.process
    await wait_serving(stack.health, timeout_s=60)
    served_before = codes.count(grpc.StatusCode.OK)
    while codes.count(grpc.StatusCode.OK) == served_before:
        await asyncio.sleep(0.05)
    stop.set()
    await loader
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.UNAVAILABLE}, set(codes)
    reply = await stack.stub.EncodeInterest(pb.EncodeInterestRequest(
        platform="food", events=[pb.BehaviorEvent(item_text="rooibos tea", event_type="view")]), timeout=30)
    assert reply.dim == 384
