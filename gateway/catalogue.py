"""Each platform's catalogue index, from the catalogue `make engine` installed beside the model:
its titles' embeddings were computed by the served model, so they also seed the encoder's item
cache (a behaviour text equal to a catalogue title skips Triton)."""

from __future__ import annotations

from gateway.encoder import TritonEncoder
from interest_core.catalogue import InstalledCatalogue
from interest_core.ranking.index import CatalogueIndex


def serve_index(encoder: TritonEncoder, installed: InstalledCatalogue) -> CatalogueIndex:
    """The ranking index of an installed catalogue, with its titles put in the encoder's cache."""
    for title, vec in zip(installed.catalogue.titles, installed.embeddings):
        encoder.cache.put(title, vec)
    return CatalogueIndex(installed.catalogue, installed.embeddings)
