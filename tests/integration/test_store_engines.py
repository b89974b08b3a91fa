"""The profile store's promises, checked on both engines: embedded SQLite and a REAL
PostgreSQL server (the session's throwaway cluster, a new database per test).

Each test takes `store_engine` and runs once per engine: durable writes that are all or nothing,
encryption at rest, consent rules and scoped erasure, the append-only audit trail, the
versioned schema and its upgrade, model-version re-embedding, per-platform isolation, the
catalogue change log, and updates from two OS processes at once that lose or double nothing
(profiles) or commit their catalogue versions in order (the catalogue log). The ProfileBook
and servicer tests of tests/unit/test_profile_versions.py and test_profile_writes.py run here
again on each engine.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import os
import sqlite3
from collections.abc import Awaitable, Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import numpy as np
import psycopg
import pytest
from cryptography.exceptions import InvalidTag
from grpc_health.v1 import health_pb2, health_pb2_grpc

from devtools.postgres_launcher import PostgresServer, start_postgres
from devtools.readiness import wait_serving
from devtools.triton_launcher import TritonServer, free_port
from gateway.proto.interest.v1 import gateway_pb2 as pb
from gateway.proto.interest.v1 import gateway_pb2_grpc as pb_grpc
from gateway.server import create_server
from interest_core import store_schema
from interest_core.catalogue_log import CatalogueRow, Upsert
from interest_core.config import Settings
from interest_core.consent import ANY, allowed
from interest_core.errors import InvalidInput, PermissionDenied, Unavailable
from interest_core.profile_book import ProfileBook
from interest_core.profiles import Profile, ProfileCipher, ProfileDelta, ProfileStore, Tx
from interest_core.store_postgres import PostgresProfileStore
from interest_core.store_schema import SCHEMA_VERSION, SchemaTooNew
from interest_core.stores import open_store
from tests.unit import test_profile_versions, test_profile_writes

pytestmark = pytest.mark.integration
INTEGRITY = (sqlite3.IntegrityError, psycopg.IntegrityError)


@dataclass
class Engine:
    """One engine's store URL; stores opened through it are closed after the test."""

    name: str
    url: str
    postgres: PostgresServer | None = None
    opened: list[ProfileStore] = field(default_factory=list)

    def open(self, cipher: ProfileCipher | None = None) -> ProfileStore:
        store = open_store(self.url, cipher)
        self.opened.append(store)
        store.prepare()
        return store

    @contextlib.contextmanager
    def raw(self) -> Iterator[Any]:
        """A plain connection to the database, around the store (autocommit)."""
        if self.postgres is None:
            db: Any = sqlite3.connect(self.url.removeprefix("sqlite:///"), isolation_level=None)
        else:
            db = psycopg.connect(self.url, autocommit=True)
        try:
            yield db
        finally:
            db.close()

    def tables(self) -> set[str]:
        with self.raw() as db:
            if self.postgres is None:
                return {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
            return {r[0] for r in db.execute("SELECT tablename FROM pg_tables WHERE schemaname='public'")}

    def schema_version(self) -> int:
        with self.raw() as db:
            if self.postgres is None:
                return int(db.execute("PRAGMA user_version").fetchone()[0])
            return int(db.execute("SELECT version FROM schema_version").fetchone()[0])

    def raw_bytes(self) -> bytes:
        """Everything the database keeps on disk (SQLite: the file and its WAL; PostgreSQL:
        after a checkpoint, every file of the cluster) and the profile columns as stored."""
        if self.postgres is None:
            base = Path(self.url.removeprefix("sqlite:///"))
            files = sorted(base.parent.glob(base.name + "*"))
            return b"".join(f.read_bytes() for f in files)
        with self.raw() as db:
            db.execute("CHECKPOINT")
            columns = b"".join(bytes(v) + bytes(i) for v, i in db.execute(
                "SELECT vec_sum, items FROM profiles").fetchall())
            oid = db.execute("SELECT oid FROM pg_database WHERE datname = current_database()").fetchone()[0]
        data = self.postgres.datadir
        files = [p for folder in (data / "base" / str(oid), data / "pg_wal") for p in folder.iterdir()
                 if p.is_file()]
        return columns + b"".join(p.read_bytes() for p in files)

    def close(self) -> None:
        for store in self.opened:
            with contextlib.suppress(Exception):
                store.close()


@pytest.fixture(params=["sqlite", "postgresql"])
def store_engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    if request.param == "sqlite":
        made = Engine("sqlite", f"sqlite:///{tmp_path / 'p.sqlite3'}")
    else:
        made = Engine("postgresql", request.getfixturevalue("postgres_url"),
                      request.getfixturevalue("postgres"))
    yield made
    made.close()


def unit(v: list[float]) -> np.ndarray:
    a = np.array(v, dtype=np.float32)
    return a / np.linalg.norm(a)


def profile(platform: str) -> Profile:
    return Profile(platform, np.ones(4, dtype=np.float32), 1, [f"{platform}-1"])


# --- the store's basic promises (from tests/unit/test_profiles_ranking_migration.py) ---------

def test_store_round_trip_and_delete(store_engine: Engine) -> None:
    store = store_engine.open()
    p = Profile("food", np.zeros(3, dtype=np.float32), 0)
    p.add(unit([1, 0, 0]), "A1")
    p.add(unit([0, 1, 0]), "A2")
    p.add(unit([0, 1, 0]), "A2")
    store.save_many([("u1", p)])
    loaded = store.load("u1")["food"]
    assert loaded.events == 3 and loaded.items == ["A1", "A2"]
    assert np.allclose(loaded.vector, unit([1, 2, 0]))
    assert store.load("u2") == {}
    assert store.delete("u1") == ["food"] and store.load("u1") == {} and store.count() == 0


def test_failed_batch_writes_nothing(store_engine: Engine) -> None:
    """A row failing mid-transaction (NOT NULL user key) rolls back the rows before it too."""
    store = store_engine.open()
    good = Profile("food", unit([1, 0]), 1)
    with pytest.raises(INTEGRITY):
        store.save_many([("u1", good), (None, Profile("food", unit([0, 1]), 1))])  # type: ignore[list-item]
    assert store.count() == 0
    store.save_many([("u1", good)])
    assert store.count() == 1


def test_profiles_encrypted_at_rest(store_engine: Engine) -> None:
    key = os.urandom(32)
    store = store_engine.open(ProfileCipher(key))
    p = Profile("food", np.array([0.25, 0.5, 0.75], dtype=np.float32), 2, items=["B00SECRETITEM"])
    store.save_many([("u1", p)])
    assert store.load("u1")["food"].items == ["B00SECRETITEM"]
    assert np.allclose(store.load("u1")["food"].vec_sum, p.vec_sum)
    # events added in the store's own transaction are encrypted the same way
    assert store.add_events("u1", "food", np.full(3, 0.125, np.float32), 1, ["B00OTHERSECRET"], "")
    assert store.load("u1")["food"].items == ["B00SECRETITEM", "B00OTHERSECRET"]
    store.close()
    raw = store_engine.raw_bytes()
    assert b"B00SECRETITEM" not in raw and b"B00OTHERSECRET" not in raw
    assert p.vec_sum.tobytes() not in raw and (p.vec_sum + 0.125).astype(np.float32).tobytes() not in raw
    with pytest.raises(InvalidTag):
        store_engine.open(ProfileCipher(os.urandom(32))).load("u1")


def test_consent_defaults_off_and_is_deleted_with_the_user(store_engine: Engine) -> None:
    store = store_engine.open()
    assert store.consent_rules("u1") == [] and not allowed(store.consent_rules("u1"), "food", "kitchen")
    store.set_consent("u1", True)  # the operator's user-wide default (*, *)
    assert allowed(store.consent_rules("u1"), "food", "kitchen")
    store.delete("u1")
    assert store.consent_rules("u1") == []


# --- consent, erasure and the audit trail (from tests/unit/test_consent_store.py) ------------

def test_a_platform_key_erases_only_its_own_rows(store_engine: Engine) -> None:
    store = store_engine.open()
    store.save_many([("carol", profile("food")), ("carol", profile("kitchen"))])
    store.set_consent("carol", False, "food", actor="food")
    store.set_consent("carol", True, "kitchen", actor="kitchen")
    store.set_consent("carol", True)
    assert store.delete("carol", "kitchen", actor="kitchen") == ["kitchen"]
    assert list(store.load("carol")) == ["food"]
    assert {(r.source, r.target) for r in store.consent_rules("carol")} == {("food", ANY), (ANY, ANY)}
    assert store.delete("carol", "kitchen", actor="kitchen") == []  # idempotent
    assert store.delete("carol") == ["food"]  # the operator: every row
    assert store.load("carol") == {} and store.consent_rules("carol") == []


def test_every_change_is_audited_with_the_pseudonym_and_the_caller(store_engine: Engine) -> None:
    store = store_engine.open()
    store.save_many([("key-of-carol", profile("food"))])
    store.set_consent("key-of-carol", False, "food", actor="food")
    store.set_consent("key-of-carol", True, "food", ["kitchen", "video"], actor=ANY)
    store.delete("key-of-carol", "kitchen", actor="kitchen")
    store.delete("key-of-carol")
    entries = store.audit("key-of-carol")
    assert [(e.actor, e.action, e.platforms) for e in entries] == [
        (ANY, "DeleteUser", ["food"]),
        ("kitchen", "DeleteUser", ["kitchen"]),
        (ANY, "SetConsent", ["food", "kitchen", "video"]),
        ("food", "SetConsent", ["*", "food"]),
    ]
    assert entries[3].change == "food->*: unset -> off"
    assert entries[2].change == "food->kitchen: unset -> on; food->video: unset -> on"
    assert "profiles of food" in entries[0].change and all(e.user_key == "key-of-carol" for e in entries)
    assert [e.id for e in entries] == sorted((e.id for e in entries), reverse=True)
    assert store.audit("someone-else") == [] and len(store.audit(limit=2)) == 2
    assert store.audit(since_ms=entries[0].at_ms + 1) == []
    store.close()
    reopened = store_engine.open()  # kept through restarts
    assert reopened.audit("key-of-carol") == entries


def test_the_audit_trail_is_append_only_in_the_database(store_engine: Engine) -> None:
    store = store_engine.open()
    store.set_consent("u1", True)
    refused = (sqlite3.IntegrityError, psycopg.Error)
    with store_engine.raw() as db:
        with pytest.raises(refused, match="append-only"):
            db.execute("UPDATE audit SET actor='food'")
        with pytest.raises(refused, match="append-only"):
            db.execute("DELETE FROM audit")
        if store_engine.postgres is not None:
            with pytest.raises(refused, match="append-only"):
                db.execute("TRUNCATE audit")
    assert [e.actor for e in store.audit("u1")] == [ANY]
    # a user's erasure keeps the record of it (the pseudonym only)
    store.delete("u1")
    assert [e.action for e in store.audit("u1")] == ["DeleteUser", "SetConsent"]


def test_a_change_that_fails_leaves_no_audit_entry_and_no_change(store_engine: Engine) -> None:
    store = store_engine.open()
    store.set_consent("u1", True)

    def failing_audit(*args: object, **kwargs: object) -> None:
        raise OSError("disk I/O error")

    store._audit = failing_audit  # type: ignore[method-assign]
    with pytest.raises(OSError):
        store.set_consent("u1", False)
    with pytest.raises(OSError):
        store.delete("u1")
    assert allowed(store.consent_rules("u1"), "food", "kitchen") and len(store.audit("u1")) == 1


def test_a_store_of_a_newer_schema_is_refused(store_engine: Engine) -> None:
    store_engine.open().close()
    with store_engine.raw() as db:
        if store_engine.postgres is None:
            db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
        else:
            assert db.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]
            db.execute("UPDATE schema_version SET version=%s", (SCHEMA_VERSION + 1,))
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        store_engine.open()


