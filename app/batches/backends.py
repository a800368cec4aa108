"""The two stores a batch can live in: SQLite (WAL) in a file, for one
gateway, and PostgreSQL for a fleet (every replica sees every job and
shares its lines). `open_store` picks one from GATEWAY_BATCH_STORE."""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.batches.records import SCHEMA, Cursor, StoreError
from app.batches.store import BatchStore

if TYPE_CHECKING:
    import psycopg


def open_store(spec: str | None, data_dir: Path) -> BatchStore:
    """`postgresql://...` (or `postgres://`): PostgreSQL; a path: that SQLite
    file; nothing: GATEWAY_DATA_DIR/batches.db."""
    if spec and spec.split("://", 1)[0] in ("postgresql", "postgres"):
        return PostgresStore(spec)
    return SqliteStore(Path(spec) if spec else data_dir / "batches.db")


class SqliteStore(BatchStore):
    single_writer = True

    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._lock = threading.Lock()
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        # A process killed (SIGKILL) loses no committed line under WAL with
        # NORMAL; only a power cut may lose the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA.format(blob="BLOB"))

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            try:
                self._db.execute("BEGIN IMMEDIATE")
                try:
                    yield self._db
                except BaseException:
                    self._db.execute("ROLLBACK")
                    raise
                self._db.execute("COMMIT")
            except sqlite3.Error as exc:
                with suppress(sqlite3.Error):
                    if self._db.in_transaction:
                        self._db.execute("ROLLBACK")
                raise StoreError(str(exc)) from exc

    def close(self) -> None:
        self._db.close()


class _PgTx:
    """psycopg's placeholders are %s; the store writes ?."""

    def __init__(self, conn: psycopg.Connection[Any]):
        self.conn = conn

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor:
        return self.conn.execute(sql.replace("?", "%s"), args)

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> None:
        self.conn.cursor().executemany(sql.replace("?", "%s"), rows)


class PostgresStore(BatchStore):
    """One connection, opened again after it is lost (the call that saw it
    lost fails: a 503 for the API, a pass tried again for the runner)."""

    claim_lock = " FOR UPDATE SKIP LOCKED"  # two replicas never claim one line

    def __init__(self, url: str, connect_timeout: float = 5.0):
        self.url = url
        self.connect_timeout = connect_timeout
        self._lock = threading.Lock()
        self._conn: psycopg.Connection[Any] | None = None
        with self._tx() as db:  # replicas starting together: one creates the tables
            db.execute("SELECT pg_advisory_xact_lock(3600036)")
            for statement in SCHEMA.format(blob="BYTEA").split(";"):
                if statement.strip():
                    db.execute(statement)

    def _connection(self) -> psycopg.Connection[Any]:
        import psycopg

        if self._conn is None or self._conn.closed or self._conn.broken:
            self._conn = psycopg.connect(
                self.url, autocommit=True, connect_timeout=max(1, int(self.connect_timeout))
            )
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
