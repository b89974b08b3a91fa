"""Reliability of the real gateway: load shedding, graceful SIGTERM, SIGKILL during ingest,
and fuzzed requests. Gateways here are separate processes (or instances) on the session's
real Triton, so killing them leaves the session stack alone."""

from __future__ import annotations

import asyncio
import os
import signal
import sqlite3
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from devtools.readiness import wait_serving
from devtools.triton_launcher import free_port
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import create_server
from interest_core.config import ROOT
from interest_model.corpus import load_catalogue
from tests.integration.conftest import Stack, metric_total, scrape_metrics, unseen_events

pytestmark = pytest.mark.integration


class GatewayProcess:
    """`python -m gateway.server` on free ports, sharing the session's Triton and state."""

    def __init__(self, stack: Stack, log: Path, grace_s: float = 10.0,
                 extra_env: dict[str, str] | None = None) -> None:
        self.port = free_port()
        self.metrics_port = free_port()
        env = dict(os.environ)
        env.update({
            "INTEREST_GRPC_PORT": str(self.port), "INTEREST_METRICS_PORT": str(self.metrics_port),
            "INTEREST_TRITON_GRPC_PORT": str(stack.triton.grpc_port),
            "INTEREST_VAR_DIR": str(stack.settings.var_dir), "INTEREST_SHUTDOWN_GRACE_S": str(grace_s),
            **(extra_env or {}),
        })
        self.log = log
        self.proc = subprocess.Popen([sys.executable, "-m", "gateway.server"], env=env, cwd=ROOT,
                                     stdout=log.open("wb"), stderr=subprocess.STDOUT)

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_serving(self, timeout_s: float = 120.0) -> None:
        try:
            asyncio.run(wait_serving(self.target, self.proc, "the gateway process", timeout_s))
        except RuntimeError as exc:
            raise AssertionError(f"{exc}:\n{self.log.read_text()[-2000:]}") from None

    def in_flight(self) -> float:
        """The gateway's interest_requests_in_flight gauge, from its /metrics."""
        return metric_total(scrape_metrics(self.metrics_port), "interest_requests_in_flight")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def gateway_process(stack: Stack, tmp_path: Path) -> Iterator[GatewayProcess]:
    # a long grace: the drain test's 500 long texts must finish on the slowest CI machine
    gw = GatewayProcess(stack, tmp_path / "gateway.log", grace_s=60.0)
    try:
        gw.wait_serving()
        yield gw
    finally:
        gw.stop()


@pytest.fixture
def own_store_gateway(stack: Stack, tmp_path: Path) -> Iterator[GatewayProcess]:
    """A gateway process with a profile store (and so a catalogue log) of its own: what the
    fuzzed calls write (profiles, consents, catalogue items) never reaches the session's stack."""
    own = {"INTEREST_VAR_DIR": str(tmp_path / "var")}
    gw = GatewayProcess(stack, tmp_path / "gateway.log", extra_env=own)
    try:
        gw.wait_serving()
        yield gw
    finally:
        gw.stop()


async def test_overload_is_shed_with_resource_exhausted(stack: Stack) -> None:
    settings_small = stack.settings.model_copy(update={"max_in_flight": 2})
    gateway = create_server(settings_small, triton_url=stack.triton.grpc_url, port=0)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            await wait_serving(health_pb2_grpc.HealthStub(channel), timeout_s=120)
            stub = pb_grpc.InterestGatewayStub(channel)

            async def one(i: int) -> grpc.StatusCode:
                try:
                    await stub.EncodeInterest(pb.EncodeInterestRequest(
                        platform="food", events=unseen_events(f"overload-{i}", 40)), timeout=60)
                    return grpc.StatusCode.OK
                except grpc.aio.AioRpcError as err:
                    details = err.details() or ""
                    assert err.code() != grpc.StatusCode.RESOURCE_EXHAUSTED or "overloaded" in details
                    return err.code()

            codes = await asyncio.gather(*(one(i) for i in range(12)))
            assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.RESOURCE_EXHAUSTED}, codes
            assert codes.count(grpc.StatusCode.OK) >= 2
            after = await stub.EncodeInterest(pb.EncodeInterestRequest(
                platform="food", events=unseen_events("after-overload", 1)), timeout=30)
            assert after.dim == 384, "the shed requests left nothing stuck"
    finally:
        await gateway.stop(grace=1.0)


