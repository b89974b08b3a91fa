"""An approximate nearest-neighbour index over a catalogue too large to score whole per request.

At a million items the exact scan (ranking/scoring.py) reads 1.5 GB per query. Above
`Settings.ann_min_items` items `make engine` builds a graph index over the item embeddings and
stores it beside the catalogue; the gateway maps the file read-only at start (not rebuilt) and
Recommend asks it for the candidates of the model term, which it merges with the
collaborative candidates and scores exactly (interest_core.recommender). The library and its
settings were picked by measurement (`make ann-compare`, docs/ranking.md):

- faiss-cpu HNSW (graph search, M links a node, efConstruction candidates while building,
  efSearch while searching), the vectors stored as float16 inside the index: one copy of the
  catalogue in 2 bytes a value, 768 MB at 10^6 x 384, scores within about 1e-4 of float32,
  and rows read back from it for exact re-scoring.
- The items are numbered in a breadth-first walk of the graph (`locality_order`), and the
  catalogue is installed in that order: an item's links lie near it in the file, so a search
  touches fewer pages (a third less time a search at 10^6 items).
- The file is memory-mapped (faiss IO_FLAG_MMAP_IFC), and its pages are shared through the
  page cache by a host's gateways. Loading reads the file once, sequentially, before the
  gateway is ready (`warm_page_cache`), then touches every page of the mapping (`map_pages`):
  a page the process has mapped is one the kernel's proactive reclaim leaves alone (a DAMON
  `pageout` scheme that takes only unmapped file pages, as on the VMs this was measured on),
  where a page cached but never touched can be dropped, and a search then waits on the disk
  for it. The measurements: docs/ranking.md#a-cold-page-cache.
- The file is written whole beside its final name and renamed into place (`store_index`): a
  gateway mapping the old file keeps reading it, never a half-written one.
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

LIBRARY = "faiss-cpu HNSW, float16 vectors"
LOCALITY_ORDER = "breadth-first over level 0"  # store_index_in_locality_order's numbering
log = logging.getLogger("interest.ann")


WARM_CHUNK_BYTES = 16 << 20


def warm_page_cache(path: Path) -> int:
    """Read `path` once from start to end (the bytes are dropped) so that the kernel holds its
    pages: a mapping of it then faults from memory, not from the disk. Returns the bytes read."""
    total = 0
    buffer = bytearray(WARM_CHUNK_BYTES)
    with path.open("rb", buffering=0) as f:
        while read := f.readinto(buffer):
            total += read
    return total


def map_pages(path: Path) -> int:
    """Touch one byte in every page of this process's mappings of `path`, so that each page is
    mapped into the process (a read fault; from the page cache after `warm_page_cache`), not
    merely cached. Returns the bytes of the mappings found (0 when none: nothing maps it)."""
    target = str(path.resolve())
    page = os.sysconf("SC_PAGE_SIZE")
    total = 0
    with open("/proc/self/maps") as maps:
        for line in maps:
            fields = line.split(maxsplit=5)
            if len(fields) < 6 or fields[5].rstrip("\n") != target or not fields[1].startswith("r"):
                continue
            start, end = (int(x, 16) for x in fields[0].split("-"))
            mapped = memoryview((ctypes.c_uint8 * (end - start)).from_address(start))
            pages = np.frombuffer(mapped, dtype=np.uint8)
            int(pages[::page].sum())  # the reads are the point; the sum is discarded
            total += end - start
    return total


@dataclass(frozen=True)
class IndexParams:
    """How an index is built (recorded in VERSION.json beside its file)."""

    m: int = 24  # graph links a node (level 0 holds 2m): 2m * 4 bytes a node
    # 400 against 200: twice the build time (527 against 259 s at 10^6 on 2 cores), overlap@10
    # 0.989 against 0.971 at efSearch 1,024 (docs/ranking.md)
    ef_construction: int = 400
    storage: str = "SQfp16"  # how the vectors are kept: float16 ("": float32, IndexHNSWFlat)

    @property
    def factory(self) -> str:
        return f"HNSW{self.m},{self.storage}" if self.storage else f"HNSW{self.m}"

    def describe(self) -> dict[str, object]:
        return {"library": LIBRARY, "factory": self.factory, "m": self.m,
                "ef_construction": self.ef_construction}


def _faiss() -> Any:
    import faiss  # imported here: only catalogues above ann_min_items need it

    return faiss


def build_index(embeddings: np.ndarray, params: IndexParams = IndexParams(),
                progress: Callable[[int, int, float], None] | None = None, chunk: int = 50_000) -> Any:
    """A faiss HNSW index (inner product) over unit rows float32 [N, D]; item i gets id i.
    `progress(done, total, seconds)` after each chunk added (a 10^6 build takes minutes)."""
    faiss = _faiss()
    index = faiss.index_factory(embeddings.shape[1], params.factory, faiss.METRIC_INNER_PRODUCT)
    index.hnsw.efConstruction = params.ef_construction
    start = time.monotonic()
    for first in range(0, len(embeddings), chunk):
        index.add(np.ascontiguousarray(embeddings[first:first + chunk], dtype=np.float32))
        if progress is not None:
            progress(min(first + chunk, len(embeddings)), len(embeddings), time.monotonic() - start)
    return index


def level0_links(index: Any) -> np.ndarray:
    """int32 [N, 2M]: each item's links at level 0 of an HNSW `index` (-1: an empty slot)."""
    faiss = _faiss()
    hnsw = index.hnsw
    offsets = faiss.vector_to_array(hnsw.offsets).astype(np.int64)
    links = faiss.vector_to_array(hnsw.neighbors)
    first = int(faiss.vector_to_array(hnsw.cum_nneighbor_per_level)[0])  # level 0's slots
    level0: np.ndarray = links[offsets[:-1, None] + first + np.arange(hnsw.nb_neighbors(0))[None, :]]
    return level0


