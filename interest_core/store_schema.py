"""The profile store's schema, versioned, for both engines: SQLite's `PRAGMA user_version`
and PostgreSQL's one-row `schema_version` table hold the version of the schema a database was
written with, and each step brings it one version forward, in one transaction with the version
bump. A database of a newer version than this code knows is refused rather than written with
an old idea of its tables. A version means the same tables on both engines (types differ:
PostgreSQL keeps `items` as BYTEA, JSON or its ciphertext); a new version adds a step to each.

Versions: 0 (no version kept) profiles + the one-switch `consent` table; 1 the same, with
`profiles.model_version`; 2 consent per direction (`consent_rules`, the old switch becomes
the rule ('*', '*')) and the append-only `audit` trail; 3 the catalogue change log
(`catalogue_versions`, one row per platform, and `catalogue_items`, catalogue_log.py).
PostgreSQL stores start at 1 (they never held the one-switch table).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import psycopg

SCHEMA_VERSION = 3


class SchemaTooNew(RuntimeError):
    """The database was written by a newer version of the gateway than this one."""


# The catalogue change log, the same on both engines but for the types of two columns.
_CATALOGUE_VERSIONS = """CREATE TABLE catalogue_versions (
        platform TEXT NOT NULL PRIMARY KEY,
        version  {bigint} NOT NULL)  -- the changes committed: the version of the latest"""
_CATALOGUE_ITEMS = """CREATE TABLE catalogue_items (
        platform      TEXT     NOT NULL,
        item_id       TEXT     NOT NULL,
        title         TEXT     NOT NULL,
        attributes    TEXT     NOT NULL,  -- JSON object of strings
        embedding     {blob},             -- float32 [dim]; NULL once removed
        dim           INTEGER,
        model_version TEXT     NOT NULL,  -- the model of the embedding
        removed       INTEGER  NOT NULL,
        version       {bigint} NOT NULL,  -- the platform's catalogue version that wrote the row
        updated_ms    {bigint} NOT NULL,
        PRIMARY KEY (platform, item_id))"""
_CATALOGUE_INDEX = "CREATE INDEX catalogue_items_by_version ON catalogue_items (platform, version)"


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


def _v3(db: sqlite3.Connection) -> None:
    """The catalogue change log (catalogue_log.py)."""
    db.execute(_CATALOGUE_VERSIONS.format(bigint="INTEGER"))
    db.execute(_CATALOGUE_ITEMS.format(bigint="INTEGER", blob="BLOB"))
    db.execute(_CATALOGUE_INDEX)


STEPS: list[Callable[[sqlite3.Connection], None]] = [_v1, _v2, _v3]  # STEPS[v] brings v to v + 1
assert len(STEPS) == SCHEMA_VERSION


def refuse_newer(version: int, where: str) -> None:
    """SchemaTooNew when the store at `where` was written by a newer gateway (both engines)."""
    if version > SCHEMA_VERSION:
        raise SchemaTooNew(
            f"{where} has schema version {version}, newer than this gateway's {SCHEMA_VERSION}: "
            f"run the gateway version that wrote it (or a later one)")


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
        refuse_newer(version, f"the profile store {path}")
        for step in STEPS[version:]:
            step(db)
        db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        db.execute("COMMIT")
    except BaseException:
        db.execute("ROLLBACK")
        raise


# --- PostgreSQL ---------------------------------------------------------------------------
# Two gateways starting at once: the second waits on this advisory lock, then finds it done.
PG_UPGRADE_LOCK = 0x1E7E5E  # an arbitrary application-wide id


def _pg_v1(db: psycopg.Connection[Any]) -> None:
    db.execute("""CREATE TABLE profiles (
        user_key   TEXT    NOT NULL,
        platform   TEXT    NOT NULL,
        dim        INTEGER NOT NULL,
        vec_sum    BYTEA   NOT NULL,
        events     INTEGER NOT NULL,
        items      BYTEA   NOT NULL,  -- JSON list, or its ciphertext
        updated_ms BIGINT  NOT NULL,
        model_version TEXT NOT NULL DEFAULT '',
        PRIMARY KEY (user_key, platform))""")


def _pg_v2(db: psycopg.Connection[Any]) -> None:
    """Consent per direction and the audit trail, append-only by trigger (UPDATE, DELETE and
    TRUNCATE raise, whatever the code or the person that tries them)."""
    db.execute("""CREATE TABLE consent_rules (
        user_key   TEXT    NOT NULL,
        source     TEXT    NOT NULL,
        target     TEXT    NOT NULL,
        allowed    INTEGER NOT NULL,
        updated_ms BIGINT  NOT NULL,
        PRIMARY KEY (user_key, source, target))""")
    db.execute("""CREATE TABLE audit (
        id        BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
        at_ms     BIGINT NOT NULL,
        actor     TEXT   NOT NULL,
        action    TEXT   NOT NULL,
        user_key  TEXT   NOT NULL,
        platforms TEXT   NOT NULL,
        change    TEXT   NOT NULL)""")
    db.execute("CREATE INDEX audit_by_user ON audit (user_key, at_ms)")
    db.execute("""CREATE FUNCTION audit_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'the audit trail is append-only'; END $$""")
    db.execute("CREATE TRIGGER audit_no_change BEFORE UPDATE OR DELETE ON audit "
               "FOR EACH ROW EXECUTE FUNCTION audit_append_only()")
    db.execute("CREATE TRIGGER audit_no_truncate BEFORE TRUNCATE ON audit "
               "FOR EACH STATEMENT EXECUTE FUNCTION audit_append_only()")


def _pg_v3(db: psycopg.Connection[Any]) -> None:
    """The catalogue change log (catalogue_log.py)."""
    db.execute(_CATALOGUE_VERSIONS.format(bigint="BIGINT"))
    db.execute(_CATALOGUE_ITEMS.format(bigint="BIGINT", blob="BYTEA"))
    db.execute(_CATALOGUE_INDEX)


# PG_STEPS[v] brings v to v + 1
PG_STEPS: list[Callable[[psycopg.Connection[Any]], None]] = [_pg_v1, _pg_v2, _pg_v3]
assert len(PG_STEPS) == SCHEMA_VERSION


def upgrade_postgres(db: psycopg.Connection[Any], where: str) -> int:
    """Bring the database on `db` (autocommit connection) to SCHEMA_VERSION, or raise
    SchemaTooNew; returns the version it found."""
    with db.transaction():
        db.execute("SELECT pg_advisory_xact_lock(%s)", (PG_UPGRADE_LOCK,))
        db.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
        row = db.execute("SELECT version FROM schema_version").fetchone()
        version = 0 if row is None else int(row[0])
        refuse_newer(version, where)
        for step in PG_STEPS[version:]:
            step(db)
        if row is None:
            db.execute("INSERT INTO schema_version VALUES (%s)", (SCHEMA_VERSION,))
        elif version != SCHEMA_VERSION:
            db.execute("UPDATE schema_version SET version=%s", (SCHEMA_VERSION,))
    return version
