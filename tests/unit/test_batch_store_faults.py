"""The batch stores at start and under faults: PostgreSQL down when the
store is made (no error until a call; the call 503s; back, it serves and
makes its tables), a statement timeout and keepalives on its connection;
SQLite's WAL bounded and space given back after a purge; one gateway per
SQLite file (the lock)."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest

from app.batches.backends import PostgresStore, SqliteStore
from app.batches.records import Line, StoreError
from tests.support.gateway import ROOT
from tests.support.postgres import start_postgres


def test_postgresql_down_when_the_store_is_made(tmp_path: Path) -> None:
    pg = start_postgres(tmp_path / "postgres.log")
    try:
        url = pg.new_database()
        pg.kill()
        store = PostgresStore(url, connect_timeout=1)  # before: raised, the gateway did not start
        with pytest.raises(StoreError):
            store.in_progress("t")
        pg.restart()
        assert store.in_progress("t") == 0  # its tables made at the first call that connects
        with store._tx() as db:
            (timeout,) = db.execute("SHOW statement_timeout").fetchall()[0]
            params = db.conn.info.get_parameters()
        assert timeout == "30s"
        assert (params["keepalives"], params["keepalives_idle"]) == ("1", "10")
        store.close()
    finally:
        pg.stop()


def test_sqlite_gives_space_back_after_a_purge(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "b.db")
    body = {"prompt": "x" * 4000}
    for n in range(3):
        batch = {"id": f"b{n}", "status": "in_progress", "created_at": 1, "expires_at": 2}
        store.create_batch(batch, "t", [Line(f"b{n}", i, f"c{i}", body) for i in range(500)])
        assert store.update_batch({**batch, "status": "completed", "completed_at": 1})
    store.reclaim()
    full = (tmp_path / "b.db").stat().st_size
    assert store.purge(before=time.time()) == 3
    store.reclaim()
    assert (tmp_path / "b.db").stat().st_size < full / 4  # before: the file kept its size
    assert (tmp_path / "b.db-wal").stat().st_size == 0
    with store._tx() as db:
        assert db.execute("PRAGMA journal_size_limit").fetchall()[0][0] == 64 * 2**20
    store.close()


def test_one_gateway_per_sqlite_file(tmp_path: Path) -> None:
    """Another process (another gateway) holds the file: this one's store is
    made but refused (StoreError: the API's 503) until the other lets go."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path / "b.db")], stdout=subprocess.PIPE, cwd=ROOT
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline() == b"holding\n"
        second = SqliteStore(tmp_path / "b.db")  # made, but not opened: the file is held
        with pytest.raises(StoreError, match="another gateway holds"):
            second.in_progress("t")
        also = SqliteStore(tmp_path / "b.db")  # this process's stores share one lock
    finally:
        holder.kill()
        holder.wait()
    assert second.in_progress("t") == 0  # the other let go: this one takes it
    assert also.in_progress("t") == 0
    second.close()
    also.close()


HOLD = """
import sys, time, pathlib
from app.batches.backends import SqliteStore
store = SqliteStore(pathlib.Path(sys.argv[1]))
store.in_progress("t")
print("holding", flush=True)
time.sleep(60)
"""
