"""The two stores a batch can live in: SQLite (WAL) in a file, for one
gateway, and PostgreSQL for a fleet (every replica sees every job and
shares its lines). `open_store` picks one from GATEWAY_BATCH_STORE."""

from __future__ import annotations

import fcntl
import logging
import os
import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.batches.records import SCHEMA, Cursor, StoreError
from app.batches.store import BatchStore

logger = logging.getLogger(__name__)

if TYPE_CHECKING:
    import psycopg


def open_store(spec: str | None, data_dir: Path) -> BatchStore:
    """`postgresql://...` (or `postgres://`): PostgreSQL; a path: that SQLite
    file; nothing: GATEWAY_DATA_DIR/batches.db."""
    if spec and spec.split("://", 1)[0] in ("postgresql", "postgres"):
        return PostgresStore(spec)
    return SqliteStore(Path(spec) if spec else data_dir / "batches.db")


class SqliteStore(BatchStore):
    """One gateway's file. Opened at the first call, under an exclusive
    lock on `<file>.lock`: a second gateway on the same file (two pods of a
    rolling update on one volume) answers batch calls 503 until the first
    lets go, and never writes beside it. The WAL is bounded, and space is
    given back after a purge."""

    single_writer = True

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db: sqlite3.Connection | None = None
        self._held: int | None = None  # the lock file's descriptor while this store holds it
        self._closed = False
        try:
            with self._lock:
                self._open()  # now when it can be; else at a later call
        except (StoreError, sqlite3.Error) as exc:
            logger.error("batch store not opened yet: %s", exc)

    def _open(self) -> sqlite3.Connection:
        if self._db is not None:
            return self._db
        if self._closed:
            raise StoreError("the batch store is closed")
        fd = _lock(str(self.path.resolve()) + ".lock")
        db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
        db.execute("PRAGMA auto_vacuum=INCREMENTAL")  # a new file: pages freed can go back
        db.execute("PRAGMA journal_mode=WAL")
        # A process killed (SIGKILL) loses no committed line under WAL with
        # NORMAL; only a power cut may lose the last transactions.
        db.execute("PRAGMA synchronous=NORMAL")
        db.execute(f"PRAGMA journal_size_limit={64 * 2**20}")  # the WAL truncated back to it
        db.executescript(SCHEMA.format(blob="BLOB"))
        self._db, self._held = db, fd
        return db

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                db = self._open()
                db.execute("BEGIN IMMEDIATE")
                try:
                    yield db
                except BaseException:
                    db.execute("ROLLBACK")
                    raise
                db.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    if self._db is not None and self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise StoreError(str(exc)) from exc

    def reclaim(self) -> None:
        """After a purge: free pages back to the file system, the WAL emptied."""
        with self._lock:
            try:
                db = self._open()
                db.executescript("PRAGMA incremental_vacuum;")  # stepped to the end (a page a step)
                db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            except sqlite3.Error as exc:
                raise StoreError(str(exc)) from exc

    def close(self) -> None:
        with self._lock:
            if self._db is not None:
                self._db.close()
            if self._held is not None:
                _unlock(str(self.path.resolve()) + ".lock")
            self._db = self._held = None
            self._closed = True


# The lock files this process holds, with how many of its stores use each:
# one gateway's stores share its lock; another process is refused.
_LOCKS: dict[str, tuple[int, int]] = {}
_LOCKS_LOCK = threading.Lock()


def _lock(path: str) -> int:
    with _LOCKS_LOCK:
        if path in _LOCKS:
            fd, users = _LOCKS[path]
            _LOCKS[path] = (fd, users + 1)
            return fd
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise StoreError(
                f"another gateway holds the batch store {path.removesuffix('.lock')} (SQLite "
                "is for one gateway; a fleet shares PostgreSQL)"
            ) from None
        _LOCKS[path] = (fd, 1)
        return fd


def _unlock(path: str) -> None:
    with _LOCKS_LOCK:
        fd, users = _LOCKS.pop(path, (-1, 0))
        if users > 1:
            _LOCKS[path] = (fd, users - 1)
        elif fd >= 0:
            os.close(fd)  # the lock goes with it


class _PgTx:
    """psycopg's placeholders are %s; the store writes ?."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.cursor().executemany(sql.replace("?", "%s"), rows)


class PostgresStore(BatchStore):
    """One connection, opened at the first call and again after it is lost
    (the call that saw it lost fails: a 503 for the API, a pass tried again
    for the runner). A database down at start stops no online request."""

    claim_lock = " FOR UPDATE SKIP LOCKED"  # two replicas never claim one line
    tenant_lock = "SELECT pg_advisory_xact_lock(hashtext(?))"  # one tenant's quota checks

    def __init__(self, url: str, connect_timeout: float = 5.0, statement_timeout: float = 30.0):
        self.url = url
        self.connect_timeout = connect_timeout
        self.statement_timeout = statement_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        self._schema = False  # the tables made sure of (at the first call that connects)

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            # A statement that runs too long, or a peer that went silent
            # (keepalives), fails the call instead of hanging every batch call.
            self._conn = psycopg.connect(
                self.url,
                autocommit=True,
                connect_timeout=max(1, int(self.connect_timeout)),
                options=f"-c statement_timeout={int(self.statement_timeout * 1000)}",
                keepalives=1,
                keepalives_idle=10,
                keepalives_interval=5,
                keepalives_count=3,
                tcp_user_timeout=int(self.statement_timeout * 1000),
            )
        if not self._schema:
            with self._conn.transaction():  # replicas starting together: one creates them
                self._conn.execute("SELECT pg_advisory_xact_lock(3600036)")
                for statement in SCHEMA.format(blob="BYTEA").split(";"):
                    if statement.strip():
                        self._conn.execute(statement)
            self._schema = True
        return self._conn

    @contextmanager
    def _tx(self) -> Iterator[_PgTx]:
        import psycopg

        with self._lock:
            try:
                conn = self._connection()
                with conn.transaction():
                    yield _PgTx(conn)
            except psycopg.Error as exc:
                raise StoreError(str(exc).strip()) from exc

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                self._conn.close()