async def burst_of_recommends(target: str, food_items: Sequence[str], n: int) -> list[grpc.StatusCode]:
    """n Recommend calls sent at once, no client deadline: only the server can end one early."""
    async with grpc.aio.insecure_channel(target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        await stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=[
            pb.BehaviorEvent(user_id="burst", item_id=item, event_type="purchase")
            for item in food_items[:5]]), timeout=30)

        async def one() -> grpc.StatusCode:
            try:
                await stub.Recommend(pb.RecommendRequest(user_id="burst", target_platform="kitchen", k=10))
                return grpc.StatusCode.OK
            except grpc.aio.AioRpcError as err:
                return err.code()

        codes = await asyncio.gather(*(one() for _ in range(n)))
        after = await stub.Recommend(pb.RecommendRequest(user_id="burst", target_platform="kitchen", k=10),
                                     timeout=10)
        assert len(after.items) == 10, "the gateway serves normally after the burst"
        return list(codes)


async def burst_on_gateway_process(stack: Stack, log: Path, max_queued_rpcs: int,
                                   food_items: Sequence[str]) -> list[grpc.StatusCode]:
    """A fresh gateway process with this queue limit takes a burst of 400 Recommends; it must
    still be up afterwards."""
    gateway = GatewayProcess(stack, log, extra_env={"INTEREST_MAX_QUEUED_RPCS": str(max_queued_rpcs)})
    try:
        await asyncio.to_thread(gateway.wait_serving)
        codes = await burst_of_recommends(gateway.target, food_items, 400)
        assert gateway.proc.poll() is None
        return codes
    finally:
        gateway.stop()


async def test_queue_limit_refuses_a_burst_the_event_loop_cannot_take(stack: Stack, tmp_path: Path) -> None:
    """A burst of Recommends saturates the gateway's event loop, which takes calls from gRPC's core
    one per turn: the backlog waits there, where `max_in_flight` never sees it. With
    max_queued_rpcs=4 the core refuses the excess (CANCELLED at once); with room for the whole
    burst (1000), all of it is served. Both gateways stay up."""
    food_items = load_catalogue(stack.settings, "food").item_ids
    codes = await burst_on_gateway_process(stack, tmp_path / "tight.log", 4, food_items)
    assert set(codes) == {grpc.StatusCode.OK, grpc.StatusCode.CANCELLED}, set(codes)
    assert codes.count(grpc.StatusCode.OK) >= 4
    codes = await burst_on_gateway_process(stack, tmp_path / "roomy.log", 1000, food_items)
    assert set(codes) == {grpc.StatusCode.OK}, "without the limit nothing is refused"


async def test_sigterm_drains_in_flight_and_refuses_new(gateway_process: GatewayProcess) -> None:
    async with grpc.aio.insecure_channel(gateway_process.target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        slow = asyncio.ensure_future(stub.EncodeInterest(pb.EncodeInterestRequest(
            platform="kitchen", events=unseen_events("drain", 500, long=True)), timeout=60))
        for _ in range(200):  # until the gateway is handling it (not merely sent)
            if await asyncio.to_thread(gateway_process.in_flight) >= 1 or slow.done():
                break
            await asyncio.sleep(0.05)
        assert not slow.done(), "the request must still be in flight when SIGTERM arrives"
        assert await asyncio.to_thread(gateway_process.in_flight) == 1
        gateway_process.proc.send_signal(signal.SIGTERM)
        reply = await slow
        assert reply.events_used == 500, "the in-flight request completed"
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.EncodeInterest(pb.EncodeInterestRequest(
                platform="kitchen", events=unseen_events("late", 1)), timeout=5)
        assert err.value.code() == grpc.StatusCode.UNAVAILABLE
    assert await asyncio.to_thread(gateway_process.proc.wait, 30) == 0


async def test_sigkill_during_ingest_keeps_every_acknowledged_event(stack: Stack, tmp_path: Path) -> None:
    food = load_catalogue(stack.settings, "food")
    first = GatewayProcess(stack, tmp_path / "first.log")
    await asyncio.to_thread(first.wait_serving)
    acked: list[str] = []
    try:
        async with grpc.aio.insecure_channel(first.target) as channel:
            stub = pb_grpc.InterestGatewayStub(channel)

            async def writer(worker: int) -> None:
                for n in range(10_000):
                    user = f"crash-{worker}-{n}"
                    events = [pb.BehaviorEvent(user_id=user, item_id=food.item_ids[(n * 3 + j) % len(food)],
                                               event_type="purchase") for j in range(3)]
                    try:
                        reply = await stub.IngestEvents(
                            pb.IngestEventsRequest(platform="food", events=events), timeout=10)
                    except grpc.aio.AioRpcError:
                        return
                    assert reply.accepted == 3
                    acked.append(user)

            writers = [asyncio.ensure_future(writer(w)) for w in range(4)]
            while len(acked) < 100:
                await asyncio.sleep(0.02)
            first.proc.send_signal(signal.SIGKILL)
            await asyncio.gather(*writers)
    finally:
        first.stop()
    db = sqlite3.connect(str(stack.settings.store_path))
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()
    second = GatewayProcess(stack, tmp_path / "second.log")
    try:
        await asyncio.to_thread(second.wait_serving)
        async with grpc.aio.insecure_channel(second.target) as channel:
            stub = pb_grpc.InterestGatewayStub(channel)
            for user in acked:
                profile = await stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=5)
                assert [(p.platform, p.event_count) for p in profile.platforms] == [("food", 3)], user
    finally:
        second.stop()


