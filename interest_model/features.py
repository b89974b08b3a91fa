"""Backbone features of catalogue titles: the pretrained all-MiniLM-L6-v2's unit mean-pooled
embedding per item, float32 [n_items, 384].

Training keeps the backbone frozen and learns on these, and the zero-shot and text-ridge
baselines use them as they are, so they are computed once (PyTorch, length-sorted batches,
no padding beyond each batch's longest title) and cached on disk by dataset and backbone.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from interest_core.catalogue import Catalogue
from interest_core.contract import backbone_dir
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.backbone import InterestEncoder

log = logging.getLogger("interest.features")


def titles_digest(titles: Sequence[str]) -> str:
    """sha256 of the titles and the backbone weights' name: the cache key of their features."""
    h = hashlib.sha256(str(backbone_dir()).encode())
    for t in titles:
        h.update(t.encode())
        h.update(b"\x00")
    return h.hexdigest()[:16]


@torch.inference_mode()
def embed_titles(model: InterestEncoder, titles: Sequence[str], max_len: int = 64,
                 batch: int = 128, progress: str = "") -> np.ndarray:
    """Unit embeddings float32 [len(titles), D] of `titles` with `model` (eval mode)."""
    tok = BehaviourTokenizer(max_len=max_len)
    lengths = np.array([len(t) for t in titles])
    order = np.argsort(lengths, kind="stable")
    out = np.empty((len(titles), model.dim), dtype=np.float32)
    start_t = last = time.monotonic()
    for start in range(0, len(order), batch):
        rows = order[start : start + batch]
        ids, mask = tok([titles[i] for i in rows])
        out[rows] = model(torch.from_numpy(ids), torch.from_numpy(mask)).numpy()
        now = time.monotonic()
        if progress and (now - last > 10 or start + batch >= len(order)):
            done = min(start + batch, len(order))
            log.info("%s: %d/%d titles embedded (%.0f/s)", progress, done, len(order),
                     done / max(now - start_t, 1e-9))
            last = now
    return out


def catalogue_features(catalogues: dict[str, Catalogue], cache_dir: Path) -> dict[str, np.ndarray]:
    """Per platform, the frozen backbone's unit title embeddings float32 [n, D], cached."""
    cache_dir.mkdir(parents=True, exist_ok=True)
    model: InterestEncoder | None = None
    features: dict[str, np.ndarray] = {}
    for platform, catalogue in catalogues.items():
        path = cache_dir / f"features-{platform}-{titles_digest(catalogue.titles)}.npy"
        if path.exists():
            features[platform] = np.load(path)
            log.info("%s: %d backbone title features from cache %s", platform, len(catalogue), path)
            continue
        if model is None:
            model = InterestEncoder.load(None)
        features[platform] = embed_titles(model, catalogue.titles, progress=f"{platform} titles")
        tmp = path.with_suffix(".tmp.npy")
        np.save(tmp, features[platform])
        tmp.replace(path)
    return features
