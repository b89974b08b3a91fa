"""Each platform's catalogue as served: from the catalogue `make engine` installed beside the
model (its titles' embeddings were computed by the served model, so they also seed the
encoder's item cache: a behaviour text equal to a catalogue title skips Triton), plus the
changes platforms made since through UpdateCatalogue, kept in the profile store's catalogue log
and followed by every gateway (CatalogueFollower)."""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from gateway.encoder import TritonEncoder
from gateway.metrics import GatewayMetrics
from interest_core.catalogue import InstalledCatalogue
from interest_core.catalogue_log import CatalogueRow
from interest_core.errors import Unavailable
from interest_core.live_catalogue import LiveCatalogue
from interest_core.profile_book import ProfileBook
from interest_core.ranking.ann import AddedIndex, AnnIndex, BuildStopped
from interest_core.ranking.index import CatalogueIndex
from interest_core.recommender import Recommender, ServedCatalogue

log = logging.getLogger("interest.gateway")

ADDED_INDEX_RETRY_S = 300.0  # after a failed build of an added-items index, the next try at the earliest
SAME_MODEL_COSINE = 0.98  # INT8 vs the embeddings installed from the same engine: above 0.99 (docs/model.md)
PROBE_TITLES = 4


def background_priority() -> None:
    """Run the calling thread only when nothing else wants its core: Linux's SCHED_IDLE policy
    (man 7 sched: "for running very low priority background jobs"), which a waking thread of
    the normal policy preempts at once. Linux schedules threads one by one (the policy is set by
    thread id), so only this thread is affected. Measured with a build of 50,000 items under
    200 Recommend/s at 10^6 items, against nice 19: docs/catalogue.md."""
    try:
        os.sched_setscheduler(threading.get_native_id(), os.SCHED_IDLE, os.sched_param(0))
    except (AttributeError, OSError) as exc:  # (not Linux: it runs at the serving threads' priority)
        log.warning("the added-items index builds at the serving threads' priority: %s", exc)


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
    served = unit_rows(await encoder.embed_uncached(titles, "Startup", installed.catalogue.platform))
    cosine = float(np.min(np.sum(served * installed.embeddings[:n], axis=1)))
    if cosine < SAME_MODEL_COSINE:
        raise ModelMismatch(
            f"Triton at {encoder.url} does not serve the model {model_version} whose "
            f"{installed.catalogue.platform} catalogue is installed: its embeddings of {n} catalogue "
            f"titles agree to cosine {cosine:.3f} "
            f"(< {SAME_MODEL_COSINE}); point the gateway at the Triton serving that model, or install "
            f"the model Triton serves (make engine) with its catalogues")
    return cosine


def seed_cache(encoder: TritonEncoder, installed: InstalledCatalogue) -> None:
    """Put an installed catalogue's titles in the encoder's cache: the served model embedded them."""
    for title, vec in zip(installed.catalogue.titles, installed.embeddings):
        encoder.cache.put(title, vec)


