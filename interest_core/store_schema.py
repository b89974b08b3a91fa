"""The profile store's SQLite schema, versioned: `PRAGMA user_version` holds the version of the
schema a database was written with, and each step brings it one version forward, in one
transaction with the version bump. A database of a newer version than this code knows is
refused rather than written with an old idea of its tables.

Versions: 0 (no version kept) profiles + the one-switch `consent` table; 1 the same, with
`profiles.model_version`; 2 consent per direction (`consent_rules`, the old switch becomes
the rule ('*', '*')) and the append-only `audit` trail.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable

SCHEMA_VERSION = 2


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the gateway than this one."""


def _v1(db: sqlite3.Connection) -> None:
    """The tables as they were before versions were kept; model_version added where missing."""
    db.execute("""CREATE TABLE IF NOT EXISTS profiles (
        user_key   TEXT    NOT NULL,
        platform   TEXT    NOT NULL,
        dim        INTEGER NOT NULL,
        vec_sum    BLOB    NOT NULL,
        events     INTEGER NOT NULL,
        items      TEXT    NOT NULL,
        updated_ms INTEGER NOT NULL,
        model_version TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (user_key, platform))""")
    db.execute("""CREATE TABLE IF NOT EXISTS consent (
        user_key   TEXT    PRIMARY KEY,
        migrate    INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL)""")
    columns = {row[1] for row in db.execute("PRAGMA table_info(profiles)")}
    if "model_version" not in columns:  # a store written before model versions were kept
        db.execute("ALTER TABLE profiles ADD COLUMN model_version TEXT NOT NULL DEFAULT ''")


def _v2(db: sqlite3.Connection) -> None:
    """Consent per direction and the audit trail; each old switch becomes the rule (*, *)."""
    db.execute("""CREATE TABLE consent_rules (
        user_key   TEXT    NOT NULL,
        source     TEXT    NOT NULL,  -- the platform holding the data, or '*'
        target     TEXT    NOT NULL,  -- the platform it may migrate to, or '*'
        allowed    INTEGER NOT NULL,
        updated_ms INTEGER NOT NULL,
        PRIMARY KEY (user_key, source, target))""")
    db.execute("""CREATE TABLE audit (
        id        INTEGER PRIMARY KEY AUTOINCREMENT,
        at_ms     INTEGER NOT NULL,
        actor     TEXT    NOT NULL,  -- the caller's platform, '*' for the operator
        action    TEXT    NOT NULL,  -- the RPC, e.g. SetConsent, DeleteUser
        user_key  TEXT    NOT NULL,  -- the pseudonym, never the raw user id
        platforms TEXT    NOT NULL,  -- JSON list of the platforms affected
        change    TEXT    NOT NULL)""")
    db.execute("CREATE INDEX audit_by_user ON audit (user_key, at_ms)")
    for verb in ("UPDATE", "DELETE"):  # append-only, whatever the code that writes it
        db.execute(f"CREATE TRIGGER audit_no_{verb.lower()} BEFORE {verb} ON audit "
                   "BEGIN SELECT RAISE(ABORT, 'the audit trail is append-only'); END")
    db.execute("INSERT INTO consent_rules SELECT user_key, '*', '*', migrate, updated_ms FROM consent")
    db.execute("INSERT INTO audit (at_ms, actor, action, user_key, platforms, change) "
               "SELECT CAST(strftime('%s','now') AS INTEGER) * 1000, 'schema', 'MigrateSchema', "
               "user_key, '[\"*\"]', 'consent switch ' || CASE migrate WHEN 0 THEN 'off' ELSE 'on' END "
               "|| ' became the rule *->*' FROM consent")
    db.execute("DROP TABLE consent")


STEPS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2]  # STEPS[v] brings v to v + 1
assert len(STEPS) == SCHEMA_VERSION


def version_of(db: sqlite3.Connection) -> int:
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def upgrade(db: sqlite3.Connection, path: object) -> None:
    """Bring the database on `db` (autocommit connection) to SCHEMA_VERSION, or raise
    SchemaTooNew. Two processes opening one store at once: the second waits, then finds it done."""
    if version_of(db) == SCHEMA_VERSION:
        return
    db.execute("BEGIN IMMEDIATE")
    try:
        version = version_of(db)
        if version > SCHEMA_VERSION:
            raise SchemaTooNew(
                f"the profile store {path} has schema version {version}, newer than this gateway's "
                f"{SCHEMA_VERSION}: run the gateway version that wrote it (or a later one)")
        for step in STEPS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise
