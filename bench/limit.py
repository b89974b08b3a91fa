"""Approach (b), the limit: the same INT8 ONNX on ONNX Runtime in-process, ideal batches
(texts sorted by length, so almost no padding), no network, no serving overhead."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from interest_core.tokenizer import BehaviourTokenizer
from interest_model.onnx_runtime import OnnxInterestRuntime


def ort_limit(
    onnx_path: Path,
    texts: list[str],
    max_len: int,
    batch: int = 64,
    threads: int = 2,
    repeats: int = 2,
    spinning: bool = True,
) -> dict[str, float]:
    """Texts/s of ORT on `texts` in length-sorted batches of `batch` (best of `repeats`)."""
    runtime = OnnxInterestRuntime(onnx_path, intra_op_threads=threads, allow_spinning=spinning)
    tok = BehaviourTokenizer(max_len=max_len)
    ordered = sorted(texts, key=lambda t: len(tok([t])[0][0]))
    batches = [tok(ordered[i : i + batch]) for i in range(0, len(ordered), batch)]
    runtime.run(*batches[0])  # warm-up
    best = float("inf")
    batch_ms: list[float] = []
    for _ in range(repeats):
        start = time.perf_counter()
        for ids, mask in batches:
            t0 = time.perf_counter()
            runtime.run(ids, mask)
            batch_ms.append((time.perf_counter() - t0) * 1000)
        best = min(best, time.perf_counter() - start)
    return {
        "texts": len(texts),
        "batch": batch,
        "spinning": spinning,
        "seconds": round(best, 3),
        "texts_per_s": round(len(texts) / best, 1),
        "batch_p50_ms": round(float(np.percentile(batch_ms, 50)), 2),
        "batch_p99_ms": round(float(np.percentile(batch_ms, 99)), 2),
    }
