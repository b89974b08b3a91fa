"""The profile store in embedded SQLite (the default engine): one file, WAL.

Writes commit durably (synchronous=FULL: an fsync per commit) on one connection, each in a
`BEGIN IMMEDIATE` transaction, which takes the database's write lock before it reads: a
read-modify-write in one process never interleaves with another process's on the same file.
Reads use a second connection: in WAL mode a reader neither waits for a writer nor sees its
transaction half done, so a thread that only reads never stalls behind another thread's fsync
(the gateway reads on its event loop and writes from its writer thread).
"""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from interest_core.profiles import ProfileCipher, ProfileStore, Tx
from interest_core.store_schema import upgrade

T = TypeVar("T")
BUSY_TIMEOUT_S = 30.0  # how long a write waits for another process's write to the same file


class SqliteProfileStore(ProfileStore):
    """Profiles in the SQLite file at `path` (created with its folder if missing); the schema
    is brought up to date on opening (or SchemaTooNew: a newer gateway's store)."""

    def __init__(self, path: Path, cipher: ProfileCipher | None = None) -> None:
        super().__init__(cipher)
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self.description = f"the profile store {path}"
        self._db = sqlite3.connect(str(path), isolation_level=None, check_same_thread=False,
                                   timeout=BUSY_TIMEOUT_S)
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

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        return self._read.execute(sql, args).fetchall()

    def _write(self, work: Callable[[Tx], T]) -> T:
        self._db.execute("BEGIN IMMEDIATE")  # the write lock first: what `work` reads stays so
        try:
            result = work(self._db)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        return result