def locality_order(index: Any) -> np.ndarray:
    """int64 [N]: the items of an HNSW `index` in breadth-first order over its level-0 graph
    (links taken both ways) from the entry point; any item that walk never reaches follows,
    in id order. Renumbered in this order, an item's graph neighbours mostly lie near it in
    the file, so a search reads fewer distinct pages and cache lines."""
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import breadth_first_order

    n = int(index.ntotal)
    level0 = level0_links(index)
    valid = level0 >= 0  # (-1: an empty slot)
    indptr = np.concatenate([[0], np.cumsum(valid.sum(axis=1))])  # CSR built directly: no COO copy
    graph = csr_matrix((np.ones(int(indptr[-1]), np.int8), level0[valid], indptr), shape=(n, n))
    order = breadth_first_order(graph, int(index.hnsw.entry_point), directed=False,
                                return_predecessors=False)
    unreached = np.setdiff1d(np.arange(n), order)
    return np.concatenate([order, unreached]).astype(np.int64)


def store_index(embeddings: np.ndarray, path: Path, params: IndexParams = IndexParams(),
                progress: Callable[[int, int, float], None] | None = None) -> dict[str, object]:
    """Build the index of `embeddings` (item i gets id i) and write it to `path`; its
    description for VERSION.json."""
    started = time.monotonic()
    index = build_index(embeddings, params, progress=progress)
    _write(index, path)
    return {**params.describe(), "build_s": round(time.monotonic() - started, 1)}


def build_index_in_locality_order(
        embeddings: np.ndarray, params: IndexParams = IndexParams(),
        progress: Callable[[int, int, float], None] | None = None) -> tuple[Any, np.ndarray]:
    """build_index with the items renumbered in `locality_order`: (the index, `order`), where
    the index's id i is row order[i] of `embeddings`. The same graph and the same candidates,
    found faster: at 10^6 items a search took 2.6 against 4.0 ms (docs/ranking.md)."""
    index = build_index(embeddings, params, progress=progress)
    order = locality_order(index)
    index.permute_entries(order)
    return index, order


def store_index_in_locality_order(
        embeddings: np.ndarray, path: Path, params: IndexParams = IndexParams(),
        progress: Callable[[int, int, float], None] | None = None) -> tuple[dict[str, object], np.ndarray]:
    """build_index_in_locality_order, written to `path`: (its description, `order`). The caller
    installs its catalogue in that order (catalogue.write_installed), so that ids stay
    positions."""
    started = time.monotonic()
    index, order = build_index_in_locality_order(embeddings, params, progress)
    _write(index, path)
    return {**params.describe(), "order": LOCALITY_ORDER,
            "build_s": round(time.monotonic() - started, 1)}, order


