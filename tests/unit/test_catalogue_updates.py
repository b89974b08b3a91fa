"""Catalogue updates without a restart, without Triton: the live catalogue's bookkeeping, the
checks of each change, and UpdateCatalogue through the servicer on a real SQLite store with
a stand-in encoder (a table of title -> vector). Two services on one store file stand for two
gateways; a new service on the same file for a restarted one. The real stack's test is
tests/integration/test_catalogue_updates.py."""

from __future__ import annotations

import asyncio
import os
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import pytest

from gateway.auth import key_digest
from gateway.catalogue import CatalogueFollower, background_priority
from gateway.errors import status_of
from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.servicer import InterestGatewayService
from interest_core.catalogue import Catalogue, InstalledCatalogue, Prefix
from interest_core.config import load_settings
from interest_core.errors import InterestError
from interest_core.live_catalogue import LiveCatalogue, check_changes
from interest_core.migration import MigrationMap
from interest_core.profiles import Profile
from interest_core.ranking.ann import (
    AddedIndex,
    AnnIndex,
    AnnSnapshot,
    BuildStopped,
    IndexParams,
    store_index,
)
from interest_core.ranking.blend import ServedBlend, _merged_order
from interest_core.store_sqlite import SqliteProfileStore
from tests.unit.test_served_ranking import make_assets

DIM = 4


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


KITCHEN = {"k0": ("Tea kettle", unit(1, 0.2, 0, 0)), "k1": ("Frying pan", unit(0, 1, 0, 0)),
           "k2": ("Chef knife", unit(0, 0, 1, 0))}


@dataclass(frozen=True)
class Change:
    item_id: str
    title: str
    embedding: np.ndarray | None
    removed: bool
    version: int


def installed() -> InstalledCatalogue:
    ids = tuple(KITCHEN)
    return InstalledCatalogue(Catalogue("kitchen", ids, tuple(KITCHEN[i][0] for i in ids)),
                              np.stack([KITCHEN[i][1] for i in ids]), np.array([3, 2, 1], np.float32))


# --- LiveCatalogue -------------------------------------------------------------------------

def test_live_catalogue_adds_retitles_removes_and_skips_what_it_has_seen() -> None:
    served = installed()
    before = served.embeddings.copy()
    live = LiveCatalogue(served)
    applied = live.apply([Change("k9", "Matcha whisk", unit(1, 0, 0, 1), False, 1),
                          Change("k1", "Cast iron pan", unit(0, 1, 1, 0), False, 2),
                          Change("k2", "", None, True, 3)])
    assert applied == 3 and live.version == 3 and len(live) == 3
    index, popularity, added = live.snapshot()
    assert index.catalogue.item_ids == ("k0", "k1", "k9")  # positions kept, k2 gone
    assert added.tolist() == [False, False, True]
    assert index.catalogue.titles == ("Tea kettle", "Cast iron pan", "Matcha whisk")
    np.testing.assert_allclose(index.embeddings[1], unit(0, 1, 1, 0))
    np.testing.assert_array_equal(served.embeddings, before)  # served at start: never written
    np.testing.assert_array_equal(popularity, [3, 2, 0])  # a new item has no popularity
    assert live.apply([Change("k2", "", None, True, 3)]) == 0  # seen before
    live.apply([Change("k2", "Chef knife, new", unit(0, 0, 1, 0), False, 4)])  # listed again
    assert "k2" in live and live.snapshot()[0].catalogue.item_ids == ("k0", "k1", "k2", "k9")


def test_an_item_added_and_removed_in_one_batch_is_not_served() -> None:
    live = LiveCatalogue(installed())
    live.apply([Change("k9", "Whisk", unit(1, 0, 0, 0), False, 1), Change("k9", "", None, True, 2)])
    assert "k9" not in live and "k9" not in live.snapshot()[0].catalogue.item_ids


