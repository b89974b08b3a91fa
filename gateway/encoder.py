"""Behaviour texts -> interest embeddings through Triton, with an item-embedding cache.

Texts already embedded (catalogue titles, items seen before) skip BERT entirely.
"""

from __future__ import annotations

import asyncio
import logging
from collections import OrderedDict
from collections.abc import Sequence

import numpy as np
import tritonclient.grpc.aio as triton
from tritonclient.utils import InferenceServerException

from gateway.errors import from_triton
from gateway.metrics import GatewayMetrics
from interest_core.config import Settings
from interest_core.contract import ATTENTION_MASK, INPUT_IDS, OUTPUT, read_version
from interest_core.errors import DeadlineExceeded, Unavailable
from interest_core.tokenizer import BehaviourTokenizer

log = logging.getLogger("interest.encoder")


def installed_model_version(settings: Settings) -> dict[str, object]:
    """VERSION.json written by `quantize.install`; raises Unavailable when no model is there."""
    return read_version(settings.model_repository / settings.model_name)


class EmbeddingCache:
    """LRU map text -> float32 [D] embedding."""

    def __init__(self, capacity: int = 200_000) -> None:
        self.capacity = capacity
        self._data: OrderedDict[str, np.ndarray] = OrderedDict()

    def get(self, text: str) -> np.ndarray | None:
        vec = self._data.get(text)
        if vec is not None:
            self._data.move_to_end(text)
        return vec

    def put(self, text: str, vec: np.ndarray) -> None:
        if self.capacity == 0:
            return
        self._data[text] = vec
        self._data.move_to_end(text)
        while len(self._data) > self.capacity:
            self._data.popitem(last=False)

    def __len__(self) -> int:
        return len(self._data)

    def clear(self) -> None:
        self._data.clear()


class TritonEncoder:
    """Async client of the `interest_encoder` model; chunks to Triton's max batch size."""

    def __init__(self, settings: Settings, metrics: GatewayMetrics, url: str | None = None) -> None:
        self.settings = settings
        self.metrics = metrics
        self.url = url or settings.triton_grpc_url
        self.model = settings.model_name
        self.tokenizer = BehaviourTokenizer(max_len=settings.max_seq_len)
        self.cache = EmbeddingCache(settings.item_cache_size)
        self._client = triton.InferenceServerClient(self.url)

    async def close(self) -> None:
        await self._client.close()

    async def ready(self) -> bool:
        """True when Triton is up and the model is loaded."""
        try:
            return bool(await self._client.is_model_ready(self.model, client_timeout=2.0))
        except (TimeoutError, InferenceServerException, OSError):
            return False

    async def _infer(self, ids: np.ndarray, mask: np.ndarray, timeout: float | None) -> np.ndarray:
        inputs = [triton.InferInput(INPUT_IDS, list(ids.shape), "INT64"),
                  triton.InferInput(ATTENTION_MASK, list(mask.shape), "INT64")]
        inputs[0].set_data_from_numpy(ids)
        inputs[1].set_data_from_numpy(mask)
        try:
            result = await self._client.infer(
                self.model, inputs, outputs=[triton.InferRequestedOutput(OUTPUT)],
                client_timeout=timeout,
            )
        except InferenceServerException as exc:
            raise from_triton(exc) from exc
        out = result.as_numpy(OUTPUT)
        if out is None:
            raise Unavailable("the interest model returned no embedding")
        return np.asarray(out, dtype=np.float32)

    async def embed_uncached(
        self, texts: Sequence[str], rpc: str, platform: str, timeout: float | None = None,
        concurrency: int = 4,
    ) -> np.ndarray:
        """texts -> float32 [N, D] via Triton (no cache), max-batch chunks, a few in flight."""
        if timeout is not None and timeout <= 0:
            raise DeadlineExceeded("deadline exceeded before the interest model was called")
        chunk = self.settings.triton_max_batch_size
        parts: list[tuple[np.ndarray, np.ndarray]] = []
        with self.metrics.stage("tokenize", rpc, platform):
            for i in range(0, len(texts), chunk):
                parts.append(self.tokenizer(texts[i : i + chunk]))
        gate = asyncio.Semaphore(concurrency)

        async def one(ids: np.ndarray, mask: np.ndarray) -> np.ndarray:
            async with gate:
                return await self._infer(ids, mask, timeout)

        with self.metrics.stage("infer", rpc, platform):
            outs = await asyncio.gather(*(one(ids, mask) for ids, mask in parts))
        return np.concatenate(outs) if outs else np.zeros((0, 0), dtype=np.float32)

    async def embed(
        self, texts: Sequence[str], rpc: str, platform: str, timeout: float | None = None
    ) -> np.ndarray:
        """texts -> float32 [N, D]; cached texts skip Triton; new ones are added to the cache."""
        found: dict[str, np.ndarray] = {}
        missing: list[str] = []
        for text in dict.fromkeys(texts):
            vec = self.cache.get(text)
            if vec is None:
                missing.append(text)
            else:
                found[text] = vec
        self.metrics.item_cache.labels(result="hit").inc(len(found))
        self.metrics.item_cache.labels(result="miss").inc(len(missing))
        if missing:
            fresh = await self.embed_uncached(missing, rpc, platform, timeout)
            for text, vec in zip(missing, fresh):
                self.cache.put(text, vec)
                found[text] = vec
        return np.stack([found[t] for t in texts])
