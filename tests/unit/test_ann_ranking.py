"""Ranking a catalogue through its nearest-neighbour index (interest_core.ranking.ann): the real
faiss index built over a small random catalogue, ranked by the Recommender against the exact
path on the same profiles, and the catalogue changed under it."""

from __future__ import annotations

import asyncio
import mmap
from pathlib import Path

import numpy as np
import pytest

from interest_core.catalogue import Catalogue, InstalledCatalogue, read_installed, write_installed
from interest_core.live_catalogue import LiveCatalogue
from interest_core.migration import MigrationMap
from interest_core.profiles import Profile
from interest_core.ranking import ann
from interest_core.ranking.ann import AnnIndex, IndexParams, bitmap, store_index
from interest_core.ranking.assets import Blend, RankingAssets
from interest_core.ranking.blend import ServedBlend
from interest_core.ranking.linalg import small_matvec
from interest_core.recommender import Recommender
from tests.unit.test_catalogue_updates import Change
from tests.unit.test_recommender import Stages, make_book, random_assets

N, N_FOOD, DIM = 3000, 60, 32


def random_world(tmp_path: Path, popularity: bool = True
                 ) -> tuple[InstalledCatalogue, RankingAssets, AnnIndex]:
    rng = np.random.default_rng(5)
    ids, emb, assets = random_assets(rng, N, N_FOOD, DIM, 0.01, Blend(0.3, 0.02), popularity)
    installed = InstalledCatalogue(Catalogue("kitchen", tuple(ids), tuple(i.upper() for i in ids)), emb,
                                   rng.integers(0, 50, N).astype(np.float32))
    path = tmp_path / "kitchen.faiss"
    described = store_index(emb, path, IndexParams(m=16, ef_construction=100))
    assert described["factory"] == "HNSW16,SQfp16"
    return installed, assets, AnnIndex.load(path, ef_search=512)


def recommender(tmp_path: Path, assets: RankingAssets, candidates: int = 1024) -> Recommender:
    book = make_book(tmp_path)
    rng = np.random.default_rng(8)
    for u in range(20):
        vec = rng.standard_normal(DIM).astype(np.float32)
        book.store.save_many([
            (f"u{u}", Profile("food", vec / np.linalg.norm(vec), 3,
                              [f"f{i}" for i in rng.choice(N_FOOD, 3, replace=False)])),
            (f"u{u}", Profile("kitchen", vec, 2, [f"k{i}" for i in rng.choice(N, 2, replace=False)]))])
        book.store.set_consent(f"u{u}", True)
    return Recommender(book, MigrationMap(DIM, assets.migration), assets, {}, candidates, 16, Stages(),
                       ann_candidates=50)


def serve(rec: Recommender, live: LiveCatalogue, index: AnnIndex | None) -> None:
    if index is None:
        cat, popularity, added = live.snapshot()
        rec.serve("kitchen", rec.prepare("kitchen", cat, popularity, added))
    else:
        cat, popularity, added, ann = live.ann_snapshot(index)
        rec.serve("kitchen", rec.prepare("kitchen", cat, popularity, added, ann))


def top(rec: Recommender, user: str, k: int = 10, exclude: tuple[str, ...] = ()) -> list[str]:
    found = asyncio.run(rec.recommend(user, "kitchen", k, list(exclude), lambda: 5.0))
    return [i.item_id for i in found.items]


