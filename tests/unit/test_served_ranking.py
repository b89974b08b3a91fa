"""The gateway serves the trained ranking: learned migration, the collaborative blend of
`RankingAssets` (same scores as offline evaluation) and named interest categories. No Triton:
hand-made assets with two platforms and a few items, the servicer with fakes."""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from gateway.metrics import GatewayMetrics
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.server import StartupError, check_ranking_assets, load_ranking_assets
from gateway.servicer import InterestGatewayService
from interest_core.catalogue import Catalogue
from interest_core.config import Settings, load_settings
from interest_core.contract import ASSETS_FILE
from interest_core.migration import MigrationMap
from interest_core.profiles import Profile
from interest_core.ranking.assets import Blend, RankingAssets
from interest_core.ranking.blend import ServedBlend
from interest_core.ranking.index import CatalogueIndex
from interest_core.store_sqlite import SqliteProfileStore

DIM = 4
FOOD = ["f0", "f1", "f2"]
KITCHEN = ["k0", "k1", "k2", "k3"]


class FakeContext:
    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()


CTX: Any = FakeContext()


def unit(*v: float) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


# kitchen items by cosine with the query e0: k0 0.99 > k1 0.95 > k3 0.6 > k2 0.0
KITCHEN_EMB = {"k0": unit(1, 0.15, 0, 0), "k1": unit(1, 0, 0.33, 0), "k2": unit(0, 1, 0, 0),
               "k3": unit(0.6, 0, 0, 0.8)}


def make_assets(cooc: float = 1.0, pop: float = 0.0, categories: bool = True) -> RankingAssets:
    # f0 co-occurs with k1 (8 users) and k3 (1 user); f1 with k2 (3 users); f2 with nothing
    counts = np.zeros((len(FOOD), len(KITCHEN)), np.float32)
    counts[0, 1], counts[0, 3], counts[1, 2] = 8, 1, 3
    return RankingAssets(
        item_ids={"food": list(FOOD), "kitchen": list(KITCHEN)},
        migration={("food", "kitchen"): np.eye(DIM, dtype=np.float32),
                   ("kitchen", "food"): np.eye(DIM, dtype=np.float32)},
        cooccurrence={("food", "kitchen"): sp.csr_matrix(counts),
                      ("kitchen", "food"): sp.csr_matrix(counts.T)},
        popularity={"food": np.array([5, 1, 0], np.float32),
                    "kitchen": np.array([0, 2, 50, 4], np.float32)},
        blend={("food", "kitchen"): Blend(cooc, pop), ("kitchen", "food"): Blend(cooc, pop)},
        category_names=["tea / coffee", "pans / pots", "knives"] if categories else [],
        category_weights=(np.array([[5, 0, 0, 0], [0, 5, 0, 0], [0, 0, 0, 5]], np.float32)
                          if categories else None),
        category_bias=np.zeros(3, np.float32) if categories else None,
    )


def make_service(tmp_path: Path, assets: RankingAssets | None,
                 catalogue_order: list[str] | None = None) -> InterestGatewayService:
    settings = load_settings(var_dir=tmp_path)
    migration = MigrationMap(DIM, assets.migration if assets is not None else None)
    encoder: Any = object()  # Recommend and GetProfile never call the model
    svc = InterestGatewayService(settings, SqliteProfileStore(tmp_path / "p.sqlite3"), encoder,
                                 GatewayMetrics(), migration, {"food": {}, "kitchen": {}},
                                 {"kitchen": np.array([0, 2, 50, 4], np.float32)}, assets)
    ids = catalogue_order or KITCHEN
    cat = Catalogue("kitchen", tuple(ids), tuple(i.upper() for i in ids))
    emb = np.stack([KITCHEN_EMB.get(i, unit(0.99, 0, 0, 0.1)) for i in ids])
    svc.set_index("kitchen", CatalogueIndex(cat, emb))
    return svc


