"""Stored profiles carry the model version that embedded them; after a new model is served,
a profile of the old one is re-embedded from its items' catalogue titles, never mixed."""

from __future__ import annotations

import asyncio
import sqlite3
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.servicer import InterestGatewayService
from interest_core.catalogue import Catalogue
from interest_core.config import load_settings
from interest_core.errors import NotFound
from interest_core.migration import MigrationMap
from interest_core.profiles import Profile, ProfileStore
from interest_core.ranking.index import CatalogueIndex
from interest_core.store_sqlite import SqliteProfileStore
from tests.unit.test_served_ranking import CTX

DIM = 4
TITLES = {"k0": "Chef knife", "k1": "Cast iron pan", "k2": "Tea kettle"}


class FakeEncoder:
    """A deterministic 'new model': each text gets its own unit vector; calls are recorded."""

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def vector(self, text: str) -> np.ndarray:
        v = np.random.default_rng(sum(map(ord, text))).standard_normal(DIM).astype(np.float32)
        return v / np.linalg.norm(v)

    async def embed(self, texts: Sequence[str], rpc: str, platform: str,
                    timeout: float | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.vector(t) for t in texts])


def new_store(tmp_path: Path) -> ProfileStore:
    """The store make_service uses; tests/integration/test_store_engines.py points it at each
    engine in turn, to run these tests (and test_profile_writes') on SQLite and PostgreSQL."""
    return SqliteProfileStore(tmp_path / "p.sqlite3")


def make_service(tmp_path: Path, version: str = "new") -> tuple[InterestGatewayService, FakeEncoder]:
    encoder = FakeEncoder()
    encoder_any: Any = encoder
    svc = InterestGatewayService(
        load_settings(var_dir=tmp_path), new_store(tmp_path), encoder_any,
        GatewayMetrics(), MigrationMap(DIM), {"food": {}, "kitchen": dict(TITLES)})
    ids = tuple(TITLES)
    svc.set_index("kitchen", CatalogueIndex(Catalogue("kitchen", ids, tuple(TITLES.values())),
                                            np.stack([encoder.vector(t) for t in TITLES.values()])))
    svc.model_version = version
    return svc, encoder


def store_profile(svc: InterestGatewayService, user: str, items: list[str], version: str,
                  events: int = 5) -> str:
    key = svc.pseudonymise(user)
    old_space = np.full(DIM, 7.0, np.float32)  # what the old model had summed
    svc.store.save_many([(key, Profile("kitchen", old_space, events, items, model_version=version))])
    return key


def get_profile(svc: InterestGatewayService, user: str) -> pb.GetProfileResponse:
    return asyncio.run(svc.GetProfile(pb.GetProfileRequest(user_id=user), CTX))


def reembedded(svc: InterestGatewayService, outcome: str) -> float:
    value = svc.metrics.registry.get_sample_value(
        "interest_profiles_reembedded_total", {"platform": "kitchen", "outcome": outcome})
    return value or 0.0


def test_a_profile_of_an_older_model_is_rebuilt_from_its_items_and_saved(tmp_path: Path) -> None:
    svc, encoder = make_service(tmp_path)
    key = store_profile(svc, "u1", ["k0", "k2", "gone-from-catalogue"], version="old", events=5)
    response = get_profile(svc, "u1")
    assert response.platforms[0].event_count == 5  # kept: it is the profile's weight in migration
    assert encoder.calls == [["Chef knife", "Tea kettle"]]  # catalogue titles of its known items
    stored = svc.store.load(key)["kitchen"]
    assert stored.model_version == "new"
    want = 5 * np.mean([encoder.vector("Chef knife"), encoder.vector("Tea kettle")], axis=0)
    np.testing.assert_allclose(stored.vec_sum, want, rtol=1e-6)
    assert stored.items == ["k0", "k2", "gone-from-catalogue"]  # still excluded from Recommend
    assert reembedded(svc, "rebuilt") == 1
    get_profile(svc, "u1")  # now current: not re-embedded again
    assert len(encoder.calls) == 1


def test_recommend_ranks_with_the_rebuilt_profile(tmp_path: Path) -> None:
    svc, _ = make_service(tmp_path)
    store_profile(svc, "u2", ["k1"], version="old")
    request = pb.RecommendRequest(user_id="u2", target_platform="kitchen", k=2)
    response = asyncio.run(svc.Recommend(request, CTX))
    # rebuilt from "Cast iron pan" alone, the query is that title's own vector: its cosine
    # with each remaining item is the score (the old all-7s vector would score otherwise)
    encoder = FakeEncoder()
    query = encoder.vector("Cast iron pan")
    want = sorted(("k0", "k2"), key=lambda i: -float(encoder.vector(TITLES[i]) @ query))
    assert [item.item_id for item in response.items] == want
    for item in response.items:
        assert abs(item.score - float(encoder.vector(TITLES[item.item_id]) @ query)) < 1e-5


