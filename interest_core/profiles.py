"""Interest profiles: per (user, platform) sum of event embeddings, count and items taken.

Stored in embedded SQLite (WAL) keyed by the pseudonymous user key; raw events never are.
The profile vector is the normalised mean of the user's event embeddings on that platform,
in the embedding space of the model that made them (`model_version`; '' for rows written
before versions were stored).
"""

from __future__ import annotations

import json
import os
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
    model_version TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (user_key, platform)
);
CREATE TABLE IF NOT EXISTS consent (
    user_key   TEXT    PRIMARY KEY,
    migrate    INTEGER NOT NULL,
    updated_ms INTEGER NOT NULL
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
    model_version: str = ""  # the model whose embeddings vec_sum sums

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


class ProfileCipher:
    """AES-256-GCM for profile fields at rest; the row's key and field are the associated
    data, so a ciphertext moved to another row or column does not decrypt."""

    def __init__(self, key: bytes) -> None:
        from cryptography.hazmat.primitives.ciphers.aead import AESGCM

        if len(key) != 32:
            raise ValueError("the profile encryption key must be 32 bytes (base64 of 32 random bytes)")
        self._aead = AESGCM(key)

    def seal(self, data: bytes, aad: str) -> bytes:
        nonce = os.urandom(12)
        return nonce + self._aead.encrypt(nonce, data, aad.encode())

    def open(self, blob: bytes, aad: str) -> bytes:
        return self._aead.decrypt(blob[:12], blob[12:], aad.encode())


class ProfileStore:
    """SQLite-backed profiles; every `save_many` is one transaction (all or nothing).
    With a cipher, the vector and item list of every row are stored encrypted.

    Writes (`save_many`, `delete`, `set_consent`) commit durably (WAL, synchronous=FULL: an
    fsync per commit) on one connection; reads (`load`, `consent`, `count`) use a second one.
    In WAL mode a reader neither waits for a writer nor sees its transaction half done, so
    a thread that only reads never stalls behind another thread's fsync (the gateway reads
    on its event loop and writes from one writer thread)."""

    def __init__(self, path: Path, cipher: ProfileCipher | None = None) -> None:
        self._cipher = cipher
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA secure_delete=ON")  # deleted profiles are overwritten, not left in pages
        self._db.executescript(_SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(profiles)")}
        if "model_version" not in columns:  # a store written before model versions were kept
            self._db.execute("ALTER TABLE profiles ADD COLUMN model_version TEXT NOT NULL DEFAULT ''")
        self._read = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False)

    def close(self) -> None:
        self._read.close()
        self._db.close()

    def load(self, user_key: str) -> dict[str, Profile]:
        rows = self._read.execute(
            "SELECT platform, dim, vec_sum, events, items, updated_ms, model_version FROM profiles "
            "WHERE user_key=?",
            (user_key,),
        ).fetchall()
        out = {}
        for platform, dim, blob, events, items, updated, version in rows:
            if self._cipher is not None:
                blob = self._cipher.open(blob, f"{user_key}|{platform}|vec")
                items = self._cipher.open(bytes(items), f"{user_key}|{platform}|items").decode()
            out[platform] = Profile(
                platform=platform, vec_sum=np.frombuffer(blob, dtype=np.float32, count=dim).copy(),
                events=events, items=json.loads(items), updated_ms=updated, model_version=version,
            )
        return out

    def _fields(self, key: str, p: Profile) -> tuple[bytes, str | bytes]:
        vec = p.vec_sum.astype(np.float32).tobytes()
        items = json.dumps(p.items)
        if self._cipher is None:
            return vec, items
        return (self._cipher.seal(vec, f"{key}|{p.platform}|vec"),
                self._cipher.seal(items.encode(), f"{key}|{p.platform}|items"))

    def save_many(self, profiles: Iterable[tuple[str, Profile]]) -> None:
        """Upsert (user_key, profile) pairs atomically."""
        now = int(time.time() * 1000)
        rows = [(key, p.platform, int(p.vec_sum.shape[0]), *self._fields(key, p), p.events, now,
                 p.model_version) for key, p in profiles]
        with self._transaction():
            self._db.executemany(
                "INSERT INTO profiles (user_key, platform, dim, vec_sum, items, events, updated_ms, "
                "model_version) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(user_key, platform) DO "
                "UPDATE SET dim=excluded.dim, vec_sum=excluded.vec_sum, events=excluded.events, "
                "items=excluded.items, updated_ms=excluded.updated_ms, "
                "model_version=excluded.model_version",
                rows,
            )

    def delete(self, user_key: str) -> int:
        """Remove every row of the user (profiles and consent); returns profiles removed."""
        with self._transaction():
            cur = self._db.execute("DELETE FROM profiles WHERE user_key=?", (user_key,))
            self._db.execute("DELETE FROM consent WHERE user_key=?", (user_key,))
        return int(cur.rowcount)

    def set_consent(self, user_key: str, migrate: bool) -> None:
        with self._transaction():
            self._db.execute(
                "INSERT INTO consent VALUES (?,?,?) ON CONFLICT(user_key) DO UPDATE SET "
                "migrate=excluded.migrate, updated_ms=excluded.updated_ms",
                (user_key, int(migrate), int(time.time() * 1000)),
            )

    def consent(self, user_key: str) -> bool:
        """Cross-platform migration consent; off unless the user turned it on."""
        row = self._read.execute("SELECT migrate FROM consent WHERE user_key=?", (user_key,)).fetchone()
        return bool(row and row[0])

    def count(self) -> int:
        return int(self._read.execute("SELECT COUNT(*) FROM profiles").fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
