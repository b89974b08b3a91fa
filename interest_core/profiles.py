"""Interest profiles: per (user, platform) sum of event embeddings, count and items taken;
beside them each user's migration consent rules (interest_core/consent.py) and the audit
trail of every consent change and erasure, written in the transaction of the change.

Stored in embedded SQLite (WAL; schema: store_schema.py) keyed by the pseudonymous user key;
raw events and raw user ids never are.
The profile vector is the normalised mean of the user's event embeddings on that platform,
in the embedding space of the model that made them (`model_version`; '' for rows written
before versions were stored).
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from interest_core.consent import ANY, ConsentRule
from interest_core.store_schema import upgrade


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
    fsync per commit) on one connection; reads (`load`, `consent_rules`, `audit`, `count`) use a second one.
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
        try:
            upgrade(self._db, path)  # or SchemaTooNew: a newer gateway's store
        except BaseException:
            self._db.close()
            raise
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

    def delete(self, user_key: str, platform: str | None = None, actor: str = ANY) -> list[str]:
        """Remove the user's rows of `platform` (its profile and the consent rules whose source
        it is), or with None every row of the user; audited in the same transaction.
        Returns the platforms whose profile was removed."""
        if platform is None:
            args: tuple[str, ...] = (user_key,)
            where_profile = where_rule = "user_key=?"
        else:
            args = (user_key, platform)
            where_profile, where_rule = "user_key=? AND platform=?", "user_key=? AND source=?"
        with self._transaction():
            removed = sorted(r[0] for r in self._db.execute(
                f"SELECT platform FROM profiles WHERE {where_profile}", args))
            sources = {r[0] for r in self._db.execute(
                f"SELECT source FROM consent_rules WHERE {where_rule}", args)}
            self._db.execute(f"DELETE FROM profiles WHERE {where_profile}", args)
            rules = self._db.execute(f"DELETE FROM consent_rules WHERE {where_rule}", args).rowcount
            scope = "every platform" if platform is None else f"platform {platform}"
            self._audit(actor, "DeleteUser", user_key,
                        sorted({*removed, *sources}) if platform is None else [platform],
                        f"erased on {scope}: profiles of {', '.join(removed) or 'none'}; "
                        f"{rules} consent rule(s)")
        return removed

    def set_consent(self, user_key: str, allowed: bool, source: str = ANY,
                    targets: Sequence[str] = (ANY,), actor: str = ANY) -> None:
        """Set the rules (source, target) for each target to `allowed`, audited in the same
        transaction. The defaults set the user-wide default, as the operator does."""
        now = _now_ms()
        with self._transaction():
            before = {(s, t): bool(a) for s, t, a in self._db.execute(
                "SELECT source, target, allowed FROM consent_rules WHERE user_key=? AND source=?",
                (user_key, source))}
            self._db.executemany(
                "INSERT INTO consent_rules VALUES (?,?,?,?,?) ON CONFLICT(user_key, source, target) "
                "DO UPDATE SET allowed=excluded.allowed, updated_ms=excluded.updated_ms",
                [(user_key, source, t, int(allowed), now) for t in targets])
            change = "; ".join(f"{source}->{t}: {_state(before.get((source, t)))} -> {_state(allowed)}"
                               for t in targets)
            self._audit(actor, "SetConsent", user_key, sorted({source, *targets}), change, now)

    def consent_rules(self, user_key: str) -> list[ConsentRule]:
        """The user's stored consent rules (none: nothing may migrate)."""
        return [ConsentRule(s, t, bool(a), u) for s, t, a, u in self._read.execute(
            "SELECT source, target, allowed, updated_ms FROM consent_rules WHERE user_key=? "
            "ORDER BY source, target", (user_key,))]

    def audit(self, user_key: str | None = None, since_ms: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries at or after `since_ms` (of one user, or all), newest first."""
        where, args = ("at_ms >= ?", [since_ms]) if user_key is None else \
            ("at_ms >= ? AND user_key = ?", [since_ms, user_key])
        rows = self._read.execute(
            f"SELECT id, at_ms, actor, action, user_key, platforms, change FROM audit WHERE {where} "
            "ORDER BY id DESC LIMIT ?", (*args, limit)).fetchall()
        return [AuditEntry(i, at, actor, action, key, json.loads(platforms), change)
                for i, at, actor, action, key, platforms, change in rows]

    def _audit(self, actor: str, action: str, user_key: str, platforms: Sequence[str], change: str,
               at_ms: int | None = None) -> None:
        """Append one audit entry (inside the caller's transaction); the only write to `audit`."""
        self._db.execute(
            "INSERT INTO audit (at_ms, actor, action, user_key, platforms, change) VALUES (?,?,?,?,?,?)",
            (at_ms or _now_ms(), actor, action, user_key, json.dumps(list(platforms)), change))

    def count(self) -> int:
        return int(self._read.execute("SELECT COUNT(*) FROM profiles").fetchone()[0])

    def _transaction(self) -> _Tx:
        return _Tx(self._db)


@dataclass(frozen=True)
class AuditEntry:
    """One consent change or erasure: who (a platform, '*' the operator), when (Unix ms), which
    user (pseudonym), which platforms it affected and what changed."""

    id: int
    at_ms: int
    actor: str
    action: str
    user_key: str
    platforms: list[str]
    change: str


def _now_ms() -> int:
    return int(time.time() * 1000)


def _state(allowed: bool | None) -> str:
    return "unset" if allowed is None else ("on" if allowed else "off")


class _Tx:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