@pytest.mark.parametrize(("candidates", "popularity"), [(0, True), (1024, True), (1024, False)])
def test_the_index_ranks_as_the_exact_path_on_a_small_catalogue(tmp_path: Path, candidates: int,
                                                                  popularity: bool) -> None:
    """candidates 0: never the bound, always the index; without a popularity term the items the
    blend does not touch still bound what the bound may leave out (blend 0)."""
    installed, assets, index = random_world(tmp_path, popularity)
    approximate = recommender(tmp_path / "a", assets, candidates)
    exact = recommender(tmp_path / "e", assets)
    paths: list[str] = []
    approximate.on_path = lambda platform, path: paths.append(path)
    serve(approximate, LiveCatalogue(installed), index)
    serve(exact, LiveCatalogue(installed), None)
    for u in range(20):
        a = asyncio.run(approximate.recommend(f"u{u}", "kitchen", 10, ["k1", "k2"], lambda: 5.0))
        b = asyncio.run(exact.recommend(f"u{u}", "kitchen", 10, ["k1", "k2"], lambda: 5.0))
        assert [i.item_id for i in a.items] == [i.item_id for i in b.items]
        assert [i.score for i in a.items] == pytest.approx([i.score for i in b.items], abs=2e-3)  # float16
        assert [i.category for i in a.items] == [i.category for i in b.items]
        assert a.explanation == b.explanation and "blend" in a.explanation
    if candidates == 0:
        assert paths == ["ann"] * 20
    elif popularity:  # the bound proves some top 10s from the largest-blend items, the index the rest
        assert set(paths) == {"ann", "bounded"} and len(paths) == 20


def test_exclusions_hold_and_k_items_come_back(tmp_path: Path) -> None:
    installed, assets, index = random_world(tmp_path)
    rec = recommender(tmp_path, assets)
    serve(rec, LiveCatalogue(installed), index)
    first = top(rec, "u3", k=200)
    assert len(first) == len(set(first)) == 200  # more than ann_candidates (50): still k
    owned = set(rec.book.store.load("u3")["kitchen"].items)
    assert not owned & set(first)
    again = top(rec, "u3", k=200, exclude=tuple(first[:150]))
    assert len(again) == 200 and not set(first[:150]) & set(again)


def test_a_user_whose_items_co_occur_with_no_target_item_is_ranked_through_the_index(tmp_path: Path) -> None:
    """Their blend is the popularity term alone: the sparse blend has no co-occurrence entry."""
    installed, assets, index = random_world(tmp_path)
    counts = assets.cooccurrence[("food", "kitchen")].tolil()
    counts[7, :] = 0  # f7 co-occurs with nothing
    assets.cooccurrence[("food", "kitchen")] = counts.tocsr()
    assets.cooccurrence[("food", "kitchen")].eliminate_zeros()
    ranked = []
    for name, ann_index in (("a", index), ("e", None)):
        rec = recommender(tmp_path / name, assets)
        vec = np.ones(DIM, np.float32) / np.sqrt(DIM)
        rec.book.store.save_many([("lonely", Profile("food", vec, 3, ["f7"]))])
        rec.book.store.set_consent("lonely", True)
        serve(rec, LiveCatalogue(installed), ann_index)
        ranked.append(top(rec, "lonely"))
    assert len(ranked[0]) == 10 and ranked[0] == ranked[1]


def test_removed_changed_and_added_items_under_the_index(tmp_path: Path) -> None:
    installed, assets, index = random_world(tmp_path)
    rec = recommender(tmp_path, assets)
    live = LiveCatalogue(installed)
    serve(rec, live, index)
    before = top(rec, "u4")
    profiles = rec.book.store.load("u4")
    query = rec.migration.migrate({p: (v.vector, v.events) for p, v in profiles.items()}, "kitchen")
    far = -query / np.linalg.norm(query)
    # the best item removed, the second moved away from the user, a new item on the user's query
    live.apply([Change(before[0], "", None, True, 1),
                Change(before[1], "MOVED", far, False, 2),
                Change("new", "NEW", query / np.linalg.norm(query), False, 3)])
    serve(rec, live, index)
    after = top(rec, "u4", k=50)
    assert "new" in after and before[0] not in after and before[1] not in after
    assert before[0] not in top(rec, "u4", k=200)
    assert installed.embeddings.flags.writeable is False or np.array_equal(
        installed.embeddings[int(before[1][1:])], live.base[int(before[1][1:])])  # the base untouched
    cat, _, _, ann = live.ann_snapshot(index)
    assert ann.banned is not None and len(ann.delta) == 2  # the moved and the new item
    moved = cat.position(before[1])
    assert moved is not None
    np.testing.assert_allclose(ann.vectors(np.array([moved]))[0], far, atol=1e-6)


