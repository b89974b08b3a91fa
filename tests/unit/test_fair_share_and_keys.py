"""Fair share between callers in the interceptor, and API keys rotated from a file, without gRPC
or Triton (fresh registries)."""

from __future__ import annotations

import asyncio
import json
import logging
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import grpc
import pytest
from prometheus_client import CollectorRegistry

from gateway.auth import API_KEY_HEADER, Authorizer, KeyFileError, KeySource, key_digest, read_keys_file
from gateway.errors import ErrorAndMetricsInterceptor
from gateway.metrics import GatewayMetrics
from interest_core.config import PlatformConfig, load_settings

KEYS = {"food": "food-key", "kitchen": "kitchen-key", "*": "operator-key"}
DIGESTS = {key_digest(k): p for p, k in KEYS.items()}
PLATFORMS = ("food", "kitchen")


class _Context:
    """A servicer context carrying an API key; abort raises as gRPC's does."""

    def __init__(self, key: str | None) -> None:
        self.key = key
        self.aborted: tuple[grpc.StatusCode, str] | None = None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return () if self.key is None else ((API_KEY_HEADER, self.key),)

    def time_remaining(self) -> float | None:
        return None

    async def abort(self, code: grpc.StatusCode, details: str) -> None:
        self.aborted = (code, details)
        raise grpc.aio.AbortError(details)

    def code(self) -> grpc.StatusCode | None:
        return self.aborted[0] if self.aborted else None


class _Details:
    method = "/interest.v1.InterestGateway/Recommend"


def _interceptor(auth: Authorizer | None, max_in_flight: int = 16, food: int | None = 2,
                 pushback_s: float = 0.0) -> tuple[ErrorAndMetricsInterceptor, GatewayMetrics, asyncio.Event]:
    settings = load_settings(max_in_flight=max_in_flight, platforms={
        "food": PlatformConfig(adapter="amazon_review", dataset="d", max_in_flight=food),
        "kitchen": PlatformConfig(adapter="amazon_review", dataset="d")})
    metrics = GatewayMetrics(CollectorRegistry())
    release = asyncio.Event()
    interceptor = ErrorAndMetricsInterceptor(metrics, settings.max_in_flight, authorizer=auth,
                                             caller_limit=settings.in_flight_limit,
                                             share_pushback_s=pushback_s)
    return interceptor, metrics, release


async def _calls(interceptor: ErrorAndMetricsInterceptor, release: asyncio.Event,
                 keys: Sequence[str | None]) -> list[tuple[str, str]]:
    """Send one call per key at once, each held until `release`; (code, details) of each."""

    async def handler(request: object, context: object) -> str:
        await release.wait()
        return "ok"

    async def continuation(details: object) -> grpc.RpcMethodHandler:
        return grpc.unary_unary_rpc_method_handler(handler)

    details: Any = _Details()
    wrapped: Any = (await interceptor.intercept_service(continuation, details)).unary_unary

    async def one(key: str | None) -> tuple[str, str]:
        context = _Context(key)
        try:
            await wrapped(object(), context)
            return "OK", ""
        except grpc.aio.AbortError as err:
            return context.aborted[0].name if context.aborted else "?", str(err)

    tasks = [asyncio.ensure_future(one(k)) for k in keys]
    await asyncio.sleep(0.01)  # every call admitted or refused by now
    release.set()
    return list(await asyncio.gather(*tasks))


