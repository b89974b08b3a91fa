"""The catalogue change log in the profile store: items that platforms add, retitle or remove
at run time (UpdateCatalogue), kept where every gateway sharing the store finds them by
polling `catalogue_changes(platform, last_seen)`.

Each platform has a catalogue version (`catalogue_versions`) and one row per item it ever
changed (`catalogue_items`): its title, attributes, embedding and the version of the change
that last wrote it. A change takes the platform's row lock, so the changes of one platform
commit one after another with versions 1, 2, 3, ...; see `update_catalogue` for why a poller
then never misses one. The log keeps each item's latest state, not every change: an item
changed again carries the later version only, so a poller sees versions with gaps.

The catalogue is public platform data (what the platform shows everyone): titles and
embeddings are stored in clear, not under the profile cipher, and no change is audited
(the audit trail records changes to user data).
"""

from __future__ import annotations

import json
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, TypeVar

import numpy as np

T = TypeVar("T")
Upsert = tuple[str, str, Mapping[str, str], np.ndarray]  # item_id, title, attributes, embedding [dim]

_COLUMNS = ("platform, item_id, title, attributes, embedding, dim, model_version, removed, version, "
            "updated_ms")


@dataclass(frozen=True)
class CatalogueRow:
    """One item of a platform's catalogue as last changed: embedding float32 [dim] (None once
    removed) by the model of `model_version`, written by the change of catalogue `version`
    at `updated_ms` (Unix ms)."""

    platform: str
    item_id: str
    title: str
    attributes: dict[str, str]
    embedding: np.ndarray | None
    model_version: str
    removed: bool
    version: int
    updated_ms: int


class _Tx(Protocol):
    """What the log needs of a store transaction (profiles.Tx is one)."""

    def execute(self, sql: str, args: Any = (), /) -> Any: ...

    def executemany(self, sql: str, rows: Any, /) -> object: ...