def _write(index: Any, path: Path) -> None:
    """Write `index` to `path`, never in place: a gateway mapping the old file would fault
    (SIGBUS) on its truncated pages; a new inode renamed over the name leaves that mapping
    intact."""
    partial = path.with_name(f".{path.name}.partial")
    _faiss().write_index(index, str(partial))
    os.replace(partial, path)


class AnnIndex:
    """A stored index, mapped read-only: `search` for candidate positions, `vectors` for their
    rows (float16 in the index, returned as float32) to score exactly."""

    def __init__(self, index: Any, ef_search: int) -> None:
        self.index = index
        self.ef_search = ef_search
        self.dim = int(index.d)

    @classmethod
    def load(cls, path: Path, ef_search: int) -> AnnIndex:
        """Map the index at `path`, its file read into the page cache first and every page
        of the mapping then mapped in (`map_pages`)."""
        faiss = _faiss()
        warm_page_cache(path)
        index = faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
        mapped, size = map_pages(path), path.stat().st_size
        if mapped < size:  # (e.g. the file was replaced meanwhile: its mapping is "(deleted)")
            log.warning("mapped in %d of the %d bytes of %s: the rest is read from the page cache or "
                        "the disk when a search first touches it", mapped, size, path)
        return cls(index, ef_search)

    def __len__(self) -> int:
        return int(self.index.ntotal)

    def search(self, query: np.ndarray, n: int, banned: np.ndarray | None = None) -> np.ndarray:
        """Positions of about the `n` items of largest item . query (fewer only when the
        index holds fewer), best first, none whose bit is set in `banned` (a bitmap, uint8
        [ceil(N / 8)], little-endian bit order as np.packbits(..., bitorder="little")).
        Releases the GIL while it searches."""
        faiss = _faiss()
        # OpenMP's thread count is per calling thread: without this a worker thread's first
        # search would start a team of one thread per core, spinning beside the other worker
        faiss.omp_set_num_threads(1)
        params = faiss.SearchParametersHNSW()
        params.efSearch = max(self.ef_search, n)
        if banned is not None:
            # kept referenced until the search returns: faiss reads the bitmap through a pointer
            inner = faiss.IDSelectorBitmap(len(self), faiss.swig_ptr(banned))
            params.sel = selector = faiss.IDSelectorNot(inner)
        _, found = self.index.search(np.ascontiguousarray(query[None], dtype=np.float32), n, params=params)
        if banned is not None:
            del selector, inner
        out: np.ndarray = found[0]
        return out[out >= 0]

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 [len(positions), D]: the indexed rows (float16 precision for SQfp16)."""
        if len(positions) == 0:
            return np.zeros((0, self.dim), np.float32)
        rows: np.ndarray = self.index.reconstruct_batch(np.asarray(positions, dtype=np.int64))
        return rows


# The index over the items added since the build (AddedIndex): built by the gateway while it
# serves, on one thread, its vectors in float32 (they are re-scored from it exactly, as those
# not yet in it are). M 16, efConstruction 100: 1.6 s for 10,000 real kitchen vectors (plus
# noise), 12.0 s for 50,000 and 26.9 s for 100,000 (Intel Xeon; in a float16 trial 1.4 and
# 10.8 s, against 2.8 and 24.9 s at M 24, efConstruction 200, for the same recall); efSearch
# 256: 0.55 ms a search over 50,000 items, recall@10 0.9995 among 100 found (docs/catalogue.md).
ADDED_PARAMS = IndexParams(m=16, ef_construction=100, storage="")
ADDED_EF_SEARCH = 256
ADDED_CHUNK = 2_000  # items added to it between two looks at `stop` (about 0.3 s)


class BuildStopped(Exception):
    """AddedIndex.build was told to stop (the gateway is shutting down)."""


@dataclass(frozen=True)
class AddedIndex:
    """An index, in memory, over items added or changed since `make engine` built the
    catalogue's own: index id j is live position `positions[j]` (sorted) with the vector of its
    catalogue-log entry `versions[j]`. The gateway builds one in the background when the items
    scored exactly beside the main index grow past `ann_added_index_min`
    (gateway.catalogue.CatalogueFollower), and builds it again, whole, as they grow again."""

    index: AnnIndex
    positions: np.ndarray  # int64 [n], sorted
    versions: np.ndarray  # int64 [n]: the log version of each indexed vector

    @classmethod
    def build(cls, positions: np.ndarray, vectors: np.ndarray, versions: np.ndarray,
              stop: threading.Event | None = None) -> AddedIndex:
        """Index unit rows float32 [n, D] of live `positions` (sorted), on the calling thread
        only; BuildStopped within a chunk of items once `stop` is set."""
        faiss = _faiss()
        faiss.omp_set_num_threads(1)  # (per thread: the serving threads keep the other core)
        if len(positions) and not np.all(np.diff(positions) > 0):
            raise ValueError("an added-items index wants its positions sorted, each once")

        def look(done: int, total: int, seconds: float) -> None:
            if stop is not None and stop.is_set():
                raise BuildStopped(f"stopped after {done:,} of {total:,} items ({seconds:.1f} s)")

        look(0, len(positions), 0.0)
        index = build_index(vectors, ADDED_PARAMS, progress=look, chunk=ADDED_CHUNK)
        return cls(AnnIndex(index, ADDED_EF_SEARCH), np.asarray(positions, dtype=np.int64),
                   np.asarray(versions, dtype=np.int64))

    def __len__(self) -> int:
        return len(self.positions)

    def search(self, query: np.ndarray, n: int, banned: np.ndarray | None) -> np.ndarray:
        """Live positions of about the n indexed items of largest item . query, none whose id's
        bit is set in `banned` (bitmap() over the index's ids)."""
        found = self.index.search(query, min(n, len(self)), banned)
        out: np.ndarray = self.positions[found]
        return out


def _lookup(sorted_positions: np.ndarray, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(where, found): for each of `positions`, its index in `sorted_positions` and whether it
    is there at all."""
    if not len(sorted_positions):
        return np.zeros(len(positions), np.int64), np.zeros(len(positions), bool)
    where = np.minimum(np.searchsorted(sorted_positions, positions), len(sorted_positions) - 1)
    return where, sorted_positions[where] == positions


def bitmap(mask: np.ndarray) -> np.ndarray:
    """The faiss IDSelectorBitmap layout of a bool mask [N]: bit i of byte i // 8 (LSB first)."""
    return np.packbits(mask.astype(bool), bitorder="little")


@dataclass(frozen=True)
class AnnSnapshot:
    """An indexed catalogue as one Recommend call sees it. Positions are the live catalogue's
    (interest_core.live_catalogue): the first len(index) are the indexed items, in the index's
    id order; items added or changed since the build are not in the index as they are now:
    those in the gateway's `added` index (as they still are) are searched there, the others
    scored exactly from `delta_vectors`. `banned` masks in the index what was removed or changed
    (None: nothing), `added_banned` the same in `added`."""

    index: AnnIndex
    live: np.ndarray  # bool [N] over all positions
    banned: np.ndarray | None  # bitmap over the index's ids (bitmap())
    delta: np.ndarray  # int64, sorted: live positions scored from delta_vectors
    delta_vectors: np.ndarray  # float32 [len(delta), D]
    added: AddedIndex | None = None  # the items added or changed since the build, indexed
    added_banned: np.ndarray | None = None  # bitmap over added's ids: removed or changed since
    added_live: int = 0  # items found through `added` (its ids not banned)

    @property
    def since_build(self) -> int:
        """Items added or changed since `make engine` built `index`: scored from `delta` or
        found through `added`."""
        return len(self.delta) + self.added_live

    def vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 [len(positions), D]: each live position's current vector."""
        out = np.empty((len(positions), self.index.dim), np.float32)
        where, changed = _lookup(self.delta, positions)
        out[changed] = self.delta_vectors[where[changed]]
        rest = ~changed
        if self.added is not None:  # (one changed again since it was indexed is in delta)
            at, indexed = _lookup(self.added.positions, positions)
            indexed &= rest
            out[indexed] = self.added.index.vectors(at[indexed])
            rest &= ~indexed
        out[rest] = self.index.vectors(positions[rest])
        return out
