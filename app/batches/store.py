"""Where batches live, never only in memory: files, jobs and every line's
state, in SQLite (WAL) under GATEWAY_DATA_DIR by default.

Lines are claimed with leases: a runner takes pending lines for `lease`
seconds under its own name and finishes each one only while its lease is
its own, so a line is answered exactly once even when a runner dies
mid-line (its leases run out and another runner, or the same gateway
started again, takes the line again). The same shape fits PostgreSQL
(`FOR UPDATE SKIP LOCKED`) for a fleet.

Blocking calls: the async layer runs them on a thread (app.batches.service).
"""

from __future__ import annotations

import json
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from app.batches.records import ACTIVE, SCHEMA, Counts, Line


class SqliteStore:
    def __init__(self, path: Path):
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._lock = threading.Lock()
        self._db.execute("PRAGMA journal_mode=WAL")
        # A process killed (SIGKILL) loses no committed line under WAL with
        # NORMAL; only a power cut may lose the last transactions.
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(SCHEMA)

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()

    # -- files ---------------------------------------------------------------

    def put_file(self, meta: dict[str, Any], tenant: str, content: bytes) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO files VALUES (?, ?, ?, ?, ?, ?, ?)",
                (meta["id"], tenant, meta["purpose"], meta["filename"], meta["bytes"],
                 meta["created_at"], content),
            )  # fmt: skip

    def file(self, file_id: str, tenant: str) -> dict[str, Any] | None:
        row = self._one(
            "SELECT id, purpose, filename, bytes, created_at FROM files "
            "WHERE id = ? AND tenant = ?",
            (file_id, tenant),
        )
        return _file_meta(row) if row else None

    def files(self, tenant: str) -> list[dict[str, Any]]:
        rows = self._all(
            "SELECT id, purpose, filename, bytes, created_at FROM files WHERE tenant = ? "
            "ORDER BY created_at DESC, id DESC",
            (tenant,),
        )
        return [_file_meta(r) for r in rows]

    def content(self, file_id: str, tenant: str) -> bytes | None:
        row = self._one("SELECT content FROM files WHERE id = ? AND tenant = ?", (file_id, tenant))
        return bytes(row[0]) if row else None

    def delete_file(self, file_id: str, tenant: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM files WHERE id = ? AND tenant = ?", (file_id, tenant))
            return cur.rowcount == 1

    # -- batches ---------------------------------------------------------------

    def create_batch(self, batch: dict[str, Any], tenant: str, lines: list[Line]) -> None:
        """The job and all its lines, in one transaction: accepted whole or not at all."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO batches VALUES (?, ?, ?, ?, ?, ?)",
                (batch["id"], tenant, json.dumps(batch), batch["status"], batch["created_at"],
                 batch["expires_at"]),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body) VALUES (?, ?, ?, ?)",
                [(ln.batch_id, ln.idx, ln.custom_id, json.dumps(ln.body)) for ln in lines],
            )

    def batch(self, batch_id: str, tenant: str | None = None) -> dict[str, Any] | None:
        if tenant is None:
            row = self._one("SELECT body FROM batches WHERE id = ?", (batch_id,))
        else:
            row = self._one(
                "SELECT body FROM batches WHERE id = ? AND tenant = ?", (batch_id, tenant)
            )
        return json.loads(row[0]) if row else None

    def batches(self, tenant: str, after: str | None, limit: int) -> list[dict[str, Any]]:
        """Newest first; `after` is the id of the last one the client has."""
        sql = "SELECT body FROM batches WHERE tenant = ?"
        args: list[Any] = [tenant]
        if after is not None:
            sql += " AND (created_at, id) < (SELECT created_at, id FROM batches WHERE id = ?)"
            args.append(after)
        sql += " ORDER BY created_at DESC, id DESC LIMIT ?"
        args.append(limit)
        return [json.loads(r[0]) for r in self._all(sql, tuple(args))]

    def update_batch(self, batch: dict[str, Any], expect: str | None = None) -> bool:
        """Write the job back; with `expect`, only if its status is still that."""
        with self._tx() as db:
            sql = "UPDATE batches SET body = ?, status = ? WHERE id = ?"
            args: tuple[Any, ...] = (json.dumps(batch), batch["status"], batch["id"])
            if expect is not None:
                sql += " AND status = ?"
                args = (*args, expect)
            return db.execute(sql, args).rowcount == 1

    def active_batches(self) -> list[tuple[str, dict[str, Any]]]:
        """(tenant, job) of every unfinished batch, oldest first."""
        marks = ",".join("?" * len(ACTIVE))
        rows = self._all(
            f"SELECT tenant, body FROM batches WHERE status IN ({marks}) ORDER BY created_at, id",
            ACTIVE,
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    def in_progress(self, tenant: str) -> int:
        marks = ",".join("?" * len(ACTIVE))
        row = self._one(
            f"SELECT count(*) FROM batches WHERE tenant = ? AND status IN ({marks})",
            (tenant, *ACTIVE),
        )
        return int(row[0]) if row else 0

    # -- lines -------------------------------------------------------------------

    def claim(self, batch_id: str, owner: str, n: int, lease: float) -> list[Line]:
        """Up to `n` pending lines of the batch nobody holds, in order, leased to `owner`."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND state = 'pending' "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY idx LIMIT ?",
                (batch_id, now, n),
            ).fetchall()
            db.executemany(
                "UPDATE lines SET owner = ?, lease_until = ? WHERE batch_id = ? AND idx = ?",
                [(owner, now + lease, batch_id, r[0]) for r in rows],
            )
        return [Line(batch_id, r[0], r[1], json.loads(r[2])) for r in rows]

    def finish(self, line: Line, owner: str, state: str, result: dict[str, Any]) -> bool:
        """The line's answer (state done or failed), kept only if the line is
        still pending and leased to `owner`: never answered twice."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE lines SET state = ?, result = ?, lease_until = NULL "
                "WHERE batch_id = ? AND idx = ? AND state = 'pending' AND owner = ?",
                (state, json.dumps(result), line.batch_id, line.idx, owner),
            )
            return cur.rowcount == 1

    def release(self, batch_id: str, owner: str) -> None:
        """Give back the pending lines `owner` holds (a clean stop or a pause)."""
        with self._tx() as db:
            db.execute(
                "UPDATE lines SET owner = NULL, lease_until = NULL "
                "WHERE batch_id = ? AND owner = ? AND state = 'pending'",
                (batch_id, owner),
            )

    def release_all(self) -> int:
        """Every lease given back: at the start of the one gateway a SQLite
        file serves, any lease is a dead process's (the lines it held are
        taken again at once, not when the lease runs out)."""
        with self._tx() as db:
            cur = db.execute(
                "UPDATE lines SET owner = NULL, lease_until = NULL "
                "WHERE state = 'pending' AND owner IS NOT NULL"
            )
            return cur.rowcount

    def purge(self, before: float) -> int:
        """Finished batches older than `before` (epoch seconds) gone, with
        their lines and their output and error files; how many went."""
        marks = ",".join("?" * len(ACTIVE))
        with self._tx() as db:
            rows = db.execute(
                f"SELECT id, body FROM batches WHERE status NOT IN ({marks}) AND "
                "coalesce(json_extract(body, '$.completed_at'), json_extract(body, "
                "'$.expired_at'), json_extract(body, '$.cancelled_at'), "
                "json_extract(body, '$.failed_at'), created_at) < ?",
                (*ACTIVE, before),
            ).fetchall()
            for batch_id, body in rows:
                job = json.loads(body)
                files = [job.get("output_file_id"), job.get("error_file_id")]
                db.executemany("DELETE FROM files WHERE id = ?", [(f,) for f in files if f])
                db.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))
                db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        return len(rows)

    def job_counts(self) -> dict[str, int]:
        """Batches by status."""
        return {r[0]: int(r[1]) for r in self._all(
            "SELECT status, count(*) FROM batches GROUP BY status", ()
        )}  # fmt: skip

    def backlog(self) -> tuple[int, int]:
        """(lines, output tokens) still to run in running batches; a line
        without max_tokens counts the completions endpoint's default, 16."""
        row = self._one(
            "SELECT count(*), coalesce(sum(coalesce(json_extract(l.body, '$.max_tokens'), "
            "json_extract(l.body, '$.max_completion_tokens'), 16)), 0) FROM lines l "
            "JOIN batches b ON b.id = l.batch_id "
            "WHERE l.state = 'pending' AND b.status = 'in_progress'",
            (),
        )
        return (int(row[0]), int(row[1])) if row else (0, 0)

    def counts(self, batch_id: str) -> Counts:
        row = self._one(
            "SELECT count(*), sum(state = 'done'), sum(state = 'failed') FROM lines "
            "WHERE batch_id = ?",
            (batch_id,),
        )
        assert row is not None
        return Counts(int(row[0]), int(row[1] or 0), int(row[2] or 0))

    def cancel_pending(self, batch_id: str) -> None:
        """Lines not yet answered will not be (cancelled or expired batches)."""
        with self._tx() as db:
            db.execute(
                "UPDATE lines SET state = 'skipped' WHERE batch_id = ? AND state = 'pending'",
                (batch_id,),
            )

    def results(self, batch_id: str, state: str) -> list[dict[str, Any]]:
        """The answers in the input's order (for the output or error file)."""
        rows = self._all(
            "SELECT result FROM lines WHERE batch_id = ? AND state = ? ORDER BY idx",
            (batch_id, state),
        )
        return [json.loads(r[0]) for r in rows]

    # -- helpers -------------------------------------------------------------------

    def _one(self, sql: str, args: tuple[Any, ...]) -> tuple[Any, ...] | None:
        with self._lock:
            row: tuple[Any, ...] | None = self._db.execute(sql, args).fetchone()
            return row

    def _all(self, sql: str, args: tuple[Any, ...]) -> list[tuple[Any, ...]]:
        with self._lock:
            return list(self._db.execute(sql, args).fetchall())


def _file_meta(row: tuple[Any, ...]) -> dict[str, Any]:
    return {
        "id": row[0],
        "object": "file",
        "purpose": row[1],
        "filename": row[2],
        "bytes": row[3],
        "created_at": row[4],
        "status": "processed",
    }
