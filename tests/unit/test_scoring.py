"""Recommend's catalogue scoring: batching of concurrent calls (interest_core.ranking.scoring), exact
scores, and the bounded top k that scores only the largest-blend items (CatalogueIndex)."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from interest_core.catalogue import Catalogue
from interest_core.ranking.index import CatalogueIndex
from interest_core.ranking.scoring import BatchScorer, BoundGate, catalogue_scores


def catalogue(n: int = 5000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_catalogue_scores_are_the_dot_products(m: int) -> None:
    e = catalogue()
    q = np.random.default_rng(1).standard_normal((m, e.shape[1])).astype(np.float32)
    got = catalogue_scores(np.ascontiguousarray(e.T), q)
    assert got.shape == (m, len(e)) and got.dtype == np.float32
    np.testing.assert_allclose(got, q @ e.T, rtol=0, atol=1e-5)


def score_together(scorer: BatchScorer, queries: np.ndarray) -> list[np.ndarray]:
    """Every query's scores from `scorer`, all asked at once; the scorer is closed afterwards."""
    async def run() -> list[np.ndarray]:
        try:
            return await asyncio.gather(*(scorer.scores(q) for q in queries))
        finally:
            scorer.close()

    return asyncio.run(run())


def test_concurrent_calls_are_scored_together_and_each_gets_its_own_row() -> None:
    e = catalogue()
    queries = np.random.default_rng(2).standard_normal((6, e.shape[1])).astype(np.float32)
    sizes: list[int] = []
    results = score_together(BatchScorer(e, max_batch=3, on_batch=sizes.append, inline_max_values=0),
                             queries)
    # the first call starts at once, alone; the five that came meanwhile go in batches of <= 3
    assert sizes == [1, 3, 2]
    for q, got in zip(queries, results):
        np.testing.assert_allclose(got, e @ q, rtol=0, atol=1e-5)
    results[0][:] = 0.0  # rows are separate arrays: changing one leaves the others alone
    assert results[1].any()


def test_a_cancelled_request_is_not_scored_and_the_others_still_are() -> None:
    e = catalogue()
    queries = np.random.default_rng(3).standard_normal((4, e.shape[1])).astype(np.float32)
    sizes: list[int] = []

    async def run() -> list[np.ndarray | BaseException]:
        scorer = BatchScorer(e, on_batch=sizes.append, inline_max_values=0)
        tasks = [asyncio.create_task(scorer.scores(q)) for q in queries]
        await asyncio.sleep(0)  # all four are queued; the first is being scored
        tasks[2].cancel()
        try:
            return await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            scorer.close()

    results = asyncio.run(run())
    assert isinstance(results[2], asyncio.CancelledError)
    assert sizes == [1, 2]
    for j in (0, 1, 3):
        got = results[j]
        assert isinstance(got, np.ndarray)
        np.testing.assert_allclose(got, e @ queries[j], rtol=0, atol=1e-5)


def test_a_failing_batch_fails_its_callers_and_the_scorer_keeps_working() -> None:
    e = catalogue()

    async def run() -> tuple[list[np.ndarray | BaseException], np.ndarray]:
        scorer = BatchScorer(e, inline_max_values=0)
        try:
            wrong = np.ones(e.shape[1] + 1, np.float32)  # a query of the wrong size
            failed = await asyncio.gather(scorer.scores(wrong), return_exceptions=True)
            return list(failed), await scorer.scores(np.ones(e.shape[1], np.float32))
        finally:
            scorer.close()

    failed, good = asyncio.run(run())
    assert isinstance(failed[0], ValueError)
    np.testing.assert_allclose(good, e.sum(axis=1), rtol=0, atol=1e-4)


def test_a_retired_scorer_still_scores_the_calls_that_took_it() -> None:
    """A catalogue update retires the scorer while calls that took it are queued, being
    scored, or yet to ask: each still gets its scores, and the worker thread ends after them."""
    e = catalogue()
    queries = np.random.default_rng(5).standard_normal((5, e.shape[1])).astype(np.float32)

    async def run() -> tuple[list[np.ndarray], np.ndarray, bool, bool]:
        scorer = BatchScorer(e, max_batch=2, inline_max_values=0)
        worker = scorer._executor
        tasks = [asyncio.create_task(scorer.scores(q)) for q in queries[:4]]
        await asyncio.sleep(0)  # the first is being scored, three wait
        scorer.close()
        kept_while_busy = scorer._executor is worker
        early = await asyncio.wait_for(asyncio.gather(*tasks), 30)  # (a lost batch would hang)
        late = await asyncio.wait_for(scorer.scores(queries[4]), 30)  # took it before the retirement
        return early, late, kept_while_busy, scorer._executor is None

    early, late, kept_while_busy, ended = asyncio.run(run())
    for q, got in zip(queries, [*early, late]):
        np.testing.assert_allclose(got, e @ q, rtol=0, atol=1e-5)
    assert kept_while_busy and ended


def test_a_small_catalogue_is_scored_inline_with_the_same_scores() -> None:
    e = catalogue()  # 5000 x 16 values: below the inline limit, so no worker thread is involved
    queries = np.random.default_rng(4).standard_normal((3, e.shape[1])).astype(np.float32)
    sizes: list[int] = []
    scorer = BatchScorer(e, on_batch=sizes.append)
    assert scorer.inline
    results = score_together(scorer, queries)
    assert sizes == [1, 1, 1]
    for q, got in zip(queries, results):
        np.testing.assert_allclose(got, e @ q, rtol=0, atol=1e-5)
    with pytest.raises(ValueError):  # a wrong query fails its own call, as in the worker
        score_together(BatchScorer(e), np.ones((1, e.shape[1] + 1), np.float32))