def test_a_profile_with_no_catalogue_item_is_emptied_not_mixed(tmp_path: Path) -> None:
    svc, encoder = make_service(tmp_path)
    key = store_profile(svc, "u3", ["free-text-only"], version="old")
    get_profile(svc, "u3")
    stored = svc.store.load(key)["kitchen"]
    assert encoder.calls == [] and not stored.vec_sum.any() and stored.model_version == "new"
    assert reembedded(svc, "emptied") == 1


def test_unversioned_rows_are_adopted_and_nothing_happens_before_a_model_is_served(
        tmp_path: Path) -> None:
    svc, encoder = make_service(tmp_path, version="")
    key = store_profile(svc, "u4", ["k0"], version="old")
    get_profile(svc, "u4")  # not serving a model yet: left alone
    assert svc.store.load(key)["kitchen"].model_version == "old"
    svc.model_version = "new"
    key = store_profile(svc, "u5", ["k0"], version="")
    get_profile(svc, "u5")
    assert encoder.calls == []  # rows from before versions were kept: taken as current
    assert svc.store.load(key)["kitchen"].vec_sum[0] == 7.0


def test_ingest_into_a_stale_profile_rebuilds_it_first(tmp_path: Path) -> None:
    svc, encoder = make_service(tmp_path)
    key = store_profile(svc, "u6", ["k0"], version="old", events=1)
    request = pb.IngestEventsRequest(platform="kitchen", events=[
        pb.BehaviorEvent(user_id="u6", item_id="k1", event_type="purchase")])
    assert asyncio.run(svc.IngestEvents(request, CTX)).accepted == 1
    stored = svc.store.load(key)["kitchen"]
    assert stored.model_version == "new" and stored.events == 2
    want = encoder.vector("Chef knife") + encoder.vector("Cast iron pan")  # no trace of the 7s
    np.testing.assert_allclose(stored.vec_sum, want, rtol=1e-6)


def test_a_store_from_before_model_versions_opens_and_keeps_its_rows(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    db = sqlite3.connect(path)
    db.executescript(
        "CREATE TABLE profiles (user_key TEXT NOT NULL, platform TEXT NOT NULL, dim INTEGER NOT NULL,"
        " vec_sum BLOB NOT NULL, events INTEGER NOT NULL, items TEXT NOT NULL,"
        " updated_ms INTEGER NOT NULL, PRIMARY KEY (user_key, platform));")
    db.execute("INSERT INTO profiles VALUES (?,?,?,?,?,?,?)",
               ("key", "food", DIM, np.ones(DIM, np.float32).tobytes(), 3, '["f1"]', 1))
    db.commit()
    db.close()
    store = SqliteProfileStore(path)
    loaded = store.load("key")["food"]
    assert loaded.model_version == "" and loaded.events == 3 and loaded.items == ["f1"]
    loaded.model_version = "v2"
    store.save_many([("key", loaded)])
    assert store.load("key")["food"].model_version == "v2"


def test_a_stored_profile_of_a_platform_this_gateway_does_not_serve_is_left_alone(tmp_path: Path) -> None:
    """One profile store, two configs (the Amazon pair, then the social-video pair): a gateway
    neither rebuilds nor empties a platform it does not serve, nor migrates from it."""
    svc, encoder = make_service(tmp_path)
    key = store_profile(svc, "u9", ["k0"], version="new")
    foreign = Profile("social", np.full(DIM, 3.0, np.float32), 4, ["post-1"], model_version="other")
    svc.store.save_many([(key, foreign)])
    asyncio.run(svc.SetConsent(pb.SetConsentRequest(user_id="u9", migrate=True), CTX))
    response = get_profile(svc, "u9")
    assert [p.platform for p in response.platforms] == ["kitchen"]
    recommended = asyncio.run(svc.Recommend(
        pb.RecommendRequest(user_id="u9", target_platform="kitchen", k=2), CTX))
    assert recommended.personalised and list(recommended.source_platforms) == []  # not "social"
    kept = svc.store.load(key)["social"]
    assert kept.model_version == "other" and kept.events == 4
    np.testing.assert_array_equal(kept.vec_sum, foreign.vec_sum)
    assert encoder.calls == [] and reembedded(svc, "emptied") == 0
    svc.store.save_many([(svc.pseudonymise("u10"), foreign)])
    with pytest.raises(NotFound, match="no interest profile"):
        asyncio.run(svc.Recommend(pb.RecommendRequest(user_id="u10", target_platform="kitchen", k=2), CTX))
    with pytest.raises(NotFound, match="no interest profile"):
        get_profile(svc, "u10")