def test_a_flooding_platform_is_refused_alone_with_its_limit_named() -> None:
    interceptor, metrics, release = _interceptor(Authorizer(DIGESTS))
    keys = [KEYS["food"]] * 5 + [KEYS["kitchen"]] * 3 + [KEYS["*"]] * 2
    codes = asyncio.run(_calls(interceptor, release, keys))
    food, kitchen, operator = codes[:5], codes[5:8], codes[8:]
    assert [c for c, _ in food] == ["OK", "OK"] + ["RESOURCE_EXHAUSTED"] * 3
    assert "platform food has 2 calls in flight" in food[2][1]
    assert "platforms.food.max_in_flight = 2" in food[2][1] and "retry with backoff" in food[2][1]
    assert {c for c, _ in kitchen + operator} == {"OK"}, "the other callers are served"
    sample = metrics.registry.get_sample_value
    assert sample("interest_requests_refused_total", {"platform": "food", "limit": "platform"}) == 3
    assert sample("interest_requests_refused_total", {"platform": "kitchen", "limit": "platform"}) == 0
    assert sample("grpc_server_handled_total", {
        "grpc_type": "unary", "grpc_service": "interest.v1.InterestGateway", "grpc_method": "Recommend",
        "grpc_code": "RESOURCE_EXHAUSTED"}) == 3
    assert sample("interest_caller_requests_in_flight_limit", {"platform": "food"}) == 2
    assert sample("interest_caller_requests_in_flight_limit", {"platform": "kitchen"}) == 8  # half of 16
    assert interceptor.in_flight == 0 and set(interceptor.caller_in_flight.values()) == {0}
    assert sample("interest_caller_requests_in_flight", {"platform": "food"}) == 0


def test_a_refusal_over_the_share_is_held_back_but_a_gateway_refusal_is_not() -> None:
    """share_pushback_s: a caller over its own share waits before its RESOURCE_EXHAUSTED (a retry
    storm then costs the gateway little CPU); a refusal because the whole gateway is full does
    not wait, and the other callers' calls are not delayed."""
    import time

    interceptor, _, release = _interceptor(Authorizer(DIGESTS), max_in_flight=3, food=1, pushback_s=0.3)

    async def timed() -> list[tuple[str, float]]:
        started = time.perf_counter()
        release.set()  # every admitted call returns at once
        out = []
        for key in (KEYS["food"], KEYS["kitchen"]):
            codes = await _calls(interceptor, asyncio.Event(), [key, key])
            out.append((codes[1][0], time.perf_counter() - started))
        return out

    # food's share is 1: its second call is refused, after the pause; kitchen's share (1 = 3 // 2)
    # refuses likewise. Measured against the pause itself, not a latency target.
    (food_code, food_s), (kitchen_code, kitchen_s) = asyncio.run(timed())
    assert food_code == kitchen_code == "RESOURCE_EXHAUSTED"
    assert food_s >= 0.3 and kitchen_s - food_s >= 0.3
    interceptor, _, release = _interceptor(Authorizer(DIGESTS), max_in_flight=2, food=2, pushback_s=5.0)
    started = time.perf_counter()
    codes = asyncio.run(_calls(interceptor, release, [KEYS["food"]] * 2 + [KEYS["kitchen"]]))
    assert [c for c, _ in codes] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    assert "gateway overloaded" in codes[2][1] and time.perf_counter() - started < 2.0


def test_a_platform_over_its_rate_is_refused_alone() -> None:
    """platforms.<name>.max_rps: a token bucket per platform (0.1 s of calls at once), for calls
    that finish without waiting and so never fill an in-flight limit."""
    settings = load_settings(platforms={
        "food": PlatformConfig(adapter="amazon_review", dataset="d", max_rps=50.0),
        "kitchen": PlatformConfig(adapter="amazon_review", dataset="d")})
    metrics = GatewayMetrics(CollectorRegistry())
    interceptor = ErrorAndMetricsInterceptor(metrics, settings.max_in_flight, authorizer=Authorizer(DIGESTS),
                                             caller_limit=settings.in_flight_limit,
                                             caller_rate=settings.rate_limit)
    release = asyncio.Event()
    release.set()
    codes = asyncio.run(_calls(interceptor, release, [KEYS["food"]] * 8 + [KEYS["kitchen"]] * 8))
    food, kitchen = [c for c, _ in codes[:8]], [c for c, _ in codes[8:]]
    assert food == ["OK"] * 5 + ["RESOURCE_EXHAUSTED"] * 3, "a burst of 0.1 s at 50/s: 5 calls"
    assert kitchen == ["OK"] * 8, "kitchen has no rate limit"
    assert "platform food is over its rate of 50 calls/s (platforms.food.max_rps)" in codes[5][1]
    assert metrics.registry.get_sample_value("interest_requests_refused_total",
                                             {"platform": "food", "limit": "rate"}) == 3
    assert settings.rate_limit("kitchen") is None and settings.rate_limit("*") is None