def test_a_version_2_store_is_upgraded_to_3_keeping_its_profiles(
        store_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    with monkeypatch.context() as v2:  # the code of version 2: its steps only
        v2.setattr(store_schema, "SCHEMA_VERSION", 2)
        v2.setattr(store_schema, "STEPS", store_schema.STEPS[:2])
        v2.setattr(store_schema, "PG_STEPS", store_schema.PG_STEPS[:2])
        old = store_engine.open()
        old.save_many([("u1", profile("food")), ("u2", profile("kitchen"))])
        old.set_consent("u1", True, "food", ["kitchen"], actor="food")
        old.close()
    assert store_engine.schema_version() == 2
    assert not {"catalogue_versions", "catalogue_items"} & store_engine.tables()
    store = store_engine.open()
    assert SCHEMA_VERSION == 3 and store_engine.schema_version() == 3
    assert {"profiles", "consent_rules", "audit", "catalogue_versions",
            "catalogue_items"} <= store_engine.tables()
    assert store.count() == 2 and store.load("u1")["food"].items == ["food-1"]
    np.testing.assert_array_equal(store.load("u2")["kitchen"].vec_sum, np.ones(4))
    assert allowed(store.consent_rules("u1"), "food", "kitchen")
    assert [e.action for e in store.audit("u1")] == ["SetConsent"]
    assert store.update_catalogue("food", [("n1", "New", {}, unit([1, 0]))], [], "v1") == 1
    store.close()
    assert store_engine.open().catalogue_version("food") == 1  # opening again changes nothing


async def _noop_embed(*args: object) -> np.ndarray:
    raise AssertionError("no model call")


def test_the_book_checks_who_asks(store_engine: Engine) -> None:
    served = ("food", "kitchen", "video")
    book = ProfileBook(store_engine.open(), _noop_embed, {p: (lambda item: None) for p in served}, 4,
                       lambda stage, rpc, platform: contextlib.nullcontext())

    async def run() -> None:
        with pytest.raises(PermissionDenied):
            await book.set_consent("u1", "kitchen", "food", [], True)
        scope = await book.set_consent("u1", "kitchen", "", ["food"], True)
        assert (scope.source, scope.targets) == ("kitchen", ("food",))
        with pytest.raises(PermissionDenied):
            await book.delete("u1", "kitchen", all_platforms=True)
        assert await book.delete("u1", "kitchen") == []
        with pytest.raises(PermissionDenied, match="operator key only"):
            await book.audit("kitchen", None, 0, 10)
        with pytest.raises(InvalidInput):
            await book.audit(ANY, None, 0, 1001)
        assert [e.actor for e in await book.audit(ANY, "u1", 0, 0)] == ["kitchen", "kitchen"]

    asyncio.run(run())
    book.close()


# --- atomic updates: events added at commit time, conditional re-embedding ------------------

def test_add_events_adds_to_what_the_row_holds_at_commit(store_engine: Engine) -> None:
    store = store_engine.open()
    assert store.add_events("u1", "food", np.array([1, 0, 0], np.float32), 2, ["a", "b", "a"], "v1")
    other = store_engine.open()  # another gateway's connection to the same store
    assert other.add_events("u1", "food", np.array([0, 3, 0], np.float32), 1, ["b", "c"], "v1")
    got = store.load("u1")["food"]
    assert got.events == 3 and got.items == ["a", "b", "c"] and got.model_version == "v1"
    np.testing.assert_array_equal(got.vec_sum, [1, 3, 0])
    # a row written before versions were kept takes the served version with its next events
    store.save_many([("u2", Profile("food", np.ones(3, np.float32), 1, ["x"], model_version=""))])
    assert store.add_events("u2", "food", np.ones(3, np.float32), 1, ["y"], "v1")
    assert store.load("u2")["food"].model_version == "v1" and store.load("u2")["food"].events == 2
    # before a model is served ('') events are added and the row keeps its version
    assert store.add_events("u1", "food", np.zeros(3, np.float32), 1, [], "")
    assert store.load("u1")["food"].model_version == "v1" and store.load("u1")["food"].events == 4


def test_per_platform_rows_are_isolated(store_engine: Engine) -> None:
    store = store_engine.open()
    store.add_events_many([ProfileDelta("u1", "food", np.ones(2, np.float32), 1, ["f"]),
                           ProfileDelta("u1", "kitchen", np.full(2, 2.0, np.float32), 2, ["k"])], "v1")
    store.add_events("u1", "food", np.ones(2, np.float32), 1, ["f2"], "v1")
    got = store.load("u1")
    assert (got["food"].events, got["food"].items) == (2, ["f", "f2"])
    assert (got["kitchen"].events, got["kitchen"].items) == (2, ["k"])
    np.testing.assert_array_equal(got["kitchen"].vec_sum, [2, 2])
    assert store.delete("u1", "food", actor="food") == ["food"] and list(store.load("u1")) == ["kitchen"]


def test_events_for_a_stale_row_are_refused_and_nothing_is_written(store_engine: Engine) -> None:
    store = store_engine.open()
    store.save_many([("u1", Profile("food", np.full(2, 7.0, np.float32), 5, ["f"], model_version="old"))])
    deltas = [ProfileDelta("u0", "food", np.ones(2, np.float32), 1, ["new"]),
              ProfileDelta("u1", "food", np.ones(2, np.float32), 1, ["g"])]
    assert store.add_events_many(deltas, "new") == [("u1", "food")]
    assert store.load("u0") == {}, "all or nothing: the fresh user's row was not written either"
    stale = store.load("u1")["food"]
    assert (stale.events, stale.model_version) == (5, "old")
    assert store.reembed("u1", "food", "old", 5, np.full(2, 0.5, np.float32), "new")
    assert store.add_events_many(deltas, "new") == []
    got = store.load("u1")["food"]
    assert (got.events, got.items, got.model_version) == (6, ["f", "g"], "new")
    np.testing.assert_array_equal(got.vec_sum, [1.5, 1.5])


def test_reembed_writes_only_over_the_row_it_read(store_engine: Engine) -> None:
    store = store_engine.open()
    store.save_many([("u1", Profile("food", np.full(2, 7.0, np.float32), 5, ["f"], model_version="old"))])
    # another gateway added events meanwhile (an old-model gateway, still serving "old")
    assert store.add_events("u1", "food", np.ones(2, np.float32), 1, ["g"], "old")
    assert not store.reembed("u1", "food", "old", 5, np.zeros(2, np.float32), "new")
    assert store.load("u1")["food"].events == 6 and store.load("u1")["food"].vec_sum[0] == 8.0
    # or re-embedded it first
    assert store.reembed("u1", "food", "old", 6, np.full(2, 3.0, np.float32), "new")
    assert not store.reembed("u1", "food", "old", 6, np.zeros(2, np.float32), "newer")
    assert store.load("u1")["food"].vec_sum[0] == 3.0
    # or erased it: the re-embedded row does not come back
    store.delete("u1")
    assert not store.reembed("u1", "food", "new", 6, np.zeros(2, np.float32), "newer")
    assert store.load("u1") == {}


# --- two OS processes at once ---------------------------------------------------------------

USERS, ROUNDS, DIM = 50, 8, 4


def _add_events_worker(url: str, key: bytes, proc: int, start: Any) -> None:
    """One 'gateway': ROUNDS events for each of USERS users, alternately one transaction per
    user and one for all of them (in another order than the other process's); each event adds
    round+1 on axis `proc` and its own item."""
    store = open_store(url, ProfileCipher(key))
    store.prepare()
    start.wait(60)
    for r in range(ROUNDS):
        vec = np.zeros(DIM, np.float32)
        vec[proc] = r + 1
        users = [f"user-{u}" for u in range(USERS)][::1 if proc == 0 else -1]
        if r % 2 == 0:
            for user in users:
                assert store.add_events(user, "food", vec, 1, [f"p{proc}-r{r}"], "v1")
        else:
            deltas = [ProfileDelta(user, "food", vec, 1, [f"p{proc}-r{r}"]) for user in users]
            assert store.add_events_many(deltas, "v1") == []
    store.close()


def test_two_processes_adding_events_for_the_same_users_lose_and_double_nothing(store_engine: Engine) -> None:
    key = os.urandom(32)
    store_engine.open(ProfileCipher(key))  # the schema, before both start
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(2)
    procs = [ctx.Process(target=_add_events_worker, args=(store_engine.url, key, p, start)) for p in (0, 1)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    store = store_engine.open(ProfileCipher(key))
    total = float(sum(range(1, ROUNDS + 1)))
    for u in range(USERS):
        got = store.load(f"user-{u}")["food"]
        assert got.events == 2 * ROUNDS
        np.testing.assert_array_equal(got.vec_sum, [total, total, 0, 0])
        assert sorted(got.items) == sorted(f"p{p}-r{r}" for p in (0, 1) for r in range(ROUNDS))


# --- the catalogue change log ---------------------------------------------------------------

def changes(store: ProfileStore, platform: str = "food", after: int = 0) -> list[tuple[str, int, bool]]:
    return [(r.item_id, r.version, r.removed) for r in store.catalogue_changes(platform, after)]


def test_catalogue_changes_round_trip_with_versions(store_engine: Engine) -> None:
    store = store_engine.open()
    assert store.catalogue_version("food") == 0 and store.catalogue_changes("food") == []
    v1 = store.update_catalogue("food", [("b", "Green tea", {"brand": "Leaf"}, unit([1, 0, 0])),
                                         ("a", "Rice", {}, unit([0, 1, 0]))], [], "m1")
    assert v1 == 1 and store.catalogue_version("food") == 1
    first = store.catalogue_changes("food")
    assert [(r.item_id, r.title, r.attributes, r.model_version, r.removed, r.version) for r in first] == [
        ("a", "Rice", {}, "m1", False, 1), ("b", "Green tea", {"brand": "Leaf"}, "m1", False, 1)]
    assert first[1].embedding is not None and first[1].embedding.dtype == np.float32
    np.testing.assert_array_equal(first[1].embedding, unit([1, 0, 0]))
    assert first[0].platform == "food" and first[0].updated_ms > 0
    # an upsert of a listed id replaces its title, attributes and embedding
    assert store.update_catalogue("food", [("b", "Black tea", {}, unit([0, 0, 1, 0]))], [], "m1") == 2
    b = store.catalogue_changes("food", 1)
    assert [(r.item_id, r.title, r.attributes, r.version) for r in b] == [("b", "Black tea", {}, 2)]
    assert b[0].embedding is not None and b[0].embedding.shape == (4,)
    # a removal keeps the row, without its embedding; another platform's log is its own
    assert store.update_catalogue("food", [], ["a"], "m1") == 3
    assert store.update_catalogue("kitchen", [("a", "Pan", {}, unit([1, 1]))], [], "m1") == 1
    removed = store.catalogue_changes("food", 2)
    assert [(r.item_id, r.title, r.removed, r.embedding, r.version) for r in removed] == [
        ("a", "Rice", True, None, 3)]
    assert changes(store) == [("b", 2, False), ("a", 3, True)]
    assert changes(store, "kitchen") == [("a", 1, False)] and store.catalogue_version("food") == 3
    # listed again: back with a new embedding; an empty change writes nothing
    assert store.update_catalogue("food", [("a", "Rice", {}, unit([1, 1, 0]))], [], "m1") == 4
    assert store.update_catalogue("food", [], [], "m1") == 4
    assert changes(store) == [("b", 2, False), ("a", 4, False)]
    store.close()
    reopened = store_engine.open()  # durable
    assert reopened.catalogue_version("food") == 4 and changes(reopened) == [("b", 2, False), ("a", 4, False)]


def test_removing_an_item_never_logged_keeps_it_removed(store_engine: Engine) -> None:
    """An item of the installed catalogue (never in the log) stays removed after a restart."""
    store = store_engine.open()
    assert store.update_catalogue("food", [("new", "Oat milk", {}, unit([1, 0]))], ["installed-7"], "m1") == 1
    store.close()
    got = {r.item_id: r for r in store_engine.open().catalogue_changes("food")}
    gone = got["installed-7"]
    assert (gone.removed, gone.title, gone.attributes, gone.embedding) == (True, "", {}, None)
    assert not got["new"].removed
    # an id both upserted and removed in one change ends removed (removals come after upserts)
    again = store_engine.open()
    assert again.update_catalogue("food", [("x", "X", {}, unit([1, 0]))], ["x"], "m1") == 2
    assert [(r.item_id, r.title, r.removed) for r in again.catalogue_changes("food", 1)] == [("x", "X", True)]


def test_catalogue_changes_after_a_version_are_exactly_the_later_ones_in_order(store_engine: Engine) -> None:
    store = store_engine.open()
    for v in range(1, 6):  # change v lists item-v and removes item-(v-2)
        assert store.update_catalogue("food", [(f"item-{v}", f"title {v}", {}, unit([v, 1]))],
                                      [f"item-{v - 2}"] if v > 2 else [], "m1") == v
    assert changes(store, after=5) == [] and changes(store, after=99) == []
    assert changes(store, after=3) == [("item-2", 4, True), ("item-4", 4, False),
                                       ("item-3", 5, True), ("item-5", 5, False)]
    everything = changes(store)
    assert everything == [("item-1", 3, True), ("item-2", 4, True), ("item-4", 4, False),
                          ("item-3", 5, True), ("item-5", 5, False)]
    # a poller from each version sees exactly what came after it
    for seen in range(6):
        assert changes(store, after=seen) == [c for c in everything if c[1] > seen]


class _FailingTx:
    """A transaction whose statements containing `marker` fail like a full disk."""

    def __init__(self, tx: Tx, marker: str) -> None:
        self._tx, self._marker = tx, marker

    def execute(self, sql: str, args: Any = (), /) -> Any:
        if self._marker in sql:
            raise OSError("disk I/O error")
        return self._tx.execute(sql, args)

    def executemany(self, sql: str, rows: Any, /) -> object:
        if self._marker in sql:
            raise OSError("disk I/O error")
        return self._tx.executemany(sql, rows)


def test_a_failed_catalogue_change_writes_nothing_and_keeps_the_version(
        store_engine: Engine, monkeypatch: pytest.MonkeyPatch) -> None:
    store = store_engine.open()
    assert store.update_catalogue("food", [("a", "Rice", {}, unit([1, 0]))], [], "m1") == 1
    # a row the database refuses (NOT NULL title) after the lock and another row were written
    with pytest.raises(INTEGRITY):
        store.update_catalogue("food", [("b", "Tea", {}, unit([0, 1])),
                                        ("c", None, {}, unit([1, 1]))], [], "m1")  # type: ignore[list-item]
    with pytest.raises(INTEGRITY):
        store.update_catalogue("new-platform", [("n", None, {}, unit([1, 1]))], [], "m1")  # type: ignore[list-item]
    # the last statement failing: the items were written, the version not yet
    real_write = store._write
    monkeypatch.setattr(store, "_write", lambda work: real_write(
        lambda tx: work(_FailingTx(tx, "UPDATE catalogue_versions"))))
    with pytest.raises(OSError):
        store.update_catalogue("food", [("a", "Brown rice", {}, unit([0, 1]))], ["z"], "m1")
    with pytest.raises(OSError):
        store.reembed_catalogue("food", [("a", "m1", unit([1, 1]))], "m2")
    monkeypatch.undo()
    for reader in (store, store_engine.open()):
        assert reader.catalogue_version("food") == 1 and reader.catalogue_version("new-platform") == 0
        rows = reader.catalogue_changes("food")
        assert [(r.item_id, r.title, r.model_version, r.version) for r in rows] == [("a", "Rice", "m1", 1)]
        assert rows[0].embedding is not None
        np.testing.assert_array_equal(rows[0].embedding, unit([1, 0]))
        assert reader.catalogue_changes("new-platform") == []
    assert store.update_catalogue("food", [("b", "Tea", {}, unit([0, 1]))], [], "m1") == 2  # and goes on


def test_reembed_catalogue_writes_only_rows_still_at_the_old_model(store_engine: Engine) -> None:
    store = store_engine.open()
    listed: list[Upsert] = [(i, f"title {i}", {}, unit([1, 0])) for i in ("a", "b", "c", "d")]
    store.update_catalogue("food", listed, [], "m1")
    store.update_catalogue("food", [("b", "retitled", {}, unit([0, 1, 0]))], [], "m2")  # at the new model
    store.update_catalogue("food", [], ["c"], "m1")  # removed
    assert store.catalogue_version("food") == 3
    new = [(i, "m1", np.full(3, k, np.float32)) for k, i in enumerate(("a", "b", "c", "d", "never-listed"))]
    assert store.reembed_catalogue("food", new, "m2") == 4
    rows = {r.item_id: r for r in store.catalogue_changes("food")}
    assert [(r.item_id, r.model_version, r.version) for r in store.catalogue_changes("food", 3)] == [
        ("a", "m2", 4), ("d", "m2", 4)]
    assert rows["a"].embedding is not None and rows["d"].embedding is not None
    np.testing.assert_array_equal(rows["a"].embedding, [0, 0, 0])
    np.testing.assert_array_equal(rows["d"].embedding, [3, 3, 3])
    assert (rows["b"].title, rows["b"].version) == ("retitled", 2) and rows["b"].embedding is not None
    np.testing.assert_array_equal(rows["b"].embedding, unit([0, 1, 0]))  # not overwritten
    assert (rows["c"].removed, rows["c"].embedding, rows["c"].version) == (True, None, 3)  # not revived
    assert "never-listed" not in rows
    # nothing left at the old model: nothing written, the version stays
    assert store.reembed_catalogue("food", new, "m2") == 4 and store.catalogue_version("food") == 4
    assert store.reembed_catalogue("food", [], "m2") == 4 and store.reembed_catalogue("other", new, "m2") == 0


CATALOGUE_CHANGES = 50  # per process


def _update_catalogue_worker(url: str, proc: int, start: Any) -> None:
    """One 'gateway': CATALOGUE_CHANGES changes to platform food, each listing its own item."""
    store = open_store(url)
    store.prepare()
    start.wait(60)
    versions = [store.update_catalogue("food", [(f"p{proc}-{i:02d}", f"item {i} of {proc}", {"by": str(proc)},
                                                 np.full(DIM, i, np.float32))], [], "v1")
                for i in range(CATALOGUE_CHANGES)]
    assert versions == sorted(set(versions)), "a process's own changes take increasing versions"
    store.close()


def test_two_processes_changing_one_catalogue_commit_versions_in_order(store_engine: Engine) -> None:
    """100 changes from two processes: versions 1..100, each once; a poller reading while they
    run (`version > last seen`) sees every version, in order, with no gap."""
    store = store_engine.open()
    ctx = multiprocessing.get_context("spawn")
    start = ctx.Barrier(3)
    procs = [ctx.Process(target=_update_catalogue_worker, args=(store_engine.url, p, start)) for p in (0, 1)]
    for p in procs:
        p.start()
    start.wait(120)
    seen: list[CatalogueRow] = []
    while True:
        running = any(p.is_alive() for p in procs)  # before the poll: a poll after the end follows
        new = store.catalogue_changes("food", seen[-1].version if seen else 0)
        last = seen[-1].version if seen else 0
        assert [r.version for r in new] == list(range(last + 1, last + 1 + len(new))), "a version skipped"
        seen += new
        if not running:
            break
    for p in procs:
        p.join(300)
    assert [p.exitcode for p in procs] == [0, 0]
    total = 2 * CATALOGUE_CHANGES
    assert store.catalogue_version("food") == total
    assert [r.version for r in seen] == list(range(1, total + 1))
    everything = store.catalogue_changes("food")
    assert [(r.item_id, r.version) for r in everything] == [(r.item_id, r.version) for r in seen]
    assert sorted(r.item_id for r in everything) == sorted(
        f"p{proc}-{i:02d}" for proc in (0, 1) for i in range(CATALOGUE_CHANGES))
    for proc in (0, 1):  # each process's changes in its own order
        mine = [r.item_id for r in everything if r.attributes == {"by": str(proc)}]
        assert mine == [f"p{proc}-{i:02d}" for i in range(CATALOGUE_CHANGES)]


# --- the ProfileBook and servicer tests of tests/unit, on each engine ------------------------

BOOK_TESTS: list[Callable[[Path], None]] = [
    test_profile_versions.test_a_profile_of_an_older_model_is_rebuilt_from_its_items_and_saved,
    test_profile_versions.test_recommend_ranks_with_the_rebuilt_profile,
    test_profile_versions.test_a_profile_with_no_catalogue_item_is_emptied_not_mixed,
    test_profile_versions.test_unversioned_rows_are_adopted_and_nothing_happens_before_a_model_is_served,
    test_profile_versions.test_ingest_into_a_stale_profile_rebuilds_it_first,
    test_profile_versions.test_a_stored_profile_of_a_platform_this_gateway_does_not_serve_is_left_alone,
    test_profile_writes.test_a_stalled_commit_holds_up_its_own_user_only,
    test_profile_writes.test_concurrent_ingests_for_one_user_lose_no_event,
    lambda tmp: test_profile_writes.test_a_cancelled_ingest_still_commits_before_the_next_update_reads(
        tmp, 1),
    lambda tmp: test_profile_writes.test_a_cancelled_ingest_still_commits_before_the_next_update_reads(
        tmp, 2),
    test_profile_writes.test_delete_waits_for_an_update_in_flight,
]


@pytest.mark.parametrize("test", BOOK_TESTS, ids=[
    "rebuilt", "recommend-rebuilt", "emptied", "unversioned", "ingest-stale", "foreign-platform",
    "stalled-commit", "concurrent-ingests", "cancelled-once", "cancelled-twice", "delete-waits"])
def test_book_behaviour_on_each_engine(store_engine: Engine, test: Callable[[Path], None], tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(test_profile_versions, "new_store", lambda _: store_engine.open())
    test(tmp_path)


# --- PostgreSQL down: Unavailable, and the gateway waits for it -----------------------------

def test_an_unreachable_database_is_unavailable_not_a_driver_error() -> None:
    store = PostgresProfileStore(f"postgresql://postgres@127.0.0.1:{free_port()}/none", timeout_s=1.0)
    try:
        with pytest.raises(Unavailable, match=r"profile store \(PostgreSQL\) is unavailable"):
            store.prepare()
        with pytest.raises(Unavailable):
            store.load("u1")
        with pytest.raises(Unavailable):
            store.add_events("u1", "food", np.ones(2, np.float32), 1, [], "v1")
    finally:
        store.close()


def test_reads_and_writes_succeed_at_once_after_a_postgres_restart() -> None:
    """Pooled connections are taken unchecked for reads (a check is a round trip): after the
    server restarts, every idle connection is broken, yet the first read and the first write
    afterwards succeed (the broken connections are dropped and the call runs on a new one)."""
    server = start_postgres()
    store = PostgresProfileStore(server.url(), pool_size=4, timeout_s=5.0)
    try:
        store.prepare()
        store.add_events("u1", "food", np.ones(4, np.float32), 1, ["a"], "v1")
        with ThreadPoolExecutor(4) as pool:  # four connections open in the pool
            list(pool.map(lambda _: store.load("u1"), range(40)))
        assert store.pool_stats()["pool_size"] >= 2
        server.pg_ctl("-m", "fast", "-w", "stop")
        server.start()
        assert store.load("u1")["food"].events == 1
        store.add_events("u1", "food", np.ones(4, np.float32), 2, ["b"], "v1")
        assert store.load("u1")["food"].events == 3
        store.ping()
    finally:
        store.close()
        server.stop()


async def test_a_gateway_waits_for_postgres_and_answers_unavailable_while_it_is_down(
        settings: Settings, triton: TritonServer, tmp_path: Path) -> None:
    server = start_postgres()
    server.pg_ctl("-m", "fast", "-w", "stop")  # made, not running: the gateway starts first
    gateway = None
    try:
        on_postgres = settings.model_copy(update={"profile_store": server.url(), "var_dir": tmp_path})
        gateway = create_server(on_postgres, triton_url=triton.grpc_url, port=0)
        await gateway.start()
        async with grpc.aio.insecure_channel(f"127.0.0.1:{gateway.port}") as channel:
            health = health_pb2_grpc.HealthStub(channel)
            stub = pb_grpc.InterestGatewayStub(channel)
            await asyncio.sleep(2.0)
            reply = await health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            assert reply.status == health_pb2.HealthCheckResponse.NOT_SERVING
            await asyncio.to_thread(server.start)
            await wait_serving(health, timeout_s=120)
            await stub.SetConsent(pb.SetConsentRequest(user_id="pg-user", migrate=True), timeout=30)
            events = [pb.BehaviorEvent(user_id="pg-user", item_text="Green tea", event_type="view")]
            await stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)
            got = await stub.GetProfile(pb.GetProfileRequest(user_id="pg-user"), timeout=30)
            assert got.migrate_consent and [p.event_count for p in got.platforms] == [1]

            await asyncio.to_thread(server.pg_ctl, "-m", "fast", "-w", "stop")
            calls: list[Callable[[], Awaitable[object]]] = [
                lambda: stub.GetProfile(pb.GetProfileRequest(user_id="pg-user"), timeout=30),
                lambda: stub.SetConsent(pb.SetConsentRequest(user_id="pg-user", migrate=False), timeout=30),
                lambda: stub.IngestEvents(pb.IngestEventsRequest(platform="food", events=events), timeout=60)]
            for call in calls:
                with pytest.raises(grpc.aio.AioRpcError) as err:
                    await call()
                assert err.value.code() == grpc.StatusCode.UNAVAILABLE, err.value
                assert "profile store (PostgreSQL) is unavailable" in (err.value.details() or "")

            await asyncio.to_thread(server.start)
            for _ in range(30):  # "retry shortly": the pool reconnects on demand
                try:
                    got = await stub.GetProfile(pb.GetProfileRequest(user_id="pg-user"), timeout=30)
                    break
                except grpc.aio.AioRpcError as again:
                    assert again.code() == grpc.StatusCode.UNAVAILABLE, again
                    await asyncio.sleep(1.0)
            assert got.migrate_consent and [p.event_count for p in got.platforms] == [1]
    finally:
        if gateway is not None:
            await gateway.stop(grace=1.0)
        server.stop()
