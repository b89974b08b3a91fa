"""Recommend on kitchen catalogues of 10^4, 10^5 and 10^6 items, grown from the real one.

**The catalogues.** N = 10^4 is the first 10,000 items of the installed kitchen catalogue.
Larger ones are the whole installed catalogue (27,637 items: real ids, titles, popularity and
embeddings, so the trained co-occurrence/popularity blend knows them) followed by variants:
variant j of real item r has id "<r>~v<j>", title "<title of r> (variant <j>)", no popularity,
and the vector of r plus seeded Gaussian noise (sigma NOISE per dimension), renormalised: its
cosine to r is about 0.925. Origins run through seeded permutations of the real items, so each
has about N / 27,637 variants (36 at 10^6) and the neighbourhoods stay those of the real
catalogue, with near-duplicates as a real catalogue has them. Each is installed like
`make engine` installs a catalogue (interest_core.catalogue.write_installed, the index built
by the same code for N >= ann_min_items, and then the catalogue written in the index's locality
order, not the one above) into var/bench/catalogues/kitchen-<N>/, beside the
real model's other files, and kept there: a later run with the same parameters reuses it.

**Each size.** A real gateway process (`python -m gateway.server`) on the real Triton serves
it: time from launch to gRPC SERVING; then for each of two populations of QUERIES users,
Recommend kitchen, k = 10, open loop at 200/s, every user's top 10 and the paths the rankings
took (interest_rank_path_total). *migrated* users have a food and a kitchen history and gave
migration consent: the issue's scenario, where the trained blend applies and its bound usually
proves the top 10 from the largest-blend items. *model_only* users have a kitchen history
only: the model term alone ranks them, so every call of theirs goes through the index, the
approximate ranking's worst case. Users are the held-out test users first, then training
users (test.txt has 937; comparing two rankings of one score needs users, not unseen ones).
Then: the time UpdateCatalogue takes to add 10 new items and to remove them again; the
resident memory of the catalogue's vectors and index in the gateway (/proc/<pid>/smaps: the
mapped catalogue-kitchen.faiss and .npy, plus the scorer's float32 copy of an exactly scored
catalogue, 4 N D bytes). Where the catalogue is ranked through its index, the same gateway is
then started again on the same profiles with ann_min_items above N, so it scores the catalogue
whole, exactly: overlap@10 = |served top 10 & exact top 10| / 10, averaged over the users,
compares the same blended score ranked both ways. At 10^5 the exact gateway also runs the
200/s loads (the two paths side by side); at 10^6 it cannot keep up with them.

**Rank cost.** In-process, one query at a time: the exact scan (as the gateway's BatchScorer
does it) against index search plus exact re-scoring, at 10^4, 3 x 10^4, 5 x 10^4 and 10^5 items: where
exact scoring stops being faster (docs/ranking.md).

**Items added since the build.** In-process at the largest indexed size: 0, 1,000, 10,000 and
50,000 items added through the live catalogue (as UpdateCatalogue adds them: beside the index,
not in it), then Recommender.ann_top_k timed one query at a time (docs/catalogue.md).

`make bench` runs this as its "catalogue_scale" section; alone it writes
var/bench/catalogue_scale.json and var/bench/catalogue_scale.png.

    python -m bench.catalogue_scale [--sizes 10000 100000 1000000] [--queries 1000] [--duration 30]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bench.loadgen import open_loop
from bench.outputs import BENCH_VAR, standalone_section, write_json
from bench.procstat import CpuMeter, Watched, page_faults, rss_mb
from bench.report import CATALOGUE_1M_TARGETS, RECOMMEND_TARGET_RATE, plot_catalogue_scale
from bench.run import gc_pauses, gc_pauses_since, ingest_request, load_workload, log, measured, rank_paths
from devtools.fleet import client_channel, gateway_process
from devtools.triton_launcher import TritonServer
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from interest_core.catalogue import Catalogue, InstalledCatalogue, read_installed, write_installed
from interest_core.catalogue_log import CatalogueRow
from interest_core.config import ROOT, Settings, load_settings
from interest_core.contract import ASSETS_FILE, VERSION_FILE, read_version
from interest_core.live_catalogue import LiveCatalogue
from interest_core.ranking.ann import (
    LOCALITY_ORDER,
    AddedIndex,
    AnnIndex,
    IndexParams,
    build_index_in_locality_order,
    store_index_in_locality_order,
)
from interest_core.ranking.scoring import catalogue_scores
from interest_core.recommender import Recommender
from interest_model.corpus import UserSequence, load_sequences

SIZES = (10_000, 100_000, 1_000_000)
COST_SIZES = (10_000, 30_000, 50_000, 100_000)  # where the exact scan stops being faster
ADDED_COUNTS = (0, 1_000, 10_000, 50_000, 100_000)  # items added while serving, not in make engine's index
NOISE = 0.021  # per dimension: cosine 1 / sqrt(1 + 384 * NOISE^2) = 0.925 to the origin
SEED = 1
QUERIES = 1000  # users whose top 10 are compared (the issue asks for at least 1,000)
PLATFORM = "kitchen"
CATALOGUES = BENCH_VAR / "catalogues"


def grow(real: InstalledCatalogue, n: int, noise: float = NOISE, seed: int = SEED,
         chunk: int = 100_000) -> InstalledCatalogue:
    """The catalogue of `n` items described in the module docstring: the first n real items
    when n is no larger, else all of them followed by n - len(real) noisy variants."""
    if n <= len(real.catalogue):
        return real.head(n)
    base = np.asarray(real.embeddings, dtype=np.float32)
    m = n - len(base)
    rng = np.random.default_rng(seed)
    origins = np.concatenate([rng.permutation(len(base)) for _ in range(-(-m // len(base)))])[:m]
    vectors = np.empty((n, base.shape[1]), np.float32)
    vectors[:len(base)] = base
    for first in range(0, m, chunk):
        rows = base[origins[first:first + chunk]] + rng.normal(
            0.0, noise, (min(chunk, m - first), base.shape[1])).astype(np.float32)
        vectors[len(base) + first:len(base) + first + len(rows)] = rows / np.linalg.norm(
            rows, axis=1, keepdims=True)
    seen = np.zeros(len(base), np.int64)  # variants of each origin so far: j = 1, 2, ...
    ids, titles = list(real.catalogue.item_ids), list(real.catalogue.titles)
    for r in origins.tolist():
        seen[r] += 1
        ids.append(f"{real.catalogue.item_ids[r]}~v{seen[r]}")
        titles.append(f"{real.catalogue.titles[r]} (variant {seen[r]})")
    popularity = np.concatenate([real.popularity, np.zeros(m, np.float32)])
    return InstalledCatalogue(Catalogue(real.catalogue.platform, tuple(ids), tuple(titles)), vectors,
                              popularity)


def install(settings: Settings, n: int) -> tuple[Path, dict[str, Any]]:
    """A model repository whose kitchen catalogue has `n` items (the rest: links to the real
    model's files), made once and reused; (its path, the catalogue's VERSION.json entry)."""
    model_dir = settings.model_repository / settings.model_name
    version = read_version(model_dir)
    repo = CATALOGUES / f"{PLATFORM}-{n}"
    target = repo / settings.model_name
    indexed = n >= settings.ann_min_items
    params = IndexParams()
    stamp = {"items": n, "noise": NOISE, "seed": SEED, "model_version": version["model_version"],
             "index": {**params.describe(), "order": LOCALITY_ORDER} if indexed else None}
    stamp_path = repo / "stamp.json"
    if (stamp_path.exists() and json.loads(stamp_path.read_text()) == stamp
            and all((target / name).exists() for name in os.listdir(target))):  # (links may dangle)
        entry: dict[str, Any] = json.loads((target / VERSION_FILE).read_text())["catalogues"][PLATFORM]
        log(f"catalogue of {n:,} items: reusing {repo.relative_to(ROOT)}")
        return repo, entry
    shutil.rmtree(repo, ignore_errors=True)
    target.mkdir(parents=True)
    started = time.monotonic()
    grown = grow(read_installed(model_dir, PLATFORM, version), n)
    log(f"catalogue of {n:,} items grown from the real one in {time.monotonic() - started:.1f}s")

    def progress(done: int, total: int, seconds: float) -> None:
        log(f"  indexed {done:,}/{total:,} items ({done / max(seconds, 1e-6):.0f}/s, "
            f"~{seconds * (total - done) / max(done, 1):.0f}s left)")

    entry = write_installed(target, grown, (lambda emb, path: store_index_in_locality_order(
        emb, path, params, progress)) if indexed else None)
    for name in os.listdir(model_dir):  # everything else: the real model's files
        if name != VERSION_FILE and not (target / name).exists():
            (target / name).symlink_to((model_dir / name).resolve())
    catalogues = dict(version["catalogues"])  # type: ignore[call-overload]
    catalogues[PLATFORM] = entry
    (target / VERSION_FILE).write_text(json.dumps({**version, "catalogues": catalogues}, indent=2))
    stamp_path.write_text(json.dumps(stamp))
    built = entry.get("index")
    log(f"catalogue of {n:,} items installed in {time.monotonic() - started:.0f}s"
        + (f" (index built in {built['build_s']}s)" if isinstance(built, dict) else ""))
    return repo, entry


def resident_mib(pid: int, suffixes: Sequence[str]) -> dict[str, float]:
    """Resident MiB of the file mappings of `pid` whose path ends with each suffix, and of the
    whole process ("total")."""
    out = dict.fromkeys(suffixes, 0.0)
    current: str | None = None
    with open(f"/proc/{pid}/smaps") as smaps:
        for line in smaps:
            head = line.split()
            if head and "-" in head[0] and not head[0].endswith(":"):  # a mapping's first line
                path = head[5] if len(head) > 5 else ""
                current = next((s for s in suffixes if path.endswith(s)), None)
            elif current is not None and head[0] == "Rss:":
                out[current] += int(head[1]) / 1024
    out["total"] = rss_mb(pid)
    return {k: round(v, 1) for k, v in out.items()}


@dataclass(frozen=True)
class Population:
    """Users asked for kitchen items: `migrated` ones have a food and a kitchen history and gave
    migration consent (the trained blend applies, and its bound usually answers exactly);
    `model_only` ones have a kitchen history only, so the model term alone ranks them and every
    call goes through the index when there is one."""

    name: str
    users: list[UserSequence]

    def user_id(self, u: UserSequence) -> str:
        return f"bench-{self.name}-{u.uid}"

    async def store(self, stub: pb_grpc.InterestGatewayStub, food: Catalogue, kitchen: Catalogue,
                    concurrency: int = 8) -> None:
        gate = asyncio.Semaphore(concurrency)

        async def one(u: UserSequence) -> None:
            async with gate:
                for side, items in ((0, u.items_a), (1, u.items_b)):
                    if items and (side == 1 or self.name == "migrated"):
                        request = ingest_request(u, side, food, kitchen)
                        for event in request.events:
                            event.user_id = self.user_id(u)
                        await stub.IngestEvents(request, timeout=30)
                if self.name == "migrated":
                    await stub.SetConsent(pb.SetConsentRequest(user_id=self.user_id(u), migrate=True),
                                          timeout=30)

        await asyncio.gather(*(one(u) for u in self.users))

    def call(self, stub: pb_grpc.InterestGatewayStub) -> Any:
        """Recommend for users[i % len(users)] (the load generator's call)."""
        async def call(i: int) -> object:
            u = self.users[i % len(self.users)]
            return await stub.Recommend(pb.RecommendRequest(user_id=self.user_id(u), target_platform=PLATFORM,
                                                            k=10), timeout=10)

        return call

    async def top_tens(self, stub: pb_grpc.InterestGatewayStub, concurrency: int = 2) -> list[list[str]]:
        gate = asyncio.Semaphore(concurrency)

        async def one(u: UserSequence) -> list[str]:
            async with gate:
                request = pb.RecommendRequest(user_id=self.user_id(u), target_platform=PLATFORM, k=10)
                return [i.item_id for i in (await stub.Recommend(request, timeout=120)).items]

        return list(await asyncio.gather(*(one(u) for u in self.users)))


def populations(queries: int) -> list[Population]:
    """`queries` users of each population: the held-out test users first, then training users
    (the comparison of two rankings of one score needs users, not unseen ones)."""
    settings = load_settings()
    folder = settings.data_dir / settings.platforms["food"].dataset
    test = load_sequences(folder, "test.txt")
    both = [u for u in test if u.items_a and u.items_b]
    food_side = both + [u for u in load_sequences(folder, "train_A.txt") if u.items_a]
    kitchen_side = both + [u for u in load_sequences(folder, "train_B.txt") if u.items_b]
    return [Population("migrated", food_side[:queries]), Population("model_only", kitchen_side[:queries])]


async def serve_and_measure(name: str, repo: Path, var: Path, triton: TritonServer, n: int,
                            groups: list[Population], food: Catalogue, kitchen: Catalogue,
                            duration: float, exact: bool, load: bool, fresh: bool) -> dict[str, Any]:
    """One gateway on `repo` (exact: told to score the catalogue whole): start-up, profiles (when
    `fresh`), the 200/s run of each population (when `load`), resident memory, every user's
    top 10, the paths the rankings took, and (not exact) the time of a catalogue update."""
    settings: dict[str, object] = {"log_level": "WARNING", "model_repository": repo}
    if exact:
        settings["ann_min_items"] = 10 * n
    gateway = gateway_process(name, BENCH_VAR / "logs", triton.grpc_port, None, var, **settings)
    started = time.monotonic()
    gateway.start()
    out: dict[str, Any] = {"path": "exact" if exact or n < load_settings().ann_min_items else "ann",
                           "load": {}, "top10": {}, "rank_paths": {}}
    try:
        await gateway.wait_serving(timeout_s=600)
        out["serving_s"] = round(time.monotonic() - started, 2)
        log(f"  {name}: SERVING {out['serving_s']}s after launch ({out['path']})")
        async with client_channel([gateway.port]) as channel:
            stub = pb_grpc.InterestGatewayStub(channel)
            for group in groups:
                if fresh:
                    log(f"  storing the profiles of {len(group.users)} {group.name} users")
                    await group.store(stub, food, kitchen)
                before = rank_paths(gateway.metrics_port)
                if load:
                    meter = CpuMeter([Watched("gateway", gateway.pid),
                                      Watched("load_generator", os.getpid())])
                    log(f"  {name}: {group.name} users, Recommend at {RECOMMEND_TARGET_RATE:g}/s")
                    gc_before = gc_pauses(gateway.metrics_port)
                    faults_before = page_faults(gateway.pid)
                    run = (await measured(meter, open_loop(group.call(stub), RECOMMEND_TARGET_RATE,
                                                           duration))).summary()
                    out["load"][group.name] = {k: run[k] for k in (
                        "level", "throughput_rps", "p50_ms", "p99_ms", "errors", "processes")}
                    # what a tail could come from: the collector's pauses during the run
                    out["load"][group.name]["gc_pauses"] = gc_pauses_since(gateway.metrics_port, gc_before)
                    # or the pages it had to fault in (major: read back from disk)
                    faults = {k: v - faults_before[k] for k, v in page_faults(gateway.pid).items()}
                    out["load"][group.name]["page_faults"] = faults
                    log(f"  gateway page faults during the run: {faults}")
                log(f"  {name}: top 10 of {len(group.users)} {group.name} users")
                out["top10"][group.name] = await group.top_tens(stub)
                after = rank_paths(gateway.metrics_port)
                out["rank_paths"][group.name] = {p: after.get(p, 0.0) - before.get(p, 0.0) for p in after}
            if not exact:
                out["update"] = await timed_update(stub, kitchen)
        out["resident_mib"] = resident_mib(gateway.pid, (f"catalogue-{PLATFORM}.faiss",
                                                         f"catalogue-{PLATFORM}.npy"))
    finally:
        gateway.terminate()
    return out


async def timed_update(stub: pb_grpc.InterestGatewayStub, kitchen: Catalogue,
                       items: int = 10) -> dict[str, Any]:
    """Seconds for UpdateCatalogue to add `items` new items (real titles marked "(new)": not in
    the item cache, so Triton embeds them) and then to remove them; each is rankable, or gone,
    when the call answers (the gateway rebuilds its snapshot before it replies)."""
    upserts = [pb.CatalogueItem(item_id=f"bench-new-{j}", title=f"{kitchen.titles[j]} (new)")
               for j in range(items)]
    started = time.monotonic()
    added = await stub.UpdateCatalogue(pb.UpdateCatalogueRequest(platform=PLATFORM, upserts=upserts),
                                       timeout=120)
    add_s = time.monotonic() - started
    started = time.monotonic()
    await stub.UpdateCatalogue(pb.UpdateCatalogueRequest(
        platform=PLATFORM, remove_item_ids=[u.item_id for u in upserts]), timeout=120)
    remove_s = time.monotonic() - started
    log(f"  UpdateCatalogue: {added.applied} items added in {add_s:.2f}s, removed in {remove_s:.2f}s")
    return {"items": items, "applied": added.applied, "add_s": round(add_s, 3),
            "remove_s": round(remove_s, 3)}


def index_and_vectors_mib(run: dict[str, Any], n: int, dim: int) -> float:
    """What the catalogue's vectors and index hold resident in the gateway: the mapped index and
    embedding files, plus, scored exactly, the scorer's float32 transposed copy (4 N D bytes)."""
    mapped = sum(v for k, v in run["resident_mib"].items() if k != "total")
    return round(mapped + (4 * n * dim / 2**20 if run["path"] == "exact" else 0.0), 1)


def overlap(served: list[list[str]], truth: list[list[str]]) -> float:
    """Mean over users of |served top 10 & exact top 10| / 10."""
    return round(float(np.mean([len(set(a) & set(b)) / 10 for a, b in zip(served, truth)])), 4)


def rank_cost(settings: Settings, sizes: Sequence[int] = COST_SIZES, queries: int = 300,
              k: int = 10) -> list[dict[str, Any]]:
    """Mean ms per query, one at a time: the exact scan (one sgemv over the transposed catalogue
    on the BLAS threads, then the top k) against the index's search (ann_candidates at
    ann_ef_search; its items in the installed locality order) plus exact re-scoring of what it
    found; queries are means of 3-8 real items."""
    model_dir = settings.model_repository / settings.model_name
    real = read_installed(model_dir, PLATFORM, read_version(model_dir))
    rng = np.random.default_rng(3)
    base = np.asarray(real.embeddings)
    qs = np.stack([base[rng.choice(len(base), rng.integers(3, 9), replace=False)].mean(axis=0)
                   for _ in range(queries)]).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    out = []
    for n in sizes:
        items = np.asarray(grow(real, n).embeddings, dtype=np.float32)
        columns = np.ascontiguousarray(items.T)
        started = time.perf_counter()
        for q in qs:
            scores = catalogue_scores(columns, q[None])[0]
            np.argpartition(-scores, k)[:k]
        exact_ms = (time.perf_counter() - started) * 1e3 / queries
        built = time.monotonic()
        index = AnnIndex(build_index_in_locality_order(items)[0], settings.ann_ef_search)  # as installed
        build_s = time.monotonic() - built
        started = time.perf_counter()
        for q in qs:
            found = index.search(q, settings.ann_candidates)
            scores = index.vectors(found) @ q
            np.argpartition(-scores, k)[:k]
        ann_ms = (time.perf_counter() - started) * 1e3 / queries
        out.append({"items": n, "exact_ms": round(exact_ms, 3), "ann_ms": round(ann_ms, 3),
                    "index_build_s": round(build_s, 1)})
        log(f"  rank cost at {n:,} items: exact {exact_ms:.2f} ms, index {ann_ms:.2f} ms a query")
    return out


def added_cost(settings: Settings, repo: Path, counts: Sequence[int] = ADDED_COUNTS,
               queries: int = 300, k: int = 10) -> list[dict[str, Any]]:
    """Ms per query, one at a time, of Recommender.ann_top_k on the indexed catalogue installed
    in `repo` after `count` items were added through the live catalogue (as UpdateCatalogue
    adds them: not in the index, each with its own vector, here a real item's plus the
    catalogue's noise); no blend (a model-only user, every call through the index). p50 and
    p99 of the whole call and of its search alone; queries are means of 3-8 real items. Where
    `count` reaches `ann_added_index_min`, the same again with the added items indexed as the
    gateway indexes them (AddedIndex): the build's time, the call's p50 and p99, and its top k
    against the exact scoring of every added item (overlap@k)."""
    model_dir = repo / settings.model_name
    version = read_version(model_dir)
    installed = read_installed(model_dir, PLATFORM, version)
    index = AnnIndex.load(model_dir / f"catalogue-{PLATFORM}.faiss", settings.ann_ef_search)
    rng = np.random.default_rng(4)
    real = settings.model_repository / settings.model_name
    base = np.asarray(read_installed(real, PLATFORM, read_version(real)).embeddings, dtype=np.float32)
    qs = np.stack([base[rng.choice(len(base), rng.integers(3, 9), replace=False)].mean(axis=0)
                   for _ in range(queries)]).astype(np.float32)
    qs /= np.linalg.norm(qs, axis=1, keepdims=True)
    # the ranking alone: no profile store, no migration (the query is given) and no blend
    rec = Recommender(None, None, None, {}, settings.rank_candidates, 16, None,  # type: ignore[arg-type]
                      ann_candidates=settings.ann_candidates)
    banned = np.zeros(0, np.int64)
    out = []
    for count in counts:
        live = LiveCatalogue(installed)
        vectors = base[rng.integers(0, len(base), count)] + rng.normal(0, NOISE, (count, base.shape[1]))
        vectors = (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)
        live.apply([CatalogueRow(PLATFORM, f"added-{j}", f"added item {j}", {}, vectors[j],
                                 str(version["model_version"]), False, j + 1, 0) for j in range(count)])
        cat, popularity, added, snapshot = live.ann_snapshot(index)
        served = rec.prepare(PLATFORM, cat, popularity, added, snapshot)
        calls, searches = [], []
        for q in qs:  # the whole call first, then the search alone: neither finds the other's pages
            started = time.perf_counter()
            rec.ann_top_k(served, q, None, k, banned)
            calls.append(time.perf_counter() - started)
        for q in qs:
            started = time.perf_counter()
            index.search(q, settings.ann_candidates)
            searches.append(time.perf_counter() - started)
        row: dict[str, Any] = {"added": count, "call_p50_ms": ms(calls, 50), "call_p99_ms": ms(calls, 99),
                               "search_p50_ms": ms(searches, 50)}
        log(f"  {count:,} items added since the build: ann_top_k p50 {row['call_p50_ms']} ms, "
            f"p99 {row['call_p99_ms']} ms (its search alone p50 {row['search_p50_ms']} ms)")
        if count >= settings.ann_added_index_min:
            exact_tops = [{r.item_id for r in rec.ann_top_k(served, q, None, k, banned)[0]} for q in qs]
            started = time.perf_counter()
            added_index = AddedIndex.build(*live.changed_items())
            row["added_index_build_s"] = round(time.perf_counter() - started, 2)
            cat, popularity, added, snapshot = live.ann_snapshot(index, added_index)
            served = rec.prepare(PLATFORM, cat, popularity, added, snapshot)
            calls, overlap = [], []
            for q, exact_top in zip(qs, exact_tops):
                started = time.perf_counter()
                ranked, _ = rec.ann_top_k(served, q, None, k, banned)
                calls.append(time.perf_counter() - started)
                overlap.append(len(exact_top & {r.item_id for r in ranked}) / k)
            row.update(indexed_call_p50_ms=ms(calls, 50), indexed_call_p99_ms=ms(calls, 99),
                       indexed_overlap_at_10=round(float(np.mean(overlap)), 4))
            log(f"  ... indexed as the gateway indexes them ({row['added_index_build_s']} s on one "
                f"thread): ann_top_k p50 {row['indexed_call_p50_ms']} ms, p99 {row['indexed_call_p99_ms']} "
                f"ms, overlap@{k} with their exact scoring {row['indexed_overlap_at_10']}")
        out.append(row)
    return out


def ms(seconds: Sequence[float], percentile: float) -> float:
    """The `percentile` of durations in seconds, in ms, rounded to 0.01."""
    return round(float(np.percentile(seconds, percentile)) * 1e3, 2)


async def catalogue_scale_run(triton: TritonServer, sizes: Sequence[int], queries: int,
                              duration: float, cost_sizes: Sequence[int] = COST_SIZES,
                              added_counts: Sequence[int] = ADDED_COUNTS) -> dict[str, Any]:
    settings = load_settings()
    _, food, kitchen = load_workload(settings)
    groups = populations(queries)
    dim = int(read_version(settings.model_repository / settings.model_name)["dim"])  # type: ignore[call-overload]
    rows = []
    for n in sizes:
        log(f"catalogue of {n:,} items")
        repo, entry = install(settings, n)
        var = BENCH_VAR / "catalogue-scale" / str(n)
        shutil.rmtree(var, ignore_errors=True)
        var.mkdir(parents=True)
        served = await serve_and_measure(f"catalogue-{n}", repo, var, triton, n, groups, food, kitchen,
                                         duration, exact=False, load=True, fresh=True)
        row: dict[str, Any] = {
            "items": n, "path": served["path"], "serving_s": served["serving_s"], "load": served["load"],
            "rank_paths": served["rank_paths"], "resident_mib": served["resident_mib"],
            "index_and_vectors_mib": index_and_vectors_mib(served, n, dim),
            "index": entry.get("index"), "update": served.get("update"),
        }
        if served["path"] == "ann":
            exact = await serve_and_measure(f"catalogue-{n}-exact", repo, var, triton, n, groups, food,
                                            kitchen, duration, exact=True, load=n <= 100_000, fresh=False)
            row["overlap_at_10"] = {g.name: overlap(served["top10"][g.name], exact["top10"][g.name])
                                    for g in groups}
            row["exact"] = {"serving_s": exact["serving_s"], "load": exact["load"],
                            "rank_paths": exact["rank_paths"], "resident_mib": exact["resident_mib"],
                            "index_and_vectors_mib": index_and_vectors_mib(exact, n, dim)}
            log(f"  overlap@10 against exact ranking of the same score: {row['overlap_at_10']}")
        rows.append(row)
    cost = []
    if cost_sizes:
        log("rank cost per query, in-process: exact scan against index search + re-scoring")
        cost = rank_cost(settings, cost_sizes)
    added: list[dict[str, Any]] = []
    largest = max((r["items"] for r in rows if r["path"] == "ann"), default=None)
    if largest is not None and added_counts:
        log(f"items added since the index's build, at {largest:,} items, in-process")
        added = added_cost(settings, CATALOGUES / f"{PLATFORM}-{largest}", added_counts)
    settings_used = {"ann_min_items": settings.ann_min_items, "ann_ef_search": settings.ann_ef_search,
                     "ann_candidates": settings.ann_candidates, "rank_candidates": settings.rank_candidates}
    out: dict[str, Any] = {"sizes": rows, "rank_cost": cost, "added_items_cost": added,
                           "queries": {g.name: len(g.users) for g in groups}, "duration_s": duration,
                           "noise": NOISE, "seed": SEED, "settings": settings_used,
                           "targets": CATALOGUE_1M_TARGETS}
    million = next((r for r in rows if r["items"] == 1_000_000 and r["path"] == "ann"), None)
    if million is not None:
        out["catalogue_1m"] = catalogue_1m(million, settings_used)
    return out


def catalogue_1m(row: dict[str, Any], settings_used: dict[str, int]) -> dict[str, Any]:
    """results/bench.json's "catalogue_1m": the migrated users' figures (the Recommend target's
    scenario) and, beside them, the model-only users' (every call through the index)."""
    load, overlaps = row["load"], row["overlap_at_10"]
    return {
        "items": row["items"], "rate_rps": load["migrated"]["level"],
        "achieved_rps": load["migrated"]["throughput_rps"], "p99_ms": load["migrated"]["p99_ms"],
        "errors": load["migrated"]["errors"], "overlap_at_10": overlaps["migrated"],
        "resident_mib": row["index_and_vectors_mib"], "serving_s": row["serving_s"],
        "index": {**(row["index"] or {}), "ef_search": settings_used["ann_ef_search"],
                  "candidates": settings_used["ann_candidates"]},
        "model_only": {"p99_ms": load["model_only"]["p99_ms"], "errors": load["model_only"]["errors"],
                       "achieved_rps": load["model_only"]["throughput_rps"],
                       "overlap_at_10": overlaps["model_only"]},
        "rank_paths": row["rank_paths"], "update": row.get("update"),
    }


async def standalone(args: argparse.Namespace) -> dict[str, Any]:
    settings = load_settings()
    if not (settings.model_repository / settings.model_name / VERSION_FILE).exists():
        raise SystemExit("no model installed: run `make engine` first")
    if not (settings.model_repository / settings.model_name / ASSETS_FILE).exists():
        log("no trained ranking assets installed: the catalogues are ranked without the blend")
    return await standalone_section("catalogue_scale", lambda triton: catalogue_scale_run(
        triton, args.sizes, args.queries, args.duration, args.cost_sizes, args.added))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.catalogue_scale", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sizes", type=int, nargs="+", default=list(SIZES), help="catalogue sizes")
    parser.add_argument("--queries", type=int, default=QUERIES, help="users whose top 10 are compared")
    parser.add_argument("--duration", type=float, default=30.0, help="seconds of the 200/s Recommend run")
    parser.add_argument("--cost-sizes", type=int, nargs="*", default=list(COST_SIZES),
                        help="sizes of the in-process rank-cost comparison (none: skip it)")
    parser.add_argument("--added", type=int, nargs="*", default=list(ADDED_COUNTS),
                        help="items added since the build, for the in-process cost of ranking them "
                             "at the largest indexed size (none: skip it)")
    args = parser.parse_args(argv)
    data = asyncio.run(standalone(args))
    log(f"wrote {write_json('catalogue_scale.json', data)}")
    plot_catalogue_scale(data["catalogue_scale"], BENCH_VAR / "catalogue_scale.png",
                         f"{data['machine'][:90]} — rev {data['revision']}")
    log(f"wrote {BENCH_VAR / 'catalogue_scale.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
