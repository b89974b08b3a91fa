"""End to end over gRPC: real Triton + real gateway, real held-out users' behaviour."""

from __future__ import annotations

import subprocess
import uuid

import grpc
import numpy as np
import pytest

from gateway.proto.interest.v1 import gateway_pb2 as pb
from interest_core.catalogue import Catalogue
from interest_core.store_sqlite import SqliteProfileStore
from interest_model.corpus import UserSequence, load_catalogue, load_sequences
from tests.integration.conftest import CATALOGUE_SLICE, Stack, metric_total, scrape_metrics

pytestmark = pytest.mark.integration


def real_test_user(stack: Stack) -> tuple[UserSequence, Catalogue, Catalogue]:
    """A held-out test user with food history and >= 2 kitchen items inside the test slice."""
    s = stack.settings
    food, kitchen = load_catalogue(s, "food"), load_catalogue(s, "kitchen")
    users = load_sequences(s.data_dir / "amazon-food-kitchen", "test.txt")
    for user in users:
        if len(user.items_a) >= 5 and sum(i < CATALOGUE_SLICE for i in user.items_b) >= 2:
            return user, food, kitchen
    raise AssertionError("no suitable test user")


def food_events(stack: Stack, user_id: str, user: UserSequence) -> list[pb.BehaviorEvent]:
    """The user's real food history; items beyond the test slice carry their title as item_text."""
    full = load_catalogue(stack.settings.model_copy(update={"catalogue_limit": None}), "food")
    return [pb.BehaviorEvent(user_id=user_id, item_id=full.item_ids[i], item_text=full.titles[i],
                             event_type="review", position=n + 1)
            for n, i in enumerate(user.items_a)]


async def test_real_user_food_history_gets_valid_kitchen_recommendations(stack: Stack) -> None:
    user, _, kitchen = real_test_user(stack)
    user_id = f"it-user-{user.uid}"
    events = food_events(stack, user_id, user)
    await stack.stub.SetConsent(pb.SetConsentRequest(user_id=user_id, migrate=True), timeout=5)
    owned = [kitchen.item_ids[i] for i in user.items_b if i < CATALOGUE_SLICE][:2]
    ingest = await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)
    assert ingest.accepted == len(events) and ingest.rejected == 0 and ingest.users_updated == 1
    owned_events = [pb.BehaviorEvent(user_id=user_id, item_id=i, event_type="purchase") for i in owned]
    ingest_k = await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="kitchen", events=owned_events),
                                             timeout=60)
    assert ingest_k.accepted == 2

    request = pb.RecommendRequest(user_id=user_id, target_platform="kitchen", k=20)
    first = await stack.stub.Recommend(request, timeout=10)
    second = await stack.stub.Recommend(request, timeout=10)
    ids = [item.item_id for item in first.items]
    catalogue = set(kitchen.item_ids)
    assert len(ids) == 20
    assert set(ids) <= catalogue, "every recommendation is a kitchen catalogue item"
    assert len(set(ids)) == len(ids), "no duplicates"
    assert not set(owned) & set(ids), "never an item the user already has on kitchen"
    assert ids == [item.item_id for item in second.items], "stable across two calls"
    scores = [item.score for item in first.items]
    assert scores == sorted(scores, reverse=True)
    assert [item.rank for item in first.items] == list(range(1, 21))
    titles = dict(zip(kitchen.item_ids, kitchen.titles))
    assert all(item.title == titles[item.item_id] for item in first.items)
    assert list(first.source_platforms) == ["food"]
    assert first.personalised and "migrated from food" in first.explanation
    assert first.model_version
    # The trained ranking: collaborative blend on top of the model, and named interests.
    assert "blend" in first.explanation and "interests:" in first.explanation
    assert len(first.interests) == 3 and all(c.name and 0 < c.weight <= 1 for c in first.interests)
    # ... and each item's own category: the trained classifier's choice for the item's embedding
    assets = stack.gateway.service.assets
    assert assets is not None
    for item in first.items[:5]:
        alone = await stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="kitchen", events=[
            pb.BehaviorEvent(item_id=item.item_id, event_type="purchase")]), timeout=30)
        (name, weight), = assets.categories(np.array(alone.embedding, dtype=np.float32), 1)
        assert (item.category.name, item.category.weight) == (name, pytest.approx(weight, abs=1e-4))
    profile = await stack.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=5)
    food = next(p for p in profile.platforms if p.platform == "food")
    assert len(food.interests) == 3 and food.interests[0].weight >= food.interests[-1].weight

    excluded = await stack.stub.Recommend(
        pb.RecommendRequest(user_id=user_id, target_platform="kitchen", k=20, exclude_item_ids=ids[:5]),
        timeout=10)
    assert not set(ids[:5]) & {item.item_id for item in excluded.items}