def competing_changes(rec: Recommender, seed: int) -> tuple[list[np.ndarray], list[Change]]:
    """(the 20 users' migrated queries, 400 catalogue changes near them, so that they compete):
    half new items (no co-occurrence: the same blend), half installed items k0..k199 retitled
    (their blend kept), versions 1..400."""
    queries = []
    for u in range(20):
        profiles = rec.book.store.load(f"u{u}")
        queries.append(rec.migration.migrate({p: (v.vector, v.events) for p, v in profiles.items()},
                                             "kitchen"))
    rng = np.random.default_rng(seed)
    added = np.stack(queries)[np.arange(400) % 20] + rng.normal(0, 0.05, (400, DIM)).astype(np.float32)
    added /= np.linalg.norm(added, axis=1, keepdims=True)
    changes = [Change(f"new{j}", f"NEW {j}", added[j], False, j + 1) for j in range(200)]
    changes += [Change(f"k{j}", f"MOVED {j}", added[200 + j], False, 201 + j) for j in range(200)]
    return queries, changes


@pytest.mark.parametrize("candidates", [0, 1024])
def test_many_added_items_rank_as_the_exact_path(tmp_path: Path, candidates: int) -> None:
    """More added and changed items than the index's candidates (400 against 50): only the
    added items of largest exact score join the candidates, and the top 20 is still the exact
    path's, exclusions of added items included (each banned one makes room for another)."""
    installed, assets, index = random_world(tmp_path)
    approximate = recommender(tmp_path / "a", assets, candidates)
    exact = recommender(tmp_path / "e", assets)
    _, changes = competing_changes(exact, seed=11)
    for rec, index_or_none in ((approximate, index), (exact, None)):
        live = LiveCatalogue(installed)
        live.apply(changes)
        serve(rec, live, index_or_none)
    served = approximate.served["kitchen"]
    assert served.ann is not None and len(served.ann.delta) == 400 > approximate.ann_candidates
    competing = 0
    for u in range(20):
        first = top(exact, f"u{u}", k=20)
        banned = tuple(i for i in first if i.startswith("new") or int(i[1:]) < 200)[:4]
        competing += len(banned)
        assert top(approximate, f"u{u}", k=20) == first
        assert top(approximate, f"u{u}", k=20, exclude=banned) == top(exact, f"u{u}", k=20, exclude=banned)
    assert competing >= 20  # changed items reach the users' top 20s (the blend ranks many others first)


def test_an_index_of_the_added_items_ranks_as_the_exact_path_and_follows_later_changes(
        tmp_path: Path) -> None:
    """The gateway's index of the items added since the build (AddedIndex over
    changed_items()): served beside the main one, the top 20s are the exact path's; then an
    indexed item removed, one changed again and a new one added, with the same index: the
    removed never comes back, the changed one is scored at its new vector (from delta, banned
    in the index), and the top 20s still agree."""
    installed, assets, index = random_world(tmp_path)
    approximate = recommender(tmp_path / "a", assets, 0)  # never the bound: always the indexes
    exact = recommender(tmp_path / "e", assets)
    queries, changes = competing_changes(exact, seed=21)
    live, exact_live = LiveCatalogue(installed), LiveCatalogue(installed)
    live.apply(changes)
    exact_live.apply(changes)
    positions, vectors, versions = live.changed_items()
    assert len(positions) == 400 and sorted(versions.tolist()) == list(range(1, 401))
    added_index = ann.AddedIndex.build(positions, vectors, versions)

    def serve_both() -> None:
        cat, popularity, is_added, snapshot = live.ann_snapshot(index, added_index)
        approximate.serve("kitchen", approximate.prepare("kitchen", cat, popularity, is_added, snapshot))
        serve(exact, exact_live, None)

    serve_both()
    snapshot = approximate.served["kitchen"].ann
    assert snapshot is not None
    assert (len(snapshot.delta), snapshot.added_live, snapshot.since_build) == (0, 400, 400)
    assert snapshot.added_banned is None
    for u in range(20):
        assert top(approximate, f"u{u}", k=20) == top(exact, f"u{u}", k=20)
    indexed = {f"new{j}" for j in range(200)} | {f"k{j}" for j in range(200)}
    gone, moved = [i for i in top(exact, "u0", k=20) if i in indexed][:2]  # two of u0's top 20
    away = -queries[0] / np.linalg.norm(queries[0])
    later = [Change(gone, "", None, True, 401), Change(moved, "MOVED AGAIN", away, False, 402),
             Change("newer", "NEWER", changes[0].embedding, False, 403)]  # (new0's vector)
    live.apply(later)
    exact_live.apply(later)
    serve_both()
    snapshot = approximate.served["kitchen"].ann
    assert snapshot is not None and snapshot.added_banned is not None
    assert (len(snapshot.delta), snapshot.added_live, snapshot.since_build) == (2, 398, 400)
    cat = approximate.served["kitchen"].index
    assert snapshot.added is added_index
    indexed_then = added_index.search(queries[0], 400, None)
    now = snapshot.added.search(queries[0], 400, snapshot.added_banned)
    assert {cat.position(gone), cat.position(moved)} <= set(indexed_then.tolist()) - set(now.tolist())
    at = cat.position(moved)
    assert at is not None
    np.testing.assert_allclose(snapshot.vectors(np.array([at]))[0], away, atol=1e-6)
    for u in range(20):
        assert top(approximate, f"u{u}", k=20) == top(exact, f"u{u}", k=20)
    assert gone not in top(approximate, "u0", k=200) and moved not in top(approximate, "u0", k=50)
    assert cat.position("newer") in snapshot.delta.tolist()  # new since the index: scored exactly
    assert "newer" in top(approximate, "u0", k=200)


