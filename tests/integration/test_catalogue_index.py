"""A catalogue ranked through its nearest-neighbour index, on the real stack: the session's
Triton, an in-process gateway on its own SQLite store, and the kitchen slice installed with
an index as `make engine` installs one above ann_min_items (write_installed with
ranking.ann.store_index_in_locality_order: the catalogue written in the index's order;
ann_min_items lowered to the slice's size). It ranks as the session's
gateway, which scores the same slice whole; a new item appears at once, a removed one never
again, also after a restart; with ann_added_index_min at 1 the new item is found through the
index the gateway builds of the items added since `make engine` (AddedIndex). The million-item
figures: `make bench` (bench/catalogue_scale.py)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2_grpc

from devtools.readiness import wait_serving
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import Gateway, create_server
from interest_core.catalogue import read_installed, write_installed
from interest_core.config import Settings
from interest_core.contract import VERSION_FILE, read_version
from interest_core.ranking.ann import IndexParams, store_index_in_locality_order
from tests.integration.conftest import CATALOGUE_SLICE, Stack
from tests.integration.test_catalogue_updates import NEW_ID, NEW_TITLE, TEA, kitchen_ids, tea_drinker

pytestmark = pytest.mark.integration


def indexed_repository(settings: Settings, root: Path) -> Path:
    """A copy of the installed model directory (links) whose kitchen catalogue has an index."""
    source = settings.model_repository / settings.model_name
    target = root / "model_repository" / settings.model_name
    target.mkdir(parents=True)
    version = read_version(source)
    installed = read_installed(source, "kitchen", version)
    entry = write_installed(target, installed,
                            lambda emb, path: store_index_in_locality_order(emb, path, IndexParams()))
    for name in os.listdir(source):
        if name != VERSION_FILE and not (target / name).exists():
            (target / name).symlink_to((source / name).resolve())
    catalogues = {**version["catalogues"], "kitchen": entry}  # type: ignore[dict-item]
    (target / VERSION_FILE).write_text(json.dumps({**version, "catalogues": catalogues}))
    return target.parent


@contextlib.asynccontextmanager
async def indexed_gateway(stack: Stack, settings: Settings
                          ) -> AsyncIterator[tuple[pb_grpc.InterestGatewayStub, GatewayMetrics, Gateway]]:
    metrics = GatewayMetrics()
    gateway = create_server(settings, metrics, triton_url=stack.triton.grpc_url, port=0)
    await gateway.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            await wait_serving(health_pb2_grpc.HealthStub(channel), timeout_s=120)
            yield pb_grpc.InterestGatewayStub(channel), metrics, gateway
    finally:
        await gateway.stop(grace=1.0)


async def tea_drinker_on(stub: pb_grpc.InterestGatewayStub, user: str) -> None:
    """test_catalogue_updates.tea_drinker through another gateway."""
    events = [pb.BehaviorEvent(user_id=user, item_text=t, event_type="review", position=i)
              for i, t in enumerate(TEA)]
    await stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)
    await stub.SetConsent(pb.SetConsentRequest(user_id=user, migrate=True), timeout=30)


def gauge(metric: Any) -> float:
    """The kitchen series of a per-platform gauge."""
    return next(s.value for m in metric.collect() for s in m.samples if s.labels.get("platform") == "kitchen")


def counted(metrics: GatewayMetrics) -> tuple[float, float]:
    """(kitchen items rankable, of them outside the index) as the gateway exports them."""
    return gauge(metrics.catalogue_items), gauge(metrics.catalogue_unindexed)


async def added_items_indexed(gateway: Gateway, count: int, timeout_s: float = 30.0) -> None:
    """Wait until the kitchen catalogue the gateway serves finds `count` items through its index
    of the items added since the build, and none beside it."""
    deadline = time.monotonic() + timeout_s
    while True:
        ann = gateway.service.recommender.served["kitchen"].ann
        assert ann is not None
        if (ann.added_live, len(ann.delta)) == (count, 0):
            return
        assert time.monotonic() < deadline, (ann.added_live, len(ann.delta))
        await asyncio.sleep(0.05)


def rank_paths(metrics: GatewayMetrics) -> dict[str, float]:
    return {s.labels["path"]: s.value for m in metrics.rank_path.collect() for s in m.samples
            if s.name.endswith("_total") and s.labels.get("platform") == "kitchen"}


async def test_an_indexed_catalogue_ranks_as_the_exact_one_and_takes_updates(
        stack: Stack, tmp_path: Path) -> None:
    repo = indexed_repository(stack.settings, tmp_path)
    assert (repo / stack.settings.model_name / "catalogue-kitchen.faiss").exists()
    settings = stack.settings.model_copy(update={
        "model_repository": repo, "var_dir": tmp_path / "var", "ann_min_items": CATALOGUE_SLICE,
        "ann_added_index_min": 1})
    user = "indexed-tea-drinker"
    await tea_drinker(stack, user)  # on the session's gateway: the slice scored whole
    exact = await kitchen_ids(stack.stub, user, k=10)
    async with indexed_gateway(stack, settings) as (stub, metrics, gateway):
        await tea_drinker_on(stub, user)
        served = await kitchen_ids(stub, user, k=10)
        # the same 10 items (float16 vectors in the index may swap a near tie at the edge)
        assert len(set(served) & set(exact)) >= 9, (served, exact)
        assert served[0] == exact[0]
        assert sum(rank_paths(metrics).values()) == 1 and rank_paths(metrics).keys() >= {"ann", "bounded"}
        assert len(await kitchen_ids(stub, user, k=200)) == 200
        assert counted(metrics) == (CATALOGUE_SLICE, 0)

        added = await stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
            platform="kitchen", upserts=[pb.CatalogueItem(item_id=NEW_ID, title=NEW_TITLE)]), timeout=30)
        assert (added.applied, added.catalogue_items) == (1, CATALOGUE_SLICE + 1), added
        assert NEW_ID in (await kitchen_ids(stub, user, k=200))[:100]
        # the new item is ranked beside the index, and the dashboard counts it
        assert counted(metrics) == (CATALOGUE_SLICE + 1, 1)
        # then found through the gateway's index of the items added since the build
        await added_items_indexed(gateway, 1)
        served_now = gateway.service.recommender.served["kitchen"]
        ann, at = served_now.ann, served_now.index.position(NEW_ID)
        assert ann is not None and ann.added is not None and at is not None
        assert ann.added.search(ann.vectors(np.array([at]))[0], 1, ann.added_banned).tolist() == [at]
        assert NEW_ID in (await kitchen_ids(stub, user, k=200))[:100]
        assert counted(metrics) == (CATALOGUE_SLICE + 1, 1)
        removed = await stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
            platform="kitchen", remove_item_ids=[NEW_ID, exact[0]]), timeout=30)
        assert removed.applied == 2, removed
        after = await kitchen_ids(stub, user, k=200)
        assert NEW_ID not in after and exact[0] not in after and len(after) == 200
        # both removed: neither counted, though the index keeps a position for each
        assert counted(metrics) == (CATALOGUE_SLICE - 1, 0)
    async with indexed_gateway(stack, settings) as (stub, _, _):  # restarted on the same store
        assert await kitchen_ids(stub, user, k=200) == after
