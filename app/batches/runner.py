"""Runs batch lines on idle engine time: each line an ordinary request
through the completion service (the same preparation, limits, constraints
and engine path as online traffic), at a priority below every online one,
and only while the engine has room: no online request waits, and running
requests stay below `room` places. A line that ends wakes the runner, so
the engine does not idle while a batch waits. A tenant's budget at its
edge pauses the batch until the window turns; it does not fail it.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from app.batches.records import Line
from app.batches.store import BatchStore
from app.errors import BudgetExceeded, GatewayError
from app.observability.batch_metrics import BatchMetrics

logger = logging.getLogger(__name__)

# Runs one line's body for the batch's tenant: (owner, batch id, endpoint,
# body) -> the answer's JSON, or a GatewayError.
RunLine = Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        run_line: RunLine,
        room: Callable[[], int],
        metrics: BatchMetrics | None = None,
        *,
        lease: float = 120.0,
        poll: float = 0.5,
        idle_poll: float = 5.0,
        retention: float = 30 * 86400,
        measure_every: float = 5.0,
        ahead: int = 16,
    ):
        self.store = store
        self.run_line = run_line
        self.room = room  # engine places batch lines may hold in all now (0: none)
        self.metrics = metrics
        self.lease = lease
        self.poll = poll  # seconds between passes while a batch runs
        self.idle_poll = idle_poll  # while none does (a new one here wakes it at once)
        self._active = False  # the last pass saw an unfinished batch
        self.retention = retention  # seconds a finished batch is kept
        self.measure_every = measure_every  # seconds between the gauges' reads
        self._purged_at = 0.0
        self._measured_at = 0.0
        self._wake = asyncio.Event()  # a line ended: its place is free
        self.ahead = ahead  # lines claimed beyond the free places, ready to start
        self._ready: deque[tuple[str, dict[str, Any], Line]] = deque()
        self._done: list[tuple[Line, str, dict[str, Any]]] = []  # answers to write
        self.owner = f"gw-{uuid.uuid4().hex[:12]}"  # leases die with the process
        self._running: dict[asyncio.Task[None], str] = {}  # line task -> its batch id
        self._paused_until: dict[str, float] = {}  # tenant -> when its window turns

    async def run(self) -> None:
        """Forever (cancelled at shutdown): find work, run it while there is room."""
        with contextlib.suppress(Exception):  # a failing store: the passes say so
            taken = await asyncio.to_thread(self.store.release_all)
            if taken:
                logger.info("batch lines taken up again after a restart: %d", taken)
        failing = False
        while True:
            self._wake.clear()
            try:
                worked = await self.step()
                failing = False
            except Exception as exc:  # a store that fails (disk, database): try again later
                if not failing:  # said once per outage, not every pass
                    logger.error("batch runner pass failed: %r", exc)
                failing, worked = True, False
            if not worked:
                busy = self._active or self._running or self._ready or self._done
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(self._wake.wait(), self.poll if busy else self.idle_poll)

    def wake(self) -> None:
        """A batch was created or cancelled here: a pass now, not at the next poll."""
        self._wake.set()

    async def stop(self) -> None:
        """A clean stop: lines in flight are given back at once (their answers,
        if any arrive, are dropped), so a restart takes them without waiting
        for the leases to run out."""
        for task in list(self._running):
            task.cancel()
        self._ready.clear()
        with contextlib.suppress(Exception):  # what was answered is kept if the store can
            await self._flush()
        await asyncio.to_thread(self.store.release, self.owner)

    async def step(self) -> bool:
        """One pass: results written, lines claimed ahead of the places they
        will take, batches settled; True when a line was started."""
        now = time.time()
        await self._flush()
        if now - self._purged_at > 60:  # a finished batch's retention, minute by minute
            self._purged_at = now
            await asyncio.to_thread(self.store.purge, now - self.retention)
        if self.metrics is not None and now - self._measured_at > self.measure_every:
            self._measured_at = now
            await asyncio.to_thread(self._measure)
        active = await asyncio.to_thread(self.store.active_batches)
        self._active = bool(active)
        for tenant, batch in active:
            if batch["status"] != "in_progress" or now >= batch["expires_at"]:
                await self._settle(tenant, batch, now)
                continue
            if self._paused_until.get(tenant, 0) > now:
                continue
            want = self.room() + self.ahead - len(self._running) - len(self._ready)
            if want <= 0:
                break
            lines = await asyncio.to_thread(
                self.store.claim, batch["id"], self.owner, want, self.lease
            )
            self._ready.extend((tenant, batch, line) for line in lines)
            if not lines and not self._holds(batch["id"]):
                await self._settle(tenant, batch, now)
        return self._feed()

    def _feed(self) -> bool:
        """Start ready lines while the engine has room for them; True if one started."""
        free = self.room() - len(self._running)
        started = False
        while free > 0 and self._ready:
            tenant, batch, line = self._ready.popleft()
            task = asyncio.ensure_future(self._one(tenant, batch, line))
            self._running[task] = batch["id"]
            task.add_done_callback(self._ended)
            free -= 1
            started = True
        return started

    def _holds(self, batch_id: str) -> bool:
        """Lines of the batch running, ready or answered but not yet written."""
        return (
            batch_id in self._running.values()
            or any(b["id"] == batch_id for _, b, _ in self._ready)
            or any(line.batch_id == batch_id for line, _, _ in self._done)
        )

    def _drop_ready(self, batch_id: str) -> None:
        self._ready = deque(x for x in self._ready if x[1]["id"] != batch_id)

    def _ended(self, task: asyncio.Task[None]) -> None:
        self._running.pop(task, None)
        self._feed()  # its place to the next ready line at once, no store call between
        self._wake.set()

    async def _flush(self) -> None:
        """The answers since the last pass, written in one transaction; each
        kept only if its line is still pending and leased to this runner."""
        if not self._done:
            return
        done, self._done = self._done, []
        kept = await asyncio.to_thread(self.store.finish_many, self.owner, done)
        if self.metrics is not None:
            for (_, state, _), ok in zip(done, kept, strict=True):
                if ok:
                    self.metrics.lines[state].inc()

    def _measure(self) -> None:
        metrics = self.metrics
        assert metrics is not None
        metrics.jobs_now(self.store.job_counts())
        metrics.backlog_now(*self.store.backlog())

    async def _one(self, tenant: str, batch: dict[str, Any], line: Line) -> None:
        """Run the line; its answer (or error) is written by the next pass."""
        try:
            body = await self.run_line(tenant, batch["id"], batch["endpoint"], line.body)
            state, result = "done", _line(line, {"status_code": 200, "body": body}, None)
        except BudgetExceeded as exc:
            # At the budget's edge: give the line back, pause the tenant's batches.
            self._paused_until[tenant] = time.time() + exc.retry_after
            self._drop_ready(batch["id"])
            await asyncio.to_thread(self.store.release, self.owner, batch["id"])
            return
        except GatewayError as exc:
            error = {"status_code": int(exc.status), "body": exc.body()}
            state, result = "failed", _line(line, None, error)
        except Exception:
            logger.exception("batch %s line %d failed", batch["id"], line.idx)
            body = {"error": {"message": "The line failed.", "type": "server_error"}}
            state, result = "failed", _line(line, None, {"status_code": 500, "body": body})
        self._done.append((line, state, result))

    async def _settle(self, tenant: str, batch: dict[str, Any], now: float) -> bool:
        """Move a batch on when its lines are all answered, it was cancelled
        or its window passed; True when it is no longer running."""
        counts = await asyncio.to_thread(self.store.counts, batch["id"])
        batch["request_counts"] = {
            "total": counts.total, "completed": counts.completed, "failed": counts.failed
        }  # fmt: skip
        status = batch["status"]
        ending = None
        if status == "cancelling":
            ending = "cancelled"
        elif now >= batch["expires_at"]:
            ending = "expired"
        elif counts.completed + counts.failed == counts.total:
            ending = "completed"
        if ending is None:
            return False
        if ending != "completed":
            for task, of in list(self._running.items()):  # its lines in flight end now
                if of == batch["id"]:
                    task.cancel()
            self._drop_ready(batch["id"])
            await asyncio.to_thread(self.store.cancel_pending, batch["id"])
        files = []
        for state, field in (("done", "output_file_id"), ("failed", "error_file_id")):
            made = await asyncio.to_thread(self._result_file, batch, state)
            batch[field] = made[0]["id"] if made else None
            if made:
                files.append((made[0], tenant, made[1]))
        batch["status"] = ending
        batch[f"{ending}_at"] = int(now)
        batch["finalizing_at"] = batch.get("finalizing_at") or int(now)
        # The job and its files in one write, and only by the replica that
        # saw it `status`: a fleet settles a batch once.
        await asyncio.to_thread(self.store.update_batch, batch, status, files)
        return True

    def _result_file(
        self, batch: dict[str, Any], state: str
    ) -> tuple[dict[str, Any], bytes] | None:
        """The output (or error) file: the answers in the input's order."""
        content = "".join(
            json.dumps(r, ensure_ascii=False) + "\n" for r in self.store.results(batch["id"], state)
        ).encode()
        if not content:
            return None
        kind = "output" if state == "done" else "error"
        meta = {
            "id": f"file-{uuid.uuid4().hex}",
            "purpose": "batch_output",
            "filename": f"{batch['id']}_{kind}.jsonl",
            "bytes": len(content),
            "created_at": int(time.time()),
        }
        return meta, content


def _line(
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
