"""Batched catalogue scoring (gateway.scoring): exact scores, batching of concurrent calls."""

from __future__ import annotations

import asyncio

import numpy as np
import pytest

from gateway.scoring import BatchScorer, block_scores


def catalogue(n: int = 5000, d: int = 16, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    e = rng.standard_normal((n, d)).astype(np.float32)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


@pytest.mark.parametrize("m", [1, 2, 5])
def test_block_scores_are_the_dot_products(m: int) -> None:
    e = catalogue()
    q = np.random.default_rng(1).standard_normal((m, e.shape[1])).astype(np.float32)
    # 5000 rows in blocks of 777: the last block is a partial one
    got = block_scores(e, q, block_rows=777)
    assert got.shape == (m, len(e)) and got.dtype == np.float32
    np.testing.assert_allclose(got, q @ e.T, rtol=0, atol=1e-5)


def test_concurrent_calls_are_scored_together_and_each_gets_its_own_row() -> None:
    e = catalogue()
    queries = np.random.default_rng(2).standard_normal((6, e.shape[1])).astype(np.float32)
    sizes: list[int] = []

    async def run() -> list[np.ndarray]:
        scorer = BatchScorer(e, max_batch=3, on_batch=sizes.append)
        try:
            return await asyncio.gather(*(scorer.scores(q) for q in queries))
        finally:
            scorer.close()

    results = asyncio.run(run())
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
        scorer = BatchScorer(e, on_batch=sizes.append)
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
        np.testing.assert_allclose(results[j], e @ queries[j], rtol=0, atol=1e-5)


def test_a_failing_batch_fails_its_callers_and_the_scorer_keeps_working() -> None:
    e = catalogue()

    async def run() -> tuple[list[object], np.ndarray]:
        scorer = BatchScorer(e)
        try:
            wrong = np.ones(e.shape[1] + 1, np.float32)  # a query of the wrong size
            failed = await asyncio.gather(scorer.scores(wrong), return_exceptions=True)
            return failed, await scorer.scores(np.ones(e.shape[1], np.float32))
        finally:
            scorer.close()

    failed, good = asyncio.run(run())
    assert isinstance(failed[0], ValueError)
    np.testing.assert_allclose(good, e.sum(axis=1), rtol=0, atol=1e-4)