def test_banned_added_items_make_room_for_others(tmp_path: Path) -> None:
    """ann_top_k without a blend (a user with no source platform), k above the index's
    candidates and the best added items banned: the added items fill the true top k, so it
    comes back whole only if the added items taken are k plus the banned count."""
    installed, assets, index = random_world(tmp_path)
    rec = recommender(tmp_path, assets)
    rng = np.random.default_rng(13)
    query = rng.standard_normal(DIM).astype(np.float32)
    query /= np.linalg.norm(query)
    added = query + rng.normal(0, 0.05, (300, DIM)).astype(np.float32)
    added /= np.linalg.norm(added, axis=1, keepdims=True)
    live = LiveCatalogue(installed)
    live.apply([Change(f"new{j}", f"NEW {j}", added[j], False, j + 1) for j in range(300)])
    serve(rec, live, index)
    served = rec.served["kitchen"]
    assert served.ann is not None
    every = np.flatnonzero(served.ann.live)
    scores = served.ann.vectors(every) @ query
    best = every[np.argsort(-scores)]
    k = rec.ann_candidates + 10
    banned = np.sort(best[:8])
    assert all(p >= N for p in best[:k + 8])  # the added items lead, well past k + 8
    ranked, bounded = rec.ann_top_k(served, query, None, k, banned)
    assert not bounded
    assert [r.item_id for r in ranked] == [served.index.catalogue.item_ids[p] for p in best[8:k + 8]]


