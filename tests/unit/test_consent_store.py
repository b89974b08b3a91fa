"""Consent per direction, scoped erasure and the audit trail in the profile store, without gRPC."""

from __future__ import annotations

import asyncio
import contextlib
import sqlite3
from pathlib import Path

import numpy as np
import pytest

from interest_core.consent import (
    ANY,
    ConsentRule,
    allowed,
    consent_scope,
    erasure_scope,
    shares_somewhere,
    visible_rules,
    winning_rule,
)
from interest_core.errors import InvalidInput, NotFound, PermissionDenied
from interest_core.profile_book import ProfileBook
from interest_core.profiles import Profile, ProfileStore
from interest_core.store_schema import SCHEMA_VERSION, SchemaTooNew

SERVED = ("food", "kitchen", "video")


def profile(platform: str) -> Profile:
    return Profile(platform, np.ones(4, dtype=np.float32), 1, [f"{platform}-1"])


def rule(source: str, target: str, yes: bool) -> ConsentRule:
    return ConsentRule(source, target, yes)


def test_the_most_specific_rule_wins() -> None:
    rules = [rule(ANY, ANY, True), rule("food", ANY, False), rule("food", "kitchen", True),
             rule(ANY, "video", False)]
    assert allowed(rules, "food", "kitchen")  # (A, B) over (A, *)
    assert not allowed(rules, "food", "video")  # (A, *) over (*, B) and (*, *)
    assert not allowed(rules, "kitchen", "video")  # (*, B) over (*, *)
    assert allowed(rules, "kitchen", "food")  # (*, *)
    assert winning_rule(rules, "kitchen", "food") == rule(ANY, ANY, True)
    assert not allowed([], "food", "kitchen") and winning_rule([], "food", "kitchen") is None
    # an operator-wide yes never overrides a holder's no
    assert not allowed([rule("food", ANY, False), rule(ANY, "kitchen", True)], "food", "kitchen")


def test_only_the_holder_or_the_operator_may_set_a_sources_consent() -> None:
    assert consent_scope("food", "", [], SERVED).source == "food"
    assert consent_scope("food", "food", ["kitchen"], SERVED).targets == ("kitchen",)
    assert consent_scope(ANY, "", [], SERVED).source == ANY  # the operator's user-wide default
    assert consent_scope(ANY, "food", [], SERVED).targets == (ANY,)
    with pytest.raises(PermissionDenied, match="only with the food platform's key or the operator key"):
        consent_scope("kitchen", "food", [], SERVED)
    with pytest.raises(NotFound, match="unknown platform 'books'"):
        consent_scope("food", "", ["books"], SERVED)
    with pytest.raises(NotFound):
        consent_scope(ANY, "*", [], SERVED)  # '*' is no platform: the operator leaves it empty
    with pytest.raises(InvalidInput):
        consent_scope("food", "", ["food"], SERVED)
    with pytest.raises(InvalidInput):
        consent_scope("food", "", [""], SERVED)


def test_visible_rules_and_migrate_flag_follow_the_caller() -> None:
    rules = [rule("food", ANY, True), rule("kitchen", "food", True), rule(ANY, ANY, False)]
    assert visible_rules("food", rules) == rules
    assert visible_rules("video", rules) == [rules[0], rules[2]]  # food's data may reach video
    assert visible_rules(ANY, rules) == rules
    assert shares_somewhere("food", rules, SERVED) and not shares_somewhere("video", rules, SERVED)
    assert shares_somewhere(ANY, rules, SERVED) and not shares_somewhere(ANY, rules[2:], SERVED)


