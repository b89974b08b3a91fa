"""The profile store in PostgreSQL, shared by every gateway of a fleet (psycopg 3 with its
connection pool).

Why the synchronous `psycopg_pool.ConnectionPool` and not the asyncio one: the store interface
is synchronous, because the SQLite engine is (sqlite3 has no asyncio API) and the gateway
already runs every write on its writer threads (interest_core.profile_book), where a commit
may block without holding up the event loop. The same calls then serve both engines; the
book runs this engine's reads on threads too (`remote`), never on the event loop, so a slow
or unreachable database holds up only the calls that need it.

Each write is one transaction on one pooled connection: it locks the rows it will change
(`SELECT ... FOR UPDATE`), changes them and commits before it returns (`synchronous_commit`
on, the server's default, makes the commit durable). A transaction that loses a deadlock or a
serialization conflict is run again. A database that cannot be reached, or goes away, gives
interest_core.errors.Unavailable (the gateway answers UNAVAILABLE), never a driver error.
"""

from __future__ import annotations

import contextlib
import logging
import threading
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import psycopg
from psycopg import errors as pg_errors
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg_pool import ConnectionPool, PoolTimeout

from interest_core.errors import Unavailable
from interest_core.profiles import ProfileCipher, ProfileStore, Tx
from interest_core.store_schema import SCHEMA_VERSION, upgrade_postgres

log = logging.getLogger("interest.store")
T = TypeVar("T")
RETRIES = 5  # runs of a transaction that keeps losing deadlocks or serialization conflicts


class _PgTx:
    """A transaction's cursor taking the store's `?` placeholders."""

    def __init__(self, cursor: psycopg.Cursor[Any]) -> None:
        self._cursor = cursor

    def execute(self, sql: str, args: Any = (), /) -> psycopg.Cursor[Any]:
        return self._cursor.execute(_pg(sql), args)

    def executemany(self, sql: str, rows: Any, /) -> None:
        self._cursor.executemany(_pg(sql), rows)


def _pg(sql: str) -> str:
    return sql.replace("?", "%s")  # the store's SQL holds no other '?' nor '%'


