"""The Batch API's operations, in OpenAI's shapes, over the store: files
(upload, list, get, content, delete) and batches (create, get, list,
cancel), each owned by the tenant that made it (`owner`: the tenant's
identity in hex, "" without keys); another tenant gets the same 404 as a
missing id. No FastAPI here; the routes (work in progress) only do HTTP.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import KW_ONLY, dataclass
from typing import Any, BinaryIO, TypeVar

from app.batches.input import read_input
from app.batches.records import Line, StoreError
from app.batches.store import BatchStore
from app.errors import InvalidRequest, RateLimited, Unavailable
from app.errors import ResourceNotFound as NotFound

# OpenAI's one window is 24h; a shorter one (e.g. "1h", "30m", "90s") is
# ours too, for a job that is worth nothing after it.
WINDOW = re.compile(r"([1-9][0-9]{0,5})([smh])")
UNITS = {"s": 1, "m": 60, "h": 3600}
LONGEST = 24 * 3600
T = TypeVar("T")
logger = logging.getLogger(__name__)


@dataclass
class Batches:
    store: BatchStore
    _: KW_ONLY
    max_file_bytes: int
    max_lines: int
    max_active: int  # batches per tenant not yet finished
    max_files: int = 100  # input files a tenant keeps at once
    max_storage: int = 10 * 2**30  # their bytes
    changed: Callable[[], None] = lambda: None  # a batch created or cancelled (wakes the runner)

    async def _db(self, call: Callable[..., T], *args: Any) -> T:
        """A store call on a thread; a store that fails (a full disk, a lost
        database) is a 503 for this call, never a lost accepted line (each
        write is one transaction)."""
        try:
            return await asyncio.to_thread(call, *args)
        except StoreError as exc:
            logger.error("batch store: %s", exc)
            raise Unavailable(f"The batch store is unavailable ({exc}); retry later.") from None

    # -- files -----------------------------------------------------------------

    def too_large(self) -> InvalidRequest:
        return InvalidRequest(
            f"The file is larger than {self.max_file_bytes} bytes (GATEWAY_MAX_BATCH_FILE_BYTES).",
            param="file",
        )

    async def upload(
        self, owner: str, filename: str, purpose: str, content: bytes | BinaryIO
    ) -> dict[str, Any]:
        """A file stored for `owner`: bytes, or a file object (an upload the
        HTTP parser spooled to disk) read a chunk at a time into the store."""
        if purpose != "batch":
            raise InvalidRequest("purpose must be 'batch'.", param="purpose")
        if isinstance(content, bytes) and len(content) > self.max_file_bytes:
            raise self.too_large()
        meta = {
            "id": f"file-{uuid.uuid4().hex}",
            "purpose": purpose,
            "filename": filename[:255] or "upload.jsonl",
            "bytes": len(content) if isinstance(content, bytes) else 0,
            "created_at": int(time.time()),
        }
        quota = (self.max_files, self.max_storage)
        over = await self._db(self.store.put_file, meta, owner, content, quota, self.max_file_bytes)
        if over == "size":
            raise self.too_large()
        if over is not None:
            what = (
                f"{self.max_files} input files (GATEWAY_MAX_BATCH_FILES)"
                if over == "files"
                else f"{self.max_storage} bytes of input files (GATEWAY_MAX_BATCH_FILE_STORAGE)"
            )
            raise RateLimited(
                f"A tenant may keep at most {what}; delete files it no longer needs.",
                retry_after=3600,
                code="file_quota_exceeded",
            )
        return {**meta, "object": "file", "status": "processed"}

    async def file(self, owner: str, file_id: str) -> dict[str, Any]:
        meta = await self._db(self.store.file, file_id, owner)
        if meta is None:
            raise NotFound("No such file.", param="file_id")  # the id is not echoed
        return meta

    async def files(self, owner: str) -> dict[str, Any]:
        data = await self._db(self.store.files, owner)
        return {"object": "list", "data": data, "has_more": False}

    async def content(self, owner: str, file_id: str) -> bytes:
        content = await self._db(self.store.content, file_id, owner)
        if content is None:
            raise NotFound("No such file.", param="file_id")  # the id is not echoed
        return content

    async def pieces(self, owner: str, file_id: str) -> AsyncIterator[bytes]:
        """A file's content piece by piece (a download: an output file of any
        size streams in CHUNK-sized pieces); NotFound before the first."""
        parts = await self._db(self.store.parts, file_id, owner)
        if parts is None:
            raise NotFound("No such file.", param="file_id")  # the id is not echoed

        async def each() -> AsyncIterator[bytes]:
            for seq in range(parts):
                yield await self._db(self.store.part, file_id, seq)

        return each()

    async def delete(self, owner: str, file_id: str) -> dict[str, Any]:
        if not await self._db(self.store.delete_file, file_id, owner):
            raise NotFound("No such file.", param="file_id")  # the id is not echoed
        return {"id": file_id, "object": "file", "deleted": True}

    # -- batches ---------------------------------------------------------------

    async def create(
        self,
        owner: str,
        input_file_id: str,
        endpoint: str,
        completion_window: str,
        metadata: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        window = window_seconds(completion_window)
        content = await self.content(owner, input_file_id)
        # Off the event loop: parsing 100 MiB takes about 1.5 s.
        requests = await asyncio.to_thread(read_input, content, endpoint, self.max_lines)
        now = int(time.time())
        batch_id = f"batch_{uuid.uuid4().hex}"
        batch: dict[str, Any] = {
            "id": batch_id,
            "object": "batch",
            "endpoint": endpoint,
            "errors": None,
            "input_file_id": input_file_id,
            "completion_window": completion_window,
            "status": "in_progress",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": now,
            "in_progress_at": now,
            "expires_at": now + int(window),
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": len(requests), "completed": 0, "failed": 0},
            "metadata": metadata,
        }
        lines = [Line(batch_id, i, cid, body) for i, (cid, body) in enumerate(requests)]
        # The cap checked in the transaction that inserts (two creates at once
        # cannot both pass it).
        if not await self._db(self.store.create_batch, batch, owner, lines, self.max_active):
            raise RateLimited(
                f"At most {self.max_active} batches may be in progress at once; "
                "retry when one finishes.",
                retry_after=60,
                code="batch_limit_exceeded",
            )
        self.changed()
        return batch

    async def get(self, owner: str, batch_id: str) -> dict[str, Any]:
        batch = await self._db(self.store.batch, batch_id, owner)
        if batch is None:
            raise NotFound("No such batch.", param="batch_id")  # the id is not echoed
        counts = await self._db(self.store.counts, batch_id)
        batch["request_counts"] = {
            "total": counts.total, "completed": counts.completed, "failed": counts.failed
        }  # fmt: skip
        return batch

    async def list(self, owner: str, after: str | None, limit: int) -> dict[str, Any]:
        limit = max(1, min(limit, 100))
        data = await self._db(self.store.batches, owner, after, limit + 1)
        more = len(data) > limit
        data = data[:limit]
        return {
            "object": "list",
            "data": data,
            "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None,
            "has_more": more,
        }

    async def cancel(self, owner: str, batch_id: str) -> dict[str, Any]:
        batch = await self.get(owner, batch_id)
        if batch["status"] in ("validating", "in_progress"):
            previous = batch["status"]
            batch["status"] = "cancelling"
            batch["cancelling_at"] = int(time.time())
            await self._db(self.store.update_batch, batch, previous)
            self.changed()
        return await self.get(owner, batch_id)


def window_seconds(text: str) -> int:
    """A completion window's seconds: "24h", or shorter ("1h", "30m", "90s")."""
    match = WINDOW.fullmatch(text)
    seconds = int(match[1]) * UNITS[match[2]] if match else 0
    if not 0 < seconds <= LONGEST:
        raise InvalidRequest(
            "completion_window must be 24h or shorter, as a number of hours, minutes or "
            'seconds ("24h", "1h", "30m", "90s").',
            param="completion_window",
        )
    return seconds
