"""The servicer with a fake encoder (no Triton): deadlines reach the model call."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.service import InterestGatewayService
from interest_core.config import load_settings
from interest_core.errors import DeadlineExceeded
from interest_core.migration import MigrationMap
from interest_core.profiles import ProfileStore


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
    return InterestGatewayService(settings, ProfileStore(tmp_path / "p.sqlite3"), encoder, GatewayMetrics(),
                                  MigrationMap(4), {"food": {}, "kitchen": {}})


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
