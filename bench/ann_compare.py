"""Approximate nearest neighbours beside today's exact scoring, side by side (issue 21).

A synthetic catalogue of N items grown from the installed kitchen item embeddings (each item a
real one plus seeded Gaussian noise, renormalised) and 1,000 profile-like queries (means of 3-8
real items). For each index: build time on all cores, memory added, single-threaded
queries per second one query at a time (as Recommend asks), recall@100 and overlap@10 against
the exact inner-product top 100, and store / load time from disk (memory-mapped where the
library can). The exact mat-vec in the served layout (interest_core.ranking.scoring) is the
baseline. Writes var/bench/ann_compare.json and prints a table; the figures: docs/ranking.md.

    python -m bench.ann_compare [--sizes 10000 100000 1000000] [--only faiss-hnsw hnswlib]
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import itertools
import json
import math
import shutil
import sys
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
from threadpoolctl import threadpool_limits

from devtools.provenance import machine, revision
from interest_core.catalogue import read_installed
from interest_core.config import load_settings
from interest_core.contract import read_version
from interest_core.ranking.scoring import catalogue_scores

K = 100  # every search asks for the top 100: recall@100, and overlap@10 from its first 10
# Per-dimension noise: a variant's cosine to its origin is about 1 / sqrt(1 + 384 * 0.021^2) = 0.925.
NOISE = 0.021
WARMUP = 50  # queries run before each timed pass


def log(msg: str) -> None:
    print(f"[ann {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# ---- data -----------------------------------------------------------------------------------

def synthetic_catalogue(real: np.ndarray, n: int, noise: float, seed: int,
                        chunk: int = 100_000) -> tuple[np.ndarray, np.ndarray]:
    """float32 [n, D] unit rows: real[origin] + N(0, noise^2) per dimension, renormalised, and
    the origins int64 [n]. Origins run through seeded permutations of the real items, so each
    is used n / len(real) times, give or take one."""
    rng = np.random.default_rng(seed)
    reps = -(-n // len(real))
    origins = np.concatenate([rng.permutation(len(real)) for _ in range(reps)])[:n]
    out = np.empty((n, real.shape[1]), dtype=np.float32)
    for start in range(0, n, chunk):
        rows = real[origins[start:start + chunk]] + rng.normal(
            0.0, noise, (min(chunk, n - start), real.shape[1])).astype(np.float32)
        out[start:start + chunk] = rows / np.linalg.norm(rows, axis=1, keepdims=True)
    return out, origins


def profile_queries(real: np.ndarray, count: int, seed: int, least: int = 3,
                    most: int = 8) -> np.ndarray:
    """float32 [count, D] unit rows, each the mean of `least`..`most` distinct random real items,
    like a user profile built from a few interactions."""
    rng = np.random.default_rng(seed)
    out = np.empty((count, real.shape[1]), dtype=np.float32)
    for j in range(count):
        picked = rng.choice(len(real), size=int(rng.integers(least, most + 1)), replace=False)
        mean = real[picked].mean(axis=0)
        out[j] = mean / np.linalg.norm(mean)
    return out


def exact_top_k(items: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    """int64 [Q, k]: each query's k items of largest inner product, best first (the truth)."""
    chunk = max(1, 200_000_000 // (4 * len(items)))  # about 200 MB of scores at a time
    out = np.empty((len(queries), k), dtype=np.int64)
    for start in range(0, len(queries), chunk):
        scores = queries[start:start + chunk] @ items.T
        top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        order = np.argsort(-np.take_along_axis(scores, top, axis=1), axis=1, kind="stable")
        out[start:start + chunk] = np.take_along_axis(top, order, axis=1)
    return out


def overlap_at(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean over queries of |found[:k] & truth[:k]| / k; found [Q, >=k] may hold -1 (no result)."""
    hits = [len(np.intersect1d(f[:k], t[:k])) for f, t in zip(found, truth)]
    return float(np.mean(hits)) / k


def predict_build_s(built: Sequence[tuple[int, float]], n: int) -> float | None:
    """Build seconds at n items from the largest size built, growing as n log n; None if none."""
    if not built:
        return None
    size, seconds = max(built)
    return seconds * (n / size) * math.log(n) / math.log(size)


def growth_exponent(built: Sequence[tuple[int, float]]) -> list[dict[str, float]]:
    """Between consecutive sizes built: b in build_s ~ N^b (1 linear, N log N a little above)."""
    pts = sorted(built)
    return [{"from_n": a, "to_n": b, "exponent": round(math.log(tb / ta) / math.log(b / a), 3)}
            for (a, ta), (b, tb) in itertools.pairwise(pts) if ta > 0 and tb > 0]


# ---- process memory -------------------------------------------------------------------------

def rss_mib() -> float:
    """Resident set of this process, MiB (after handing freed heap back to the OS)."""
    gc.collect()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


# ---- the indexes ----------------------------------------------------------------------------

class AnnIndex(ABC):
    """One built index: search one query, change its search-time setting, store and load."""

    load_mode = "read"  # how load() reads the file: "read" (into memory) or "mmap"

    @abstractmethod
    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        """int64 [<=k] item positions for one float32 [D] query, best first."""

    @abstractmethod
    def configure(self, setting: dict[str, int]) -> None: ...

    @abstractmethod
    def save(self, path: Path) -> None: ...

    @abstractmethod
    def loader(self) -> Callable[[Path], AnnIndex]:
        """A function that loads a stored copy, holding nothing of this index (so it can go)."""


class FaissIndex(AnnIndex):
    """A faiss index (HNSW or IVF, inner product); with `rerank` > 1 it fetches rerank * k
    candidates and orders them by exact score from the catalogue's own embeddings."""

    load_mode = "mmap"

    def __init__(self, index: Any, items: np.ndarray, rerank: int = 1) -> None:
        self.index, self.items, self.rerank = index, items, rerank

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        _, ids = self.index.search(query[None], k * self.rerank)
        ids = ids[0][ids[0] >= 0]
        if self.rerank == 1:
            return ids
        scores = self.items[ids] @ query
        return ids[np.argsort(-scores, kind="stable")[:k]]

    def configure(self, setting: dict[str, int]) -> None:
        import faiss
        for name, value in setting.items():
            if name != "rerank":
                faiss.ParameterSpace().set_index_parameter(self.index, name, value)

    def save(self, path: Path) -> None:
        import faiss
        faiss.write_index(self.index, str(path))

    def loader(self) -> Callable[[Path], AnnIndex]:
        import faiss
        items, rerank = self.items, self.rerank
        # IO_FLAG_MMAP_IFC maps flat codes (HNSW's vectors), IO_FLAG_MMAP an IVF's lists; together
        # faiss 1.15 refuses an IVF file
        flag = faiss.IO_FLAG_MMAP_IFC if isinstance(self.index, faiss.IndexHNSW) else faiss.IO_FLAG_MMAP
        return lambda path: FaissIndex(faiss.read_index(str(path), flag), items, rerank)


class HnswlibIndex(AnnIndex):
    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        labels, _ = self.index.knn_query(query[None], k=k, num_threads=1)
        return labels[0].astype(np.int64)

    def configure(self, setting: dict[str, int]) -> None:
        self.index.set_ef(setting["ef"])

    def save(self, path: Path) -> None:
        self.index.save_index(str(path))

    def loader(self) -> Callable[[Path], AnnIndex]:
        import hnswlib
        dim = self.index.dim

        def load(path: Path) -> AnnIndex:
            index = hnswlib.Index(space="ip", dim=dim)
            index.load_index(str(path))  # hnswlib reads the whole file; it cannot map it
            return HnswlibIndex(index)
        return load


class UsearchIndex(AnnIndex):
    load_mode = "mmap"

    def __init__(self, index: Any) -> None:
        self.index = index

    def search(self, query: np.ndarray, k: int) -> np.ndarray:
        return np.asarray(self.index.search(query, k, threads=1).keys, dtype=np.int64)

    def configure(self, setting: dict[str, int]) -> None:
        self.index.expansion_search = setting["ef"]

    def save(self, path: Path) -> None:
        self.index.save(str(path))

    def loader(self) -> Callable[[Path], AnnIndex]:
        from usearch.index import Index
        return lambda path: UsearchIndex(Index.restore(str(path), view=True))


def ivf_lists(n: int) -> int:
    """IVF cells: 4 sqrt(N), faiss's usual lower end (more cells: faster search, longer training)."""
    return max(16, int(4 * math.sqrt(n)))


def build_faiss(spec: str, items: np.ndarray, threads: int, seed: int, rerank: int = 1,
                ef_construction: int = 0) -> AnnIndex:
    import faiss
    faiss.omp_set_num_threads(threads)
    index: Any = faiss.index_factory(items.shape[1], spec, faiss.METRIC_INNER_PRODUCT)
    if ef_construction:
        index.hnsw.efConstruction = ef_construction
    if hasattr(index, "do_polysemous_training"):
        index.do_polysemous_training = False  # 40 s at N = 10,000 for codes only Hamming search uses
    if not index.is_trained:
        nlist = faiss.extract_index_ivf(index).nlist
        # 40 points a cell (faiss asks for 39+): k-means is most of the build
        sample = np.random.default_rng(seed).choice(len(items), min(len(items), 40 * nlist), replace=False)
        index.train(items[np.sort(sample)])
    index.add(items)
    faiss.omp_set_num_threads(1)  # queries are timed single-threaded
    return FaissIndex(index, items, rerank)


def build_hnswlib(items: np.ndarray, threads: int, seed: int, m: int, ef_construction: int) -> AnnIndex:
    import hnswlib
    index = hnswlib.Index(space="ip", dim=items.shape[1])
    index.init_index(max_elements=len(items), ef_construction=ef_construction, M=m, random_seed=seed)
    index.add_items(items, np.arange(len(items)), num_threads=threads)
    return HnswlibIndex(index)


def build_usearch(items: np.ndarray, threads: int, m: int, ef_construction: int, dtype: str) -> AnnIndex:
    from usearch.index import Index
    # i8 keeps 1 byte a dimension; usearch quantises it for the cosine metric (= ip on unit rows)
    index = Index(ndim=items.shape[1], metric="ip" if dtype == "f32" else "cos", dtype=dtype,
                  connectivity=m, expansion_add=ef_construction)
    index.add(np.arange(len(items), dtype=np.uint64), items, threads=threads)
    return UsearchIndex(index)


@dataclass(frozen=True)
class Candidate:
    """One way to build an index, and the search-time settings tried on it."""

    name: str
    library: str
    params: dict[str, Any]
    searches: list[dict[str, int]]
    build: Callable[[np.ndarray, int, int], AnnIndex] = field(repr=False)


def candidates(hnsw_ef: Sequence[int] = (128, 256)) -> list[Candidate]:
    """The indexes compared. HNSW ones share M = 16, efConstruction = 200 so that they differ by
    implementation only; search-time settings are tried on the same build."""
    hnsw_searches = [{"ef": ef} for ef in hnsw_ef]
    return [
        Candidate("faiss-hnsw", "faiss-cpu", {"index": "HNSW16,Flat", "efConstruction": 200},
                  [{"efSearch": ef} for ef in hnsw_ef],
                  lambda x, t, s: build_faiss("HNSW16,Flat", x, t, s, ef_construction=200)),
        Candidate("faiss-ivf-flat", "faiss-cpu", {"index": "IVF{4 sqrt N},Flat", "train": "40 x nlist"},
                  [{"nprobe": 32}, {"nprobe": 128}],
                  lambda x, t, s: build_faiss(f"IVF{ivf_lists(len(x))},Flat", x, t, s)),
        Candidate("faiss-ivf-pq", "faiss-cpu",
                  {"index": "IVF{4 sqrt N},PQ48 (8 bits)", "train": "40 x nlist",
                   "rerank": "top 4k candidates re-scored exactly from the catalogue"},
                  [{"nprobe": 32}, {"nprobe": 128}],
                  lambda x, t, s: build_faiss(f"IVF{ivf_lists(len(x))},PQ48", x, t, s, rerank=4)),
        Candidate("hnswlib", "hnswlib", {"M": 16, "ef_construction": 200}, hnsw_searches,
                  lambda x, t, s: build_hnswlib(x, t, s, 16, 200)),
        Candidate("usearch-f32", "usearch", {"connectivity": 16, "expansion_add": 200, "dtype": "f32"},
                  hnsw_searches, lambda x, t, s: build_usearch(x, t, 16, 200, "f32")),
        Candidate("usearch-i8", "usearch", {"connectivity": 16, "expansion_add": 200, "dtype": "i8"},
                  hnsw_searches, lambda x, t, s: build_usearch(x, t, 16, 200, "i8")),
    ]


# ---- measuring ------------------------------------------------------------------------------

def timed_searches(search: Callable[[np.ndarray], np.ndarray], queries: np.ndarray,
                   k: int) -> tuple[np.ndarray, dict[str, float]]:
    """Run every query alone after a warm-up: found int64 [Q, k] (-1 pads) and the timings."""
    for q in queries[:WARMUP]:
        search(q)
    found = np.full((len(queries), k), -1, dtype=np.int64)
    took = np.empty(len(queries))
    for j, q in enumerate(queries):
        t0 = time.perf_counter()
        ids = search(q)
        took[j] = time.perf_counter() - t0
        found[j, :len(ids)] = ids[:k]
    return found, {"qps": round(len(queries) / took.sum(), 1),
                   "p50_ms": round(float(np.percentile(took, 50)) * 1e3, 3),
                   "p99_ms": round(float(np.percentile(took, 99)) * 1e3, 3)}


def exact_rows(items: np.ndarray, queries: np.ndarray, truth: np.ndarray) -> list[dict[str, Any]]:
    """Today's ranking: one plain-layout sgemv over the transposed catalogue + argpartition."""
    columns = np.ascontiguousarray(items.T)

    def search(q: np.ndarray) -> np.ndarray:
        scores = catalogue_scores(columns, q[None])[0]
        top = np.argpartition(-scores, K - 1)[:K]
        return top[np.argsort(-scores[top], kind="stable")]

    rows = []
    for threads in (1, 2):
        with threadpool_limits(limits=threads, user_api="blas"):
            found, timing = timed_searches(search, queries, K)
        rows.append({"name": "exact", "library": f"numpy {np.__version__} (OpenBLAS sgemv)",
                     "params": {"blas_threads": threads}, "n": len(items), "build_s": 0.0,
                     "memory_mib": round(columns.nbytes / 2**20, 1), **timing,
                     "recall_at_100": round(overlap_at(found, truth, K), 4),
                     "overlap_at_10": round(overlap_at(found, truth, 10), 4)})
        log(f"N={len(items)} exact, {threads} BLAS thread(s): {timing['qps']:.0f} qps")
    return rows


def measure(cand: Candidate, items: np.ndarray, queries: np.ndarray, truth: np.ndarray,
            threads: int, seed: int, work: Path) -> tuple[list[dict[str, Any]], float]:
    """Rows (one per search setting) for one candidate at one size, and its build seconds."""
    before = rss_mib()
    t0 = time.perf_counter()
    index = cand.build(items, threads, seed)
    build_s = time.perf_counter() - t0
    added = rss_mib() - before
    log(f"N={len(items)} {cand.name}: built in {build_s:.1f} s, +{added:.0f} MiB")

    work.mkdir(parents=True, exist_ok=True)
    path = work / f"{cand.name}.index"
    t0 = time.perf_counter()
    index.save(path)
    store_s = time.perf_counter() - t0
    file_mib = path.stat().st_size / 2**20

    rows = []
    for setting in cand.searches:
        index.configure(setting)
        found, timing = timed_searches(partial(index.search, k=K), queries, K)
        rows.append({"name": cand.name, "library": cand.library, "params": {**cand.params, **setting},
                     "n": len(items), "build_s": round(build_s, 2), "build_threads": threads,
                     "memory_mib": round(added, 1), "index_file_mib": round(file_mib, 1), **timing,
                     "recall_at_100": round(overlap_at(found, truth, K), 4),
                     "overlap_at_10": round(overlap_at(found, truth, 10), 4)})
        log(f"N={len(items)} {cand.name} {setting}: {timing['qps']:.0f} qps, "
            f"recall@100 {rows[-1]['recall_at_100']:.3f}, overlap@10 {rows[-1]['overlap_at_10']:.3f}")

    # Loaded back (the file is in the page cache: a warm start); same answers as the built one?
    expected = [index.search(q, K)[:10] for q in queries[:20]]
    load, load_mode = index.loader(), index.load_mode
    del index
    before = rss_mib()
    t0 = time.perf_counter()
    loaded = load(path)
    load_s = time.perf_counter() - t0
    loaded_rss = rss_mib() - before
    loaded.configure(cand.searches[-1])
    same = all(np.array_equal(loaded.search(q, K)[:10], e) for q, e in zip(queries[:20], expected))
    del loaded
    path.unlink()
    log(f"N={len(items)} {cand.name}: stored in {store_s:.2f} s ({file_mib:.0f} MiB), "
        f"loaded ({load_mode}) in {load_s:.3f} s, same answers: {same}")
    for row in rows:
        row.update({"store_s": round(store_s, 3), "load_s": round(load_s, 4), "load_mode": load_mode,
                    "load_rss_mib": round(loaded_rss, 1), "load_same_answers": same})
    return rows, build_s


# ---- the run --------------------------------------------------------------------------------

def table(rows: list[dict[str, Any]]) -> str:
    """The results as a plain-text table, one line per index and search setting."""
    head = (f"{'index':<15} {'search':<15} {'N':>9} {'build s':>8} {'RSS MiB':>7} {'file MiB':>8} {'qps':>8} "
            f"{'p99 ms':>7} {'rec@100':>7} {'ov@10':>6} {'load s':>7}")
    lines = [head, "-" * len(head)]
    for r in sorted(rows, key=lambda r: (r["n"], r["name"] != "exact")):
        params = ", ".join(f"{k}={v}" for k, v in r["params"].items() if k in (
            "blas_threads", "efSearch", "ef", "nprobe"))
        load = f"{r['load_s']:.3f}" if "load_s" in r else "-"
        file_mib = f"{r['index_file_mib']:.0f}" if "index_file_mib" in r else "-"
        lines.append(f"{r['name']:<15} {params:<15} {r['n']:>9,} {r['build_s']:>8.1f} "
                     f"{r['memory_mib']:>7.0f} {file_mib:>8} {r['qps']:>8.0f} {r['p99_ms']:>7.2f} "
                     f"{r['recall_at_100']:>7.3f} {r['overlap_at_10']:>6.3f} {load:>7}")
    return "\n".join(lines)


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version
    out = {}
    for name in ("numpy", "faiss-cpu", "hnswlib", "usearch"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "not installed"
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 100_000, 1_000_000],
                   help="synthetic catalogue sizes N")
    p.add_argument("--only", nargs="+", choices=[c.name for c in candidates()],
                   help="measure only these indexes (the exact baseline always runs)")
    p.add_argument("--hnsw-ef", type=int, nargs="+", default=[128, 256],
                   help="search depths (ef) tried on each HNSW index (at least 100, the k asked)")
    p.add_argument("--queries", type=int, default=1000, help="profile-like queries (recall, ANN qps)")
    p.add_argument("--exact-queries", type=int, default=200, help="queries timed for the exact baseline")
    p.add_argument("--platform", default="kitchen", help="installed catalogue the items grow from")
    p.add_argument("--noise", type=float, default=NOISE, help="per-dimension noise of a variant")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2, help="threads for building (queries: one)")
    p.add_argument("--max-build-s", type=float, default=900.0,
                   help="skip a size whose build is predicted (N log N from the last size) to take longer")
    p.add_argument("--fallback-size", type=int, default=300_000,
                   help="size measured instead for the indexes skipped (build-time growth)")
    p.add_argument("--out", type=Path, help="JSON report (default: <var>/bench/ann_compare.json)")
    args = p.parse_args(argv)

    settings = load_settings()
    out = args.out or settings.var_dir / "bench" / "ann_compare.json"
    work = out.parent / "ann-index"
    model_dir = settings.model_repository / settings.model_name
    real = np.array(read_installed(model_dir, args.platform, read_version(model_dir)).embeddings)
    queries = profile_queries(real, args.queries, args.seed + 1)
    chosen = [c for c in candidates(args.hnsw_ef) if not args.only or c.name in args.only]
    log(f"{len(real):,} real {args.platform} items x {real.shape[1]}; {len(queries)} queries; "
        f"indexes: {', '.join(c.name for c in chosen)}")

    built: dict[str, list[tuple[int, float]]] = {c.name: [] for c in chosen}
    report: dict[str, Any] = {
        "machine": machine(), "revision": revision(), "versions": versions(),
        "catalogue": {
            "made_from": f"the installed {args.platform} item embeddings ({len(real):,} x {real.shape[1]}, "
                         "float32, unit rows)",
            "method": "item i = real[origin_i] + N(0, noise^2) per dimension, renormalised to unit length; "
                      "origins run through seeded permutations of the real items (each used N/real "
                      "times, give or take one)",
            "noise": args.noise, "seed": args.seed, "cosine_to_origin_by_n": {}},
        "queries": {"count": len(queries), "seed": args.seed + 1,
                    "method": "mean of 3-8 (uniform) distinct random real items, renormalised: "
                              "like a user profile over a few interactions"},
        "measure": {"k": K, "recall": "recall@100 = |ANN top 100 & exact top 100| / 100, overlap@10 the "
                                      "same over the first 10, means over the queries",
                    "qps": f"one query at a time, one thread, after {WARMUP} warm-up queries; exact timed "
                           f"on the first {args.exact_queries} queries",
                    "memory_mib": "resident set added by the build (exact: the transposed catalogue)",
                    "build_threads": args.threads,
                    "load": "stored index read back right after storing (page cache warm)"},
        "results": [], "skipped": [], "build_growth": {}}

    def run_size(n: int, cands: list[Candidate]) -> None:
        log(f"N={n:,}: making the catalogue")
        items, origins = synthetic_catalogue(real, n, args.noise, args.seed)
        sample = slice(0, min(n, 10_000))
        cosine = np.einsum("ij,ij->i", items[sample], real[origins[sample]]).mean()
        report["catalogue"]["cosine_to_origin_by_n"][str(n)] = round(float(cosine), 4)
        truth = exact_top_k(items, queries, K)
        report["results"] += exact_rows(items, queries[:args.exact_queries], truth[:args.exact_queries])
        for cand in cands:
            rows, build_s = measure(cand, items, queries, truth, args.threads, args.seed, work)
            report["results"] += rows
            built[cand.name].append((n, build_s))
            report["build_growth"][cand.name] = {"built": sorted(built[cand.name]),
                                                 "exponents": growth_exponent(built[cand.name])}
            out.parent.mkdir(parents=True, exist_ok=True)
            out.write_text(json.dumps(report, indent=1))  # a partial report survives a stop

    def too_long(cand: Candidate, n: int) -> float | None:
        predicted = predict_build_s(built[cand.name], n)
        return predicted if predicted is not None and predicted > args.max_build_s else None

    for n in sorted(set(args.sizes)):
        over = [c for c in chosen if too_long(c, n)]
        fallback = [c for c in over if args.fallback_size < n
                    and all(size < args.fallback_size for size, _ in built[c.name])]
        if fallback:
            log(f"N={n:,}: {', '.join(c.name for c in fallback)} predicted over {args.max_build_s:.0f} s; "
                f"measuring them at {args.fallback_size:,} first")
            run_size(args.fallback_size, fallback)
        now = [c for c in chosen if not too_long(c, n)]
        for c in chosen:
            if c not in now:
                report["skipped"].append({"name": c.name, "n": n,
                                          "predicted_build_s": round(too_long(c, n) or 0, 1)})
                log(f"N={n:,} {c.name}: skipped, build predicted {too_long(c, n):.0f} s")
        run_size(n, now)

    shutil.rmtree(work, ignore_errors=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1))
    print(table(report["results"]))
    for name, growth in report["build_growth"].items():
        steps = ", ".join(f"{g['from_n']:,}->{g['to_n']:,}: N^{g['exponent']}" for g in growth["exponents"])
        if steps:
            print(f"build time growth {name}: {steps}")
    log(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
