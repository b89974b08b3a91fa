"""Catalogue updates on the real stack (the session's Triton and in-process gateway on SQLite):
a new kitchen item whose title fits a tea drinker's food interests is embedded through Triton
and appears in that user's Recommend; removed, it never appears again, also in a gateway
started afresh on the same store; bad input gets its own status per item or per call. Two
gateway processes learning of each other's changes: tests/integration/test_fleet.py."""

from __future__ import annotations

import asyncio
import json
import signal
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2_grpc

from devtools.readiness import wait_serving
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import create_server
from interest_model.corpus import load_catalogue
from tests.integration.conftest import Stack, metric_total, scrape_metrics

pytestmark = pytest.mark.integration
NEW_ID = "NEW-TEA-INFUSER-MUG"
NEW_TITLE = "Stainless Steel Loose Leaf Tea Infuser Mug with Lid"
OFF_ID = "NEW-MEAT-MALLET"  # added beside it: a title with nothing of tea
OFF_TITLE = "Heavy Duty Cast Iron Meat Tenderizer Mallet"
TEA = ["Organic Japanese Matcha Green Tea Powder", "Sencha Green Tea Loose Leaf",
       "Jasmine Green Tea Bags, 100 count", "Genmaicha Brown Rice Green Tea",
       "Loose Leaf Oolong Tea, 8 oz", "Earl Grey Loose Leaf Black Tea",
       "Darjeeling First Flush Loose Tea", "Chamomile Herbal Tea Loose Leaf"]


async def tea_drinker(stack: Stack, user: str) -> None:
    """A user whose food history is green teas, with consent to migrate it to kitchen."""
    events = [pb.BehaviorEvent(user_id=user, item_text=t, event_type="review", position=i)
              for i, t in enumerate(TEA)]
    await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)
    await stack.stub.SetConsent(pb.SetConsentRequest(user_id=user, migrate=True), timeout=30)


async def kitchen_ids(stub: pb_grpc.InterestGatewayStub, user: str, k: int = 20) -> list[str]:
    request = pb.RecommendRequest(user_id=user, target_platform="kitchen", k=k)
    reply = await stub.Recommend(request, timeout=30)
    assert reply.personalised, reply
    return [item.item_id for item in reply.items]


async def test_a_new_item_is_recommended_at_once_and_a_removed_one_never_again(stack: Stack) -> None:
    user = "catalogue-tea-drinker"
    await tea_drinker(stack, user)
    assert NEW_ID not in await kitchen_ids(stack.stub, user, k=200)
    added = await stack.stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
        platform="kitchen",
        upserts=[pb.CatalogueItem(item_id=NEW_ID, title=NEW_TITLE, attributes={"brand": "test"}),
                 pb.CatalogueItem(item_id=OFF_ID, title=OFF_TITLE)]), timeout=30)
    assert (added.applied, added.rejected) == (2, 0), added
    # right after the reply, on this gateway: the infuser mug among the tea drinker's top 100 of
    # the 1,500-item slice (rank 35 when written), the mallet not even in the top 200
    ranked = await kitchen_ids(stack.stub, user, k=200)
    assert NEW_ID in ranked[:100] and OFF_ID not in ranked, ranked.index(NEW_ID) if NEW_ID in ranked else None
    samples = scrape_metrics(stack.metrics_port)
    assert metric_total(samples, "interest_catalogue_changes_total", platform="kitchen", change="upsert") >= 1
    assert metric_total(samples, "interest_catalogue_version", platform="kitchen") == added.catalogue_version

    removed = await stack.stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
        platform="kitchen", remove_item_ids=[NEW_ID, OFF_ID]), timeout=30)
    assert removed.applied == 2 and removed.catalogue_items == added.catalogue_items - 2
    assert NEW_ID not in await kitchen_ids(stack.stub, user, k=200)

    # a gateway started afresh on the same store (a restart) serves the same catalogue
    restarted = create_server(stack.settings, GatewayMetrics(), triton_url=stack.triton.grpc_url, port=0)
    await restarted.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{restarted.port}") as channel:
            await wait_serving(health_pb2_grpc.HealthStub(channel), timeout_s=120)
            assert NEW_ID not in await kitchen_ids(pb_grpc.InterestGatewayStub(channel), user, k=200)
            listed = await pb_grpc.InterestGatewayStub(channel).UpdateCatalogue(pb.UpdateCatalogueRequest(
                platform="kitchen", remove_item_ids=[NEW_ID]), timeout=30)
            assert listed.results[0].error_code == "NOT_FOUND", listed  # it knows the removal
    finally:
        await restarted.stop(grace=1.0)


