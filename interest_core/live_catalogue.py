"""A platform's catalogue as it changes while serving: what `make engine` installed, plus the
changes platforms have made since through UpdateCatalogue, read back from the profile store's
catalogue log in version order.

Items are never moved: an item keeps its position for good, a new one is appended, a removed
one is only marked, and `snapshot()` makes the index of the live items for Recommend (a
removed item is not in it, so it can never be recommended). A new item knows no
co-occurrence and no interactions (its fallback popularity is 0; the blend gives it the
median popularity term, ServedBlend): it is ranked by the model term, which is what the text
model is for (the new-items task, docs/model.md).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from interest_core.catalogue import Catalogue, InstalledCatalogue, Prefix
from interest_core.ranking.ann import AddedIndex, AnnIndex, AnnSnapshot, bitmap
from interest_core.ranking.index import CatalogueIndex


class CatalogueChange(Protocol):
    """One entry of the store's catalogue log (interest_core.catalogue_log.CatalogueRow)."""

    @property
    def item_id(self) -> str: ...
    @property
    def title(self) -> str: ...
    @property
    def embedding(self) -> np.ndarray | None: ...
    @property
    def removed(self) -> bool: ...
    @property
    def version(self) -> int: ...


class LiveCatalogue:
    """One platform's items by position: ids, titles, unit embeddings, popularity (0 for items
    added while serving) and which are live; `version` is the last catalogue-log version
    applied. The installed embeddings (`base`, possibly memory-mapped) are never written:
    the vector of every item added or changed since is kept in `changed`."""

    def __init__(self, installed: InstalledCatalogue) -> None:
        self.platform = installed.catalogue.platform
        self.ids = list(installed.catalogue.item_ids)  # only ever appended to
        self.titles = list(installed.catalogue.titles)
        self.titles_viewed = False  # whether a snapshot views `titles` (see apply: copied first)
        self.base = installed.embeddings
        self.dim = int(installed.embeddings.shape[1])
        # The vector of each item added or changed since the build: row changed_row[position] of
        # `changed` (rows appended, float32 [rows, D]; -1: the base's, or removed), set by the
        # log entry changed_version[position]. Kept in numpy, not per item: a snapshot at 10^6
        # items with 50,000 added gathers their vectors in one step (docs/catalogue.md).
        self.changed = np.zeros((0, self.dim), np.float32)
        self.changed_rows = 0  # rows of `changed` in use
        self.changed_row = np.full(len(self.ids), -1, dtype=np.int64)
        self.changed_version = np.full(len(self.ids), -1, dtype=np.int64)
        self.popularity = np.asarray(installed.popularity, dtype=np.float32)
        self.live = np.ones(len(self.ids), dtype=bool)
        self.position = {item: i for i, item in enumerate(self.ids)}
        self.installed = len(self.ids)  # positions from here on were added while serving
        self.version = 0

    def __len__(self) -> int:
        """Live items."""
        return int(self.live.sum())

    def __contains__(self, item_id: object) -> bool:
        pos = self.position.get(item_id) if isinstance(item_id, str) else None
        live = self.live  # one snapshot: `apply` may be replacing it on another thread
        return pos is not None and pos < len(live) and bool(live[pos])

    def apply(self, changes: Iterable[CatalogueChange]) -> int:
        """Apply log entries (their embeddings in the served model's space, unit rows) in
        order; entries at or below `version` were applied before and are skipped. Returns
        how many were applied."""
        fresh = [c for c in changes if c.version > self.version]
        if not fresh:
            return 0
        # An upsert of an item listed before may change its title: once a snapshot views the
        # title list, the first such change copies it (the views keep the old list)
        listed = len(self.ids) if self.titles_viewed else 0
        if any(not c.removed and self.position.get(c.item_id, listed) < listed for c in fresh):
            self.titles, self.titles_viewed = list(self.titles), False
        new_ids = list(dict.fromkeys(c.item_id for c in fresh
                                     if not c.removed and c.item_id not in self.position))
        if new_ids:  # room for the new items first, not live until their entry is applied
            start = len(self.ids)
            self.position.update({item: start + j for j, item in enumerate(new_ids)})
            self.ids += new_ids
            self.titles += [""] * len(new_ids)
            self.popularity = np.concatenate([self.popularity, np.zeros(len(new_ids), np.float32)])
            self.live = np.concatenate([self.live, np.zeros(len(new_ids), dtype=bool)])
            self.changed_version = np.concatenate([self.changed_version, np.full(len(new_ids), -1, np.int64)])
            self.changed_row = np.concatenate([self.changed_row, np.full(len(new_ids), -1, np.int64)])
        self._make_room(sum(1 for c in fresh if not c.removed))
        live = self.live.copy()  # swapped in whole below: a reader never sees it half applied
        for change in fresh:
            pos = self.position.get(change.item_id)
            if change.removed:
                if pos is not None:
                    live[pos] = False
                    self.changed_row[pos] = -1
                    self.changed_version[pos] = -1
                continue
            assert pos is not None
            if change.embedding is None:
                raise ValueError(f"catalogue log entry {change.version} of {change.item_id!r} has no "
                                 "embedding")
            vec = np.asarray(change.embedding, dtype=np.float32)
            if vec.shape != (self.dim,):
                raise ValueError(f"catalogue log entry {change.version} of {change.item_id!r} has "
                                 f"{vec.shape} values, the served model {self.dim}")
            self.changed[self.changed_rows] = vec  # (a new row: snapshots hold copies, not views)
            self.changed_row[pos] = self.changed_rows
            self.changed_rows += 1
            self.changed_version[pos] = change.version
            self.titles[pos] = change.title
            live[pos] = True
        self.live = live
        self.version = max(c.version for c in fresh)
        return len(fresh)

    def _make_room(self, n: int) -> None:
        """At least `n` free rows in `changed`: the rows still in use are moved to the front of
        an array of twice their number plus n (rows of replaced or removed vectors are dropped)."""
        if self.changed_rows + n <= len(self.changed):
            return
        used = np.flatnonzero(self.changed_row >= 0)
        rows = np.empty((2 * len(used) + n, self.dim), np.float32)
        rows[:len(used)] = self.changed[self.changed_row[used]]
        self.changed_row[used] = np.arange(len(used))
        self.changed, self.changed_rows = rows, len(used)

    def snapshot(self) -> tuple[CatalogueIndex, np.ndarray, np.ndarray]:
        """The index of the live items, their popularity and which were added while serving
        (bool), in position order (copies: later changes do not touch them)."""
        keep = np.flatnonzero(self.live)
        catalogue = Catalogue(self.platform, tuple(self.ids[i] for i in keep),
                              tuple(self.titles[i] for i in keep))
        embeddings = np.empty((len(keep), self.dim), np.float32)
        from_base = int(np.searchsorted(keep, self.installed))  # live installed items come first
        embeddings[:from_base] = self.base[keep[:from_base]]
        rows = self.changed_row[keep]
        embeddings[rows >= 0] = self.changed[rows[rows >= 0]]
        return (CatalogueIndex(catalogue, embeddings), self.popularity[keep].copy(),
                keep >= self.installed)

    def changed_items(self) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The live items added or changed since the build: (positions int64, sorted; their
        vectors float32 [n, D]; the log version of each vector), copies: what AddedIndex.build
        indexes."""
        positions = self._changed_positions(self.live)
        return positions, self._changed_vectors(positions), self.changed_version[positions]

    def _changed_positions(self, live: np.ndarray) -> np.ndarray:
        """The positions (int64, sorted) of the items live in `live` whose vector is in `changed`."""
        return np.flatnonzero((self.changed_row >= 0) & live)

    def _changed_vectors(self, positions: np.ndarray) -> np.ndarray:
        """float32 [len(positions), D]: the vectors in `changed` of `positions` (a copy)."""
        out: np.ndarray = self.changed[self.changed_row[positions]]
        return out

    def ann_snapshot(self, index: AnnIndex, added: AddedIndex | None = None
                     ) -> tuple[CatalogueIndex, np.ndarray, np.ndarray, AnnSnapshot]:
        """snapshot() for a catalogue ranked through `index` (built over the installed items):
        every position kept (removed ones masked: never ranked, popularity -inf), no copy of
        the installed embeddings. The items added or changed since are found through `added`
        (an index of them built from changed_items()) where they are still as it indexed them,
        and are scored exactly otherwise."""
        if len(index) != self.installed:
            raise ValueError(f"the {self.platform} index holds {len(index)} items, the installed "
                             f"catalogue {self.installed}")
        live = self.live.copy()
        # views, not copies, of the id and title lists: ids are only appended, and `apply`
        # copies the titles before it upserts an item already listed
        catalogue = Catalogue(self.platform, Prefix(self.ids, len(live)), Prefix(self.titles, len(live)))
        self.titles_viewed = True
        changed = self._changed_positions(live)
        delta, added_banned, added_live = changed, None, 0
        if added is not None:  # as indexed: still live, its vector from the same log entry
            same = self.changed_version[added.positions] == added.versions
            delta = np.setdiff1d(changed, added.positions[same], assume_unique=True)
            added_banned = bitmap(~same) if not same.all() else None
            added_live = int(same.sum())
        vectors = self._changed_vectors(delta)
        stale = ~live[:self.installed]
        stale[changed[changed < self.installed]] = True  # changed since the build: not as indexed
        served = AnnSnapshot(index, live, bitmap(stale) if stale.any() else None, delta, vectors,
                             added, added_banned, added_live)
        popularity = np.where(live, self.popularity, -np.inf).astype(np.float32)
        # positions are never reused (a removed item keeps its own), so the live map serves
        # this snapshot too: it adds no item below len(live)
        return (CatalogueIndex(catalogue, None, self.position), popularity,
                np.arange(len(live)) >= self.installed, served)


MAX_ID_CHARS = 128
MAX_ATTRIBUTES = 32
MAX_ATTRIBUTE_CHARS = 512


@dataclass(frozen=True)
class ItemProblem:
    """Why one upsert or removal of an UpdateCatalogue call was not applied."""

    code: str  # the gRPC status name: INVALID_ARGUMENT or NOT_FOUND
    message: str


def check_changes(upserts: Sequence[tuple[str, str, Mapping[str, str]]], removals: Sequence[str],
                  live: LiveCatalogue, max_title_chars: int) -> dict[int, ItemProblem]:
    """What is wrong with each change of one call, by its index (upserts 0.., then removals
    len(upserts)..); the others may be applied. An id may appear once per call; a removal must
    name an item of the live catalogue."""
    problems: dict[int, ItemProblem] = {}
    seen: dict[str, int] = {}

    def bad_id(item_id: str) -> str | None:
        if not item_id.strip():
            return "item_id is empty"
        if len(item_id) > MAX_ID_CHARS:
            return f"item_id longer than {MAX_ID_CHARS} characters"
        if item_id != item_id.strip() or not item_id.isprintable():
            return "item_id has surrounding spaces or control characters"
        if item_id in seen:
            return f"item_id {item_id!r} appears earlier in this request (change {seen[item_id]})"
        return None

    for i, (item_id, title, attributes) in enumerate(upserts):
        problem = bad_id(item_id)
        if problem is None and not title.strip():
            problem = f"item {item_id!r}: title is empty (the model ranks new items by their title)"
        elif problem is None and len(title) > max_title_chars:
            problem = f"item {item_id!r}: title longer than {max_title_chars} characters"
        elif problem is None and ("\x00" in title or any("\x00" in k + v for k, v in attributes.items())):
            problem = f"item {item_id!r}: a NUL character in the title or an attribute"
        elif problem is None and len(attributes) > MAX_ATTRIBUTES:
            problem = f"item {item_id!r}: more than {MAX_ATTRIBUTES} attributes"
        elif problem is None and any(len(k) > MAX_ATTRIBUTE_CHARS or len(v) > MAX_ATTRIBUTE_CHARS
                                     for k, v in attributes.items()):
            problem = (f"item {item_id!r}: an attribute name or value longer than {MAX_ATTRIBUTE_CHARS} "
                       "characters")
        if problem is not None:
            problems[i] = ItemProblem("INVALID_ARGUMENT", problem)
        seen.setdefault(item_id, i)
    for j, item_id in enumerate(removals, start=len(upserts)):
        problem = bad_id(item_id)
        if problem is not None:
            problems[j] = ItemProblem("INVALID_ARGUMENT", problem)
        elif item_id not in live:
            problems[j] = ItemProblem("NOT_FOUND", f"no item {item_id!r} in the {live.platform} catalogue")
        seen.setdefault(item_id, j)
    return problems