def test_operator_keys_and_unknown_keys_have_their_own_share() -> None:
    interceptor, _, release = _interceptor(Authorizer(DIGESTS), max_in_flight=4, food=None)
    codes = asyncio.run(_calls(interceptor, release, [KEYS["*"]] * 3 + ["stolen"] * 3 + [None]))
    assert [c for c, _ in codes[:3]] == ["OK", "OK", "RESOURCE_EXHAUSTED"]
    assert "operator keys have 2 calls in flight" in codes[2][1]
    assert "operator_max_in_flight = 2" in codes[2][1]
    # unknown keys pass admission up to their share; the servicer then answers UNAUTHENTICATED
    assert [c for c, _ in codes[3:]] == ["OK", "OK", "RESOURCE_EXHAUSTED", "RESOURCE_EXHAUSTED"]
    assert "without a known API key" in codes[5][1]


def test_the_gateway_limit_still_holds_and_is_counted_apart() -> None:
    interceptor, metrics, release = _interceptor(Authorizer(DIGESTS), max_in_flight=3, food=2)
    codes = asyncio.run(_calls(interceptor, release, [KEYS["food"]] * 2 + [KEYS["kitchen"], KEYS["*"]]))
    assert [c for c, _ in codes] == ["OK", "OK", "OK", "RESOURCE_EXHAUSTED"]
    assert "gateway overloaded" in codes[3][1], "the operator's share (1) had room; the gateway not"
    assert metrics.registry.get_sample_value("interest_requests_refused_total",
                                             {"platform": "*", "limit": "gateway"}) == 1


def test_without_keys_every_call_shares_the_gateway_limit() -> None:
    """Auth off: a request's platform is only a claim, so calls are not split by it."""
    interceptor, metrics, release = _interceptor(Authorizer({}), max_in_flight=4, food=1)
    codes = asyncio.run(_calls(interceptor, release, [None] * 5))
    assert [c for c, _ in codes] == ["OK"] * 4 + ["RESOURCE_EXHAUSTED"]
    assert "gateway overloaded" in codes[4][1]
    assert metrics.registry.get_sample_value("interest_requests_refused_total",
                                             {"platform": "shared", "limit": "gateway"}) == 1


def test_default_shares_are_half_the_gateway_limit() -> None:
    settings = load_settings(max_in_flight=256)
    assert settings.in_flight_limit("food") == (128, "platforms.food.max_in_flight")
    assert settings.in_flight_limit("*") == (128, "operator_max_in_flight")
    assert load_settings(max_in_flight=1).in_flight_limit("kitchen")[0] == 1
    assert load_settings(operator_max_in_flight=3).in_flight_limit("*") == (3, "operator_max_in_flight")


def test_replace_swaps_the_key_set_at_once() -> None:
    auth = Authorizer({key_digest("old"): "food"})
    assert auth.platform_of("old") == "food"
    auth.replace({key_digest("new"): "food"})
    assert auth.platform_of("old") is None and auth.platform_of("new") == "food"
    assert auth.platform_of(None) is None and auth.platform_of("") is None


def _write(path: Path, data: object) -> None:
    path.write_text(data if isinstance(data, str) else json.dumps(data))


@pytest.mark.parametrize(("content", "message"), [
    ("{not: [valid", "not valid YAML or JSON"),
    ("[]", "must hold a mapping"),
    ("{}", "holds no keys"),
    ({"food-key": "food"}, "is not a SHA-256 hex digest"),
    ({key_digest("k"): "video"}, "unknown platform 'video'"),
])
def test_a_bad_keys_file_is_refused_saying_why(tmp_path: Path, content: object, message: str) -> None:
    path = tmp_path / "keys.json"
    _write(path, content)
    with pytest.raises(KeyFileError, match=message) as err:
        read_keys_file(path, PLATFORMS)
    assert "food-key" not in str(err.value), "a key pasted by mistake is never echoed"


