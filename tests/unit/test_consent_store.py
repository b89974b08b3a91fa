"""Consent per direction, without gRPC: the rules, who may set or erase what, and the old
one-switch consent of a SQLite store from before per-direction rules. Scoped erasure and
the audit trail in the store run on both engines in tests/integration/test_store_engines.py."""

from __future__ import annotations

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
from interest_core.store_schema import SCHEMA_VERSION
from interest_core.store_sqlite import SqliteProfileStore

SERVED = ("food", "kitchen", "video")


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


def test_only_the_operator_erases_every_platform() -> None:
    with pytest.raises(PermissionDenied, match="operator key"):
        erasure_scope("kitchen", all_platforms=True)
    assert erasure_scope("kitchen", False) == "kitchen" and erasure_scope(ANY, False) is None


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
    store = SqliteProfileStore(path)
    assert store.consent_rules("yes-user") == [ConsentRule(ANY, ANY, True, 1000)]
    assert store.consent_rules("no-user") == [ConsentRule(ANY, ANY, False, 2000)]
    assert store.load("yes-user")["food"].model_version == ""
    assert [e.action for e in store.audit("yes-user")] == ["MigrateSchema"]
    tables = {r[0] for r in store._read.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"profiles", "consent_rules", "audit", "sqlite_sequence", "catalogue_versions",
                      "catalogue_items"}  # "consent" is gone; sqlite_sequence numbers the audit trail
    assert store._read.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    store.close()
    again = SqliteProfileStore(path)  # opening again changes nothing
    assert again.consent_rules("yes-user") == [ConsentRule(ANY, ANY, True, 1000)]
    assert len(again.audit()) == 2