class CatalogueLog(ABC):
    """The catalogue half of ProfileStore, on the same engine hooks (`_write`, `_query`,
    `_lock_rows`) and SQL with `?` placeholders."""

    _lock_rows = ""

    @abstractmethod
    def _write(self, work: Callable[[_Tx], T]) -> T:
        """Run `work` in one write transaction and commit; roll back if it raises."""

    @abstractmethod
    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """The rows of one read-only statement."""

    def catalogue_version(self, platform: str) -> int:
        """The platform's catalogue version: the number of changes committed (0: none)."""
        rows = self._query("SELECT version FROM catalogue_versions WHERE platform=?", (platform,))
        return int(rows[0][0]) if rows else 0

    def catalogue_changes(self, platform: str, after_version: int = 0) -> list[CatalogueRow]:
        """The platform's items written by changes after `after_version`, ordered by (version,
        item_id). A poller passes the highest version among the rows it has had (0 at start:
        every item), not a `catalogue_version` read apart, which may be ahead of those rows."""
        rows = self._query(f"SELECT {_COLUMNS} FROM catalogue_items WHERE platform=? AND version>? "
                           "ORDER BY version, item_id", (platform, after_version))
        return [CatalogueRow(p, item, title, json.loads(attributes),
                             None if blob is None else np.frombuffer(bytes(blob), np.float32, dim).copy(),
                             model_version, bool(removed), int(version), int(updated))
                for p, item, title, attributes, blob, dim, model_version, removed, version, updated in rows]

    def update_catalogue(self, platform: str, upserts: Sequence[Upsert], removals: Sequence[str],
                         model_version: str) -> int:
        """Apply one change to the platform's catalogue in one transaction and return its
        version (the current one, unchanged, when both lists are empty).

        `upserts` are (item_id, title, attributes, embedding float32 [dim] by the model of
        `model_version`): new items, or new titles of items listed already (the row is
        replaced). `removals` are item ids never to be recommended again: applied after the
        upserts, kept as rows with no embedding (the title kept if the item was logged), and
        logged even for an item never logged before, since it may be one of the catalogue
        installed with the model, which must stay removed after a restart.

        The transaction first locks the platform's `catalogue_versions` row (SQLite's
        BEGIN IMMEDIATE locks the whole file), so changes of one platform are serialised:
        version N+1 is taken only after version N has committed, and every row a change
        writes carries its version. Versions therefore become visible in order, and a poller
        asking for `version > last_seen` never misses a change. Numbers from a sequence would
        not do: a transaction can take 7, another 8, and 8 commit first; a poller reading then
        moves past 7 before 7 becomes visible."""
        rows = [(item_id, title, json.dumps(dict(attributes)), _float32_row(embedding))
                for item_id, title, attributes, embedding in upserts]
        if not rows and not removals:
            return self.catalogue_version(platform)
        now = _now_ms()

        def work(tx: _Tx) -> int:
            version = self._lock_catalogue(tx, platform) + 1
            if rows:
                tx.executemany(
                    f"INSERT INTO catalogue_items ({_COLUMNS}) VALUES (?,?,?,?,?,?,?,0,?,?) "
                    "ON CONFLICT(platform, item_id) DO UPDATE SET title=excluded.title, "
                    "attributes=excluded.attributes, embedding=excluded.embedding, dim=excluded.dim, "
                    "model_version=excluded.model_version, removed=0, version=excluded.version, "
                    "updated_ms=excluded.updated_ms",
                    [(platform, item_id, title, attributes, vec.tobytes(), int(vec.shape[0]), model_version,
                      version, now) for item_id, title, attributes, vec in rows])
            if removals:
                tx.executemany(
                    f"INSERT INTO catalogue_items ({_COLUMNS}) VALUES (?,?,'','{{}}',NULL,NULL,?,1,?,?) "
                    "ON CONFLICT(platform, item_id) DO UPDATE SET embedding=NULL, dim=NULL, "
                    "model_version=excluded.model_version, removed=1, version=excluded.version, "
                    "updated_ms=excluded.updated_ms",
                    [(platform, item_id, model_version, version, now) for item_id in removals])
            tx.execute("UPDATE catalogue_versions SET version=? WHERE platform=?", (version, platform))
            return version

        return self._write(work)

    def reembed_catalogue(self, platform: str, rows: Sequence[tuple[str, str, np.ndarray]],
                          model_version: str) -> int:
        """Write items re-embedded by the model of `model_version`: (item_id, old_model_version,
        embedding float32 [dim]), each only where the item is still listed and still at the old
        model version (not changed meanwhile through another gateway). One transaction under the
        platform's row lock; the version goes up once if anything was written. Returns the
        platform's version after it."""
        vectors = [(item_id, old, _float32_row(embedding)) for item_id, old, embedding in rows]
        if not vectors:
            return self.catalogue_version(platform)
        now = _now_ms()

        def work(tx: _Tx) -> int:
            version = self._lock_catalogue(tx, platform)
            tx.executemany(
                "UPDATE catalogue_items SET embedding=?, dim=?, model_version=?, version=?, updated_ms=? "
                "WHERE platform=? AND item_id=? AND model_version=? AND removed=0",
                [(vec.tobytes(), int(vec.shape[0]), model_version, version + 1, now, platform, item_id, old)
                 for item_id, old, vec in vectors])
            # only this transaction writes rows of version + 1 (it holds the lock)
            written = tx.execute("SELECT COUNT(*) FROM catalogue_items WHERE platform=? AND version=?",
                                 (platform, version + 1)).fetchone()[0]
            if not written:
                return version
            tx.execute("UPDATE catalogue_versions SET version=? WHERE platform=?", (version + 1, platform))
            return version + 1

        return self._write(work)

    def _lock_catalogue(self, tx: _Tx, platform: str) -> int:
        """The platform's catalogue version, its row (made at 0 if missing) locked until the commit."""
        tx.execute("INSERT INTO catalogue_versions (platform, version) VALUES (?, 0) "
                   "ON CONFLICT(platform) DO NOTHING", (platform,))
        row = tx.execute(f"SELECT version FROM catalogue_versions WHERE platform=?{self._lock_rows}",
                         (platform,)).fetchone()
        return int(row[0])


def _float32_row(embedding: np.ndarray) -> np.ndarray:
    vec = np.ascontiguousarray(embedding, dtype=np.float32)
    if vec.ndim != 1:
        raise ValueError(f"a catalogue embedding is one vector, not an array of shape {vec.shape}")
    return vec


def _now_ms() -> int:
    return int(time.time() * 1000)