def test_yaml_and_json_files_are_read(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(f"{key_digest('a')}: food\n'{key_digest('b').upper()}': '*'\n")
    assert read_keys_file(path, PLATFORMS) == {key_digest("a"): "food", key_digest("b"): "*"}


def test_reload_serves_a_good_file_and_keeps_the_old_keys_on_a_bad_one(
        tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "keys.json"
    _write(path, {key_digest("old"): "food"})
    auth = Authorizer({})
    metrics = GatewayMetrics(CollectorRegistry())
    source = KeySource(auth, {key_digest("ops"): "*"}, path, PLATFORMS, on_reload=metrics.keys_loaded)
    source.load()
    assert auth.platform_of("old") == "food" and auth.platform_of("ops") == "*"
    _write(path, {key_digest("new"): "food"})
    assert source.reload("test")
    assert auth.platform_of("old") is None and auth.platform_of("new") == "food"
    assert auth.platform_of("ops") == "*", "keys from the settings stay"
    for bad in ("{", {}, {key_digest("x"): "video"}):
        _write(path, bad)
        with caplog.at_level(logging.ERROR, logger="interest.gateway"):
            assert not source.reload("test")
        assert "NOT reloaded" in caplog.text and "still serving the 2 keys" in caplog.text
        assert auth.platform_of("new") == "food", "the old keys are still served"
    sample = metrics.registry.get_sample_value
    assert sample("interest_api_key_reloads_total", {"outcome": "rejected"}) == 3
    assert sample("interest_api_key_reloads_total", {"outcome": "loaded"}) == 2
    assert sample("interest_api_keys", {"platform": "food"}) == 1


def test_a_keys_file_that_disagrees_with_the_settings_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _write(path, {key_digest("k"): "food"})
    source = KeySource(Authorizer({}), {key_digest("k"): "kitchen"}, path, PLATFORMS)
    with pytest.raises(KeyFileError, match="another platform"):
        source.load()


def test_watch_picks_up_a_replaced_file_within_a_poll(tmp_path: Path) -> None:
    path = tmp_path / "keys.json"
    _write(path, {key_digest("old"): "kitchen"})
    auth = Authorizer({})
    source = KeySource(auth, {}, path, PLATFORMS)
    source.load()

    async def rotate() -> None:
        watcher = asyncio.create_task(source.watch(period_s=0.02))
        staged = tmp_path / "keys.json.new"
        _write(staged, {key_digest("new"): "kitchen"})
        os.replace(staged, path)  # atomic: a new inode
        for _ in range(100):
            if auth.platform_of("new"):
                break
            await asyncio.sleep(0.02)
        path.unlink()  # gone: the keys stay
        await asyncio.sleep(0.1)
        watcher.cancel()

    asyncio.run(rotate())
    assert auth.platform_of("new") == "kitchen" and auth.platform_of("old") is None


def test_the_bench_report_has_a_fair_share_target_row_and_section() -> None:
    from bench.report import _fair_share, _fair_share_row

    run = {"throughput_rps": 50.0, "p50_ms": 3.0, "p99_ms": 9.0, "errors": {}, "processes": {}}
    flooder = {**run, "errors": {"RESOURCE_EXHAUSTED": 1234}}
    fair = {"victim_rate_rps": 50.0, "victim_p99_alone_ms": 6.0, "victim_p99_flooded_ms": 9.0,
            "p99_ratio": 1.5, "victim_errors": 0, "flooder_refused": 1234, "met": True,
            "flood_concurrency": 32, "food_max_in_flight": 4, "kitchen_max_in_flight": 128,
            "max_in_flight": 256, "runs": {"alone": run, "flooded": run, "flooder": flooder}}
    (row,) = _fair_share_row(fair)
    assert "within 2× of alone" in row and "(1.5×)" in row and row.endswith("| True |")
    assert any("`platforms.food.max_in_flight` = 4" in line for line in _fair_share(fair))
    assert _fair_share_row(None) == [] and _fair_share(None) == []


def test_an_unhealthy_triton_stub_is_unavailable_not_internal() -> None:
    """Seen under the fair-share flood on 2 cores: Triton restarts a starved python backend stub."""
    from tritonclient.utils import InferenceServerException

    from gateway.errors import from_triton, status_of

    exc = InferenceServerException("Stub process 'interest_encoder_0_1' is not healthy.",
                                   status="StatusCode.INTERNAL")
    assert status_of(from_triton(exc)) == grpc.StatusCode.UNAVAILABLE
