"""Each platform's catalogue index, from the catalogue `make engine` installed beside the model:
its titles' embeddings were computed by the served model, so they also seed the encoder's item
cache (a behaviour text equal to a catalogue title skips Triton)."""

from __future__ import annotations

import numpy as np

from gateway.encoder import TritonEncoder
from interest_core.catalogue import InstalledCatalogue
from interest_core.ranking.index import CatalogueIndex

SAME_MODEL_COSINE = 0.98  # INT8 vs the embeddings installed from the same engine: above 0.99 (docs/model.md)
PROBE_TITLES = 4


class ModelMismatch(RuntimeError):
    """Triton serves another model than the one whose catalogue embeddings are installed."""


async def check_same_model(encoder: TritonEncoder, installed: InstalledCatalogue,
                           model_version: str) -> float:
    """Embed a few installed titles through Triton, uncached, and compare them with the installed
    embeddings of the same titles: a gateway whose Triton serves another model (a roll-out that
    pointed it at the wrong Triton) would rank in a mixed embedding space. Returns the lowest
    cosine; ModelMismatch below SAME_MODEL_COSINE."""
    n = min(PROBE_TITLES, len(installed.catalogue))
    if n == 0:
        return 1.0
    titles = list(installed.catalogue.titles[:n])
    served = await encoder.embed_uncached(titles, "Startup", installed.catalogue.platform)
    served = served / np.maximum(np.linalg.norm(served, axis=1, keepdims=True), 1e-12)
    cosine = float(np.min(np.sum(served * installed.embeddings[:n], axis=1)))
    if cosine < SAME_MODEL_COSINE:
        raise ModelMismatch(
            f"Triton at {encoder.url} does not serve the model {model_version} whose "
            f"{installed.catalogue.platform} catalogue is installed: its embeddings of {n} catalogue "
            f"titles agree to cosine {cosine:.3f} "
            f"(< {SAME_MODEL_COSINE}); point the gateway at the Triton serving that model, or install "
            f"the model Triton serves (make engine) with its catalogues")
    return cosine


def serve_index(encoder: TritonEncoder, installed: InstalledCatalogue) -> CatalogueIndex:
    """The ranking index of an installed catalogue, with its titles put in the encoder's cache."""
    for title, vec in zip(installed.catalogue.titles, installed.embeddings):
        encoder.cache.put(title, vec)
    return CatalogueIndex(installed.catalogue, installed.embeddings)
