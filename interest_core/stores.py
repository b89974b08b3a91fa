"""The profile store engine that the `profile_store` setting names:
`sqlite:///relative/or/absolute/path.sqlite3` (relative to the working directory; the default
is var_dir/profiles.sqlite3) or `postgresql://user@host:port/db` (PostgreSQL, shared by
several gateways). The password, if any, is best left out of the URL and given to libpq in
PGPASSWORD or a ~/.pgpass file."""

from __future__ import annotations

from pathlib import Path

from interest_core.profiles import ProfileCipher, ProfileStore

SQLITE = "sqlite://"
POSTGRES = ("postgresql://", "postgres://")


def sqlite_path(url: str) -> Path:
    """The file of a `sqlite:///path` URL: `sqlite:///var/p.sqlite3` is relative,
    `sqlite:////srv/p.sqlite3` absolute (as SQLAlchemy reads them)."""
    rest = url[len(SQLITE):]
    if not rest.startswith("/") or len(rest) < 2:
        raise ValueError(f"profile_store {url!r}: write sqlite:///relative/path.sqlite3 or "
                         "sqlite:////absolute/path.sqlite3")
    return Path(rest[1:])


def check_store_url(url: str) -> str:
    """`url` if it names an engine this code has; ValueError saying what is expected if not."""
    if url.startswith(SQLITE):
        sqlite_path(url)
    elif not url.startswith(POSTGRES):
        scheme = url.split(":")[0]
        raise ValueError(f"profile_store must start with sqlite:/// or postgresql://, not {scheme!r}")
    return url


def open_store(url: str, cipher: ProfileCipher | None = None, pool_size: int = 8) -> ProfileStore:
    """The engine of `url`. SQLite opens (and upgrades) the file now; PostgreSQL connects in
    the background and upgrades the schema on its first call or `prepare()`."""
    check_store_url(url)
    if url.startswith(SQLITE):
        from interest_core.store_sqlite import SqliteProfileStore

        return SqliteProfileStore(sqlite_path(url), cipher)
    from interest_core.store_postgres import PostgresProfileStore  # psycopg only where it is used

    return PostgresProfileStore(url, cipher, pool_size)
