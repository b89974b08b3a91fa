"""Interest profiles: per (user, platform) sum of event embeddings, count and items taken;
beside them each user's migration consent rules (interest_core/consent.py) and the audit
trail of every consent change and erasure, written in the transaction of the change.

`ProfileStore` is the one store interface, with its SQL written once; two engines carry it
out: embedded SQLite (store_sqlite.py, the default) and PostgreSQL (store_postgres.py, shared
by several gateways); stores.open_store picks one from the `profile_store` setting. Rows are
keyed by the pseudonymous user key; raw events and raw user ids never are stored. The same
store keeps the platforms' catalogue change log (catalogue_log.py), which is not user data.
The profile vector is the normalised mean of the user's event embeddings on that platform,
in the embedding space of the model that made them (`model_version`; '' for rows written
before versions were stored).

Every write is one transaction that reads what it changes under a row lock and commits
before it returns, so gateways in several processes never lose each other's updates:
ingest adds its events' contribution to whatever the row holds at commit time
(`add_events_many`), and a re-embedded vector is written only if the row is still the one
that was re-embedded (`reembed`).
"""

from __future__ import annotations

import json
import os
import time
from abc import abstractmethod
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, TypeVar

import numpy as np

from interest_core.catalogue_log import CatalogueLog
from interest_core.consent import ANY, ConsentRule

T = TypeVar("T")


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


@dataclass(frozen=True)
class ProfileDelta:
    """What new events add to one (user, platform) profile: the sum of their embeddings
    (float32 [D]), how many there were and the items they name, in event order."""

    user_key: str
    platform: str
    vec_sum: np.ndarray
    events: int
    items: Sequence[str] = ()


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


class Rows(Protocol):
    """What an engine's `execute` returns (a DB-API cursor)."""

    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> list[Any]: ...

    def fetchone(self) -> Any: ...


class Tx(Protocol):
    """A transaction in progress: statements with `?` placeholders."""

    def execute(self, sql: str, args: Any = (), /) -> Rows: ...

    def executemany(self, sql: str, rows: Any, /) -> object: ...


class StaleProfiles(Exception):
    """Rows of another model version met inside a write; raised to roll the write back."""

    def __init__(self, keys: list[tuple[str, str]]) -> None:
        super().__init__(f"{len(keys)} profile(s) of another model version")
        self.keys = keys


