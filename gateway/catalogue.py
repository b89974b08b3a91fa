"""Each platform's catalogue index: titles embedded through Triton once, cached on disk by
model version and catalogue content, so a restart does not recompute them."""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path

import numpy as np

from gateway.encoder import TritonEncoder, cache_file
from interest_core.catalogue import Catalogue
from interest_core.ranking.index import CatalogueIndex

log = logging.getLogger("interest.catalogue")


def catalogue_key(catalogue: Catalogue) -> str:
    h = hashlib.sha256()
    for item_id, title in zip(catalogue.item_ids, catalogue.titles):
        h.update(f"{item_id}\t{title}\n".encode())
    return f"{len(catalogue)}-{h.hexdigest()[:12]}"


async def build_index(
    encoder: TritonEncoder, catalogue: Catalogue, cache_dir: Path, model_version: str,
    chunk: int = 1024,
) -> CatalogueIndex:
    """Load the cached embeddings [N, D] or compute them through Triton with progress logs."""
    path = cache_file(cache_dir, model_version, catalogue.platform, catalogue_key(catalogue))
    if path.exists():
        embeddings = np.load(path)
        log.info("catalogue %s: %d item embeddings loaded from %s",
                 catalogue.platform, len(embeddings), path)
    else:
        log.info("catalogue %s: embedding %d titles through Triton (cached afterwards in %s)",
                 catalogue.platform, len(catalogue), path)
        start = time.monotonic()
        parts = []
        for i in range(0, len(catalogue), chunk):
            parts.append(await encoder.embed_uncached(
                catalogue.titles[i : i + chunk], rpc="CatalogueBuild", platform=catalogue.platform,
                timeout=encoder.settings.triton_timeout_s * 6))
            done = min(i + chunk, len(catalogue))
            rate = done / max(time.monotonic() - start, 1e-6)
            log.info("catalogue %s: %d/%d titles (%.0f/s, ~%.0fs left)", catalogue.platform,
                     done, len(catalogue), rate, (len(catalogue) - done) / rate)
        embeddings = np.concatenate(parts)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp.npy")
        np.save(tmp, embeddings)
        tmp.replace(path)
    for title, vec in zip(catalogue.titles, embeddings):
        encoder.cache.put(title, vec)
    return CatalogueIndex(catalogue, embeddings)
