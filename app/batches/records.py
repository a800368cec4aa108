"""What the batch store holds, as plain data: its tables (one schema for
SQLite and PostgreSQL, the blob type apart), a line to run, a batch's
counts, the statuses of a batch still running; and what a backend gives
the store (a transaction's statements) and raises (StoreError)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, purpose TEXT NOT NULL,
    filename TEXT NOT NULL, bytes BIGINT NOT NULL, created_at BIGINT NOT NULL,
    content {blob} NOT NULL
);
CREATE TABLE IF NOT EXISTS batches (
    id TEXT PRIMARY KEY, tenant TEXT NOT NULL, body TEXT NOT NULL,
    status TEXT NOT NULL, created_at BIGINT NOT NULL, expires_at BIGINT NOT NULL,
    finished_at BIGINT
);
CREATE TABLE IF NOT EXISTS lines (
    batch_id TEXT NOT NULL, idx INTEGER NOT NULL, custom_id TEXT NOT NULL,
    body TEXT NOT NULL, max_tokens INTEGER NOT NULL, state TEXT NOT NULL DEFAULT 'pending',
    owner TEXT, lease_until DOUBLE PRECISION, result TEXT,
    PRIMARY KEY (batch_id, idx)
);
CREATE INDEX IF NOT EXISTS pending_lines ON lines (state, batch_id, idx);
CREATE TABLE IF NOT EXISTS file_chunks (
    file_id TEXT NOT NULL, seq INTEGER NOT NULL, data {blob} NOT NULL,
    PRIMARY KEY (file_id, seq)
);
"""
CHUNK = 2**20  # bytes of an output file per file_chunks row

ACTIVE = ("validating", "in_progress", "finalizing", "cancelling")
ENDINGS = ("completed", "expired", "cancelled", "failed")


@dataclass(frozen=True, slots=True)
class Line:
    batch_id: str
    idx: int
    custom_id: str
    body: dict[str, Any]

    @property
    def max_tokens(self) -> int:
        """The output tokens the line may take (the backlog's measure); a
        line without a limit counts the completions endpoint's default, 16."""
        for key in ("max_tokens", "max_completion_tokens"):
            value = self.body.get(key)
            if isinstance(value, int) and not isinstance(value, bool):
                return min(max(value, 0), 2**31 - 1)  # an INTEGER column either way
        return 16


@dataclass(frozen=True, slots=True)
class Counts:
    total: int
    completed: int
    failed: int


def finished_at(batch: dict[str, Any]) -> int | None:
    """When a batch ended (completed, expired, cancelled or failed), if it did."""
    for ending in ENDINGS:
        if batch.get(f"{ending}_at"):
            return int(batch[f"{ending}_at"])
    return None


class StoreError(Exception):
    """The store cannot be read or written now (a full disk, a lost database)."""


class Cursor(Protocol):
    @property
    def rowcount(self) -> int: ...

    def fetchall(self) -> Sequence[Any]: ...


class Tx(Protocol):
    """One transaction's statements (`?` placeholders)."""

    def execute(self, sql: str, args: Sequence[Any] = ()) -> Cursor: ...

    def executemany(self, sql: str, rows: Sequence[Sequence[Any]]) -> Any: ...


def file_meta(row: Sequence[Any]) -> dict[str, Any]:
    """A files row (as FILE_META selects it) as the API's file object."""
    return {
        "id": row[0],
        "object": "file",
        "purpose": row[1],
        "filename": row[2],
        "bytes": row[3],
        "created_at": row[4],
        "status": "processed",
    }


def output_line(
    line: Line, response: dict[str, Any] | None, error: dict[str, Any] | None
) -> dict[str, Any]:
    """One line of the output or error file, in OpenAI's format."""
    if response is not None:
        response = {**response, "request_id": f"req_{line.batch_id}_{line.idx}"}
    else:
        response = {
            "status_code": error["status_code"] if error else 500,
            "request_id": f"req_{line.batch_id}_{line.idx}",
            "body": error["body"] if error else None,
        }
        error = {"code": "request_failed", "message": "See the response body."}
    return {"id": f"batch_req_{line.batch_id}_{line.idx}", "custom_id": line.custom_id,
            "response": response, "error": error}  # fmt: skip