def add_user(svc: InterestGatewayService, user: str, consent: bool = True,
             food: list[str] | None = None, kitchen: list[str] | None = None,
             food_vec: np.ndarray | None = None, kitchen_vec: np.ndarray | None = None) -> None:
    key = svc.pseudonymise(user)
    rows = []
    if food is not None:
        rows.append((key, Profile("food", food_vec if food_vec is not None else unit(1, 0, 0, 0),
                                  len(food) or 1, list(food))))
    if kitchen is not None:
        rows.append((key, Profile("kitchen", kitchen_vec if kitchen_vec is not None else unit(1, 0, 0, 0),
                                  len(kitchen) or 1, list(kitchen))))
    svc.store.save_many(rows)
    svc.store.set_consent(key, consent)


def recommend(svc: InterestGatewayService, user: str, k: int = 4,
              exclude: tuple[str, ...] = ()) -> pb.RecommendResponse:
    request = pb.RecommendRequest(user_id=user, target_platform="kitchen", k=k, exclude_item_ids=exclude)
    return asyncio.run(svc.Recommend(request, CTX))


def expected_scores(assets: RankingAssets, ids: list[str], food_rows: list[int] | None,
                    query: np.ndarray) -> dict[str, float]:
    """Model cosine + `assets.collaborative` in assets order, looked up by item id."""
    blend = (assets.collaborative({"food": [food_rows]}, "kitchen")[0] if food_rows is not None
             else np.zeros(len(KITCHEN), np.float32))
    pos = {item: i for i, item in enumerate(assets.item_ids["kitchen"])}
    return {i: float(KITCHEN_EMB.get(i, unit(0.99, 0, 0, 0.1)) @ query)
            + (float(blend[pos[i]]) if i in pos else 0.0) for i in ids}


def ranking(scores: dict[str, float], drop: tuple[str, ...] = ()) -> list[str]:
    return sorted((i for i in scores if i not in drop), key=lambda i: -scores[i])


def test_blend_puts_the_cooccurring_item_first_exactly_as_collaborative_says(tmp_path: Path) -> None:
    assets = make_assets(cooc=1.0, pop=0.0)
    svc = make_service(tmp_path, assets)
    add_user(svc, "alice", food=["f0"])
    rec = recommend(svc, "alice")
    want = expected_scores(assets, KITCHEN, [0], unit(1, 0, 0, 0))
    assert [r.item_id for r in rec.items] == ranking(want) == ["k1", "k3", "k0", "k2"]
    assert [r.score for r in rec.items] == pytest.approx([want[r.item_id] for r in rec.items], abs=1e-5)
    assert rec.personalised and rec.source_platforms == ["food"]
    assert "blend" in rec.explanation
    # model alone (cooc weight 0): the nearest item wins
    svc0 = make_service(tmp_path / "zero", make_assets(cooc=0.0, pop=0.0))
    add_user(svc0, "alice", food=["f0"])
    rec0 = recommend(svc0, "alice")
    assert [r.item_id for r in rec0.items] == ["k0", "k1", "k3", "k2"]
    assert "blend" not in rec0.explanation


def test_popularity_term_and_exclusions(tmp_path: Path) -> None:
    assets = make_assets(cooc=1.0, pop=0.5)
    svc = make_service(tmp_path, assets)
    add_user(svc, "bob", food=["f0"], kitchen=["k1"])  # owns k1 on the target: excluded
    rec = recommend(svc, "bob", exclude=("k2",))
    query = svc.migration.migrate({"food": (unit(1, 0, 0, 0), 1), "kitchen": (unit(1, 0, 0, 0), 1)},
                                  "kitchen")
    want = expected_scores(assets, KITCHEN, [0], query)
    assert [r.item_id for r in rec.items] == ranking(want, drop=("k1", "k2")) == ["k3", "k0"]
    assert [r.score for r in rec.items] == pytest.approx([want[r.item_id] for r in rec.items], abs=1e-5)


