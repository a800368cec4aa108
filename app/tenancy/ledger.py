"""Every completion and chat request accounted, however it ends: its budget
charged on admission and settled to what it used, per-tenant metrics, and
one line of the usage log (GATEWAY_USAGE_LOG), never the key, the prompt or
the text.

    record = RequestRecord(endpoint, request_id)     # the HTTP layer, first
    record.prepared(...); await ledger.charge(record, tokens)  # once validated
    record.ran(...)                                   # when its run ends
    ledger.finish(record, status)                     # the HTTP layer, last
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import queue
import sys
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import IO, Any

from app.errors import GatewayError
from app.observability.record import OUTCOMES, RequestRecord
from app.observability.tenant_metrics import TenantMetrics
from app.tenancy.budgets import (
    Charge,
    Concurrency,
    Window,
    rate_headers,
    refusal,
    too_large,
    windows,
)
from app.tenancy.quota import MemoryStore, QuotaStore
from app.tenancy.tenants import UNNAMED, Tenant

logger = logging.getLogger(__name__)


class UsageLog:
    """JSON lines to a file (appended) or to standard output (`-`), written on
    a thread of its own (a slow or failing disk never holds the event loop).
    `reopen()` (SIGHUP) opens the path again: logrotate's rename, then a new
    file. A line that cannot be written is counted; the log says so once per
    outage, and once when writing works again."""

    # Batches at most this often: a wake per line cost the streams CPU (bench.layer).
    BATCH_SECONDS = 0.2

    def __init__(self, target: str, on_error: Callable[[], None] = lambda: None):
        self._path = None if target == "-" else Path(target)
        self._on_error = on_error
        self._queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._lines: list[str] = []  # written on the event loop, not yet handed over
        self._handing: asyncio.TimerHandle | None = None
        self._out: IO[str] | None = None
        if self._path is not None:  # created now: it exists from the start
            with contextlib.suppress(OSError):
                self._out = open(self._path, "a", encoding="utf-8")  # noqa: SIM115
        self._ok = True
        self._thread = threading.Thread(target=self._run, name="usage-log", daemon=True)
        self._thread.start()

    def write(self, line: dict[str, Any]) -> None:
        self._lines.append(json.dumps(line, separators=(",", ":")) + "\n")
        if self._handing is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a script, a test): at once
                self._hand_over()
                return
            self._handing = loop.call_later(self.BATCH_SECONDS, self._hand_over)

    def _hand_over(self) -> None:
        self._handing = None
        if self._lines:
            lines, self._lines = self._lines, []
            self._queue.put("".join(lines))

    def reopen(self) -> None:
        self._hand_over()  # what was written before the signal goes to the old file
        self._queue.put(_REOPEN)

    def close(self) -> None:
        if self._handing is not None:
            self._handing.cancel()
        self._hand_over()
        self._queue.put(None)
        self._thread.join(10)

    def _run(self) -> None:
        while True:
            batch = [self._queue.get()]
            while not self._queue.empty():  # what came meanwhile: one flush
                batch.append(self._queue.get())
            for item in batch:
                if item is None:
                    self._close_file()
                    return
                if item is _REOPEN:
                    self._close_file()
                else:
                    self._write(item, item.count("\n"))

    def _write(self, text: str, count: int) -> None:
        try:
            if self._out is None:
                self._out = (
                    open(self._path, "a", encoding="utf-8")  # noqa: SIM115
                    if self._path is not None
                    else sys.stdout
                )
            self._out.write(text)
            self._out.flush()
        except (OSError, ValueError) as exc:
            for _ in range(count):
                self._on_error()
            if self._ok:
                self._ok = False
                logger.error("usage log %s: lines not written (%s)", self._path or "-", exc)
            self._close_file()
            return
        if not self._ok:
            self._ok = True
            logger.warning("usage log %s: writing again", self._path or "-")

    def _close_file(self) -> None:
        out, self._out = self._out, None
        if out is not None and self._path is not None:
            with contextlib.suppress(OSError, ValueError):
                out.close()


_REOPEN = "\0reopen"  # never a JSON line


# Outcomes where this server refused work it had charged for.
_OURS = frozenset(("overloaded", "throttled", "unavailable"))


def _ms(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds * 1000, 3)


class Ledger:
    def __init__(
        self,
        metrics: TenantMetrics,
        store: QuotaStore | None,
        usage_log: UsageLog | None,
        tenant_names: list[str],
        priorities: list[int],
    ):
        self.metrics = metrics
        self.store = store
        self.usage_log = usage_log
        self.concurrency = Concurrency()
        self._pending: set[asyncio.Task[None]] = set()
        # tenant -> its last charge's windows and their counts (for headers)
        self.last_counts: dict[str, tuple[list[Window], tuple[int, ...]]] = {}
        self.set_tenants(tenant_names, priorities)

    def set_tenants(self, names: list[str], priorities: list[int]) -> None:
        """The label values (the file's names, and `default` for the rest)."""
        # A tenant a reload removed keeps its label: its requests in flight
        # are counted under its name, as the usage log names them.
        self.labels = {*getattr(self, "labels", ()), *names, UNNAMED}
        self.metrics.declare(self.labels, OUTCOMES, priorities)

    def label(self, tenant: Tenant | None) -> str:
        if tenant is None or tenant.name not in self.labels:
            return UNNAMED
        return tenant.name

    async def charge(self, record: RequestRecord, tenant: Tenant, tokens: int) -> None:
        """Charge `tokens` (and one request) to the tenant's budgets, or raise
        the 429 of the first budget it would overflow."""
        record.tenant = tenant
        if not tenant.limited:
            return
        metrics = self.metrics
        try:
            self.concurrency.enter(tenant)
        except GatewayError:
            metrics.throttled.labels(metrics.model, self.label(tenant), "max_concurrent").inc()
            raise
        record.concurrent = True
        ws = windows(tenant, tokens, time.time())
        if not ws or self.store is None:
            return
        too_large(ws)  # a 400: no retry could make it fit
        charge_id = uuid.uuid4().hex
        verdict = await self.store.charge(ws, charge_id)
        headers = rate_headers(ws, verdict.counts)
        self.last_counts[tenant.name] = (ws, verdict.counts)
        if verdict.refused is not None:
            i = verdict.refused
            metrics.throttled.labels(metrics.model, self.label(tenant), ws[i].budget).inc()
            raise refusal(ws[i], verdict.counts[i], headers)
        record.charge = Charge(tenant, ws, tokens, headers, charge_id, verdict.local)

    def headers_now(self, tenant: Tenant) -> dict[str, str]:
        """x-ratelimit-* for an answer that charged nothing: the tenant's last
        counts where their windows are still the current ones, else full."""
        ws = windows(tenant, 0, time.time())
        last = self.last_counts.get(tenant.name)
        counts = dict(zip((w.key for w in last[0]), last[1], strict=True)) if last else {}
        return rate_headers(ws, tuple(counts.get(w.key, 0) for w in ws))

    def finish(self, record: RequestRecord, status: int) -> None:
        """The request's answer is over: settle, count, log. Never raises."""
        try:
            self._finish(record, status)
        except Exception:
            logger.exception("accounting request %s failed", record.request_id)

    def _finish(self, record: RequestRecord, status: int) -> None:
        tenant = record.tenant if isinstance(record.tenant, Tenant) else None
        if tenant is not None and record.concurrent:
            self.concurrency.leave(tenant)
        used = record.prompt_tokens + record.completion_tokens if record.ran else 0
        outcome = record.outcome(status)
        charge = record.charge if isinstance(record.charge, Charge) else None
        if charge is not None and not charge.settled and self.store is not None:
            charge.settled = True
            back = max(0, charge.tokens - used)
            # Refused by this server after the charge (full queue, engine
            # down): the request does not count against the tenant's rate.
            requests = 1 if not record.ran and outcome in _OURS else 0
            store = self.store
            if isinstance(store, MemoryStore):
                store.refund_now(charge.windows, back, requests)
            elif back or requests:  # Redis: a round trip, off the answer's path
                task = asyncio.ensure_future(
                    store.refund(
                        charge.windows, back, requests=requests, charge_id=charge.id,
                        local=charge.local,
                    )
                )  # fmt: skip
                self._pending.add(task)
                task.add_done_callback(self._pending.discard)
        label = self.label(tenant)
        metrics, model = self.metrics, self.metrics.model
        metrics.requests.labels(model, label, outcome).inc()
        if record.ran:
            tokens = metrics.tokens
            tokens.labels(model, label, "prompt").inc(record.prompt_tokens)
            tokens.labels(model, label, "completion").inc(record.completion_tokens)
            tokens.labels(model, label, "cached").inc(record.cached_tokens)
            if record.queue_s is not None and record.priority is not None:
                metrics.waited(record.priority, record.queue_s)
        if self.usage_log is not None:
            self.usage_log.write(
                {
                    "ts": round(record.ts, 3),
                    "request_id": record.request_id,
                    "id": record.id,
                    "tenant": tenant.name if tenant is not None else None,
                    "model": record.model,
                    "endpoint": record.endpoint,
                    "status": status,
                    "outcome": outcome,
                    "finish_reasons": record.finish_reasons,
                    "prompt_tokens": record.prompt_tokens if record.ran else 0,
                    "completion_tokens": record.completion_tokens,
                    "cached_tokens": record.cached_tokens,
                    "priority": record.priority,
                    "queue_ms": _ms(record.queue_s),
                    "ttft_ms": _ms(record.ttft_s),
                    "duration_ms": _ms(time.monotonic() - record.started),
                    "batch_id": record.batch_id,
                }
            )

    def refused_early(self, status: int, outcome: str) -> None:
        """An answer the HTTP parser sent before the app saw the request (431,
        408): no tenant, route or id is known, but it is a request that ended."""
        self.metrics.requests.labels(self.metrics.model, UNNAMED, outcome).inc()
        if self.usage_log is not None:
            self.usage_log.write(
                {"ts": round(time.time(), 3), "request_id": None, "id": None, "tenant": None,
                 "model": None, "endpoint": None, "status": status, "outcome": outcome,
                 "finish_reasons": [], "prompt_tokens": 0, "completion_tokens": 0,
                 "cached_tokens": 0, "priority": None, "queue_ms": None, "ttft_ms": None,
                 "duration_ms": None, "batch_id": None}
            )  # fmt: skip

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.usage_log is not None:
            await asyncio.to_thread(self.usage_log.close)
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()