def test_the_added_items_leaders_are_those_of_largest_exact_score(tmp_path: Path) -> None:
    """Recommender._delta_leaders against every added item's score computed in full: the blend
    counts (retitled items keep their co-occurrence and popularity), all of them come back when
    there are no more than asked for."""
    installed, assets, index = random_world(tmp_path)
    rng = np.random.default_rng(12)
    vectors = rng.standard_normal((300, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    live = LiveCatalogue(installed)
    live.apply([Change(f"k{j * 7}", "MOVED", vectors[j], False, j + 1) for j in range(300)])
    cat, _, added, snapshot = live.ann_snapshot(index)
    blend = ServedBlend(assets, "kitchen", cat.catalogue.item_ids, added).sparse(
        {"food": np.array([1, 2, 3], np.int64)})
    assert blend is not None
    query = vectors[5] + 0.5 * vectors[6]
    full = small_matvec(snapshot.delta_vectors, query) + blend.at(snapshot.delta)
    for n in (1, 40, 299):
        leaders = Recommender._delta_leaders(snapshot, query, blend, n)
        assert sorted(leaders.tolist()) == sorted(snapshot.delta[np.argsort(-full)[:n]].tolist())
    without_blend = Recommender._delta_leaders(snapshot, query, None, 40)
    assert sorted(without_blend.tolist()) == sorted(
        snapshot.delta[np.argsort(-small_matvec(snapshot.delta_vectors, query))[:40]].tolist())
    assert Recommender._delta_leaders(snapshot, query, blend, 300) is snapshot.delta


def test_an_indexed_snapshot_shares_the_live_positions_but_sees_only_its_own_items(tmp_path: Path) -> None:
    """The snapshot of an indexed catalogue looks ids up in the live catalogue's own map (no
    copy of 10^6 entries per update): an item added after it is absent from it, a removed
    one keeps its position, and the blend's asset order is the one looked up whole."""
    installed, assets, index = random_world(tmp_path)
    live = LiveCatalogue(installed)
    vec = np.ones(DIM, np.float32) / np.sqrt(DIM)
    live.apply([Change("k5", "", None, True, 1), Change("new1", "NEW", vec, False, 2)])
    first, _, added_first, _ = live.ann_snapshot(index)
    live.apply([Change("new2", "NEW", vec, False, 3)])
    second, _, added_second, _ = live.ann_snapshot(index)
    assert first.position("new1") == N and first.position("new2") is None
    assert second.position("new2") == N + 1 and second.position("k5") == first.position("k5") == 5
    assert first.position("unknown") is None
    best = first.top_k(None, 3, exclude=["new2", "k0"], scores=np.arange(N + 1, dtype=np.float32))
    assert best[0].item_id == "new1"
    for cat, added in ((first, added_first), (second, added_second)):  # the second reuses the first's
        ids = cat.catalogue.item_ids
        assert assets.reorder("kitchen", ids).tolist() == fresh_with(assets).reorder("kitchen", ids).tolist()
        reused = ServedBlend(assets, "kitchen", ids, added).popularity
        looked_up = ServedBlend(fresh_with(assets), "kitchen", ids, added).popularity
        assert reused is not None and looked_up is not None
        np.testing.assert_array_equal(reused, looked_up)


def fresh_with(assets: RankingAssets) -> RankingAssets:
    """The same assets with nothing kept from earlier reorder() calls."""
    return RankingAssets(item_ids=assets.item_ids, migration=assets.migration,
                         cooccurrence=assets.cooccurrence, popularity=assets.popularity, blend=assets.blend)


def test_reorder_reuses_its_last_answer_only_for_a_list_that_extends_it() -> None:
    assets = RankingAssets(item_ids={"k": ["a", "b", "c", "d"]}, migration={}, cooccurrence={},
                           popularity={}, blend={})
    first = assets.reorder("k", ("d", "x", "b"))
    first[:] = 99  # the caller's array: what is kept is not touched
    assert assets.reorder("k", ("d", "x", "b", "a")).tolist() == [3, -1, 1, 0]  # the tail looked up
    assert assets.reorder("k", ("x", "b")).tolist() == [-1, 1]  # not an extension: looked up whole
    assert assets.reorder("k", ("x", "b", "c")).tolist() == [-1, 1, 2]
    assets.item_ids["k"] = ["x", "b"]  # other asset ids: nothing reused
    assert assets.reorder("k", ("x", "b", "c", "a")).tolist() == [0, 1, -1, -1]
    assert assets.reorder("other", ("x",)).tolist() == [-1]


def test_positions_are_built_once_per_list_of_asset_ids() -> None:
    assets = RankingAssets(item_ids={"k": ["a", "b", "c"]}, migration={}, cooccurrence={},
                           popularity={}, blend={})
    first = assets.positions("k")
    assert first == {"a": 0, "b": 1, "c": 2} and assets.positions("k") is first
    assets.item_ids["k"].append("d")  # the same list, longer: built again
    assert assets.positions("k") == {"a": 0, "b": 1, "c": 2, "d": 3}
    assets.item_ids["k"] = ["d", "a"]  # another list: built again
    assert assets.positions("k") == {"d": 0, "a": 1}
    assert assets.positions("other") == {}


def test_the_sparse_blend_equals_the_dense_one(tmp_path: Path) -> None:
    installed, assets, _ = random_world(tmp_path)
    served = ServedBlend(assets, "kitchen", installed.catalogue.item_ids)
    rng = np.random.default_rng(2)
    for _ in range(10):
        history = {"food": rng.choice(N_FOOD, 4, replace=False).astype(np.int64)}
        dense = served(history)
        sparse = served.sparse(history)
        assert dense is not None and sparse is not None and sparse.any()
        positions = np.arange(N)
        np.testing.assert_allclose(sparse.at(positions), dense, rtol=1e-6)
        leaders, values, beyond = sparse.leaders(64)
        # the 64 largest blends, largest first (popularity counts tie: which of equal items
        # is not fixed)
        assert len(set(leaders)) == 64 and np.all(np.diff(values) <= 0)
        np.testing.assert_array_equal(dense[leaders], values)
        np.testing.assert_array_equal(values, np.sort(dense)[::-1][:64])
        assert beyond == np.sort(dense)[::-1][64]  # the best blend of every item left out


def test_bitmap_is_the_faiss_layout() -> None:
    mask = np.zeros(20, bool)
    mask[[0, 9, 19]] = True
    bits = bitmap(mask)
    assert list(bits) == [0b00000001, 0b00000010, 0b00001000]


def mapped_kib(path: Path) -> tuple[int, int]:
    """(Size, Rss) in KiB of this process's mappings of `path`, from /proc/self/smaps."""
    size = rss = 0
    inside = False
    for line in Path("/proc/self/smaps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        if "-" in fields[0] and len(fields) >= 5 and ":" in fields[3]:  # a mapping's header line
            inside = len(fields) == 6 and fields[5] == str(path.resolve())
        elif inside and fields[0] in ("Size:", "Rss:"):
            if fields[0] == "Size:":
                size += int(fields[1])
            else:
                rss += int(fields[1])
    return size, rss


def test_map_pages_maps_every_page_of_a_mapped_file(tmp_path: Path) -> None:
    """A file mapped but never read has no page in the process (the kernel's reclaim may drop
    it from the page cache); after map_pages every page is resident in the mapping."""
    path = tmp_path / "pages.bin"
    page = mmap.PAGESIZE
    path.write_bytes(bytes(range(256)) * (64 * page // 256) + b"tail")  # 64 pages and a partial one
    with path.open("rb") as f, mmap.mmap(f.fileno(), 0, prot=mmap.PROT_READ) as mapped:
        size, rss = mapped_kib(path)
        assert size == 65 * page // 1024 and rss == 0
        assert ann.map_pages(path) == 65 * page
        assert mapped_kib(path) == (size, size)
        assert mapped[-4:] == b"tail"
    assert ann.map_pages(path) == 0  # no longer mapped: nothing to touch


def test_storing_an_index_over_a_served_one_leaves_the_served_one_intact(tmp_path: Path) -> None:
    """`make engine` writing the index again under a gateway that maps the old one: the old
    mapping still reads its own rows (written in place, its pages would be truncated under
    it), the new file is whole, and no partial file is left."""
    installed, _, served = random_world(tmp_path)
    path = tmp_path / "kitchen.faiss"
    query = installed.embeddings[3]
    before = served.search(query, 10).tolist()
    other = np.random.default_rng(9).standard_normal(installed.embeddings.shape).astype(np.float32)
    other /= np.linalg.norm(other, axis=1, keepdims=True)
    store_index(other, path, IndexParams(m=16, ef_construction=100))
    assert served.search(query, 10).tolist() == before
    np.testing.assert_allclose(served.vectors(np.array([3])), installed.embeddings[[3]], atol=1e-3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["kitchen.faiss"]
    assert AnnIndex.load(path, ef_search=64).search(query, 10).tolist() != before


def test_loading_reads_the_whole_index_file_into_the_page_cache(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    random_world(tmp_path)
    path = tmp_path / "kitchen.faiss"
    size = path.stat().st_size
    monkeypatch.setattr(ann, "WARM_CHUNK_BYTES", 4096)  # many chunks, the last one short
    assert size % 4096 and ann.warm_page_cache(path) == size
    warmed: list[Path] = []

    def warm(p: Path) -> int:
        warmed.append(p)
        return 0
    monkeypatch.setattr(ann, "warm_page_cache", warm)
    index = AnnIndex.load(path, ef_search=64)
    assert warmed == [path] and len(index) == N
    size, rss = mapped_kib(path)
    assert size > 0 and rss == size, "every page of the loaded index is mapped in"


def blocks_per_neighbour(index: object, block: int = 8) -> float:
    """The mean, over items, of the distinct blocks of `block` consecutive ids that an item's
    level-0 links point into, per link (1: every link in a block of its own)."""
    return float(np.mean([len(np.unique(row[row >= 0] // block)) / max(int((row >= 0).sum()), 1)
                          for row in ann.level0_links(index)]))


def test_the_locality_order_renumbers_the_same_graph(tmp_path: Path) -> None:
    """Renumbered in locality_order the index finds the same items (mapped back through the
    order), and an item's links point into fewer blocks of neighbouring ids: at 10^6 items
    that made a search a third cheaper (bench figures in docs/ranking.md; 3,000 items fit the
    CPU's caches either way)."""
    import faiss

    rng = np.random.default_rng(3)
    centres = rng.standard_normal((100, DIM)).astype(np.float32)  # 100 clusters of 30, shuffled
    items = centres[rng.permutation(np.arange(N) % 100)] + rng.normal(0, 0.2, (N, DIM)).astype(np.float32)
    items /= np.linalg.norm(items, axis=1, keepdims=True)
    built = ann.build_index(items, IndexParams(m=16, ef_construction=100))
    order = ann.locality_order(built)
    assert sorted(order.tolist()) == list(range(N))
    renumbered = faiss.clone_index(built)
    renumbered.permute_entries(order)
    plain, ordered = AnnIndex(built, 256), AnnIndex(renumbered, 256)
    for _ in range(20):
        query = rng.standard_normal(DIM).astype(np.float32)
        assert sorted(order[ordered.search(query, 30)].tolist()) == sorted(plain.search(query, 30).tolist())
    np.testing.assert_array_equal(ordered.vectors(np.arange(50)), plain.vectors(order[:50]))
    assert blocks_per_neighbour(renumbered) < 0.95 * blocks_per_neighbour(built)


def test_an_indexed_catalogue_is_installed_in_the_index_order(tmp_path: Path) -> None:
    """write_installed with store_index_in_locality_order: position i of the catalogue read back
    (id, title, embedding, popularity) is the index's item i, so the gateway needs no map."""
    installed, _, _ = random_world(tmp_path)
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    entry = write_installed(model_dir, installed, lambda emb, path: ann.store_index_in_locality_order(
        emb, path, IndexParams(m=16, ef_construction=100)))
    assert entry["index"]["order"] == ann.LOCALITY_ORDER  # type: ignore[index]
    read = read_installed(model_dir, "kitchen", {"catalogues": {"kitchen": entry}})
    assert read.index_path is not None and read.catalogue.item_ids != installed.catalogue.item_ids
    index = AnnIndex.load(read.index_path, 256)
    before = {item: i for i, item in enumerate(installed.catalogue.item_ids)}
    was = np.array([before[item] for item in read.catalogue.item_ids])
    assert sorted(was.tolist()) == list(range(N))
    assert list(read.catalogue.titles) == [installed.catalogue.titles[i] for i in was]
    np.testing.assert_array_equal(read.embeddings, installed.embeddings[was])
    np.testing.assert_array_equal(read.popularity, installed.popularity[was])
    np.testing.assert_allclose(index.vectors(np.arange(N)), read.embeddings, atol=1e-3)  # float16
    query = read.embeddings[7]
    assert index.search(query, 1).tolist() == [7]


def test_a_reorder_must_be_a_permutation(tmp_path: Path) -> None:
    installed, _, _ = random_world(tmp_path)
    with pytest.raises(ValueError, match="not a permutation"):
        installed.reordered(np.zeros(N, np.int64))