def test_blend_follows_the_gateway_catalogue_order(tmp_path: Path) -> None:
    """The served catalogue lists items in another order than the assets, plus one they do
    not know (no blend for it)."""
    assets = make_assets(cooc=1.0, pop=0.3)
    order = ["k3", "new", "k2", "k0", "k1"]
    svc = make_service(tmp_path, assets, catalogue_order=order)
    add_user(svc, "carol", food=["f0", "f1"])
    rec = recommend(svc, "carol", k=5)
    want = expected_scores(assets, order, [0, 1], unit(1, 0, 0, 0))
    assert [r.item_id for r in rec.items] == ranking(want)
    assert [r.score for r in rec.items] == pytest.approx([want[r.item_id] for r in rec.items], abs=1e-5)
    new = next(r for r in rec.items if r.item_id == "new")
    assert new.score == pytest.approx(float(unit(0.99, 0, 0, 0.1) @ unit(1, 0, 0, 0)), abs=1e-6)


def test_unknown_item_ids_in_profiles_are_ignored(tmp_path: Path) -> None:
    assets = make_assets(cooc=1.0, pop=0.2)
    svc = make_service(tmp_path, assets)
    add_user(svc, "dave", food=["zzz", "f0", "gone"])
    add_user(svc, "erin", food=["zzz"])  # nothing known: the popularity term only
    want = expected_scores(assets, KITCHEN, [0], unit(1, 0, 0, 0))
    assert [r.score for r in recommend(svc, "dave").items] == pytest.approx(
        sorted(want.values(), reverse=True), abs=1e-5)
    want_erin = expected_scores(assets, KITCHEN, [], unit(1, 0, 0, 0))
    assert [r.item_id for r in recommend(svc, "erin").items] == ranking(want_erin)
    assert [r.score for r in recommend(svc, "erin").items] == pytest.approx(
        sorted(want_erin.values(), reverse=True), abs=1e-5)


def test_no_consent_means_no_cross_platform_blend(tmp_path: Path) -> None:
    svc = make_service(tmp_path, make_assets(cooc=1.0, pop=0.5))
    add_user(svc, "frank", consent=False, food=["f0"], kitchen=["k2"], kitchen_vec=unit(1, 0, 0, 0))
    rec = recommend(svc, "frank")
    cosine = {i: float(KITCHEN_EMB[i] @ unit(1, 0, 0, 0)) for i in KITCHEN}
    assert [r.item_id for r in rec.items] == ranking(cosine, drop=("k2",)) == ["k0", "k1", "k3"]
    assert [r.score for r in rec.items] == pytest.approx([cosine[r.item_id] for r in rec.items], abs=1e-6)
    assert rec.source_platforms == [] and "no consent" in rec.explanation
    assert "blend" not in rec.explanation
    # target-only activity with consent: no source platform, so no popularity term either
    add_user(svc, "gina", consent=True, kitchen=["k2"], kitchen_vec=unit(1, 0, 0, 0))
    assert [r.score for r in recommend(svc, "gina").items] == pytest.approx(
        [cosine[i] for i in ("k0", "k1", "k3")], abs=1e-6)


def test_not_personalised_keeps_popularity(tmp_path: Path) -> None:
    svc = make_service(tmp_path, make_assets())
    add_user(svc, "hana", consent=False, food=["f0"])
    rec = recommend(svc, "hana")
    assert not rec.personalised and [r.item_id for r in rec.items] == ["k2", "k3", "k1", "k0"]
    assert list(rec.interests) == []


def test_interest_categories_in_profile_and_recommend(tmp_path: Path) -> None:
    assets = make_assets()
    svc = make_service(tmp_path, assets)
    add_user(svc, "ivan", food=["f0"], food_vec=unit(1, 0.2, 0, 0), kitchen=["k2"],
             kitchen_vec=unit(0, 1, 0, 0))
    profile = asyncio.run(svc.GetProfile(pb.GetProfileRequest(user_id="ivan"), CTX))
    by_platform = {p.platform: p for p in profile.platforms}
    food = by_platform["food"].interests
    assert [c.name for c in food] == [n for n, _ in assets.categories(unit(1, 0.2, 0, 0), 3)]
    assert food[0].name == "tea / coffee" and len(food) == 3
    assert sum(c.weight for c in food) == pytest.approx(1.0, abs=1e-5)
    assert by_platform["kitchen"].interests[0].name == "pans / pots"
    rec = recommend(svc, "ivan", k=2)
    # Worked out by hand: with identity mappings the migrated profile is the normalised sum of
    # the two platform profiles, and the classifier's logits are 5 x its first, second and
    # fourth coordinates.
    query = unit(*(unit(1, 0.2, 0, 0) + unit(0, 1, 0, 0)))
    logits = 5 * np.array([query[0], query[1], query[3]])
    probs = np.exp(logits) / np.exp(logits).sum()
    want = [("pans / pots", probs[1]), ("tea / coffee", probs[0]), ("knives", probs[2])]
    assert [c.name for c in rec.interests] == [n for n, _ in want]
    np.testing.assert_allclose([c.weight for c in rec.interests], [w for _, w in want], atol=1e-5)
    assert f"; interests: pans / pots ({probs[1]:.0%})" in rec.explanation