class PostgresProfileStore(ProfileStore):
    """Profiles in the PostgreSQL database of `url` (postgresql://user@host:port/db).

    Creating it connects to nothing: the pool connects in the background, and the first call
    (or `prepare`, which the gateway's start-up retries) brings the schema up to date."""

    remote = True
    _lock_rows = " FOR UPDATE"

    def __init__(self, url: str, cipher: ProfileCipher | None = None, pool_size: int = 8,
                 timeout_s: float = 5.0) -> None:
        super().__init__(cipher)
        params = conninfo_to_dict(url)
        params.setdefault("connect_timeout", max(1, round(timeout_s)))
        params.setdefault("application_name", "interest-gateway")
        where = f"{params.get('host', 'localhost')}:{params.get('port', 5432)}/{params.get('dbname', '')}"
        self.description = f"the profile store (PostgreSQL at {where})"  # no user, no password
        self.writers = pool_size
        self._pool = ConnectionPool(
            make_conninfo("", **params), min_size=1, max_size=pool_size, open=False, timeout=timeout_s,
            reconnect_timeout=2 * timeout_s,
            kwargs={"autocommit": True}, name="profile-store")
        self._pool.open(wait=False)
        # How long a call waits for a pooled connection: while the database is away no
        # connection comes, and a call should answer UNAVAILABLE soon, not hang (the pool's own
        # `timeout` is for `prepare`, which start-up retries anyway).
        self._wait_s = min(2.0, timeout_s)
        self._ready = False
        self._prepare_lock = threading.Lock()

    def prepare(self) -> None:
        if self._ready:
            return
        with self._prepare_lock:
            if self._ready:
                return
            try:
                with self._pool.connection() as db:
                    found = upgrade_postgres(db, self.description)
                    durable = db.execute("SHOW synchronous_commit").fetchone()
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
            if durable is not None and durable[0] == "off":
                log.warning("%s has synchronous_commit=off: a commit acknowledged to a client may be "
                            "lost in a database crash; set it to on", self.description)
            log.info("%s ready: schema version %d (found %d)", self.description, SCHEMA_VERSION, found)
            self._ready = True

    def close(self) -> None:
        self._pool.close()

    def ping(self, timeout_s: float = 2.0) -> None:
        """SELECT 1 on a pooled connection, waiting at most `timeout_s` for one: a database that
        is down (or a pool with every connection stuck) is Unavailable within that time."""
        try:
            with self._pool.connection(timeout=timeout_s) as db:
                db.execute("SELECT 1")
        except psycopg.OperationalError as exc:  # PoolTimeout is one
            # not logged here: the health watcher logs the change, not every failed ping
            raise Unavailable(f"{self.description} does not answer: {type(exc).__name__}") from exc

    def pool_stats(self) -> dict[str, float]:
        """psycopg_pool's counters (ConnectionPool.get_stats): connections open and idle, calls
        waiting for a connection now, and the time calls have waited in all (ms)."""
        stats = self._pool.get_stats()
        return {key: float(stats.get(key, 0)) for key in
                ("pool_size", "pool_available", "requests_waiting", "requests_num", "requests_wait_ms",
                 "requests_errors", "connections_lost")}

    def _query(self, sql: str, args: Sequence[object] = ()) -> list[Any]:
        """One read on a pooled connection, taken unchecked (a check is a round trip of its own:
        it doubled the reads' cost). A read is safe to run again, so a connection that turns out
        broken (the database restarted since it was opened) costs one more try after the pool
        has dropped every broken idle connection."""
        self.prepare()
        for attempt in (1, 2):
            try:
                with self._pool.connection(timeout=self._wait_s) as db:
                    return db.execute(_pg(sql), args).fetchall()
            except PoolTimeout as exc:  # no connection to be had: the database is away
                raise self._unavailable(exc) from exc
            except psycopg.OperationalError as exc:
                if attempt == 2:
                    raise self._unavailable(exc) from exc
                self._drop_broken()
        raise AssertionError("unreachable")

    def _write(self, work: Callable[[Tx], T]) -> T:
        """`work` in one transaction, on a connection checked first: a write that fails after it
        began cannot be told apart from one whose COMMIT was lost, so it is never run again
        on a broken connection, only on a conflict the database reports."""
        self.prepare()
        broken = 0
        for attempt in range(1, RETRIES + 1):
            try:
                with self._pool.connection(timeout=self._wait_s) as db:
                    if not self._usable(db):  # nothing was written; it leaves the pool
                        broken += 1
                        if broken == 2:  # a fresh connection broken too: the database is away
                            raise self._unavailable(psycopg.OperationalError("two connections broken"))
                        continue
                    with db.transaction(), db.cursor() as cursor:
                        return work(_PgTx(cursor))
            except (pg_errors.DeadlockDetected, pg_errors.SerializationFailure) as exc:
                if attempt == RETRIES:
                    raise self._unavailable(exc) from exc
                log.info("a profile-store transaction lost a conflict (%s); running it again",
                         type(exc).__name__)
            except psycopg.OperationalError as exc:
                raise self._unavailable(exc) from exc
        raise AssertionError("unreachable")

    def _usable(self, db: psycopg.Connection[Any]) -> bool:
        """Whether `db` answers an empty statement; when not, the pool's other idle connections
        are checked too (a database restart breaks them all at once)."""
        try:
            ConnectionPool.check_connection(db)
            return True
        except psycopg.OperationalError:
            self._drop_broken()
            return False

    def _drop_broken(self) -> None:
        with contextlib.suppress(Exception):
            self._pool.check()  # checks the idle connections, drops the broken ones

    def _items_value(self, items_json: str) -> bytes:
        return items_json.encode()

    def _unavailable(self, exc: Exception) -> Unavailable:
        """The client's error (no host nor database named); the details go to the log."""
        log.warning("%s failed: %s: %s", self.description, type(exc).__name__, exc)
        return Unavailable("the profile store (PostgreSQL) is unavailable; retry shortly")
