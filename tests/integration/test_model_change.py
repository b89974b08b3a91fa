"""A new model replaces the served one (`make engine` with another checkpoint): profiles stored
under the old model are re-embedded for the new one, through the real Triton serving it.

The session stack serves the committed trained checkpoint (model A). This test installs the
pretrained backbone without a head (model B, another embedding space) into a second model
repository with the real CLIs, starts a second real Triton on it and a second gateway on the
same profile store, and checks that a user stored under A is served from B's space: rebuilt
from its items, saved with B's version, and equal to the profile of the same items ingested
fresh under B.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from pathlib import Path

import numpy as np
import pytest
import pytest_asyncio

from devtools.triton_launcher import free_port
from gateway.encoder import installed_model_version
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.config import load_settings
from interest_core.store_sqlite import SqliteProfileStore
from interest_model.corpus import load_catalogue
from tests.integration.conftest import Served, Stack, run_steps, serve_stack

pytestmark = pytest.mark.integration


def install_pretrained(workdir: Path, env: dict[str, str]) -> Path:
    """export (no checkpoint: the pretrained backbone) -> validate -> install into a second
    model repository, with the same CLIs as `make engine`. fp32 is installed as it is (the
    gate compares it with itself): this test is about the change of model, not INT8."""
    art, repo = workdir / "artifacts-b", workdir / "model_repository-b"
    run_steps([
        ("quantize.export", "--out", str(art / "model.fp32.onnx")),
        ("quantize.validate", "--reference", str(art / "model.fp32.onnx"), "--candidate",
         str(art / "model.fp32.onnx"), "--report", str(art / "validation.json"), "--texts", "256"),
        ("quantize.install", "--onnx", str(art / "model.fp32.onnx"), "--report",
         str(art / "validation.json"), "--target", "cpu", "--dim", "384"),
    ], {**env, "INTEREST_MODEL_REPOSITORY": str(repo)})
    return repo


@pytest_asyncio.fixture
async def second(stack: Stack, workdir: Path) -> AsyncIterator[Served]:
    """Model B served by its own Triton and gateway, on the session's profile store."""
    repo = install_pretrained(workdir, stack.env)
    settings = load_settings(model_repository=repo, grpc_port=0, metrics_port=free_port(),
                             triton_http_port=free_port(), triton_grpc_port=free_port(),
                             triton_metrics_port=free_port())
    assert settings.store_path == stack.settings.store_path, "both gateways share one profile store"
    async with serve_stack(settings) as served:
        yield served


async def ingest_food(stub: pb_grpc.InterestGatewayStub, user_id: str, items: list[str]) -> None:
    await stub.SetConsent(pb.SetConsentRequest(user_id=user_id, migrate=True), timeout=5)
    events = [pb.BehaviorEvent(user_id=user_id, item_id=i, event_type="purchase", position=n + 1)
              for n, i in enumerate(items)]
    reply = await stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)
    assert (reply.accepted, reply.rejected) == (len(items), 0)


def stored_food(stack: Stack, user_id: str) -> tuple[np.ndarray, str]:
    store = SqliteProfileStore(stack.settings.store_path)
    try:
        profile = store.load(stack.gateway.service.pseudonymise(user_id))["food"]
    finally:
        store.close()
    return profile.vec_sum, profile.model_version


async def test_profiles_of_the_old_model_are_rebuilt_for_the_new_one(stack: Stack, second: Served) -> None:
    version_a = str(installed_model_version(stack.settings)["model_version"])
    version_b = str(installed_model_version(second.gateway.settings)["model_version"])
    assert version_a != version_b
    # B's gateway ranks with the catalogue installed with B, embedded by B: not A's rows.
    kitchen_a, kitchen_b = stack.gateway.catalogues["kitchen"], second.gateway.catalogues["kitchen"]
    assert kitchen_b.catalogue == kitchen_a.catalogue
    titles = list(kitchen_b.catalogue.titles[:32])
    answered_b = await second.gateway.service.encoder.embed_uncached(titles, rpc="Test", platform="kitchen",
                                                                     timeout=60)
    np.testing.assert_allclose(kitchen_b.embeddings[:32], answered_b, rtol=0, atol=1e-4)
    assert np.abs(kitchen_b.embeddings[:32] - kitchen_a.embeddings[:32]).max() > 1e-2
    items = list(load_catalogue(stack.settings, "food").item_ids[100:106])
    await ingest_food(stack.stub, "it-model-change-old", items)
    vec_a, stored_version = stored_food(stack, "it-model-change-old")
    assert stored_version == version_a

    request = pb.RecommendRequest(user_id="it-model-change-old", target_platform="kitchen", k=20)
    served = await second.stub.Recommend(request, timeout=30)
    assert served.model_version == version_b and served.personalised
    rebuilt = second.metrics.registry.get_sample_value(
        "interest_profiles_reembedded_total", {"platform": "food", "outcome": "rebuilt"})
    assert rebuilt == 1.0
    vec_rebuilt, stored_version = stored_food(stack, "it-model-change-old")
    assert stored_version == version_b, "the rebuilt profile is saved under the new model"
    assert np.abs(vec_rebuilt - vec_a).max() > 1e-2, "the old model's sum was replaced"

    # The same items ingested fresh under model B give the same profile and ranking.
    await ingest_food(second.stub, "it-model-change-new", items)
    vec_fresh, _ = stored_food(stack, "it-model-change-new")
    np.testing.assert_allclose(vec_rebuilt, vec_fresh, rtol=0, atol=1e-5)
    fresh = await second.stub.Recommend(
        pb.RecommendRequest(user_id="it-model-change-new", target_platform="kitchen", k=20), timeout=30)
    assert [i.item_id for i in served.items] == [i.item_id for i in fresh.items]
    np.testing.assert_allclose([i.score for i in served.items], [i.score for i in fresh.items], atol=1e-5)

    # Nothing is re-embedded twice: the saved profile is already B's.
    await second.stub.Recommend(request, timeout=30)
    assert second.metrics.registry.get_sample_value(
        "interest_profiles_reembedded_total", {"platform": "food", "outcome": "rebuilt"}) == 1.0