async def test_bad_items_are_refused_one_by_one_and_the_rest_applies(stack: Stack) -> None:
    reply = await stack.stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
        platform="kitchen",
        upserts=[pb.CatalogueItem(item_id="NEW-KETTLE", title="Gooseneck Pour Over Kettle, Stainless Steel"),
                 pb.CatalogueItem(item_id="NEW-EMPTY", title="  ")],
        remove_item_ids=["NO-SUCH-ITEM", "NEW-KETTLE"]), timeout=30)
    assert [(r.item_id, r.applied, r.error_code) for r in reply.results] == [
        ("NEW-KETTLE", True, ""), ("NEW-EMPTY", False, "INVALID_ARGUMENT"),
        ("NO-SUCH-ITEM", False, "NOT_FOUND"), ("NEW-KETTLE", False, "INVALID_ARGUMENT")]
    assert "title is empty" in reply.results[1].error
    await stack.stub.UpdateCatalogue(pb.UpdateCatalogueRequest(platform="kitchen",
                                                               remove_item_ids=["NEW-KETTLE"]), timeout=30)


@pytest.mark.parametrize(("request_", "code", "message"), [
    (pb.UpdateCatalogueRequest(platform="kitchen", upserts=[
        pb.CatalogueItem(item_id=f"BULK-{i}", title=f"Item {i}") for i in range(10_000)]),
     grpc.StatusCode.INVALID_ARGUMENT, "10000 catalogue changes in one request; the limit is 1000"),
    (pb.UpdateCatalogueRequest(platform="groceries", remove_item_ids=["x"]),
     grpc.StatusCode.NOT_FOUND, "unknown platform 'groceries'"),
    (pb.UpdateCatalogueRequest(platform="kitchen"), grpc.StatusCode.INVALID_ARGUMENT, "nothing to change"),
])
async def test_a_whole_call_is_refused_with_its_own_status(
        stack: Stack, request_: pb.UpdateCatalogueRequest, code: grpc.StatusCode, message: str) -> None:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.UpdateCatalogue(request_, timeout=30)
    assert err.value.code() == code and message in (err.value.details() or ""), err.value


async def test_the_bulk_loader_shows_progress_and_resumes_after_an_interruption(
        stack: Stack, tmp_path: Path) -> None:
    """600 real kitchen titles under new ids, in batches of 50: stopped with SIGINT part-way,
    the loader saves where it was; run again, it resumes there and loads the rest, with every
    item served. A line that is not an item is refused alone. (The gateway runs on this
    test's event loop: the loader runs as a child process awaited without blocking it.)"""
    titles = load_catalogue(stack.settings.model_copy(update={"catalogue_limit": None}), "kitchen").titles
    path = tmp_path / "items.jsonl"
    lines = [json.dumps({"item_id": f"BULK-{i}", "title": titles[-1 - i], "attributes": {"source": "test"}})
             for i in range(600)]
    lines[7] = "{not json"
    path.write_text("\n".join(lines) + "\n")
    command = ["-m", "devtools.catalogue_load", "--platform", "kitchen", "--file", str(path),
               "--target", f"127.0.0.1:{stack.gateway.port}", "--batch", "50"]
    first = await asyncio.create_subprocess_exec(sys.executable, *command, stdout=asyncio.subprocess.PIPE,
                                                 stderr=asyncio.subprocess.STDOUT)
    progress = path.with_name("items.jsonl.progress")
    deadline = time.monotonic() + 120
    while not (progress.exists() and json.loads(progress.read_text())["lines_done"] >= 100):
        assert first.returncode is None and time.monotonic() < deadline, "the loader ended or stalled"
        await asyncio.sleep(0.02)
    first.send_signal(signal.SIGINT)
    out = (await asyncio.wait_for(first.communicate(), 60))[0].decode()
    stopped_at = json.loads(progress.read_text())["lines_done"]
    assert first.returncode == 130 and 100 <= stopped_at < 600, out
    assert f"stopped at line {stopped_at} of 600" in out and "titles/s through the model" in out

    second = await asyncio.create_subprocess_exec(sys.executable, *command, stdout=asyncio.subprocess.PIPE,
                                                  stderr=asyncio.subprocess.STDOUT)
    out = (await asyncio.wait_for(second.communicate(), 300))[0].decode()
    assert second.returncode == 0, out
    assert f"resuming at line {stopped_at + 1} of 600" in out, out
    assert "done: 599 items loaded, 1 refused" in out, out
    rejected = path.with_name("items.jsonl.rejected.jsonl").read_text().splitlines()
    assert [json.loads(line)["error"].startswith("line 8 is not an item") for line in rejected] == [True]

    ids = [f"BULK-{i}" for i in range(600) if i != 7]
    removed = 0
    for start in range(0, len(ids), 500):  # every loaded item is served: all 599 can be removed
        reply = await stack.stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
            platform="kitchen", remove_item_ids=ids[start:start + 500]), timeout=60)
        removed += reply.applied
    assert removed == len(ids)