def test_each_recommended_item_names_its_own_category(tmp_path: Path) -> None:
    """The item's category comes from its own embedding (not the user's query), so a platform
    can say which of the user's interests it serves; the popular fallback names them too."""
    assets = make_assets()
    svc = make_service(tmp_path, assets)
    add_user(svc, "kate", food=["f0"])
    rec = recommend(svc, "kate", k=4)
    assert {r.item_id: r.category.name for r in rec.items} == {
        "k0": "tea / coffee", "k1": "tea / coffee", "k2": "pans / pots", "k3": "knives"}
    for r in rec.items:
        (_, weight), = assets.categories(KITCHEN_EMB[r.item_id], 1)
        assert r.category.weight == pytest.approx(weight, abs=1e-6)
    add_user(svc, "liam", consent=False, food=["f0"])
    popular = recommend(svc, "liam", k=2)
    assert not popular.personalised
    assert [(r.item_id, r.category.name) for r in popular.items] == [("k2", "pans / pots"), ("k3", "knives")]


def test_without_assets_the_behaviour_is_unchanged(tmp_path: Path) -> None:
    svc = make_service(tmp_path, None)
    add_user(svc, "jack", food=["f0"], kitchen=["k3"])
    rec = recommend(svc, "jack")
    cosine = {i: float(KITCHEN_EMB[i] @ unit(1, 0, 0, 0)) for i in KITCHEN}
    assert [r.item_id for r in rec.items] == ["k0", "k1", "k2"]
    assert [r.score for r in rec.items] == pytest.approx([cosine[r.item_id] for r in rec.items], abs=1e-6)
    assert rec.explanation == "interests migrated from food" and list(rec.interests) == []
    assert not any(r.HasField("category") for r in rec.items)
    profile = asyncio.run(svc.GetProfile(pb.GetProfileRequest(user_id="jack"), CTX))
    assert all(list(p.interests) == [] for p in profile.platforms)


def test_served_blend_equals_collaborative_on_random_assets() -> None:
    """Three platforms (two sources: the popularity weight is the sources' max), random
    counts, a shuffled served catalogue with items the assets do not know. Both sides call
    `blend_terms`: this checks that the served precomputation (columns moved into the
    catalogue's order, row sums of one user) keeps the offline formula's scores."""
    rng = np.random.default_rng(7)
    sizes = {"a": 40, "b": 30, "t": 60}
    ids = {p: [f"{p}{i}" for i in range(n)] for p, n in sizes.items()}
    cooc = {(s, "t"): sp.random(sizes[s], sizes["t"], density=0.2, random_state=rng, format="csr",
                                data_rvs=lambda n: np.asarray(rng.integers(1, 20, n), np.float32))
            for s in ("a", "b")}
    assets = RankingAssets(
        item_ids=ids, migration={}, cooccurrence=cooc,  # type: ignore[arg-type]
        popularity={"t": rng.integers(0, 100, sizes["t"]).astype(np.float32)},
        blend={("a", "t"): Blend(0.7, 0.1), ("b", "t"): Blend(0.3, 0.25)})
    served = [*rng.permutation(ids["t"])[:50], "x1", "x2"]
    blend = ServedBlend(assets, "t", served)
    order = assets.reorder("t", served)
    hist = {"a": [3, 5, 17, 39], "b": [0, 29]}
    cases: list[dict[str, list[int]]] = [hist, {"a": hist["a"]}, {"b": []}]
    for histories in cases:
        want = assets.collaborative({p: [rows] for p, rows in histories.items()}, "t")[0]
        want = np.where(order >= 0, want[order], 0.0)
        got = blend({p: np.array(rows, np.int64) for p, rows in histories.items()})
        assert got is not None
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    assert blend({}) is None and assets.collaborative({}, "t").size == 0