def test_vectors_changed_again_and_again_keep_only_their_latest_row() -> None:
    live = LiveCatalogue(installed())
    rng = np.random.default_rng(0)
    latest: dict[str, np.ndarray] = {}
    listed_at: dict[str, int] = {}
    version = 0
    for _ in range(20):  # each round re-lists k0 and k9 and removes k2 or lists it again
        batch = []
        for item in ("k0", "k9", "k2"):
            version += 1
            if item == "k2" and version % 2:
                batch.append(Change(item, "", None, True, version))
                latest.pop(item, None)
            else:
                latest[item], listed_at[item] = unit(*rng.standard_normal(DIM)), version
                batch.append(Change(item, f"{item} v{version}", latest[item], False, version))
        live.apply(batch)
        positions, vectors, versions = live.changed_items()
        ids = [live.ids[p] for p in positions]
        assert sorted(ids) == sorted(latest)
        for item, vec, entry in zip(ids, vectors, versions):
            np.testing.assert_array_equal(vec, latest[item])
            assert entry == listed_at[item]
    # rows of replaced or removed vectors were dropped on the way: never more than twice those in use
    assert len(live.changed) <= 2 * len(latest) + 3
    index, _, _ = live.snapshot()
    for row, item in enumerate(index.catalogue.item_ids):
        expected = latest[item] if item in latest else KITCHEN[item][1]
        np.testing.assert_array_equal(index.embeddings[row], expected)


def test_an_entry_of_another_dimension_is_refused() -> None:
    with pytest.raises(ValueError, match="values, the served model 4"):
        LiveCatalogue(installed()).apply([Change("k9", "Whisk", np.ones(3, np.float32), False, 1)])


def test_each_bad_change_gets_its_own_reason() -> None:
    live = LiveCatalogue(installed())
    upserts: list[tuple[str, str, dict[str, str]]] = [
        ("k9", "Matcha whisk", {}), ("", "No id", {}), ("k8", "   ", {}), ("k7", "x" * 1001, {}),
        ("k9", "Again", {}), (" k6", "Spaces", {}), ("k5", "Many", {str(i): "v" for i in range(33)}),
        ("k4", "Tea\x00pot", {})]
    problems = check_changes(upserts, ["k0", "nope", "k9"], live, max_title_chars=1000)
    assert "NUL character" in problems[7].message  # PostgreSQL text cannot hold one
    reasons = {i: (p.code, p.message) for i, p in problems.items()}
    assert 0 not in reasons and 8 not in reasons  # a good upsert, a removal of a listed item
    assert reasons[1] == ("INVALID_ARGUMENT", "item_id is empty")
    assert "title is empty" in reasons[2][1] and "longer than 1000" in reasons[3][1]
    assert "appears earlier in this request (change 0)" in reasons[4][1]
    assert "surrounding spaces" in reasons[5][1] and "more than 32 attributes" in reasons[6][1]
    assert reasons[9] == ("NOT_FOUND", "no item 'nope' in the kitchen catalogue")
    assert "appears earlier" in reasons[10][1]  # k9 upserted and removed in one call


# --- UpdateCatalogue through the servicer, on a real SQLite store ----------------------------

class TableEncoder:
    """Stands in for Triton in these unit tests: embeds a title as the table says."""

    url = "stand-in"

    def __init__(self, table: dict[str, np.ndarray]) -> None:
        self.table = table
        self.calls: list[list[str]] = []
        self.cache: Any = type("Cache", (), {"put": lambda self, text, vec: None})()

    async def embed(self, texts: list[str], rpc: str, platform: str, timeout: float | None = None
                    ) -> np.ndarray:
        self.calls.append(list(texts))
        return np.stack([self.table[t] * 2.0 for t in texts])  # not unit: the gateway normalises


class Ctx:
    def __init__(self, key: str = "") -> None:
        self.key = key

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("x-api-key", self.key),) if self.key else ()


TITLES = {"Matcha whisk": unit(1, 0, 0, 0.05), "Bamboo tea scoop": unit(1, 0.1, 0, 0)}


def gateway(path: Path, **settings: Any) -> InterestGatewayService:
    """A service on the store file `path` with its catalogues served by a CatalogueFollower,
    as gateway.server starts it."""
    encoder: Any = TableEncoder(TITLES)
    titles = {"food": {}, "kitchen": {i: t for i, (t, _) in KITCHEN.items()}}
    svc = InterestGatewayService(load_settings(var_dir=path.parent, **settings), SqliteProfileStore(path),
                                 encoder, GatewayMetrics(), MigrationMap(DIM, None), titles)
    svc.model_version = "v1"
    follower = CatalogueFollower(svc.book, svc.recommender, encoder, svc.metrics, {"kitchen": installed()},
                                 titles, "v1")
    asyncio.run(follower.start())
    svc.catalogues = follower
    return svc


