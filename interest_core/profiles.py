"""Interest profiles: per (user, platform) sum of event embeddings, count and items taken.

Stored in embedded SQLite (WAL) keyed by the pseudonymous user key; raw events never are.
The profile vector is the normalised mean of the user's event embeddings on that platform.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

_SCHEMA = """
CREATE TABLE IF NOT EXISTS profiles (
    user_key   TEXT    NOT NULL,
    platform   TEXT    NOT NULL,
    dim        INTEGER NOT NULL,
    vec_sum    BLOB    NOT NULL,
    events     INTEGER NOT NULL,
    items      TEXT    NOT NULL,
    updated_ms INTEGER NOT NULL,
    PRIMARY KEY (user_key, platform)
);
"""


@dataclass
class Profile:
    """One user's interests on one platform: vec_sum float32 [D] over `events` events."""

    platform: str
    vec_sum: np.ndarray
    events: int
    items: list[str] = field(default_factory=list)
    updated_ms: int = 0

    @property
    def vector(self) -> np.ndarray:
        """Unit-norm mean embedding, float32 [D]."""
        norm = float(np.linalg.norm(self.vec_sum))
        return (self.vec_sum / norm if norm > 0 else self.vec_sum).astype(np.float32)

    def add(self, embedding: np.ndarray, item_id: str) -> None:
        self.vec_sum = self.vec_sum + embedding.astype(np.float32)
        self.events += 1
        if item_id and item_id not in self.items:
            self.items.append(item_id)


class ProfileStore:
    """SQLite-backed profiles; every `save_many` is one transaction (all or nothing)."""

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted profiles are overwritten, not left in pages
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def load(self, user_key: str) -> dict[str, Profile]:
        rows = self._db.execute(
            "SELECT platform, dim, vec_sum, events, items, updated_ms FROM profiles WHERE user_key=?",
            (user_key,),
        ).fetchall()
        return {
            platform: Profile(
                platform=platform,
                vec_sum=np.frombuffer(blob, dtype=np.float32, count=dim).copy(),
                events=events,
                items=json.loads(items),
                updated_ms=updated,
            )
            for platform, dim, blob, events, items, updated in rows
        }

    def save_many(self, profiles: Iterable[tuple[str, Profile]]) -> None:
        """Upsert (user_key, profile) pairs atomically."""
        now = int(time.time() * 1000)
        rows = [
            (key, p.platform, int(p.vec_sum.shape[0]), p.vec_sum.astype(np.float32).tobytes(),
             p.events, json.dumps(p.items), now)
            for key, p in profiles
        ]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO profiles VALUES (?,?,?,?,?,?,?) ON CONFLICT(user_key, platform) DO "
                "UPDATE SET dim=excluded.dim, vec_sum=excluded.vec_sum, events=excluded.events, "
                "items=excluded.items, updated_ms=excluded.updated_ms",
                rows,
            )

    def delete(self, user_key: str) -> int:
        with self._transaction():
            cur = self._db.execute("DELETE FROM profiles WHERE user_key=?", (user_key,))
        return int(cur.rowcount)

    def count(self) -> int:
        return int(self._db.execute("SELECT COUNT(*) FROM profiles").fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
