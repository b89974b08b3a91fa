"""Catalogue scoring for Recommend, batched across concurrent requests, off the event loop.

Scoring one query against a whole catalogue (27,637 x 384 float32, 42 MB) is a mat-vec that
is bound by memory bandwidth: each request reads the whole matrix for 2 flops per 4 bytes.
Concurrent requests therefore share the read: the catalogue is walked in row blocks small
enough to stay in cache, and each block is scored against every query waiting (exact
float32, the same dot products as `embeddings @ query` up to summation order).

Batching adds no delay: a request arriving while the worker is idle is scored at once;
requests arriving while a batch is being scored wait for it and go together in the next
one. The work runs in one worker thread (NumPy releases the GIL in BLAS), so the event
loop keeps reading and answering other RPCs meanwhile.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger("interest.scoring")

BLOCK_ROWS = 2048  # 2048 x 384 float32 = 3 MiB: one block stays in cache while every query reads it


def block_scores(embeddings: np.ndarray, queries: np.ndarray, block_rows: int = BLOCK_ROWS) -> np.ndarray:
    """float32 [M, N] = queries [M, D] . embeddings [N, D]^T, reading `embeddings` once.

    OpenBLAS's sgemm is slow for a handful of queries (M=2 costs 4x M=1 on 2 cores), and M
    separate mat-vecs read the matrix M times; M mat-vecs per cache-sized block do neither.
    """
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    if len(queries) == 1:
        return (embeddings @ queries[0])[None]
    n = len(embeddings)
    out = np.empty((len(queries), n), dtype=np.float32)
    for start in range(0, n, block_rows):
        block = embeddings[start : start + block_rows]
        stop = start + len(block)
        for j, query in enumerate(queries):
            np.dot(block, query, out=out[j, start:stop])
    return out


class BatchScorer:
    """Scores queries against one catalogue's embeddings [N, D], batching concurrent calls.

    `await scorer.scores(query)` returns a new float32 [N] array (the caller may change it).
    `on_batch(size)` is called for every batch scored (metrics).
    """

    def __init__(
        self, embeddings: np.ndarray, max_batch: int = 16,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        self.embeddings = embeddings
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._busy = False
        self._executor = ThreadPoolExecutor(1, thread_name_prefix="catalogue-scoring")

    async def scores(self, query: np.ndarray) -> np.ndarray:
        future: asyncio.Future[np.ndarray] = asyncio.get_running_loop().create_future()
        self._pending.append((query, future))
        if not self._busy:
            self._launch()
        return await future

    def _launch(self) -> None:
        # Requests cancelled while waiting (deadline, client gone) are dropped, not scored.
        live = [(q, f) for q, f in self._pending if not f.done()]
        batch, self._pending = live[: self.max_batch], live[self.max_batch :]
        if not batch:
            return
        self._busy = True
        queries = np.stack([q for q, _ in batch])
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, block_scores, self.embeddings, queries)
        work.add_done_callback(lambda done: self._finish(batch, done))
        if self.on_batch is not None:
            self.on_batch(len(batch))

    def _finish(self, batch: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]],
                done: asyncio.Future[np.ndarray]) -> None:
        self._busy = False
        error = RuntimeError("catalogue scoring stopped") if done.cancelled() else done.exception()
        if error is not None:
            log.error("catalogue scoring failed for a batch of %d: %r", len(batch), error)
        for j, (_, future) in enumerate(batch):
            if future.done():
                continue
            if error is not None:
                future.set_exception(error)
            else:
                future.set_result(done.result()[j])
        if self._pending:
            self._launch()

    def close(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)


class BoundGate:
    """Whether Recommend should try the bounded top k (CatalogueIndex.top_k_bounded) first.

    A failed try costs about as much as it saves when it succeeds (kitchen -> food, whose
    blend is weak, fails for ~95% of users: 0.9 ms spent, then the 1.3 ms full scan anyway).
    So while the recent success rate (exponential average over tries) is below `min_rate`,
    only every `probe`-th request tries, enough to notice when it starts working again.
    """

    def __init__(self, min_rate: float = 0.2, probe: int = 16, decay: float = 0.05) -> None:
        self.min_rate, self.probe, self.decay = min_rate, probe, decay
        self.rate = 1.0  # optimistic start: the first requests all try
        self._skipped = 0

    def should_try(self) -> bool:
        if self.rate >= self.min_rate or self._skipped >= self.probe - 1:
            self._skipped = 0
            return True
        self._skipped += 1
        return False

    def record(self, success: bool) -> None:
        self.rate += self.decay * (float(success) - self.rate)
