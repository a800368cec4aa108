"""Where batches live, never only in memory: files, jobs and every line's
state, in SQL that SQLite and PostgreSQL both read (app.batches.backends
opens one or the other). Lines are claimed with leases, renewed while held:
a line is answered only while pending and its runner's, so exactly once
even when a runner dies mid-line (its leases run out; on PostgreSQL claims
skip locked rows). Blocking calls (the async layer threads them); a store
that fails raises StoreError (the API answers 503)."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator, Sequence
from typing import Any

from app.batches.filestore import FileStore, insert_chunks, insert_file
from app.batches.records import ACTIVE, CHUNK, Counts, Line, Tx, finished_at


class BatchStore(FileStore):
    """The batches and their lines, over the files (app.batches.filestore)."""

    # -- batches ---------------------------------------------------------------

    def create_batch(
        self, batch: dict[str, Any], tenant: str, lines: list[Line], max_active: int | None = None
    ) -> bool:
        """The job and all its lines, in one transaction: accepted whole or not
        at all; False (nothing written) when the tenant already has
        `max_active` unfinished batches, counted in the same transaction."""
        with self._tx() as db:
            if max_active is not None:
                if self.tenant_lock:  # concurrent creates of one tenant, one at a time
                    db.execute(self.tenant_lock, (tenant,))
                sql = "SELECT count(*) FROM batches WHERE tenant = ? AND status IN "
                sql += f"({_marks(ACTIVE)})"
                (n,) = db.execute(sql, (tenant, *ACTIVE)).fetchall()[0]
                if int(n) >= max_active:
                    return False
            db.execute(
                "INSERT INTO batches (id, tenant, body, status, created_at, expires_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (batch["id"], tenant, json.dumps(batch), batch["status"], batch["created_at"],
                 batch["expires_at"]),
            )  # fmt: skip
            db.executemany(
                "INSERT INTO lines (batch_id, idx, custom_id, body, max_tokens) "
                "VALUES (?, ?, ?, ?, ?)",
                [(ln.batch_id, ln.idx, ln.custom_id, json.dumps(ln.body), ln.max_tokens)
                 for ln in lines],
            )  # fmt: skip
            return True

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
        return [json.loads(r[0]) for r in self._all(sql, args)]

    def update_batch(self, batch: dict[str, Any], expect: str | None = None) -> bool:
        """Write the job back; with `expect`, only if its status is still that."""
        with self._tx() as db:
            sql = "UPDATE batches SET body = ?, status = ?, finished_at = ? WHERE id = ?"
            args: tuple[Any, ...] = (
                json.dumps(batch), batch["status"], finished_at(batch), batch["id"]
            )  # fmt: skip
            if expect is not None:
                sql += " AND status = ?"
                args = (*args, expect)
            return bool(db.execute(sql, args).rowcount == 1)

    def active_batches(self) -> list[tuple[str, dict[str, Any]]]:
        """(tenant, job) of every unfinished batch, oldest first."""
        rows = self._all(
            f"SELECT tenant, body FROM batches WHERE status IN ({_marks(ACTIVE)}) "
            "ORDER BY created_at, id",
            ACTIVE,
        )
        return [(r[0], json.loads(r[1])) for r in rows]

    def in_progress(self, tenant: str) -> int:
        row = self._one(
            f"SELECT count(*) FROM batches WHERE tenant = ? AND status IN ({_marks(ACTIVE)})",
            (tenant, *ACTIVE),
        )
        return int(row[0])

    # -- lines -------------------------------------------------------------------

    def claim(self, batch_id: str, owner: str, n: int, lease: float) -> list[Line]:
        """Up to `n` pending lines of the batch nobody holds, in order, leased to `owner`."""
        now = time.time()
        with self._tx() as db:
            rows = db.execute(
                "SELECT idx, custom_id, body FROM lines WHERE batch_id = ? AND state = 'pending' "
                "AND (lease_until IS NULL OR lease_until < ?) ORDER BY idx LIMIT ?"
                + self.claim_lock,
                (batch_id, now, n),
            ).fetchall()
            if rows:
                db.executemany(
                    "UPDATE lines SET owner = ?, lease_until = ? WHERE batch_id = ? AND idx = ?",
                    [(owner, now + lease, batch_id, r[0]) for r in rows],
                )
        return [Line(batch_id, r[0], r[1], json.loads(r[2])) for r in rows]

    def finish(self, line: Line, owner: str, state: str, result: dict[str, Any]) -> bool:
        """The line's answer (state done or failed), kept only if the line is
        still pending and leased to `owner`: never answered twice."""
        return self.finish_many(owner, [(line, state, result)])[0]

    def finish_many(
        self, owner: str, answers: Sequence[tuple[Line, str, dict[str, Any]]]
    ) -> list[bool]:
        """Several answers in one transaction; whether each was kept."""
        with self._tx() as db:
            kept = []
            for line, state, result in answers:
                cur = db.execute(
                    "UPDATE lines SET state = ?, result = ?, lease_until = NULL "
                    "WHERE batch_id = ? AND idx = ? AND state = 'pending' AND owner = ?",
                    (state, json.dumps(result), line.batch_id, line.idx, owner),
                )
                kept.append(cur.rowcount == 1)
            return kept

    def renew(self, owner: str, keys: Sequence[tuple[str, int]], lease: float) -> None:
        """The leases of lines `owner` still holds (running, ready or answered
        but not yet written) run `lease` seconds from now: a line that takes
        longer than a lease is not taken again while its runner lives."""
        if not keys:
            return
        until = time.time() + lease
        with self._tx() as db:
            db.executemany(
                "UPDATE lines SET lease_until = ? "
                "WHERE batch_id = ? AND idx = ? AND owner = ? AND state = 'pending'",
                [(until, batch_id, idx, owner) for batch_id, idx in keys],
            )

    def release(
        self, owner: str, batch_id: str | None = None, keys: Sequence[tuple[str, int]] = ()
    ) -> int:
        """Give back the pending lines `owner` holds (these `keys`, those of
        one batch, or all): a clean stop, a pause, a retry; how many."""
        sql = "UPDATE lines SET owner = NULL, lease_until = NULL WHERE owner = ? "
        sql += "AND state = 'pending'"
        with self._tx() as db:
            if keys:
                db.executemany(sql + " AND batch_id = ? AND idx = ?", [(owner, *k) for k in keys])
                return len(keys)
            if batch_id is not None:
                return db.execute(sql + " AND batch_id = ?", (owner, batch_id)).rowcount
            return db.execute(sql, (owner,)).rowcount

    def release_all(self) -> int:
        """Every lease given back; only where one gateway owns the store (at
        its start, any lease is a dead process's: its lines are taken again
        at once, not when the lease runs out). A fleet's leases run out."""
        if not self.single_writer:
            return 0
        with self._tx() as db:
            cur = db.execute(
                "UPDATE lines SET owner = NULL, lease_until = NULL "
                "WHERE state = 'pending' AND owner IS NOT NULL"
            )
            return cur.rowcount

    def purge(self, before: float) -> int:
        """Finished batches that ended before `before` (epoch seconds) gone,
        with their lines and their output and error files; how many went."""
        with self._tx() as db:
            rows = db.execute(
                "SELECT id, body FROM batches WHERE finished_at < ?", (before,)
            ).fetchall()
            for batch_id, body in rows:
                job = json.loads(body)
                for field in ("output_file_id", "error_file_id"):
                    if job.get(field):
                        db.execute("DELETE FROM files WHERE id = ?", (job[field],))
                        db.execute("DELETE FROM file_chunks WHERE file_id = ?", (job[field],))
                db.execute("DELETE FROM lines WHERE batch_id = ?", (batch_id,))
                db.execute("DELETE FROM batches WHERE id = ?", (batch_id,))
        return len(rows)

    def job_counts(self) -> dict[str, int]:
        """Batches by status."""
        rows = self._all("SELECT status, count(*) FROM batches GROUP BY status")
        return {r[0]: int(r[1]) for r in rows}

    def backlog(self) -> tuple[int, int]:
        """(lines, output tokens) still to run in running batches."""
        row = self._one(
            "SELECT count(*), coalesce(sum(l.max_tokens), 0) FROM lines l "
            "JOIN batches b ON b.id = l.batch_id "
            "WHERE l.state = 'pending' AND b.status = 'in_progress'"
        )
        return int(row[0]), int(row[1])

    def counts(self, batch_id: str) -> Counts:
        row = self._one(
            "SELECT count(*), coalesce(sum(CASE WHEN state = 'done' THEN 1 ELSE 0 END), 0), "
            "coalesce(sum(CASE WHEN state = 'failed' THEN 1 ELSE 0 END), 0) "
            "FROM lines WHERE batch_id = ?",
            (batch_id,),
        )
        return Counts(int(row[0]), int(row[1]), int(row[2]))

    def cancel_pending(self, batch_id: str) -> None:
        """Lines not yet answered will not be (cancelled or expired batches)."""
        with self._tx() as db:
            db.execute(
                "UPDATE lines SET state = 'skipped' WHERE batch_id = ? AND state = 'pending'",
                (batch_id,),
            )

    def settle(self, batch: dict[str, Any], expect: str, tenant: str) -> bool:
        """Write the job back (only if its status is still `expect`: a fleet
        settles a batch once) with its output and error files, made here in
        the same transaction from its lines' answers: read a page of lines at
        a time and written in CHUNK-sized rows, so a batch of any size
        settles in bounded memory."""
        try:
            with self._tx() as db:
                for state, field in (("done", "output_file_id"), ("failed", "error_file_id")):
                    batch[field] = _answers_file(db, batch["id"], state, tenant)
                sql = "UPDATE batches SET body = ?, status = ?, finished_at = ? WHERE id = ? "
                args = (json.dumps(batch), batch["status"], finished_at(batch), batch["id"])
                if db.execute(sql + "AND status = ?", (*args, expect)).rowcount != 1:
                    raise _Lost  # another replica settled it first: none of this is kept
        except _Lost:
            return False
        return True

    def results(self, batch_id: str, state: str) -> list[dict[str, Any]]:
        """The answers in the input's order (for the output or error file)."""
        rows = self._all(
            "SELECT result FROM lines WHERE batch_id = ? AND state = ? ORDER BY idx",
            (batch_id, state),
        )
        return [json.loads(r[0]) for r in rows]