async def test_profile_get_and_delete_removes_every_row(stack: Stack) -> None:
    user_id = "it-delete-me"
    events = [pb.BehaviorEvent(user_id=user_id, item_text="Organic green tea bags, 100 count",
                               event_type="purchase")]
    await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=30)
    profile = await stack.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=5)
    assert [(p.platform, p.event_count) for p in profile.platforms] == [("food", 1)]
    assert profile.dim == 384
    deleted = await stack.stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), timeout=5)
    assert deleted.platforms_removed == 1
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await stack.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=5)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    key = stack.gateway.service.pseudonymise(user_id)
    store = SqliteProfileStore(stack.settings.store_path)
    assert store.load(key) == {}
    # Read by another process: closing a file descriptor of the live database in this one would
    # drop this process's POSIX locks on it, which the session gateway's connections hold, and
    # let another process's SQLite checkpoint and remove the WAL under them (a corrupt store).
    raw = subprocess.run(["cat", str(store.path)], capture_output=True, check=True, timeout=30).stdout
    assert user_id.encode() not in raw, "the raw user id is never stored"
    store.close()


async def test_encode_interest_matches_mean_of_event_embeddings(stack: Stack) -> None:
    texts = ["Mae Ploy Thai Green Curry Paste - 14 oz jar", "Jasmine rice, 5 lb bag"]
    events = [pb.BehaviorEvent(item_text=t, event_type="purchase") for t in texts]
    reply = await stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=events),
                                            timeout=30)
    vec = np.array(reply.embedding, dtype=np.float32)
    assert reply.dim == 384 == vec.shape[0] and reply.events_used == 2
    assert abs(float(np.linalg.norm(vec)) - 1.0) < 1e-4
    singles = []
    for event in events:
        one = await stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="food", events=[event]),
                                              timeout=30)
        singles.append(np.array(one.embedding, dtype=np.float32))
    mean = np.sum(singles, axis=0)
    mean /= np.linalg.norm(mean)
    assert float(vec @ mean) > 0.999
    assert float(singles[0] @ singles[1]) < 0.99, "different texts give different embeddings"


async def test_ingest_applies_valid_events_and_reports_each_bad_one(stack: Stack) -> None:
    user_id = "it-mixed-batch"
    events = [
        pb.BehaviorEvent(user_id=user_id, item_text="Earl Grey tea", event_type="review"),
        pb.BehaviorEvent(user_id=user_id, item_text="Dark chocolate", event_type="teleport"),
        pb.BehaviorEvent(user_id="", item_text="Honey", event_type="review"),
        pb.BehaviorEvent(user_id=user_id, event_type="review"),
        pb.BehaviorEvent(user_id=user_id, item_id="NOT-IN-CATALOGUE", event_type="review"),
        pb.BehaviorEvent(user_id=user_id, item_id="bad id with spaces", item_text="x", event_type="review"),
        pb.BehaviorEvent(user_id=user_id, item_text="Matcha powder", event_type="purchase"),
    ]
    reply = await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=30)
    assert (reply.accepted, reply.rejected) == (2, 5)
    by_index = {r.index: r for r in reply.results}
    assert by_index[0].accepted and by_index[6].accepted
    assert "event_type 'teleport'" in by_index[1].error
    assert by_index[2].error == "user_id is empty"
    assert "neither item_id nor item_text" in by_index[3].error
    assert "not in the food catalogue" in by_index[4].error
    assert "not a product id" in by_index[5].error
    assert all(by_index[i].error_code == "INVALID_ARGUMENT" for i in (1, 2, 3, 4, 5))
    profile = await stack.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=5)
    assert profile.platforms[0].event_count == 2