def update(svc: InterestGatewayService, upserts: list[tuple[str, str]] = (), removals: list[str] = (),  # type: ignore[assignment]
           key: str = "") -> pb.UpdateCatalogueResponse:
    request = pb.UpdateCatalogueRequest(platform="kitchen", remove_item_ids=removals,
                                        upserts=[pb.CatalogueItem(item_id=i, title=t) for i, t in upserts])
    return asyncio.run(svc.UpdateCatalogue(request, Ctx(key)))  # type: ignore[arg-type]


def top(svc: InterestGatewayService, user: str = "tea-lover", k: int = 3) -> list[str]:
    reply = asyncio.run(svc.Recommend(pb.RecommendRequest(user_id=user, target_platform="kitchen", k=k),
                                      Ctx()))  # type: ignore[arg-type]
    return [i.item_id for i in reply.items]


def tea_lover(svc: InterestGatewayService) -> None:
    svc.store.save_many([(svc.pseudonymise("tea-lover"), Profile("kitchen", unit(1, 0, 0, 0), 1, []))])


def test_a_new_item_is_ranked_at_once_and_a_removed_one_never_again(tmp_path: Path) -> None:
    svc = gateway(tmp_path / "p.sqlite3")
    tea_lover(svc)
    assert top(svc) == ["k0", "k1", "k2"]
    reply = update(svc, [("k9", "Matcha whisk")])
    assert (reply.applied, reply.rejected, reply.catalogue_version, reply.catalogue_items) == (1, 0, 1, 4)
    assert top(svc)[0] == "k9"  # closest to the user's tea interest, no co-occurrence needed
    assert svc.adapters["kitchen"].catalogue_text("k9") == "Matcha whisk"  # events may name it
    update(svc, removals=["k9", "k0"])
    assert top(svc, k=5) == ["k1", "k2"]


def test_another_gateway_and_a_restarted_one_serve_the_same_catalogue(tmp_path: Path) -> None:
    a, b = gateway(tmp_path / "p.sqlite3"), gateway(tmp_path / "p.sqlite3")
    tea_lover(a)
    update(a, [("k9", "Matcha whisk"), ("k8", "Bamboo tea scoop")], ["k1"])
    assert asyncio.run(b.catalogues.sync("kitchen")) == 3  # type: ignore[union-attr]
    assert top(b, k=5) == top(a, k=5) == ["k9", "k8", "k0", "k2"]
    restarted = gateway(tmp_path / "p.sqlite3")  # catches up at start, before serving
    assert top(restarted, k=5) == ["k9", "k8", "k0", "k2"]
    assert restarted.encoder.calls == []  # type: ignore[attr-defined]  # same model: nothing re-embedded


def test_items_added_under_an_older_model_are_re_embedded_by_the_new_one(tmp_path: Path) -> None:
    old = gateway(tmp_path / "p.sqlite3")
    update(old, [("k9", "Matcha whisk")])
    encoder: Any = TableEncoder(TITLES)
    svc = InterestGatewayService(load_settings(var_dir=tmp_path), SqliteProfileStore(tmp_path / "p.sqlite3"),
                                 encoder, GatewayMetrics(), MigrationMap(DIM, None),
                                 {"food": {}, "kitchen": {}})
    follower = CatalogueFollower(svc.book, svc.recommender, encoder, svc.metrics, {"kitchen": installed()},
                                 {"kitchen": {}}, "v2")
    asyncio.run(follower.start())
    assert svc.encoder.calls == [["Matcha whisk"]]  # type: ignore[attr-defined]
    rows = svc.store.catalogue_changes("kitchen", 0)
    assert [(r.item_id, r.model_version) for r in rows] == [("k9", "v2")]  # written back for all


def test_bad_changes_are_refused_one_by_one_and_the_rest_applies(tmp_path: Path) -> None:
    svc = gateway(tmp_path / "p.sqlite3")
    reply = update(svc, [("k9", "Matcha whisk"), ("k8", "")], ["nope"])
    assert (reply.applied, reply.rejected) == (1, 2)
    assert [(r.item_id, r.applied, r.error_code) for r in reply.results] == [
        ("k9", True, ""), ("k8", False, "INVALID_ARGUMENT"), ("nope", False, "NOT_FOUND")]
    assert "k9" in svc.catalogues.live["kitchen"]  # type: ignore[union-attr]