class CatalogueFollower:
    """Serves each platform's catalogue as installed plus the store's catalogue log, and keeps
    it so: `update` writes a platform's changes (UpdateCatalogue) and applies them here before
    the call answers; `follow` reads the log every `period_s` for what other gateways wrote.
    Recommend then ranks the new snapshot from its next call on (Recommender.serve).

    Log entries embedded by another model (added before `make engine` installed the served
    one) are embedded again through Triton when read, and written back for every gateway.

    For a catalogue ranked through its index, once `added_index_min` items added or changed
    since the build are scored exactly beside it (or masked in the index of them), an index of
    all of them is built in the background (AddedIndex, on a thread of its own at the lowest CPU
    priority, from when `start` has served every catalogue) and served from then on; items that
    arrive later are scored exactly until they are as many again, and the index is built again,
    whole. `close` stops a build under way."""

    def __init__(self, book: ProfileBook, recommender: Recommender, encoder: TritonEncoder,
                 metrics: GatewayMetrics, installed: Mapping[str, InstalledCatalogue],
                 titles: Mapping[str, dict[str, str]], model_version: str,
                 indexes: Mapping[str, AnnIndex] | None = None, added_index_min: int = 10_000) -> None:
        self.book = book
        self.store = book.store
        self.recommender = recommender
        self.encoder = encoder
        self.metrics = metrics
        self.installed = installed
        self.titles = titles  # the adapters' item-id -> title maps: new items resolve there too
        self.model_version = model_version
        self.indexes = dict(indexes or {})  # the catalogues ranked through a nearest-neighbour index
        self.added_index_min = added_index_min
        self.added: dict[str, AddedIndex] = {}  # per indexed catalogue: its items added since the build
        self._indexing: dict[str, asyncio.Task[None]] = {}  # added-items index builds under way
        self._index_failed: dict[str, float] = {}  # monotonic time of a platform's last failed build
        self._stop = threading.Event()  # tells a build on its thread to stop (close)
        self._builder = ThreadPoolExecutor(1, thread_name_prefix="added-index",
                                           initializer=background_priority)
        self._started = False  # builds start once every catalogue is served
        self.live: dict[str, LiveCatalogue] = {}
        self._locks = {name: asyncio.Lock() for name in installed}

    async def start(self) -> None:
        """Serve every catalogue as installed plus the log's changes (one snapshot each, made
        once), its installed titles seeded into the item cache."""
        for name, installed in self.installed.items():
            if name in self.indexes:  # (seeding would read every vector of a catalogue this large)
                log.info("catalogue %s: its %d titles are not seeded into the item cache", name,
                         len(installed.catalogue))
            else:
                seed_cache(self.encoder, installed)
            self.live[name] = LiveCatalogue(installed)
            self.metrics.catalogue_version.labels(platform=name).set(0)  # as installed
            for change in ("upsert", "remove"):  # zero series from the start (dashboard rates)
                self.metrics.catalogue_changes.labels(platform=name, change=change)
            self.metrics.catalogue_added_index_build.labels(platform=name)
            if await self.sync(name):
                continue
            if name in self.indexes:
                served = await asyncio.to_thread(self._prepare, name)
            else:  # nothing in the log for it: the installed catalogue as it is, no copy
                index = CatalogueIndex(installed.catalogue, installed.embeddings)
                served = await asyncio.to_thread(self.recommender.prepare, name, index, installed.popularity)
            self.recommender.serve(name, served)
            self._count(name, served)
        self._started = True  # (a start-up that failed before here left no build behind)
        for name in self.indexes:
            self._index_added_when_due(name, self.recommender.served[name])

    async def close(self) -> None:
        """Stop the added-items index builds under way and wait for their threads (each stops
        within a chunk of items, AddedIndex.build)."""
        self._stop.set()
        await asyncio.gather(*self._indexing.values(), return_exceptions=True)
        self._builder.shutdown()

    async def sync(self, platform: str) -> int:
        """Apply the log entries of `platform` this gateway has not seen; how many."""
        live = self.live[platform]
        async with self._locks[platform]:
            rows = await self.book.query(self.store.catalogue_changes, platform, live.version)
            if not rows:
                return 0
            rows = await self._in_served_space(platform, rows)

            def rebuild() -> tuple[int, ServedCatalogue]:
                # off the event loop: copying the catalogue and precomputing its blend takes
                # 0.1-0.3 s at 27,637 items (docs/catalogue.md); calls meanwhile rank the old one
                return live.apply(rows), self._prepare(platform)

            applied, served = await asyncio.to_thread(rebuild)
            for row in rows:
                if not row.removed:
                    self.titles[platform][row.item_id] = row.title
            self.recommender.serve(platform, served)
            self._count(platform, served)
            self.metrics.catalogue_version.labels(platform=platform).set(live.version)
            log.info("catalogue %s: %d change(s) applied up to version %d; %d items rankable%s",
                     platform, applied, live.version, len(live),
                     f", {served.ann.since_build} of them added or changed since its index was built "
                     f"({served.ann.added_live} in the gateway's index of them, {len(served.ann.delta)} "
                     "scored exactly)" if served.ann is not None else "")
            self._index_added_when_due(platform, served)
            return applied

    def _index_added_when_due(self, platform: str, served: ServedCatalogue) -> None:
        """Start building an index of `platform`'s items added since the build when at least
        `added_index_min` of them are scored exactly on every call or masked in the index of
        them (none building, none failed in the last ADDED_INDEX_RETRY_S, start-up over)."""
        ann = served.ann
        if ann is None or not self._started or self._stop.is_set() or platform in self._indexing:
            return
        masked = len(ann.added) - ann.added_live if ann.added is not None else 0
        failed = self._index_failed.get(platform)
        if (len(ann.delta) + masked >= self.added_index_min
                and (failed is None or time.monotonic() - failed >= ADDED_INDEX_RETRY_S)):
            self._indexing[platform] = asyncio.create_task(self._index_added(platform),
                                                           name=f"index-added-{platform}")

    async def _index_added(self, platform: str) -> None:
        """Build the index of `platform`'s live items added or changed since the build, off the
        event loop, and serve it; changes applied meanwhile are checked against it when it is
        served (LiveCatalogue.ann_snapshot). A failure leaves them scored exactly."""
        live = self.live[platform]
        try:
            async with self._locks[platform]:  # (apply runs under it, on a thread: a consistent copy)
                positions, vectors, versions = await asyncio.to_thread(live.changed_items)
            if not len(positions):
                return  # (all removed meanwhile)
            started = time.monotonic()
            log.info("catalogue %s: indexing the %d items added or changed since its index was built, "
                     "in the background", platform, len(positions))
            added = await asyncio.get_running_loop().run_in_executor(  # (its own thread, SCHED_IDLE)
                self._builder, AddedIndex.build, positions, vectors, versions, self._stop)
            del vectors  # (the index holds its own copy)
            async with self._locks[platform]:
                self.added[platform] = added
                served = await asyncio.to_thread(self._prepare, platform)
                self.recommender.serve(platform, served)
                self._count(platform, served)
            took = time.monotonic() - started
            self.metrics.catalogue_added_index_build.labels(platform=platform).observe(took)
            log.info("catalogue %s: indexed the %d items added or changed since its index was built "
                     "in %.1f s (%d scored exactly beside the indexes now)", platform, len(added),
                     took, len(served.ann.delta) if served.ann is not None else 0)
        except BuildStopped as stopped:
            log.info("catalogue %s: the index of the items added since its index was built was not "
                     "finished: %s", platform, stopped)
            return
        except Exception:
            self._index_failed[platform] = time.monotonic()
            log.exception("catalogue %s: indexing the items added since its index was built failed; "
                          "they stay scored exactly beside it (next try in %.0f s at the earliest)",
                          platform, ADDED_INDEX_RETRY_S)
            return
        finally:
            self._indexing.pop(platform, None)
        self._index_added_when_due(platform, served)  # many more arrived while it was building

    def _count(self, platform: str, served: ServedCatalogue) -> None:
        """The catalogue gauges of `platform` now: its rankable items (an indexed snapshot keeps
        the removed ones' positions, so not len(served.index)) and those beside its index."""
        self.metrics.catalogue_items.labels(platform=platform).set(len(self.live[platform]))
        self.metrics.catalogue_unindexed.labels(platform=platform).set(
            served.ann.since_build if served.ann is not None else 0)

    def _prepare(self, platform: str) -> ServedCatalogue:
        """What Recommend ranks `platform` with, made from its live catalogue now: through its
        nearest-neighbour index when it has one (no copy of the installed embeddings)."""
        live = self.live[platform]
        if platform in self.indexes:
            index, popularity, added, ann = live.ann_snapshot(self.indexes[platform],
                                                              self.added.get(platform))
            return self.recommender.prepare(platform, index, popularity, added, ann)
        index, popularity, added = live.snapshot()
        return self.recommender.prepare(platform, index, popularity, added)

    async def _in_served_space(self, platform: str, rows: list[CatalogueRow]) -> list[CatalogueRow]:
        """`rows` with every live entry's embedding from the served model: entries of another
        model are embedded again (item cache first) and written back where still unchanged."""
        stale = [i for i, r in enumerate(rows) if not r.removed and r.model_version != self.model_version]
        if not stale:
            return rows
        vectors = unit_rows(await self.encoder.embed([rows[i].title for i in stale], "CatalogueSync",
                                                     platform))
        out = list(rows)
        for i, vec in zip(stale, vectors):
            out[i] = dataclasses.replace(rows[i], embedding=vec, model_version=self.model_version)
        await self.book.write("CatalogueSync", platform, self.store.reembed_catalogue, platform,
                              [(rows[i].item_id, rows[i].model_version, out[i].embedding) for i in stale],
                              self.model_version)
        log.info("catalogue %s: %d item(s) added under another model re-embedded for %s", platform,
                 len(stale), self.model_version)
        return out

    async def update(self, platform: str, upserts: Sequence[tuple[str, str, Mapping[str, str], np.ndarray]],
                     removals: Sequence[str]) -> int:
        """Write `platform`'s changes to the log (one transaction) and serve them here; the
        platform's catalogue version after them."""
        version: int = await self.book.write(
            "UpdateCatalogue", platform, self.store.update_catalogue, platform, upserts, removals,
            self.model_version)
        await self.sync(platform)
        self.metrics.catalogue_changes.labels(platform=platform, change="upsert").inc(len(upserts))
        self.metrics.catalogue_changes.labels(platform=platform, change="remove").inc(len(removals))
        return version

    async def follow(self, period_s: float) -> None:
        """Read every platform's log each `period_s`, for what other gateways wrote."""
        while True:
            await asyncio.sleep(period_s)
            for platform in self.live:
                try:
                    await self.sync(platform)
                except Unavailable:
                    pass  # the store is away: health says so; the next round tries again
                except Exception:
                    log.exception("catalogue %s: reading the catalogue log failed", platform)


def unit_rows(vectors: np.ndarray) -> np.ndarray:
    """Rows scaled to unit length (a zero row stays zero), float32."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return (vectors / np.maximum(norms, 1e-12)).astype(np.float32)
