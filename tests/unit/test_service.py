"""The servicer with a fake encoder (no Triton): deadlines reach the model call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.auth import API_KEY_HEADER, key_digest
from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.servicer import InterestGatewayService
from interest_core.config import load_settings
from interest_core.errors import DeadlineExceeded
from interest_core.migration import MigrationMap
from interest_core.store_sqlite import SqliteProfileStore


class FakeContext:
    def __init__(self, remaining: float | None) -> None:
        self.remaining = remaining

    def time_remaining(self) -> float | None:
        return self.remaining

    def invocation_metadata(self) -> tuple[()]:
        return ()


class RecordingEncoder:
    def __init__(self) -> None:
        self.timeouts: list[float | None] = []

    async def embed(self, texts: Sequence[str], rpc: str, platform: str, timeout: float | None = None
                    ) -> np.ndarray:
        self.timeouts.append(timeout)
        return np.ones((len(texts), 4), dtype=np.float32) / 2.0


def service(tmp_path: Path, encoder: Any) -> InterestGatewayService:
    settings = load_settings(var_dir=tmp_path, triton_timeout_s=7.0)
    return InterestGatewayService(settings, SqliteProfileStore(tmp_path / "p.sqlite3"), encoder,
                                  GatewayMetrics(), MigrationMap(4), {"food": {}, "kitchen": {}})


REQUEST = pb.EncodeInterestRequest(
    platform="food", events=[pb.BehaviorEvent(item_text="tea", event_type="view")]
)


@pytest.mark.parametrize(("remaining", "expected"), [(1.5, 1.5), (None, 7.0), (30.0, 7.0), (-1.0, 0.0)])
def test_client_deadline_is_passed_to_the_model_call(tmp_path: Path, remaining: float | None,
                                                     expected: float) -> None:
    encoder = RecordingEncoder()
    context: Any = FakeContext(remaining)
    reply = asyncio.run(service(tmp_path, encoder).EncodeInterest(REQUEST, context))
    assert reply.events_used == 1
    assert encoder.timeouts == [pytest.approx(expected)]


def test_expired_deadline_never_reaches_triton() -> None:
    encoder = TritonEncoder.__new__(TritonEncoder)
    with pytest.raises(DeadlineExceeded, match="before the interest model was called"):
        asyncio.run(encoder.embed_uncached(["tea"], "EncodeInterest", "food", timeout=0.0))


class KeyContext(FakeContext):
    def __init__(self, key: str) -> None:
        super().__init__(None)
        self.key = key

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:  # type: ignore[override]
        return ((API_KEY_HEADER, self.key),)


def test_user_wide_writes_are_timed_under_the_platform_that_asked(tmp_path: Path) -> None:
    """SetConsent and DeleteUser belong to no one platform: their store metrics name the
    caller's (an on-call engineer can see which platform erases users), '*' for operators."""
    settings = load_settings(var_dir=tmp_path, api_keys={key_digest("k-shop"): "kitchen",
                                                          key_digest("k-ops"): "*"})
    encoder: Any = RecordingEncoder()
    svc = InterestGatewayService(settings, SqliteProfileStore(tmp_path / "p.sqlite3"), encoder,
                                 GatewayMetrics(), MigrationMap(4), {"food": {}, "kitchen": {}})
    shop: Any = KeyContext("k-shop")
    ops: Any = KeyContext("k-ops")
    asyncio.run(svc.SetConsent(pb.SetConsentRequest(user_id="u1", migrate=True), shop))
    asyncio.run(svc.DeleteUser(pb.DeleteUserRequest(user_id="u1"), ops))

    def writes(rpc: str, platform: str) -> float | None:
        return svc.metrics.registry.get_sample_value(
            "interest_store_seconds_count", {"rpc": rpc, "platform": platform})

    assert writes("SetConsent", "kitchen") == 1.0
    assert writes("DeleteUser", "*") == 1.0
    assert writes("SetConsent", "") is None and writes("DeleteUser", "") is None