@pytest.mark.parametrize(("kwargs", "code", "message"), [
    ({"upserts": [], "removals": []}, grpc.StatusCode.INVALID_ARGUMENT, "nothing to change"),
    ({"upserts": [(f"n{i}", "Matcha whisk") for i in range(10_000)]}, grpc.StatusCode.INVALID_ARGUMENT,
     "10000 catalogue changes in one request; the limit is 1000"),
])
def test_a_whole_call_is_refused_for_what_it_asks(tmp_path: Path, kwargs: dict[str, Any],
                                                  code: grpc.StatusCode, message: str) -> None:
    svc = gateway(tmp_path / "p.sqlite3")
    with pytest.raises(InterestError) as err:
        update(svc, **kwargs)
    assert status_of(err.value) == code and message in str(err.value)
    assert svc.store.catalogue_changes("kitchen", 0) == []


def test_only_the_platform_s_own_key_or_the_operator_may_change_its_catalogue(tmp_path: Path) -> None:
    keys = {key_digest(key): platform
            for key, platform in (("food-key", "food"), ("kitchen-key", "kitchen"), ("ops-key", "*"))}
    svc = gateway(tmp_path / "p.sqlite3", api_keys=keys)
    with pytest.raises(InterestError) as err:
        update(svc, [("k9", "Matcha whisk")], key="food-key")
    assert status_of(err.value) == grpc.StatusCode.PERMISSION_DENIED
    assert update(svc, [("k9", "Matcha whisk")], key="kitchen-key").applied == 1
    assert update(svc, removals=["k9"], key="ops-key").applied == 1
    request = pb.UpdateCatalogueRequest(platform="groceries",
                                        upserts=[pb.CatalogueItem(item_id="x", title="y")])
    with pytest.raises(InterestError) as unknown:
        asyncio.run(svc.UpdateCatalogue(request, Ctx("ops-key")))  # type: ignore[arg-type]
    assert status_of(unknown.value) == grpc.StatusCode.NOT_FOUND


def test_an_item_added_while_serving_gets_the_median_popularity_not_the_least() -> None:
    assets = make_assets(cooc=1.0, pop=0.5)  # kitchen popularity 0, 2, 50, 4
    ids = ["k0", "k1", "k2", "k3", "new", "unknown"]
    blend = ServedBlend(assets, "kitchen", ids, added=np.array([False] * 4 + [True, False]))
    terms = blend({"food": np.array([2], np.int64)})  # f2: no co-occurrence, popularity only
    assert terms is not None
    known = 0.5 * np.log1p(np.array([0, 2, 50, 4], np.float32))
    np.testing.assert_allclose(terms[:4], known, rtol=1e-6)
    assert terms[4] == pytest.approx(float(np.median(known)), rel=1e-6)  # added: the median
    assert terms[5] == 0.0  # installed but unknown to the assets: as before, nothing


def test_a_prefix_views_the_first_entries_of_a_list_as_it_grows() -> None:
    items = ["a", "b", "c"]
    view = Prefix(items, 2)
    items += ["d"]  # the list grows: the view does not
    assert len(view) == 2 and list(view) == ["a", "b"] and view[-1] == "b" and view[0:5] == ("a", "b")
    with pytest.raises(IndexError):
        view[2]
    longer = Prefix(items, 4)
    assert longer.extends(view) and not view.extends(longer)
    assert not longer.extends(Prefix(list(items), 2)) and not longer.extends(("a", "b"))


def test_a_snapshot_keeps_its_titles_when_an_item_is_retitled_later(tmp_path: Path) -> None:
    store_index(installed().embeddings, tmp_path / "kitchen.faiss", IndexParams(m=16, ef_construction=40))
    ann = AnnIndex.load(tmp_path / "kitchen.faiss", 16)
    live = LiveCatalogue(installed())
    index = live.ann_snapshot(ann)[0]
    live.apply([Change("k1", "Cast iron pan", unit(0, 1, 1, 0), False, 1),
                Change("k9", "Matcha whisk", unit(1, 0, 0, 1), False, 2)])
    assert tuple(index.catalogue.titles) == ("Tea kettle", "Frying pan", "Chef knife")  # as it was
    later = live.ann_snapshot(ann)[0]
    assert tuple(later.catalogue.titles) == ("Tea kettle", "Cast iron pan", "Chef knife", "Matcha whisk")
    assert tuple(later.catalogue.item_ids) == ("k0", "k1", "k2", "k9")
    assert tuple(index.catalogue.item_ids) == ("k0", "k1", "k2")  # the ids only grew


