"""The files a batch store holds (input files a tenant uploads, output and
error files its batches make), each a tenant's, and what every backend
gives the store: one transaction at a time (`_tx`), closing, reclaiming
space. Uploads are held to a tenant's quota (count and bytes of its input
files) in the transaction that stores them; input files expire."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from contextlib import AbstractContextManager
from typing import Any, BinaryIO

from app.batches.records import ACTIVE, CHUNK, Tx, file_meta

FILE_META = "SELECT id, purpose, filename, bytes, created_at FROM files "


class FileStore:
    """A backend gives `_tx` (one transaction, committed when the block
    ends, rolled back when it raises), `claim_lock` and `tenant_lock`."""

    claim_lock = ""  # what a claim's SELECT adds to lock the rows it takes
    tenant_lock = ""  # a statement serialising one tenant's quota checks ("" if writes are)
    single_writer = False  # one gateway per store: any lease at start is a dead one's

    def _tx(self) -> AbstractContextManager[Tx]:
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def reclaim(self) -> None:
        """Give back space after a purge (where the backend needs telling)."""

    def _all(self, sql: str, args: Sequence[Any] = ()) -> list[Any]:
        with self._tx() as db:
            return list(db.execute(sql, args).fetchall())

    def _one(self, sql: str, args: Sequence[Any] = ()) -> Any:
        rows = self._all(sql, args)
        return rows[0] if rows else None

    def put_file(
        self,
        meta: dict[str, Any],
        tenant: str,
        content: bytes | BinaryIO,
        quota: tuple[int, int] | None = None,
        limit: int | None = None,
    ) -> str | None:
        """Store a file: bytes in its row, or a file object read CHUNK by
        CHUNK into chunk rows (an upload never held whole; `limit`: refused
        past that many bytes, meta["bytes"] set). With `quota` (files, bytes
        of the tenant's input files), checked in the same transaction. The
        reason it was refused ("files", "bytes" or "size": nothing stored),
        else None."""
        try:
            with self._tx() as db:
                total = 0
                if quota is not None:
                    if self.tenant_lock:
                        db.execute(self.tenant_lock, (tenant,))
                    n, total = db.execute(
                        "SELECT count(*), coalesce(sum(bytes), 0) FROM files "
                        "WHERE tenant = ? AND purpose = 'batch'",
                        (tenant,),
                    ).fetchall()[0]
                    if int(n) >= quota[0]:
                        raise _Refused("files")
                if isinstance(content, bytes):
                    insert_file(db, meta, tenant, content)
                else:
                    pieces = iter(lambda: content.read(CHUNK), b"")
                    meta["bytes"] = insert_chunks(db, meta["id"], pieces, limit)
                    insert_file(db, meta, tenant, b"")
                if quota is not None and int(total) + int(meta["bytes"]) > quota[1]:
                    raise _Refused("bytes")
        except _Refused as refused:
            return refused.reason
        return None

    def file(self, file_id: str, tenant: str) -> dict[str, Any] | None:
        row = self._one(FILE_META + "WHERE id = ? AND tenant = ?", (file_id, tenant))
        return file_meta(row) if row else None

    def files(self, tenant: str) -> list[dict[str, Any]]:
        rows = self._all(
            FILE_META + "WHERE tenant = ? ORDER BY created_at DESC, id DESC", (tenant,)
        )
        return [file_meta(r) for r in rows]

    def content(self, file_id: str, tenant: str) -> bytes | None:
        """A file's whole content (an input file, to parse); None if not the tenant's."""
        parts = self.parts(file_id, tenant)
        return None if parts is None else b"".join(self.part(file_id, i) for i in range(parts))

    def parts(self, file_id: str, tenant: str) -> int | None:
        """How many pieces `part` gives of the tenant's file (None: no such
        file): an output file's chunk rows, or an input file's one blob."""
        row = self._one(
            "SELECT (SELECT count(*) FROM file_chunks WHERE file_id = ?) FROM files "
            "WHERE id = ? AND tenant = ?",
            (file_id, file_id, tenant),
        )
        return None if row is None else max(1, int(row[0]))

    def part(self, file_id: str, seq: int) -> bytes:
        """Piece `seq` of a file (of a file `parts` counted: its tenant checked there)."""
        row = self._one(
            "SELECT data FROM file_chunks WHERE file_id = ? AND seq = ?", (file_id, seq)
        )
        if row is None and seq == 0:  # one blob in the files row
            row = self._one("SELECT content FROM files WHERE id = ?", (file_id,))
        return bytes(row[0]) if row else b""

    def delete_file(self, file_id: str, tenant: str) -> bool:
        with self._tx() as db:
            cur = db.execute("DELETE FROM files WHERE id = ? AND tenant = ?", (file_id, tenant))
            if cur.rowcount != 1:
                return False
            db.execute("DELETE FROM file_chunks WHERE file_id = ?", (file_id,))
            return True

    def expire_files(self, before: float) -> int:
        """Input files uploaded before `before` gone, but for those an
        unfinished batch reads; how many went."""
        with self._tx() as db:
            marks = ",".join("?" * len(ACTIVE))
            bodies = db.execute(
                f"SELECT body FROM batches WHERE status IN ({marks})", ACTIVE
            ).fetchall()
            used = {json.loads(b[0]).get("input_file_id") for b in bodies}
            old = db.execute(
                "SELECT id FROM files WHERE purpose = 'batch' AND created_at < ?", (before,)
            ).fetchall()
            gone = [(r[0],) for r in old if r[0] not in used]
            if gone:
                db.executemany("DELETE FROM files WHERE id = ?", gone)
                db.executemany("DELETE FROM file_chunks WHERE file_id = ?", gone)
        return len(gone)


class _Refused(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def insert_chunks(db: Tx, file_id: str, pieces: Iterable[bytes], limit: int | None = None) -> int:
    """`pieces` stored as the chunk rows of `file_id`, in order; their size
    (past `limit`: refused, the transaction rolled back)."""
    size = 0
    for seq, piece in enumerate(pieces):
        size += len(piece)
        if limit is not None and size > limit:
            raise _Refused("size")
        db.execute("INSERT INTO file_chunks VALUES (?, ?, ?)", (file_id, seq, piece))
    return size


def insert_file(db: Tx, meta: dict[str, Any], tenant: str, content: bytes) -> None:
    db.execute(
        "INSERT INTO files (id, tenant, purpose, filename, bytes, created_at, content) "
        "VALUES (?, ?, ?, ?, ?, ?, ?)",
        (meta["id"], tenant, meta["purpose"], meta["filename"], meta["bytes"],
         meta["created_at"], content),
    )  # fmt: skip