def test_a_platform_key_erases_only_its_own_rows(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
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
    with pytest.raises(PermissionDenied, match="operator key"):
        erasure_scope("kitchen", all_platforms=True)
    assert erasure_scope("kitchen", False) == "kitchen" and erasure_scope(ANY, False) is None


def test_every_change_is_audited_with_the_pseudonym_and_the_caller(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
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
    reopened = ProfileStore(tmp_path / "p.sqlite3")  # kept through restarts
    assert reopened.audit("key-of-carol") == entries


def test_the_audit_trail_is_append_only_in_the_database(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    store.set_consent("u1", True)
    db = sqlite3.connect(tmp_path / "p.sqlite3")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("UPDATE audit SET actor='food'")
    with pytest.raises(sqlite3.IntegrityError, match="append-only"):
        db.execute("DELETE FROM audit")
    db.close()
    assert [e.actor for e in store.audit("u1")] == [ANY]
    # a user's erasure keeps the record of it (the pseudonym only)
    store.delete("u1")
    assert [e.action for e in store.audit("u1")] == ["DeleteUser", "SetConsent"]


def test_a_change_that_fails_leaves_no_audit_entry_and_no_change(tmp_path: Path) -> None:
    store = ProfileStore(tmp_path / "p.sqlite3")
    store.set_consent("u1", True)

    def failing_audit(*args: object, **kwargs: object) -> None:
        raise sqlite3.OperationalError("disk I/O error")

    store._audit = failing_audit  # type: ignore[method-assign]
    with pytest.raises(sqlite3.OperationalError):
        store.set_consent("u1", False)
    with pytest.raises(sqlite3.OperationalError):
        store.delete("u1")
    assert allowed(store.consent_rules("u1"), "food", "kitchen") and len(store.audit("u1")) == 1


def old_store(path: Path) -> None:
    """A store as the gateway wrote it before consent per direction: no schema version, the
    one-switch consent table, profiles without model_version."""
    db = sqlite3.connect(path)
    db.executescript("""
        CREATE TABLE profiles (user_key TEXT NOT NULL, platform TEXT NOT NULL, dim INTEGER NOT NULL,
            vec_sum BLOB NOT NULL, events INTEGER NOT NULL, items TEXT NOT NULL,
            updated_ms INTEGER NOT NULL, PRIMARY KEY (user_key, platform));
        CREATE TABLE consent (user_key TEXT PRIMARY KEY, migrate INTEGER NOT NULL,
            updated_ms INTEGER NOT NULL);
        INSERT INTO consent VALUES ('yes-user', 1, 1000), ('no-user', 0, 2000);
    """)
    db.execute("INSERT INTO profiles VALUES ('yes-user', 'food', 4, ?, 1, '[]', 1000)",
               (np.ones(4, dtype=np.float32).tobytes(),))
    db.commit()
    db.close()


def test_the_old_consent_switch_becomes_the_rule_any_to_any(tmp_path: Path) -> None:
    path = tmp_path / "old.sqlite3"
    old_store(path)
    store = ProfileStore(path)
    assert store.consent_rules("yes-user") == [ConsentRule(ANY, ANY, True, 1000)]
    assert store.consent_rules("no-user") == [ConsentRule(ANY, ANY, False, 2000)]
    assert store.load("yes-user")["food"].model_version == ""
    assert [e.action for e in store.audit("yes-user")] == ["MigrateSchema"]
    tables = {r[0] for r in store._read.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert "consent" not in tables and {"consent_rules", "audit", "profiles"} <= tables
    assert store._read.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    again = ProfileStore(path)  # opening again changes nothing
    assert again.consent_rules("yes-user") == [ConsentRule(ANY, ANY, True, 1000)]
    assert len(again.audit()) == 2


def test_a_store_of_a_newer_schema_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "new.sqlite3"
    ProfileStore(path).close()
    db = sqlite3.connect(path)
    db.execute(f"PRAGMA user_version={SCHEMA_VERSION + 1}")
    db.commit()
    db.close()
    with pytest.raises(SchemaTooNew, match=f"schema version {SCHEMA_VERSION + 1}, newer"):
        ProfileStore(path)


async def _noop_embed(*args: object) -> np.ndarray:
    raise AssertionError("no model call")


def test_the_book_checks_who_asks(tmp_path: Path) -> None:
    book = ProfileBook(ProfileStore(tmp_path / "p.sqlite3"), _noop_embed,
                       {p: (lambda item: None) for p in SERVED}, 4,
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
            book.audit("kitchen", None, 0, 10)
        with pytest.raises(InvalidInput):
            book.audit(ANY, None, 0, 1001)
        assert [e.actor for e in book.audit(ANY, "u1", 0, 0)] == ["kitchen", "kitchen"]

    asyncio.run(run())
    book.close()