def test_a_blend_grown_by_added_items_equals_one_made_afresh() -> None:
    assets = make_assets(cooc=1.0, pop=0.5)  # kitchen popularity 0, 2, 50, 4
    ids = ["k0", "k1", "k2", "k3", "new1", "extra"]
    first = ServedBlend(assets, "kitchen", Prefix(ids, 5), added=np.array([False] * 4 + [True]))
    first.popularity_order()
    ids += ["new2", "new3", "k9"]  # k9: unknown to the assets, listed again while serving
    added = np.array([False] * 4 + [True] * 5)
    grown = first.grown(Prefix(ids, 9), added)
    fresh = ServedBlend(assets, "kitchen", Prefix(ids, 9), added=added)
    assert grown.size == fresh.size == 9 and grown.cooc["food"].shape == fresh.cooc["food"].shape
    assert grown.popularity is not None and fresh.popularity is not None
    np.testing.assert_array_equal(grown.popularity, fresh.popularity)
    np.testing.assert_array_equal(grown.popularity_order(), fresh.popularity_order())
    for history in ([0], [0, 1], [2]):
        rows = {"food": np.array(history, np.int64)}
        dense_mine, dense_theirs = grown(rows), fresh(rows)
        assert dense_mine is not None and dense_theirs is not None
        np.testing.assert_array_equal(dense_mine, dense_theirs)
        mine, theirs = grown.sparse(rows), fresh.sparse(rows)
        assert mine is not None and theirs is not None
        np.testing.assert_array_equal(mine.leaders(4)[0], theirs.leaders(4)[0])
    # ids that are not a view extending this one's: made afresh
    other = first.grown(("k0", "k1", "k2", "k3", "new1", "k2"), np.array([False] * 4 + [True] * 2))
    assert other.cooc["food"][:, 5].sum() == 3  # k2's column from the assets again


def test_a_blend_grown_by_an_item_the_assets_know_equals_one_made_afresh() -> None:
    """k2 (popularity 50, co-occurring with f1) listed while serving: its column and popularity
    come from the assets, and the median term of the new items moves with the known items."""
    assets = make_assets(cooc=1.0, pop=0.5)
    ids = ["k0", "k1", "k3", "new1"]
    first = ServedBlend(assets, "kitchen", Prefix(ids, 4), added=np.array([False] * 3 + [True]))
    first.popularity_order()
    ids += ["k2", "new2"]
    added = np.array([False] * 3 + [True] * 3)
    grown = first.grown(Prefix(ids, 6), added)
    fresh = ServedBlend(assets, "kitchen", Prefix(ids, 6), added=added)
    assert grown.popularity is not None and fresh.popularity is not None
    np.testing.assert_array_equal(grown.popularity, fresh.popularity)
    assert first.popularity is not None and grown.popularity[3] != first.popularity[3]  # new1's median moved
    np.testing.assert_array_equal(grown.popularity_order(), fresh.popularity_order())
    assert grown.cooc["food"][:, 4].sum() == fresh.cooc["food"][:, 4].sum() == 3


def test_merging_new_positions_into_a_popularity_order_keeps_it_stable() -> None:
    rng = np.random.default_rng(3)
    values = rng.integers(0, 5, 200).astype(np.float32)
    new = rng.integers(0, 5, 30).astype(np.float32)
    merged = _merged_order(np.argsort(-values, kind="stable"), values, new, len(values))
    np.testing.assert_array_equal(merged, np.argsort(-np.concatenate([values, new]), kind="stable"))


# --- the gateway's index of the items added to an indexed catalogue ------------------------

