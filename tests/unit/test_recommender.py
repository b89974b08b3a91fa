"""The serving core's Recommender and ProfileBook, called directly: no servicer, no gRPC
context, no protobuf. Hand-made assets from test_served_ranking plus a random catalogue."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from interest_core.catalogue import Catalogue
from interest_core.consent import Withheld
from interest_core.errors import NotFound, Unavailable
from interest_core.migration import MigrationMap
from interest_core.profile_book import USER_LOCKS, ProfileBook, lock_stripe
from interest_core.profiles import Profile
from interest_core.ranking.assets import Blend, RankingAssets
from interest_core.ranking.index import CatalogueIndex
from interest_core.recommender import Recommendation, Recommender
from interest_core.store_sqlite import SqliteProfileStore
from tests.unit.test_served_ranking import DIM, KITCHEN, KITCHEN_EMB, make_assets, unit


class Stages:
    """A stage timer that records (stage, rpc, platform) instead of timing."""

    def __init__(self) -> None:
        self.seen: list[tuple[str, str, str]] = []

    def __call__(self, stage: str, rpc: str, platform: str) -> contextlib.AbstractContextManager[None]:
        self.seen.append((stage, rpc, platform))
        return contextlib.nullcontext()


async def no_model(texts: Sequence[str], rpc: str, platform: str, timeout: float) -> np.ndarray:
    raise AssertionError("ranking stored profiles of the served model never calls the model")


def make_book(tmp_path: Path, platforms: Sequence[str] = ("food", "kitchen")) -> ProfileBook:
    return ProfileBook(SqliteProfileStore(tmp_path / "p.sqlite3"), no_model,
                       {p: (lambda item: None) for p in platforms}, DIM, Stages())


def make_recommender(book: ProfileBook, assets: RankingAssets | None, index: CatalogueIndex,
                     candidates: int = 1024, dim: int = DIM) -> tuple[Recommender, list[str]]:
    paths: list[str] = []
    rec = Recommender(book, MigrationMap(dim, assets.migration if assets is not None else None), assets,
                      {"kitchen": np.arange(len(index), dtype=np.float32)}, candidates, 16, Stages(),
                      on_path=lambda platform, path: paths.append(path))
    rec.set_index("kitchen", index)
    return rec, paths


def kitchen_index() -> CatalogueIndex:
    return CatalogueIndex(Catalogue("kitchen", tuple(KITCHEN), tuple(i.upper() for i in KITCHEN)),
                          np.stack([KITCHEN_EMB[i] for i in KITCHEN]))


def save(book: ProfileBook, user: str, consent: bool = True, **items: list[str]) -> None:
    book.store.save_many([(user, Profile(p, unit(1, 0, 0, 0), len(ids) or 1, list(ids)))
                          for p, ids in items.items()])
    book.store.set_consent(user, consent)


def recommend(rec: Recommender, user: str, k: int = 4, exclude: Sequence[str] = ()) -> Recommendation:
    return asyncio.run(rec.recommend(user, "kitchen", k, exclude, lambda: 5.0))


def random_assets(rng: np.random.Generator, n: int, n_food: int, dim: int, density: float, blend: Blend,
                  popularity: bool = True) -> tuple[list[str], np.ndarray, RankingAssets]:
    """n random unit kitchen items k0.. in `dim` dimensions and assets over them and n_food food
    items: identity migration, random co-occurrence counts (1-29) at `density`, random kitchen
    popularity (none: no popularity term), the given food -> kitchen blend weights."""
    ids = [f"k{i}" for i in range(n)]
    emb = rng.standard_normal((n, dim)).astype(np.float32)
    emb /= np.linalg.norm(emb, axis=1, keepdims=True)
    counts = sp.random(n_food, n, density=density, random_state=rng, format="csr",
                       data_rvs=lambda m: np.asarray(rng.integers(1, 30, m), np.float32))
    assets = RankingAssets(
        item_ids={"food": [f"f{i}" for i in range(n_food)], "kitchen": ids},
        migration={("food", "kitchen"): np.eye(dim, dtype=np.float32)},
        cooccurrence={("food", "kitchen"): counts},  # type: ignore[dict-item]
        popularity={"kitchen": rng.integers(0, 50, n).astype(np.float32)} if popularity else {},
        blend={("food", "kitchen"): blend})
    return ids, emb, assets


def random_setup(tmp_path: Path, candidates: int) -> tuple[Recommender, list[str], ProfileBook]:
    """400 kitchen items in 8 dimensions, 60 food items with a strong co-occurrence blend."""
    rng = np.random.default_rng(11)
    n, n_food, dim = 400, 60, 8
    ids, emb, assets = random_assets(rng, n, n_food, dim, 0.05, Blend(10.0, 0.1))
    book = make_book(tmp_path)
    for u in range(12):
        vec = rng.standard_normal(dim).astype(np.float32)
        book.store.save_many([
            (f"u{u}", Profile("food", vec, 3, [f"f{i}" for i in rng.choice(n_food, 3, replace=False)])),
            (f"u{u}", Profile("kitchen", vec, 2, [f"k{i}" for i in rng.choice(n, 2, replace=False)]))])
        book.store.set_consent(f"u{u}", True)
    index = CatalogueIndex(Catalogue("kitchen", tuple(ids), tuple(ids)), emb)
    rec, paths = make_recommender(book, assets, index, candidates, dim)
    return rec, paths, book


def test_bounded_and_full_paths_give_the_same_top_k(tmp_path: Path) -> None:
    bounded, bounded_paths, _ = random_setup(tmp_path / "bounded", candidates=1024)
    full, full_paths, _ = random_setup(tmp_path / "full", candidates=0)  # 0: never the bound
    for u in range(12):
        exclude = [f"k{(7 * u) % 400}", f"k{(7 * u + 1) % 400}"]
        a = recommend(bounded, f"u{u}", k=10, exclude=exclude)
        b = recommend(full, f"u{u}", k=10, exclude=exclude)
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
        assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], abs=1e-5)
        assert [i.rank for i in a.items] == list(range(1, 11))
        owned = full.book.store.load(f"u{u}")["kitchen"].items
        assert not {i.item_id for i in a.items} & {*exclude, *owned}
        assert a.explanation == b.explanation and "blend" in a.explanation
    assert full_paths == ["full"] * 12
    assert "bounded" in bounded_paths  # the strong blend lets the bound answer


def test_own_items_and_excluded_ids_are_never_recommended(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    rec, _ = make_recommender(book, make_assets(cooc=1.0, pop=0.5), kitchen_index())
    save(book, "bob", food=["f0"], kitchen=["k1"])
    got = recommend(rec, "bob", k=4, exclude=["k2", "not-in-catalogue"])
    assert [i.item_id for i in got.items] == ["k3", "k0"]  # only two items may be used
    assert got.personalised and got.source_platforms == ["food"]


def test_consent_off_is_explained_and_keeps_to_the_target(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    rec, _ = make_recommender(book, make_assets(cooc=1.0, pop=0.5), kitchen_index())
    save(book, "frank", consent=False, food=["f0"], kitchen=["k2"])
    got = recommend(rec, "frank")
    assert got.personalised and got.source_platforms == []
    assert got.explanation.startswith("from this user's kitchen activity")
    assert "; withheld food (no consent to share food data with kitchen: the user refused)" in got.explanation
    assert got.withheld == [Withheld("food", "no consent to share food data with kitchen: the user refused")]
    assert "blend" not in got.explanation and [i.item_id for i in got.items] == ["k0", "k1", "k3"]
    save(book, "hana", consent=False, food=["f0"])  # nothing usable: the most popular items
    popular = recommend(rec, "hana", k=2)
    assert not popular.personalised and popular.interests == []
    assert [i.item_id for i in popular.items] == ["k3", "k2"]  # popularity = catalogue position
    assert popular.explanation == ("not personalised: withheld food (no consent to share food data with "
                                   "kitchen: the user refused) and there is no kitchen activity; most "
                                   "popular items")
    assert [w.platform for w in popular.withheld] == ["food"]


def test_only_the_holders_consent_for_this_direction_migrates(tmp_path: Path) -> None:
    """Consent is per (source, target): the holder's own "no" beats an operator-wide "yes", a
    "yes" towards another platform does not reach kitchen, and without any rule nothing moves."""
    book = make_book(tmp_path, ("food", "kitchen", "video"))
    rec, _ = make_recommender(book, None, kitchen_index())
    book.store.save_many([("ola", Profile("food", unit(1, 0, 0, 0), 1, ["f0"]))])
    never = recommend(rec, "ola")
    assert not never.personalised
    assert never.withheld == [Withheld("food", "no consent to share food data with kitchen: never given, "
                                               "off by default")]
    book.store.set_consent("ola", True, "food", ["video"], actor="food")
    assert not recommend(rec, "ola").personalised
    book.store.set_consent("ola", True, "food", ["kitchen"], actor="food")
    yes = recommend(rec, "ola")
    assert yes.personalised and yes.source_platforms == ["food"] and yes.withheld == []
    book.store.set_consent("ola", False, "food", actor="food")  # (food, *) = no ...
    assert recommend(rec, "ola").personalised  # ... but (food, kitchen) is more specific
    book.store.set_consent("ola", False, "food", ["kitchen"], actor="food")
    book.store.set_consent("ola", True)  # the operator's default (*, *) does not override it
    refused = recommend(rec, "ola")
    assert not refused.personalised and refused.source_platforms == []
    assert refused.withheld == [Withheld("food", "no consent to share food data with kitchen: the user "
                                                 "refused")]


def test_interests_and_item_categories_are_plain_values(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    assets = make_assets()
    rec, _ = make_recommender(book, assets, kitchen_index())
    save(book, "ivan", food=["f0"])
    got = recommend(rec, "ivan", k=4)
    assert [c.name for c in got.interests] == [n for n, _ in assets.categories(unit(1, 0, 0, 0), 3)]
    assert {i.item_id: i.category.name for i in got.items if i.category is not None} == {
        "k0": "tea / coffee", "k1": "tea / coffee", "k2": "pans / pots", "k3": "knives"}
    bare, _ = make_recommender(book, None, kitchen_index())
    plain = recommend(bare, "ivan", k=2)
    assert plain.interests == [] and all(i.category is None for i in plain.items)
    assert plain.explanation == "interests migrated from food"


def test_unknown_user_and_unloaded_catalogue(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    rec, _ = make_recommender(book, None, kitchen_index())
    with pytest.raises(NotFound, match="ingest their events first"):
        recommend(rec, "nobody")
    save(book, "olga", food=["f0"])
    with pytest.raises(Unavailable, match="the food catalogue is still loading"):
        asyncio.run(rec.recommend("olga", "food", 3, (), lambda: 5.0))


# --- ProfileBook ---
def test_lock_stripes_are_stable_and_in_range() -> None:
    keys = [f"user-{n}" for n in range(200)]
    assert [lock_stripe(k) for k in keys] == [lock_stripe(k) for k in keys]
    assert all(0 <= lock_stripe(k) < USER_LOCKS for k in keys)
    assert len({lock_stripe(k) for k in keys}) > 150


def test_a_cancelled_write_commits_before_the_cancellation_goes_up(tmp_path: Path) -> None:
    book = make_book(tmp_path)
    entered, release = threading.Event(), threading.Event()
    done: list[str] = []

    def slow_commit(value: str) -> str:
        entered.set()
        assert release.wait(30)
        done.append(value)
        return value

    async def run() -> None:
        task = asyncio.ensure_future(book.write("IngestEvents", "kitchen", slow_commit, "x"))
        assert await asyncio.get_running_loop().run_in_executor(None, entered.wait, 30)
        for _ in range(2):  # cancelled twice: still waits
            task.cancel()
            await asyncio.sleep(0.01)
        assert not task.done()
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert done == ["x"]  # committed before the cancellation reached the caller

    asyncio.run(run())
    assert ("store", "IngestEvents", "kitchen") in book.timer.seen  # type: ignore[attr-defined]
    book.close()


def test_a_profile_of_another_model_is_rebuilt_through_embed(tmp_path: Path) -> None:
    calls: list[tuple[list[str], str, str, float]] = []

    async def embed(texts: Sequence[str], rpc: str, platform: str, timeout: float) -> np.ndarray:
        calls.append((list(texts), rpc, platform, timeout))
        return np.tile(unit(0, 1, 0, 0), (len(texts), 1))

    outcomes: list[tuple[str, str]] = []
    book = ProfileBook(SqliteProfileStore(tmp_path / "p.sqlite3"), embed,
                       {"kitchen": {"k0": "Chef knife"}.get}, DIM, Stages(),
                       on_reembedded=lambda platform, outcome: outcomes.append((platform, outcome)))
    book.store.save_many([("u", Profile("kitchen", np.full(DIM, 7.0, np.float32), 4, ["k0", "gone"],
                                        model_version="old"))])
    book.model_version = "new"
    profiles = asyncio.run(book.read("u", "GetProfile", lambda: 2.5))
    assert calls == [(["Chef knife"], "GetProfile", "kitchen", 2.5)]
    np.testing.assert_allclose(profiles["kitchen"].vec_sum, 4 * unit(0, 1, 0, 0))
    stored = book.store.load("u")["kitchen"]
    assert stored.model_version == "new" and stored.events == 4
    assert outcomes == [("kitchen", "rebuilt")]
    assert asyncio.run(book.read("u", "GetProfile", lambda: 2.5, only="food")) == {}
    book.close()