class ProfileStore(CatalogueLog):
    """Profiles, consent rules, the audit trail and (CatalogueLog) the catalogue change log;
    every write is one transaction (all or nothing) committed before it returns. With a
    cipher, the vector and item list of every profile row are stored encrypted. An engine
    supplies `_write` (a transaction), `_query` (a read) and `close`; SQL here uses `?`
    placeholders."""

    remote = False  # reads cross a network: callers keep them off their event loop
    writers = 1  # writes a caller may run at once (threads)
    _lock_rows = ""  # appended to a SELECT of rows the transaction then writes
    description = "the profile store"

    def __init__(self, cipher: ProfileCipher | None = None) -> None:
        self._cipher = cipher

    # --- what an engine provides ---
    @abstractmethod
    def _write(self, work: Callable[[Tx], T]) -> T:
        """Run `work` in one write transaction and commit; roll back if it raises."""

    @abstractmethod
    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """The rows of one read-only statement."""

    def _items_value(self, items_json: str) -> str | bytes:
        """The unencrypted item list as the engine's `items` column holds it."""
        return items_json

    def prepare(self) -> None:
        """Connect and bring the schema up to date if not done yet (a no-op where the
        constructor did it). Raises Unavailable while the database cannot be reached,
        SchemaTooNew for a database of a newer gateway."""
        return None

    @abstractmethod
    def close(self) -> None:
        """Close the connections (after the caller's last call)."""

    def ping(self) -> None:
        """Return if the store answers a trivial query now; Unavailable if it does not (the
        gateway's health follows it)."""
        self._query("SELECT 1")

    def pool_stats(self) -> dict[str, float]:
        """The connection pool's figures for /metrics (none for an engine without a pool)."""
        return {}

    # --- reads ---
    def load(self, user_key: str) -> dict[str, Profile]:
        rows = self._query(
            "SELECT platform, dim, vec_sum, events, items, updated_ms, model_version FROM profiles "
            "WHERE user_key=?", (user_key,))
        return {row[0]: self._profile(user_key, *row) for row in rows}

    def consent_rules(self, user_key: str) -> list[ConsentRule]:
        """The user's stored consent rules (none: nothing may migrate)."""
        return [ConsentRule(s, t, bool(a), u) for s, t, a, u in self._query(
            "SELECT source, target, allowed, updated_ms FROM consent_rules WHERE user_key=? "
            "ORDER BY source, target", (user_key,))]

    def audit(self, user_key: str | None = None, since_ms: int = 0, limit: int = 100) -> list[AuditEntry]:
        """Audit entries at or after `since_ms` (of one user, or all), newest first."""
        where, args = ("at_ms >= ?", [since_ms]) if user_key is None else \
            ("at_ms >= ? AND user_key = ?", [since_ms, user_key])
        rows = self._query(
            f"SELECT id, at_ms, actor, action, user_key, platforms, change FROM audit WHERE {where} "
            "ORDER BY id DESC LIMIT ?", (*args, limit))
        return [AuditEntry(i, at, actor, action, key, json.loads(platforms), change)
                for i, at, actor, action, key, platforms, change in rows]

    def count(self) -> int:
        return int(self._query("SELECT COUNT(*) FROM profiles")[0][0])

    # --- writes ---
    def save_many(self, profiles: Iterable[tuple[str, Profile]]) -> None:
        """Upsert (user_key, profile) pairs atomically, replacing what the rows held (imports
        and tests; the gateway adds events with add_events_many and re-embeds with reembed)."""
        now = _now_ms()
        rows = [(key, p.platform, int(p.vec_sum.shape[0]), *self._fields(key, p.platform, p.vec_sum,
                 p.items), p.events, now, p.model_version) for key, p in profiles]
        self._write(lambda tx: tx.executemany(
            "INSERT INTO profiles (user_key, platform, dim, vec_sum, items, events, updated_ms, "
            "model_version) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(user_key, platform) DO "
            "UPDATE SET dim=excluded.dim, vec_sum=excluded.vec_sum, events=excluded.events, "
            "items=excluded.items, updated_ms=excluded.updated_ms, "
            "model_version=excluded.model_version",
            rows))

    def add_events(self, user_key: str, platform: str, vec_delta: np.ndarray, n_events: int,
                   items: Sequence[str], model_version: str) -> bool:
        """add_events_many for one profile; False (nothing written) when the row is stale."""
        return not self.add_events_many(
            [ProfileDelta(user_key, platform, vec_delta, n_events, items)], model_version)

    def add_events_many(self, deltas: Sequence[ProfileDelta], model_version: str) -> list[tuple[str, str]]:
        """Add each delta to its row as the row is at commit time (a new row where there is
        none), all in one transaction under row locks; the rows take `model_version`.

        A row summed by another model cannot take the new embeddings: if any row is of a
        version other than `model_version` (or '', taken to be it), nothing is written and
        those (user_key, platform) pairs are returned, for the caller to re-embed them
        (`reembed`) and try again. With `model_version` '' (no model served yet) every row
        takes the events and keeps its version."""
        ordered = sorted(deltas, key=lambda d: (d.user_key, d.platform))  # one lock order everywhere
        now = _now_ms()

        def work(tx: Tx) -> None:
            stale = []
            for d in ordered:
                row = self._locked_row(tx, d.user_key, d.platform)
                if row is None:
                    vec, items = self._fields(d.user_key, d.platform, d.vec_sum, _merged([], d.items))
                    inserted = tx.execute(
                        "INSERT INTO profiles (user_key, platform, dim, vec_sum, items, events, updated_ms, "
                        "model_version) VALUES (?,?,?,?,?,?,?,?) ON CONFLICT(user_key, platform) DO NOTHING",
                        (d.user_key, d.platform, int(d.vec_sum.shape[0]), vec, items, d.events, now,
                         model_version))
                    if inserted.rowcount == 1:
                        continue
                    row = self._locked_row(tx, d.user_key, d.platform)  # another writer's, just committed
                    assert row is not None, "a row that blocked an insert is gone"
                current = self._profile(d.user_key, *row)
                if model_version and current.model_version not in ("", model_version):
                    stale.append((d.user_key, d.platform))
                    continue
                vec_sum = current.vec_sum + d.vec_sum.astype(np.float32)
                vec, items = self._fields(d.user_key, d.platform, vec_sum, _merged(current.items, d.items))
                tx.execute(
                    "UPDATE profiles SET dim=?, vec_sum=?, items=?, events=?, updated_ms=?, model_version=? "
                    "WHERE user_key=? AND platform=?",
                    (int(vec_sum.shape[0]), vec, items, current.events + d.events, now,
                     model_version or current.model_version, d.user_key, d.platform))
            if stale:
                raise StaleProfiles(stale)

        try:
            self._write(work)
        except StaleProfiles as exc:
            return exc.keys
        return []

    def reembed(self, user_key: str, platform: str, old_version: str, events: int, vec_sum: np.ndarray,
                model_version: str) -> bool:
        """Replace the row's vector with `vec_sum` (the same events re-embedded by the model of
        `model_version`) only if the row is still at `old_version` with `events` events, as it
        was read; False (nothing written) when another writer changed or removed it since."""
        def work(tx: Tx) -> bool:
            row = self._locked_row(tx, user_key, platform)
            if row is None:
                return False
            current = self._profile(user_key, *row)
            if current.model_version != old_version or current.events != events:
                return False
            vec, items = self._fields(user_key, platform, vec_sum, current.items)
            tx.execute("UPDATE profiles SET dim=?, vec_sum=?, items=?, updated_ms=?, model_version=? "
                       "WHERE user_key=? AND platform=?",
                       (int(vec_sum.shape[0]), vec, items, _now_ms(), model_version, user_key, platform))
            return True

        return self._write(work)

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

        def work(tx: Tx) -> list[str]:
            removed = sorted(r[0] for r in tx.execute(
                f"SELECT platform FROM profiles WHERE {where_profile}{self._lock_rows}", args).fetchall())
            sources = {r[0] for r in tx.execute(
                f"SELECT source FROM consent_rules WHERE {where_rule}{self._lock_rows}", args).fetchall()}
            tx.execute(f"DELETE FROM profiles WHERE {where_profile}", args)
            rules = tx.execute(f"DELETE FROM consent_rules WHERE {where_rule}", args).rowcount
            scope = "every platform" if platform is None else f"platform {platform}"
            self._audit(tx, actor, "DeleteUser", user_key,
                        sorted({*removed, *sources}) if platform is None else [platform],
                        f"erased on {scope}: profiles of {', '.join(removed) or 'none'}; "
                        f"{rules} consent rule(s)")
            return removed

        return self._write(work)

    def set_consent(self, user_key: str, allowed: bool, source: str = ANY,
                    targets: Sequence[str] = (ANY,), actor: str = ANY) -> None:
        """Set the rules (source, target) for each target to `allowed`, audited in the same
        transaction. The defaults set the user-wide default, as the operator does."""
        now = _now_ms()

        def work(tx: Tx) -> None:
            before = {(s, t): bool(a) for s, t, a in tx.execute(
                "SELECT source, target, allowed FROM consent_rules WHERE user_key=? AND source=?"
                f"{self._lock_rows}", (user_key, source)).fetchall()}
            tx.executemany(
                "INSERT INTO consent_rules VALUES (?,?,?,?,?) ON CONFLICT(user_key, source, target) "
                "DO UPDATE SET allowed=excluded.allowed, updated_ms=excluded.updated_ms",
                [(user_key, source, t, int(allowed), now) for t in targets])
            change = "; ".join(f"{source}->{t}: {_state(before.get((source, t)))} -> {_state(allowed)}"
                               for t in targets)
            self._audit(tx, actor, "SetConsent", user_key, sorted({source, *targets}), change, now)

        self._write(work)

    # --- the parts ---
    def _audit(self, tx: Tx, actor: str, action: str, user_key: str, platforms: Sequence[str], change: str,
               at_ms: int | None = None) -> None:
        """Append one audit entry (inside the caller's transaction); the only write to `audit`."""
        tx.execute(
            "INSERT INTO audit (at_ms, actor, action, user_key, platforms, change) VALUES (?,?,?,?,?,?)",
            (at_ms or _now_ms(), actor, action, user_key, json.dumps(list(platforms)), change))

    def _locked_row(self, tx: Tx, user_key: str, platform: str) -> tuple[Any, ...] | None:
        """The profile row (as `load` selects it, less user_key), locked until the commit."""
        row = tx.execute(
            "SELECT platform, dim, vec_sum, events, items, updated_ms, model_version FROM profiles "
            f"WHERE user_key=? AND platform=?{self._lock_rows}", (user_key, platform)).fetchone()
        return None if row is None else tuple(row)

    def _profile(self, user_key: str, platform: str, dim: int, blob: bytes, events: int,
                 items: str | bytes, updated: int, version: str) -> Profile:
        """A row as stored (items: JSON text, or bytes: JSON or its ciphertext) as a Profile."""
        if self._cipher is not None:
            blob = self._cipher.open(bytes(blob), f"{user_key}|{platform}|vec")
            sealed = items if isinstance(items, bytes) else items.encode()
            items = self._cipher.open(sealed, f"{user_key}|{platform}|items").decode()
        return Profile(platform=platform, vec_sum=np.frombuffer(blob, dtype=np.float32, count=dim).copy(),
                       events=events, items=json.loads(items), updated_ms=updated, model_version=version)

    def _fields(self, key: str, platform: str, vec_sum: np.ndarray, items: list[str]
                ) -> tuple[bytes, str | bytes]:
        vec = vec_sum.astype(np.float32).tobytes()
        items_json = json.dumps(items)
        if self._cipher is None:
            return vec, self._items_value(items_json)
        return (self._cipher.seal(vec, f"{key}|{platform}|vec"),
                self._cipher.seal(items_json.encode(), f"{key}|{platform}|items"))


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


def _merged(items: list[str], new: Iterable[str]) -> list[str]:
    """`items` then each new item not in it yet, in order (as Profile.add keeps them)."""
    out = list(items)
    for item in new:
        if item and item not in out:
            out.append(item)
    return out


def _now_ms() -> int:
    return int(time.time() * 1000)


def _state(allowed: bool | None) -> str:
    return "unset" if allowed is None else ("on" if allowed else "off")
