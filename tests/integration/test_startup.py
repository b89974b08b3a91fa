"""Start-up serves the catalogues `make engine` installed: no dataset is read and nothing is
embedded through Triton, and the installed embeddings are what the served model answers."""

from __future__ import annotations

import time
from pathlib import Path

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2_grpc

from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import create_server
from interest_model.corpus import load_catalogue
from tests.integration.conftest import Stack, wait_serving

pytestmark = pytest.mark.integration


async def test_the_gateway_serves_without_its_dataset(stack: Stack, tmp_path: Path) -> None:
    """data_dir points at an empty folder: the gateway still reaches SERVING, quickly, and
    answers as the session's gateway does (same catalogue, same popularity fallback)."""
    empty = tmp_path / "no-datasets"
    empty.mkdir()
    settings = stack.settings.model_copy(update={"data_dir": empty, "var_dir": tmp_path / "var"})
    with pytest.raises(FileNotFoundError):
        load_catalogue(settings, "food")  # the dataset really is out of reach
    started = time.monotonic()
    gateway = create_server(settings, triton_url=stack.triton.grpc_url, port=0)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            await wait_serving(health_pb2_grpc.HealthStub(channel), timeout_s=30)
            assert time.monotonic() - started < 15, "start-up embeds nothing and reads no dataset"
            # A food user without migration consent gets kitchen's most popular items.
            item = gateway.catalogues["food"].catalogue.item_ids[7]
            ingest = pb.IngestEventsRequest(platform="food", events=[
                pb.BehaviorEvent(user_id="it-startup-no-consent", item_id=item, event_type="purchase")])
            request = pb.RecommendRequest(user_id="it-startup-no-consent", target_platform="kitchen", k=10)
            stub = pb_grpc.InterestGatewayStub(channel)
            assert (await stub.IngestEvents(ingest, timeout=30)).accepted == 1
            assert (await stack.stub.IngestEvents(ingest, timeout=30)).accepted == 1
            reply = await stub.Recommend(request, timeout=10)
            session = await stack.stub.Recommend(request, timeout=10)
            assert not reply.personalised and len(reply.items) == 10
            popular = np.argsort(-gateway.catalogues["kitchen"].popularity, kind="stable")[:10]
            assert sorted(i.item_id for i in reply.items) == sorted(
                gateway.catalogues["kitchen"].catalogue.item_ids[j] for j in popular)
            assert [i.item_id for i in reply.items] == [i.item_id for i in session.items]
            assert [i.score for i in reply.items] == [i.score for i in session.items]
    finally:
        await gateway.stop(grace=0.5)


async def test_installed_catalogue_embeddings_are_what_the_served_model_answers(stack: Stack) -> None:
    """The rows `make engine` computed with ONNX Runtime equal Triton's answer for the same
    titles, so ranking against them is ranking as before, when start-up embedded them."""
    encoder = stack.gateway.service.encoder
    for name in ("food", "kitchen"):
        installed = stack.gateway.catalogues[name]
        rows = np.linspace(0, len(installed.catalogue) - 1, 96).astype(int)
        titles = [installed.catalogue.titles[r] for r in rows]
        served = await encoder.embed_uncached(titles, rpc="Test", platform=name, timeout=60)
        np.testing.assert_allclose(installed.embeddings[rows], served, rtol=0, atol=1e-4)
