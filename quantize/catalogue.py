"""The catalogues `make engine` installs beside the model, so the gateway starts without
reading a dataset or embedding anything: per configured platform, the item ids and titles
(read through the platform's dataset adapter, catalogue_limit applied), each title's embedding
by the installed ONNX model, tokenized and run exactly as the served path does, and the
training interactions per item (the non-personalised fallback ranking).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from interest_core.catalogue import (
    Catalogue,
    IndexWriter,
    InstalledCatalogue,
    catalogue_paths,
    write_installed,
)
from interest_core.config import Settings
from interest_core.contract import CATALOGUE_EMBEDDINGS, CATALOGUE_INDEX, CATALOGUE_ITEMS
from interest_core.ranking.ann import IndexParams, store_index_in_locality_order
from interest_core.ranking.assets import RankingAssets
from interest_core.tokenizer import BehaviourTokenizer
from interest_model.corpus import item_popularity, load_catalogue
from interest_model.onnx_runtime import OnnxInterestRuntime

log = logging.getLogger("quantize.catalogue")

CHUNK_ROWS = 16  # rows ONNX Runtime runs at once, as Triton's model.py does (config.pbtxt chunk_rows)


def fallback_popularity(settings: Settings, catalogues: dict[str, Catalogue],
                        assets: RankingAssets | None) -> dict[str, np.ndarray]:
    """Training interactions per catalogue item (the non-personalised ranking), float32 [n]:
    the trained assets' counts, made on the same training users, for each platform whose every
    item they know; the others are counted from their dataset, read through its adapter."""
    out: dict[str, np.ndarray] = {}
    for name, catalogue in catalogues.items():
        if assets is not None and name in assets.popularity:
            positions = assets.reorder(name, catalogue.item_ids)
            if len(positions) and positions.min() >= 0:
                out[name] = assets.popularity[name][positions].astype(np.float32)
    missing = [name for name in catalogues if name not in out]
    if missing:
        out.update(item_popularity(settings, missing))
    return out


def embed_titles(runtime: OnnxInterestRuntime, tokenizer: BehaviourTokenizer, titles: Sequence[str],
                 label: str, block: int = 1024) -> np.ndarray:
    """Each title's interest embedding, float32 [N, D] (duplicates embedded once), logging
    progress in texts/s. Tokenized by the gateway's tokenizer and run through the same
    `run_many` in CHUNK_ROWS chunks as Triton runs it, so the rows equal what the served model
    answers for these titles."""
    unique = list(dict.fromkeys(titles))
    start = time.monotonic()
    parts: list[np.ndarray] = []
    for i in range(0, len(unique), block):
        ids, mask = tokenizer(unique[i : i + block])
        parts.extend(runtime.run_many([(ids, mask)], CHUNK_ROWS))
        done = min(i + block, len(unique))
        rate = done / max(time.monotonic() - start, 1e-6)
        log.info("catalogue %s: embedded %d/%d titles (%.0f texts/s, ~%.0fs left)", label, done,
                 len(unique), rate, (len(unique) - done) / rate)
    if not parts:
        return np.zeros((0, 0), dtype=np.float32)
    rows = np.concatenate(parts)
    position = {title: n for n, title in enumerate(unique)}
    return rows[[position[t] for t in titles]]


def remove_installed_catalogues(model_dir: Path) -> None:
    """Delete every platform's catalogue files (a reinstall writes those configured now)."""
    for pattern in (CATALOGUE_ITEMS, CATALOGUE_EMBEDDINGS, CATALOGUE_INDEX):
        for path in model_dir.glob(pattern.format(platform="*")):
            path.unlink()


def index_for(settings: Settings, installed: InstalledCatalogue) -> IndexWriter | None:
    """write_installed's `index`: a nearest-neighbour index, with progress logging, for a
    catalogue of at least settings.ann_min_items items; none for a smaller one (scored whole)."""
    name, n = installed.catalogue.platform, len(installed.catalogue)
    if n < settings.ann_min_items:
        return None
    params = IndexParams()
    log.info("catalogue %s: %d items >= ann_min_items %d: building its nearest-neighbour index (%s, "
             "efConstruction %d; minutes at 10^6 items)", name, n, settings.ann_min_items, params.factory,
             params.ef_construction)

    def progress(done: int, total: int, seconds: float) -> None:
        left = seconds * (total - done) / max(done, 1)
        log.info("catalogue %s: indexed %d/%d items (%.0f items/s, ~%.0fs left)", name, done, total,
                 done / max(seconds, 1e-6), left)

    return lambda embeddings, path: store_index_in_locality_order(embeddings, path, params, progress)


def install_catalogues(settings: Settings, onnx_path: Path, model_dir: Path,
                       assets: RankingAssets | None) -> dict[str, dict[str, object]]:
    """Write each configured platform's catalogue files into `model_dir`, embedded by the ONNX
    model at `onnx_path`; returns VERSION.json's `catalogues` entry (counts and digests)."""
    remove_installed_catalogues(model_dir)
    catalogues = {name: load_catalogue(settings, name) for name in settings.platforms}
    popularity = fallback_popularity(settings, catalogues, assets)
    runtime = OnnxInterestRuntime(onnx_path)
    tokenizer = BehaviourTokenizer(max_len=settings.max_seq_len)
    entries: dict[str, dict[str, object]] = {}
    for name, catalogue in catalogues.items():
        embeddings = embed_titles(runtime, tokenizer, catalogue.titles, name)
        installed = InstalledCatalogue(catalogue, embeddings, popularity[name])
        entries[name] = write_installed(model_dir, installed, index_for(settings, installed))
        log.info("catalogue %s: %d items installed as %s", name, len(catalogue),
                 ", ".join(p.name for p in catalogue_paths(model_dir, name)))
    return entries
