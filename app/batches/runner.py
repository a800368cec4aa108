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
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable
from typing import Any

from app.batches.records import Line, output_line
from app.batches.store import BatchStore
from app.errors import BudgetExceeded, EngineStalled, GatewayError, RequestTimeout, Unavailable
from app.observability.batch_metrics import BatchMetrics

logger = logging.getLogger(__name__)

# Runs one line's body for the batch's tenant: (owner, batch id, endpoint,
# body) -> the answer's JSON, or a GatewayError.
RunLine = Callable[[str, str, str, dict[str, Any]], Awaitable[dict[str, Any]]]
# Errors that are the moment's, not the line's (overloaded, the engine
# restarting or stalled, a line preempted past the request timeout): the
# line is given back and run again, up to RETRIES times by this runner.
TRANSIENT = (Unavailable, EngineStalled, RequestTimeout)
RETRIES = 3
GONE = "The batch's owner is no longer in the tenants file: its lines are not run."


class BatchRunner:
    def __init__(
        self,
        store: BatchStore,
        run_line: RunLine,
        room: Callable[[], int],
        metrics: BatchMetrics | None = None,
        *,
        gone: Callable[[str], bool] = lambda owner: False,
        lease: float = 120.0,
        poll: float = 0.5,
        idle_poll: float = 5.0,
        retention: float = 30 * 86400,
        file_retention: float = 30 * 86400,
        measure_every: float = 5.0,
        ahead: int = 16,
    ):
        self.store = store
        self.run_line = run_line
        self.room = room  # engine places batch lines may hold in all now (0: none)
        self.metrics = metrics
        self.gone = gone  # whether a batch's owner was removed (its batches fail)
        self.lease = lease  # renewed every third of it while a line is held
        self.poll = poll  # seconds between passes while a batch runs
        self.idle_poll = idle_poll  # while none does (a new one here wakes it at once)
        self._active = False  # the last pass saw an unfinished batch
        self.retention = retention  # seconds a finished batch is kept
        self.file_retention = file_retention  # seconds an input file is kept
        self.measure_every = measure_every  # seconds between the gauges' reads
        self._purged_at = 0.0
        self._measured_at = 0.0
        self._wake = asyncio.Event()  # a line ended: its place is free
        self.ahead = ahead  # lines claimed beyond the free places, ready to start
        self._ready: deque[tuple[str, dict[str, Any], Line]] = deque()
        self._done: list[tuple[Line, str, dict[str, Any]]] = []  # answers to write
        self.owner = f"gw-{uuid.uuid4().hex[:12]}"  # leases die with the process
        self._running: dict[asyncio.Task[None], Line] = {}  # line task -> its line
        self._paused_until: dict[str, float] = {}  # tenant -> when its window turns
        self._renewed_at = time.time()
        self._tries: dict[tuple[str, int], int] = {}  # a line's transient failures here
        self._failing: set[str] = set()  # batches whose last visit failed (logged once)

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
        """One pass: results written, leases renewed, lines claimed ahead of
        the places they will take, batches settled; True when a line was started."""
        now = time.time()
        await self._flush()
        if now - self._renewed_at > self.lease / 3:
            await asyncio.to_thread(self.store.renew, self.owner, self._held(), self.lease)
            self._renewed_at = now
        if now - self._purged_at > 60:  # a finished batch's retention, minute by minute
            self._purged_at = now
            gone = await asyncio.to_thread(self.store.purge, now - self.retention)
            gone += await asyncio.to_thread(self.store.expire_files, now - self.file_retention)
            if gone:
                await asyncio.to_thread(self.store.reclaim)
        if self.metrics is not None and now - self._measured_at > self.measure_every:
            self._measured_at = now
            await asyncio.to_thread(self._measure)
        active = await asyncio.to_thread(self.store.active_batches)
        self._active = bool(active)
        for tenant, batch in active:
            try:  # each batch its own failure domain: one that fails holds up no other
                if not await self._visit(tenant, batch, now):
                    break
                self._failing.discard(batch["id"])
            except Exception as exc:
                if batch["id"] not in self._failing:  # said once, not every pass
                    self._failing.add(batch["id"])
                    logger.error("batch %s: %r (tried again each pass)", batch["id"], exc)
        return self._feed()

    async def _visit(self, tenant: str, batch: dict[str, Any], now: float) -> bool:
        """Settle the batch, or claim lines of it; False when there is no room left."""
        if batch["status"] != "in_progress" or now >= batch["expires_at"]:
            await self._settle(tenant, batch, now)
        elif self.gone(tenant):
            await self._settle(tenant, batch, now, failed=GONE)
        elif self._paused_until.get(tenant, 0) <= now:
            want = self.room() + self.ahead - len(self._running) - len(self._ready)
            if want <= 0:
                return False
            lines = await asyncio.to_thread(
                self.store.claim, batch["id"], self.owner, want, self.lease
            )
            held = self._held()  # a line this runner holds is never run twice
            self._ready.extend((tenant, batch, ln) for ln in lines if _key(ln) not in held)
            if not lines and not self._holds(batch["id"]):
                await self._settle(tenant, batch, now)
        return True

    def _feed(self) -> bool:
        """Start ready lines while the engine has room for them; True if one started."""
        free = self.room() - len(self._running)
        started = False
        while free > 0 and self._ready:
            tenant, batch, line = self._ready.popleft()
            if self.gone(tenant):  # removed since it was claimed: the next pass fails it
                continue
            task = asyncio.ensure_future(self._one(tenant, batch, line))
            self._running[task] = line
            task.add_done_callback(self._ended)
            free -= 1
            started = True
        return started

    def _held(self) -> list[tuple[str, int]]:
        """The lines this runner holds: running, ready, or answered but not yet written."""
        held = [_key(line) for line in self._running.values()]
        held += [_key(line) for _, _, line in self._ready]
        return held + [_key(line) for line, _, _ in self._done]

    def _holds(self, batch_id: str) -> bool:
        return any(b == batch_id for b, _ in self._held())

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
        try:
            kept = await asyncio.to_thread(self.store.finish_many, self.owner, done)
        except BaseException:  # not written: kept for the next pass, never dropped
            self._done[:0] = done
            raise
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
            state, result = "done", output_line(line, {"status_code": 200, "body": body}, None)
        except BudgetExceeded as exc:
            # At the budget's edge: this line and the batch's ready ones go
            # back (lines running go on), the tenant's batches pause.
            self._paused_until[tenant] = time.time() + exc.retry_after
            await self._give_back(line, batch["id"])
            return
        except TRANSIENT as exc:
            tries = self._tries[_key(line)] = self._tries.get(_key(line), 0) + 1
            if tries <= RETRIES:  # the moment's fault: run again, a second on
                logger.info("batch %s line %d again (%s)", batch["id"], line.idx, exc.message)
                self._paused_until[tenant] = time.time() + 1.0
                await self._give_back(line, batch["id"])
                return
            error = {"status_code": int(exc.status), "body": exc.body()}
            state, result = "failed", output_line(line, None, error)
        except GatewayError as exc:
            error = {"status_code": int(exc.status), "body": exc.body()}
            state, result = "failed", output_line(line, None, error)
        except Exception:
            logger.exception("batch %s line %d failed", batch["id"], line.idx)
            body = {"error": {"message": "The line failed.", "type": "server_error"}}
            state, result = "failed", output_line(line, None, {"status_code": 500, "body": body})
        self._tries.pop(_key(line), None)
        self._done.append((line, state, result))

    async def _give_back(self, line: Line, batch_id: str) -> None:
        keys = [_key(line)] + [_key(ln) for _, b, ln in self._ready if b["id"] == batch_id]
        self._drop_ready(batch_id)
        await asyncio.to_thread(self.store.release, self.owner, None, keys)

    async def _settle(
        self, tenant: str, batch: dict[str, Any], now: float, failed: str | None = None
    ) -> bool:
        """Move a batch on when its lines are all answered, it was cancelled,
        its window passed or (`failed`) it cannot go on; True when it is no
        longer running. Ending early: its lines stop, what they answered is
        written, then the rest are skipped."""
        status = batch["status"]
        ending = None
        if failed is not None:
            ending = "failed"
        elif status == "cancelling":
            ending = "cancelled"
        elif now >= batch["expires_at"]:
            ending = "expired"
        if ending is not None:
            stopping = [t for t, line in self._running.items() if line.batch_id == batch["id"]]
            for task in stopping:
                task.cancel()
            await asyncio.gather(*stopping, return_exceptions=True)
            self._drop_ready(batch["id"])
            await self._flush()
            await asyncio.to_thread(self.store.cancel_pending, batch["id"])
        counts = await asyncio.to_thread(self.store.counts, batch["id"])
        batch["request_counts"] = {
            "total": counts.total, "completed": counts.completed, "failed": counts.failed
        }  # fmt: skip
        if ending is None and counts.completed + counts.failed == counts.total:
            ending = "completed"
        if ending is None:
            return False
        if failed is not None:
            batch["errors"] = {"object": "list", "data": [{"code": "tenant_removed",
                               "message": failed, "param": None, "line": None}]}  # fmt: skip
        batch["status"] = ending
        batch[f"{ending}_at"] = int(now)
        batch["finalizing_at"] = batch.get("finalizing_at") or int(now)
        # The job and its files (made in chunks from its lines) in one write,
        # and only by the replica that saw it `status`: a fleet settles it once.
        await asyncio.to_thread(self.store.settle, batch, status, tenant)
        return True


def _key(line: Line) -> tuple[str, int]:
    return line.batch_id, line.idx