_text = st.text(max_size=60) | st.sampled_from(["", " ", "&amp;", "tea", "x" * 2000, "\x00", "🍵 matcha"])
_event = st.builds(
    pb.BehaviorEvent,
    user_id=_text, item_id=_text, item_text=_text,
    event_type=st.sampled_from(["review", "purchase", "view", "", "REVIEW", "like", "\u00e9"]) | _text,
    timestamp_ms=st.integers(-(2**63), 2**63 - 1), position=st.integers(-(2**63), 2**63 - 1),
)
_platform = st.sampled_from(["food", "kitchen", "", "video", "FOOD", "food "])
BAD = {grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN}


@settings(max_examples=int(os.environ.get("FUZZ_EXAMPLES", "150")), deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(platform=_platform, events=st.lists(_event, max_size=6),
       user=_text, k=st.integers(-10, 10_000), excludes=st.lists(_text, max_size=5),
       targets=st.lists(_platform, max_size=3), flag=st.booleans(),
       since=st.integers(-(2**63), 2**63 - 1))
def test_fuzzed_requests_never_crash_or_answer_internal(
    own_store_gateway: GatewayProcess, platform: str, events: list[pb.BehaviorEvent], user: str, k: int,
    excludes: list[str], targets: list[str], flag: bool, since: int,
) -> None:
    with grpc.insecure_channel(own_store_gateway.target) as channel:
        stub = pb_grpc.InterestGatewayStub(channel)
        calls = [
            lambda: stub.IngestEvents(pb.IngestEventsRequest(platform=platform, events=events), timeout=30),
            lambda: stub.EncodeInterest(pb.EncodeInterestRequest(platform=platform, events=events),
                                        timeout=30),
            lambda: stub.Recommend(pb.RecommendRequest(user_id=user, target_platform=platform, k=k,
                                                       exclude_item_ids=excludes), timeout=30),
            lambda: stub.GetProfile(pb.GetProfileRequest(user_id=user), timeout=30),
            lambda: stub.SetConsent(pb.SetConsentRequest(user_id=user, migrate=flag, source_platform=platform,
                                                         target_platforms=targets), timeout=30),
            lambda: stub.ListAudit(pb.ListAuditRequest(user_id=user, limit=k, since_ms=since), timeout=30),
            lambda: stub.DeleteUser(pb.DeleteUserRequest(user_id=user, all_platforms=flag), timeout=30),
            lambda: stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
                platform=platform, upserts=[pb.CatalogueItem(item_id=x, title=user, attributes={x: user})
                                            for x in excludes], remove_item_ids=targets), timeout=30),
        ]
        for call in calls:
            try:
                reply = call()
            except grpc.RpcError as err:
                assert err.code() not in BAD, f"{err.code()}: {err.details()}"
                continue
            if isinstance(reply, pb.IngestEventsResponse):
                assert reply.accepted + reply.rejected == len(events)
                assert all(r.accepted or r.error for r in reply.results)
            if isinstance(reply, pb.UpdateCatalogueResponse):
                assert reply.applied + reply.rejected == len(excludes) + len(targets) == len(reply.results)
                assert all(r.applied or (r.error and r.error_code) for r in reply.results)
    assert own_store_gateway.proc.poll() is None, "the gateway is still up"