def test_set_index_precomputes_once(tmp_path: Path) -> None:
    svc = make_service(tmp_path, make_assets())
    index = svc.indexes["kitchen"]
    first = svc.recommender.served_blend("kitchen", index)
    assert svc.recommender.served_blend("kitchen", index) is first
    add_user(svc, "kim", food=["f0"])
    recommend(svc, "kim")
    assert svc.recommender.served_blend("kitchen", index) is first


# --- start-up: where the assets come from, and what refuses to start ---
def settings_with(tmp_path: Path, **kw: Any) -> Settings:
    return load_settings(var_dir=tmp_path / "var", model_repository=tmp_path / "repo", **kw)


def test_installed_assets_are_loaded_by_default(tmp_path: Path) -> None:
    settings = settings_with(tmp_path)
    make_assets().save(tmp_path / "repo" / settings.model_name / ASSETS_FILE)
    assets = load_ranking_assets(settings, DIM)
    assert assets is not None and assets.item_ids["kitchen"] == KITCHEN
    assert assets.blend[("food", "kitchen")] == Blend(1.0, 0.0)


def test_no_assets_logs_one_info_line(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="interest.gateway"):
        assert load_ranking_assets(settings_with(tmp_path), DIM) is None
    lines = [r for r in caplog.records if r.name == "interest.gateway"]
    assert len(lines) == 1 and lines[0].levelno == logging.INFO
    assert "pretrained model without trained assets" in lines[0].getMessage()


def test_configured_but_missing_assets_refuse_to_start(tmp_path: Path) -> None:
    path = tmp_path / "nope.npz"
    with pytest.raises(StartupError, match=r"nope\.npz does not exist"):
        load_ranking_assets(settings_with(tmp_path, ranking_assets=path), DIM)


def test_corrupt_assets_refuse_to_start_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "broken.npz"
    path.write_bytes(b"not a zip file at all")
    with pytest.raises(StartupError, match=r"cannot read the trained ranking assets .*broken\.npz"):
        load_ranking_assets(settings_with(tmp_path, ranking_assets=path), DIM)


def test_dimension_mismatch_refuses_to_start(tmp_path: Path) -> None:
    path = tmp_path / ASSETS_FILE
    make_assets().save(path)
    with pytest.raises(StartupError, match=r"another embedding size.*4x4.*384 dimensions"):
        load_ranking_assets(settings_with(tmp_path, ranking_assets=path), 384)
    no_migration = make_assets()
    no_migration.migration = {}
    with pytest.raises(StartupError, match="interest categories of shape"):
        check_ranking_assets(no_migration, 8, path)


def test_inconsistent_assets_refuse_to_start(tmp_path: Path) -> None:
    assets = make_assets()
    assets.item_ids["kitchen"] = KITCHEN[:3]
    with pytest.raises(StartupError, match="co-occurrence food->kitchen"):
        check_ranking_assets(assets, DIM, tmp_path / ASSETS_FILE)


def test_assets_of_another_platform_pair_refuse_to_start(tmp_path: Path) -> None:
    """`make engine` with the Amazon checkpoint, then a config serving another pair: refused,
    naming both, instead of serving with no trained mapping or blend."""
    path = tmp_path / ASSETS_FILE
    make_assets().save(path)
    other = {p: {"adapter": "social_post", "dataset": "social-video"} for p in ("social", "video")}
    with pytest.raises(StartupError, match=r"trained for the platforms food, kitchen.*serves social, video"):
        load_ranking_assets(settings_with(tmp_path, ranking_assets=path, platforms=other), DIM)
    assert load_ranking_assets(settings_with(tmp_path, ranking_assets=path), DIM) is not None