async def test_metrics_endpoint_shows_stage_histograms(stack: Stack) -> None:
    """These three calls each move their own stage histograms and RPC counters (read before and
    after: other tests on the same stack have made such calls too)."""

    before = scrape_metrics(stack.metrics_port)
    await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="kitchen", events=[
        pb.BehaviorEvent(user_id="it-metrics", item_text="chef knife", event_type="view")]), timeout=30)
    await stack.stub.Recommend(pb.RecommendRequest(user_id="it-metrics", target_platform="kitchen", k=5),
                               timeout=10)
    await stack.stub.EncodeInterest(pb.EncodeInterestRequest(platform="kitchen", events=[
        pb.BehaviorEvent(item_text=f"cast iron skillet {uuid.uuid4().hex[:8]}", event_type="view")]),
        timeout=30)  # an unseen text, so the call reaches Triton (infer) rather than the cache
    after = scrape_metrics(stack.metrics_port)

    def added(metric: str, **labels: str) -> float:
        return metric_total(after, metric, **labels) - metric_total(before, metric, **labels)

    for stage in ("preprocess", "tokenize", "infer", "total"):
        assert added(f"interest_{stage}_seconds_count", rpc="EncodeInterest", platform="kitchen") == 1, stage
    for stage in ("preprocess", "store", "total"):
        assert added(f"interest_{stage}_seconds_count", rpc="IngestEvents", platform="kitchen") >= 1, stage
    for stage in ("migrate", "rank", "total"):
        assert added(f"interest_{stage}_seconds_count", rpc="Recommend", platform="kitchen") == 1, stage
    assert added("grpc_server_handled_total", grpc_method="Recommend", grpc_code="OK") == 1
    assert added("grpc_server_handling_seconds_count", grpc_method="EncodeInterest") == 1
    assert metric_total(after, "interest_catalogue_items", platform="kitchen") == CATALOGUE_SLICE


async def test_without_consent_nothing_migrates(stack: Stack) -> None:
    """Consent off (the default): a food-only user gets a non-personalised kitchen answer that
    says so; consent on: the food interests migrate; DeleteUser removes the consent too."""
    user_id = "it-consent"
    events = [pb.BehaviorEvent(user_id=user_id, item_text="Japanese sencha green tea", event_type="review")]
    await stack.stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=30)
    request = pb.RecommendRequest(user_id=user_id, target_platform="kitchen", k=5)
    off = await stack.stub.Recommend(request, timeout=10)
    assert not off.personalised and "no consent" in off.explanation and not off.source_platforms
    assert [w.platform for w in off.withheld_sources] == ["food"]
    assert len(off.items) == 5
    scores = [i.score for i in off.items]
    assert scores == sorted(scores, reverse=True) and scores[0] >= 1, "most popular first"
    await stack.stub.SetConsent(pb.SetConsentRequest(user_id=user_id, migrate=True), timeout=5)
    on = await stack.stub.Recommend(request, timeout=10)
    assert on.personalised and list(on.source_platforms) == ["food"] and not on.withheld_sources
    assert (await stack.stub.GetProfile(pb.GetProfileRequest(user_id=user_id), timeout=5)).migrate_consent
    await stack.stub.DeleteUser(pb.DeleteUserRequest(user_id=user_id), timeout=5)
    assert stack.gateway.service.store.consent_rules(stack.gateway.service.pseudonymise(user_id)) == []
