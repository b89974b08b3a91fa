"""Recommend through the nearest-neighbour index against the exact path, on generated users and
catalogue changes (hypothesis, derandomized: the same examples on every run): source histories
with items that co-occur with nothing or are unknown, owned and excluded items, k from 1 to 200,
items removed, retitled and added in two snapshots (the second's blend grown from the first's).
A user of the index path must get the ranking the exact path gives, within the index's
approximation, and never an error."""

from __future__ import annotations

import asyncio
import itertools
from dataclasses import dataclass

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from interest_core.catalogue import InstalledCatalogue
from interest_core.live_catalogue import LiveCatalogue
from interest_core.profiles import Profile
from interest_core.ranking.ann import AnnIndex
from interest_core.ranking.assets import RankingAssets
from interest_core.recommender import Recommender
from tests.unit.test_ann_ranking import DIM, N_FOOD, N, random_world, recommender, serve
from tests.unit.test_catalogue_updates import Change

SILENT = 10  # food items f0..f9 co-occur with no kitchen item
FLOAT16 = 2e-3  # the index keeps float16 vectors: its scores agree with the exact ones to this


@dataclass
class World:
    installed: InstalledCatalogue
    index: AnnIndex
    approximate: Recommender
    exact: Recommender
    users: itertools.count  # type: ignore[type-arg]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    tmp = tmp_path_factory.mktemp("ann-properties")
    installed, assets, index = random_world(tmp)
    counts = assets.cooccurrence[("food", "kitchen")].tolil()
    counts[:SILENT, :] = 0
    assets.cooccurrence[("food", "kitchen")] = counts.tocsr()
    assets.cooccurrence[("food", "kitchen")].eliminate_zeros()
    return World(installed, index, recommender(tmp / "a", assets), recommender(tmp / "e", fresh(assets)),
                 itertools.count())


def fresh(assets: RankingAssets) -> RankingAssets:
    """The same assets with nothing cached from the other recommender's calls."""
    return RankingAssets(item_ids=assets.item_ids, migration=assets.migration,
                         cooccurrence=assets.cooccurrence, popularity=assets.popularity, blend=assets.blend)


def unit(rng: np.random.Generator) -> np.ndarray:
    v = rng.standard_normal(DIM).astype(np.float32)
    return v / np.linalg.norm(v)


@settings(max_examples=60, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(history=st.lists(st.integers(0, N_FOOD + 2), max_size=6),  # >= N_FOOD: unknown to the assets
       owned=st.lists(st.integers(0, N - 1), max_size=3),
       excluded=st.lists(st.integers(0, N - 1), max_size=30),
       removed=st.lists(st.integers(0, N - 1), max_size=20),
       retitled=st.lists(st.integers(0, N - 1), max_size=10),
       added=st.integers(0, 30), k=st.integers(1, 200), seed=st.integers(0, 2**16))
def test_the_index_path_ranks_generated_users_as_the_exact_path(
        world: World, history: list[int], owned: list[int], excluded: list[int], removed: list[int],
        retitled: list[int], added: int, k: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    user = f"p{next(world.users)}"
    query = unit(rng)
    profiles = [(user, Profile("kitchen", query, 2, [f"k{i}" for i in owned]))]
    if history:
        profiles.append((user, Profile("food", query, 3, [f"f{i}" for i in history])))
    live = LiveCatalogue(world.installed)
    version = itertools.count(1)
    first = [Change(f"k{i}", "", None, True, next(version)) for i in dict.fromkeys(removed)]
    first += [Change(f"k{i}", f"K{i} NEW", unit(rng), False, next(version))
              for i in dict.fromkeys(retitled) if i not in removed]
    live.apply(first)
    for rec in (world.approximate, world.exact):
        rec.book.store.save_many(profiles)
        rec.book.store.set_consent(user, True)
        serve(rec, live, world.index if rec is world.approximate else None)
    # new items near the user's query, so that some of them rank
    live.apply([Change(f"new-{seed}-{j}", "NEW", query + 0.3 * unit(rng), False, next(version))
                for j in range(added)])
    for rec in (world.approximate, world.exact):
        serve(rec, live, world.index if rec is world.approximate else None)  # (blend grown from the first)
    exclude = [f"k{i}" for i in excluded]
    got = asyncio.run(world.approximate.recommend(user, "kitchen", k, exclude, lambda: 5.0)).items
    truth = asyncio.run(world.exact.recommend(user, "kitchen", N + added, exclude, lambda: 5.0)).items
    exact_score = {i.item_id: i.score for i in truth}
    ids = [i.item_id for i in got]
    assert len(ids) == len(set(ids)) == min(k, len(truth))  # k come back whenever k can
    assert not set(ids) & ({f"k{i}" for i in removed + owned} | set(exclude))
    assert all(a.score >= b.score for a, b in itertools.pairwise(got))
    for item in got:  # each score is the exact score of that item (float16 vectors in the index)
        assert item.score == pytest.approx(exact_score[item.item_id], abs=FLOAT16)
    # no item clearly better than the 10th returned is missing from the top 10
    top = min(10, len(got))
    if top:
        floor = got[top - 1].score
        assert {i.item_id for i in truth if i.score > floor + FLOAT16} <= set(ids[:top])
