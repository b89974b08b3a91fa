"""Catalogue scoring for Recommend: a small catalogue on the event loop, a large one in a worker
thread, batched across concurrent requests.

Scoring one query against a whole catalogue is a mat-vec bound by memory bandwidth. The
catalogue is kept transposed, [D, N] C-contiguous, and each query is scored as
`query @ columns`: OpenBLAS's sgemv then walks the matrix in its plain ("N") layout, which is
several times faster than `rows @ query` on the [N, D] rows ("T" layout) and lowers the
tail latency and CPU use of Recommend under load. Several queries are scored one mat-vec
each: a small sgemm costs more, and cache blocking over column slices more still (NumPy
copies a strided slice before calling BLAS). The timings: docs/ranking.md.

In the worker, batching adds no delay: a request arriving while the worker is idle is scored
at once; requests arriving while a batch is being scored wait for it and go together in the
next one, so a burst costs one thread hand-off instead of one each. The work runs in one
worker thread (NumPy releases the GIL in BLAS), so the event loop keeps reading and answering
other RPCs meanwhile. Scores equal `rows @ query` up to float32 summation order.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import numpy as np

log = logging.getLogger("interest.scoring")

# Catalogues up to this many embedding values (float32) are scored on the event loop: for them
# the worker thread's hand-off (submit, wake, call back through the loop's self-pipe) costs
# more than the mat-vec itself. Larger ones go to the worker so that the loop keeps answering
# meanwhile. The timings behind the limit: docs/ranking.md.
INLINE_MAX_VALUES = 4_000_000


def catalogue_scores(columns: np.ndarray, queries: np.ndarray) -> np.ndarray:
    """float32 [M, N] = queries [M, D] . columns [D, N]: one plain-layout sgemv per query."""
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    out = np.empty((len(queries), columns.shape[1]), dtype=np.float32)
    for j, query in enumerate(queries):
        np.dot(query, columns, out=out[j])
    return out


class BatchScorer:
    """Scores queries against one catalogue's embeddings [N, D] (unit rows), batching
    concurrent calls; it keeps its own transposed copy [D, N] (float32, 4 * N * D bytes).

    `await scorer.scores(query)` returns a new float32 [N] array (the caller may change it).
    `on_batch(size)` is called for every batch scored (metrics).
    """

    def __init__(
        self, embeddings: np.ndarray, max_batch: int = 16,
        on_batch: Callable[[int], None] | None = None, inline_max_values: int = INLINE_MAX_VALUES,
    ) -> None:
        self.columns = np.ascontiguousarray(embeddings.T, dtype=np.float32)
        self.inline = self.columns.size <= inline_max_values
        self.max_batch = max_batch
        self.on_batch = on_batch
        self._pending: list[tuple[np.ndarray, asyncio.Future[np.ndarray]]] = []
        self._busy = False
        self._retired = False
        # Only a catalogue scored off the loop needs the worker thread.
        self._executor = (None if self.inline
                          else ThreadPoolExecutor(1, thread_name_prefix="catalogue-scoring"))

    async def scores(self, query: np.ndarray) -> np.ndarray:
        if self.inline:
            if self.on_batch is not None:
                self.on_batch(1)
            return catalogue_scores(self.columns, query[None])[0]
        if self._executor is None:  # retired and idle (close()): alone, off the loop
            if self.on_batch is not None:
                self.on_batch(1)
            return (await asyncio.to_thread(catalogue_scores, self.columns, query[None]))[0]
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
            self._end_worker_if_retired()
            return
        self._busy = True
        assert self._executor is not None  # inline scorers never queue
        queries = np.stack([q for q, _ in batch])
        work = asyncio.get_running_loop().run_in_executor(
            self._executor, catalogue_scores, self.columns, queries)
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
        else:
            self._end_worker_if_retired()

    def close(self) -> None:
        """Retire the scorer (a catalogue update serves a new one). Calls that took it still get
        their scores: those queued or being scored from the worker, which ends after the last
        of them; one that comes later (it took the catalogue before the update and awaited
        something since) alone, in the default executor. Shutting the worker down at once had failed such
        calls with INTERNAL ("cannot schedule new futures after shutdown")."""
        self._retired = True
        self._end_worker_if_retired()

    def _end_worker_if_retired(self) -> None:
        if self._retired and not self._busy and not self._pending and self._executor is not None:
            self._executor.shutdown(wait=False)
            self._executor = None


class BoundGate:
    """Whether Recommend should try the bounded top k (CatalogueIndex.top_k_bounded) first.

    A failed try costs about as much as it saves when it succeeds, and with a weak blend
    nearly every try fails (docs/ranking.md). So while the recent success rate (exponential
    average over tries) is below `min_rate`, only every `probe`-th request tries, enough to
    notice when it starts working again.
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