class _Lost(Exception):
    """The batch was settled by another replica (rolls the transaction back)."""


def _answers_file(db: Tx, batch_id: str, state: str, tenant: str) -> str | None:
    """The output (state done) or error file of a batch, its lines' answers
    in the input's order, one JSON per line; its id, or None if it has none."""
    file_id = f"file-{uuid.uuid4().hex}"
    size = insert_chunks(db, file_id, _answers(db, batch_id, state))
    if not size:
        return None
    kind = "output" if state == "done" else "error"
    meta = {"id": file_id, "purpose": "batch_output", "filename": f"{batch_id}_{kind}.jsonl",
            "bytes": size, "created_at": int(time.time())}  # fmt: skip
    insert_file(db, meta, tenant, b"")  # the content is in its chunks
    return file_id


def _answers(db: Tx, batch_id: str, state: str) -> Iterator[bytes]:
    """The answers as JSON lines, read 500 lines a page, in CHUNK-sized pieces."""
    buf, after = bytearray(), -1
    while rows := db.execute(
        "SELECT idx, result FROM lines WHERE batch_id = ? AND state = ? AND idx > ? "
        "ORDER BY idx LIMIT 500",
        (batch_id, state, after),
    ).fetchall():
        after = rows[-1][0]
        for _, result in rows:
            buf += result.encode() + b"\n"
            if len(buf) >= CHUNK:
                yield bytes(buf)
                buf = bytearray()
    if buf:
        yield bytes(buf)


def _marks(values: Sequence[Any]) -> str:
    return ",".join("?" * len(values))