def index_of(e: np.ndarray) -> CatalogueIndex:
    ids = tuple(f"i{n}" for n in range(len(e)))
    return CatalogueIndex(Catalogue("kitchen", ids, ids), e)


def sparse_counts_blend(n: int, rng: np.random.Generator, weight: float, touched: int) -> np.ndarray:
    """weight * log1p(co-occurrence counts) on `touched` random items + a small popularity term."""
    blend = 0.05 * np.log1p(rng.integers(0, 500, n)).astype(np.float32)
    hit = rng.choice(n, touched, replace=False)
    blend[hit] += weight * np.log1p(rng.integers(1, 6, touched)).astype(np.float32)
    return blend


@pytest.mark.parametrize("seed", range(20))
def test_bounded_top_k_is_the_full_top_k_whenever_it_answers(seed: int) -> None:
    rng = np.random.default_rng(seed)
    e = catalogue(3000, 16, seed)
    index = index_of(e)
    q = rng.standard_normal(16).astype(np.float32)
    q /= np.linalg.norm(q)
    # a strong blend (co-occurrence-led), a weak one, or one of the same size as the model term
    weight = (10.0, 0.2, 1.0)[seed % 3]
    touched = int(rng.integers(5, 800))
    blend = sparse_counts_blend(len(e), rng, weight, touched=touched)
    exclude = [f"i{n}" for n in rng.choice(len(e), 40, replace=False)]
    k = int(rng.choice([1, 10, 50]))
    got = index.top_k_bounded(q, blend, k, exclude, candidates=1024, first=(16, 256)[seed % 2])
    want = index.top_k(None, k, exclude, scores=e @ q + blend)
    if weight == 10.0 and touched >= k + len(exclude):
        # each touched item's blend (at least 10 log 2) outweighs any model term (at most 1):
        # the bound settles it, so the comparison below cannot be skipped for these seeds
        assert got is not None
    if got is not None:
        assert [r.item_id for r in got] == [r.item_id for r in want]
        np.testing.assert_allclose([r.score for r in got], [r.score for r in want], atol=1e-5)


def test_bounded_top_k_answers_for_a_dominant_blend_and_declines_for_a_weak_one() -> None:
    rng = np.random.default_rng(7)
    e = catalogue(3000, 16)
    index = index_of(e)
    q = e[0].copy()  # the model alone would rank item i0 first
    strong = sparse_counts_blend(len(e), rng, 10.0, touched=300)
    got = index.top_k_bounded(q, strong, 10, candidates=256)
    assert got is not None and len(got) == 10
    assert [r.item_id for r in got] == [r.item_id for r in index.top_k(None, 10, scores=e @ q + strong)]
    weak = np.zeros(len(e), np.float32)
    weak[:300] = 0.01  # cannot outweigh the model term: only the whole catalogue can tell
    assert index.top_k_bounded(q, weak, 10, candidates=256) is None
    # never an excluded item, and None when too few candidates are left to fill k
    owned = [r.item_id for r in got]
    again = index.top_k_bounded(q, strong, 10, owned, candidates=256)
    assert again is not None and not set(owned) & {r.item_id for r in again}
    assert index.top_k_bounded(q, strong, 300, candidates=256) is None


def test_bounded_top_k_widens_its_candidates_until_the_bound_holds() -> None:
    e = catalogue(3000, 16)
    index = index_of(e)
    q = e[5].copy()
    blend = np.zeros(len(e), np.float32)
    blend[100:200] = 10.0  # 100 items tied on the blend: 16 or 64 of them cannot rule out the rest
    full = index.top_k(None, 3, scores=e @ q + blend)
    assert index.top_k_bounded(q, blend, 3, candidates=64, first=16) is None
    got = index.top_k_bounded(q, blend, 3, candidates=1024, first=16)  # 16, 64 fail; 256 hold
    assert got is not None
    assert [r.item_id for r in got] == [r.item_id for r in full]


def test_bound_gate_skips_a_mostly_failing_bound_but_keeps_probing_it() -> None:
    gate = BoundGate(min_rate=0.2, probe=4, decay=0.5)
    assert all(gate.should_try() for _ in range(10))  # succeeding: always tried
    for _ in range(5):
        gate.record(False)
    tries = [gate.should_try() for _ in range(12)]
    assert tries == [False, False, False, True] * 3  # failing: every 4th request probes
    for _ in range(3):
        gate.record(True)  # the probes succeed again
    assert all(gate.should_try() for _ in range(5))


@pytest.mark.parametrize(("given", "want"), [(None, "4"), ("12", "12")])
def test_gateway_makes_idle_openblas_threads_sleep_unless_told_otherwise(
        given: str | None, want: str) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if given is not None:
        env["OPENBLAS_THREAD_TIMEOUT"] = given
    # A fresh interpreter: the setting only works when made before NumPy loads OpenBLAS.
    code = ("import sys, gateway; assert 'numpy' not in sys.modules, 'gateway imports NumPy first'; "
            "import os; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])")
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == want