def test_an_indexed_catalogue_indexes_its_added_items_in_the_background(tmp_path: Path) -> None:
    """ann_added_index_min 2 on a 3-item catalogue ranked through its index: nothing is built at
    start-up; two added items are indexed by a build in the background and ranked through it;
    one of them removed is masked there, not built again for alone; one more added makes two to
    take care of, so the index is built again, whole; after close() nothing more is built."""
    inst = installed()
    store_index(inst.embeddings, tmp_path / "kitchen.faiss", IndexParams(m=16, ef_construction=40))
    titles: dict[str, dict[str, str]] = {"food": {}, "kitchen": {i: t for i, (t, _) in KITCHEN.items()}}
    encoder: Any = TableEncoder(TITLES)
    svc = InterestGatewayService(load_settings(var_dir=tmp_path), SqliteProfileStore(tmp_path / "p.sqlite3"),
                                 encoder, GatewayMetrics(), MigrationMap(DIM, None), titles)
    svc.model_version = "v1"
    tea_lover(svc)
    follower = CatalogueFollower(svc.book, svc.recommender, encoder, svc.metrics, {"kitchen": inst},
                                 titles, "v1", {"kitchen": AnnIndex.load(tmp_path / "kitchen.faiss", 16)},
                                 added_index_min=2)
    svc.catalogues = follower

    def snapshot() -> AnnSnapshot:
        ann = svc.recommender.served["kitchen"].ann
        assert ann is not None
        return ann

    async def settled(added_live: int, delta: int) -> AnnSnapshot:
        for _ in range(500):
            ann = snapshot()
            if (ann.added_live, len(ann.delta)) == (added_live, delta):
                return ann
            await asyncio.sleep(0.01)
        raise AssertionError((snapshot().added_live, len(snapshot().delta)))

    async def ranked() -> list[str]:
        reply = await svc.Recommend(pb.RecommendRequest(user_id="tea-lover", target_platform="kitchen", k=5),
                                    Ctx())  # type: ignore[arg-type]
        return [i.item_id for i in reply.items]

    async def main() -> None:
        await follower.start()
        assert snapshot().added is None
        await follower.update("kitchen", [("n1", "Matcha whisk", {}, TITLES["Matcha whisk"]),
                                          ("n2", "Bamboo tea scoop", {}, TITLES["Bamboo tea scoop"])], [])
        first = await settled(2, 0)
        assert first.added is not None and sorted(first.added.positions.tolist()) == [3, 4]
        assert (await ranked())[:2] == ["n1", "n2"]  # the user's tea interest, through the new index
        await follower.update("kitchen", [], ["n1"])
        masked = await settled(1, 0)
        assert masked.added is first.added and masked.added_banned is not None  # not built again
        assert "n1" not in await ranked()
        await follower.update("kitchen", [("n3", "Matcha whisk", {}, TITLES["Matcha whisk"])], [])
        again = await settled(2, 0)  # one scored exactly and one masked: built again
        assert again.added is not None and again.added is not first.added
        assert again.added.positions.tolist() == [4, 5] and again.added_banned is None
        assert (await ranked())[:2] == ["n3", "n2"]
        await follower.close()
        await follower.update("kitchen", [("n4", "Matcha whisk", {}, TITLES["Matcha whisk"]),
                                          ("n5", "Bamboo tea scoop", {}, TITLES["Bamboo tea scoop"])], [])
        await asyncio.sleep(0.2)
        assert (snapshot().added_live, len(snapshot().delta)) == (2, 2)  # closed: scored exactly

    asyncio.run(main())


def test_a_build_of_the_added_items_index_stops_when_told() -> None:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((5_000, DIM)).astype(np.float32)
    stop = threading.Event()
    built = AddedIndex.build(np.arange(5_000), vectors, np.arange(5_000), stop)
    assert len(built) == 5_000
    stop.set()
    with pytest.raises(BuildStopped, match="stopped after 0 of 5,000 items"):
        AddedIndex.build(np.arange(5_000), vectors, np.arange(5_000), stop)
    with pytest.raises(ValueError, match="sorted"):
        AddedIndex.build(np.array([2, 1]), vectors[:2], np.arange(2))


def test_the_added_items_index_builds_on_a_thread_that_yields_to_serving() -> None:
    """background_priority puts only its own thread under SCHED_IDLE (Linux sets the policy per
    thread): the serving threads keep theirs."""
    seen: list[int] = []

    def probe() -> None:
        background_priority()
        seen.append(os.sched_getscheduler(0))  # (0: the calling thread)

    thread = threading.Thread(target=probe)
    thread.start()
    thread.join()
    assert seen == [os.SCHED_IDLE]
    assert os.sched_getscheduler(0) != os.SCHED_IDLE
