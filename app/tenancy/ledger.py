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
import json
import logging
import sys
import time
from pathlib import Path
from typing import IO, Any

from app.errors import GatewayError
from app.observability.record import OUTCOMES, RequestRecord
from app.observability.tenant_metrics import TenantMetrics
from app.tenancy.budgets import Charge, Concurrency, QuotaStore, rate_headers, refusal, windows
from app.tenancy.quota import MemoryStore
from app.tenancy.tenants import UNNAMED, Tenant

logger = logging.getLogger(__name__)


class UsageLog:
    """JSON lines to a file (appended) or to standard output (`-`)."""

    def __init__(self, target: str):
        self._own = target != "-"
        self._out: IO[str] = (
            open(Path(target), "a", buffering=1, encoding="utf-8")  # noqa: SIM115
            if self._own
            else sys.stdout
        )

    def write(self, line: dict[str, Any]) -> None:
        self._out.write(json.dumps(line, separators=(",", ":")) + "\n")
        if not self._own:
            self._out.flush()

    def close(self) -> None:
        if self._own:
            self._out.close()


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
        self.last_headers: dict[str, dict[str, str]] = {}  # tenant -> its last x-ratelimit-*
        self.set_tenants(tenant_names, priorities)

    def set_tenants(self, names: list[str], priorities: list[int]) -> None:
        """The label values (the file's names, and `default` for the rest)."""
        self.labels = {*names, UNNAMED}
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
            metrics.throttled.labels(metrics.model, tenant.name, "max_concurrent").inc()
            raise
        record.concurrent = True
        ws = windows(tenant, tokens, time.time())
        if not ws or self.store is None:
            return
        verdict = await self.store.charge(ws)
        headers = rate_headers(ws, verdict.counts)
        self.last_headers[tenant.name] = headers
        if verdict.refused is not None:
            i = verdict.refused
            metrics.throttled.labels(metrics.model, tenant.name, ws[i].budget).inc()
            raise refusal(ws[i], verdict.counts[i], headers)
        record.charge = Charge(tenant, ws, tokens, headers)

    def finish(self, record: RequestRecord, status: int) -> None:
        """The request's answer is over: settle, count, log. Never raises."""
        try:
            self._finish(record, status)
        except Exception:
            logger.exception("accounting request %s failed", record.request_id)

    def _finish(self, record: RequestRecord, status: int) -> None:
        tenant = record.tenant
        if tenant is not None and record.concurrent:
            self.concurrency.leave(tenant)
        used = record.prompt_tokens + record.completion_tokens if record.ran else 0
        charge = record.charge
        if charge is not None and not charge.settled and self.store is not None:
            charge.settled = True
            if charge.tokens > used:
                back = charge.tokens - used
                if isinstance(self.store, MemoryStore):
                    self.store.refund_now(charge.windows, back)
                else:  # Redis: a round trip, off the answer's path
                    task = asyncio.ensure_future(self.store.refund(charge.windows, back))
                    self._pending.add(task)
                    task.add_done_callback(self._pending.discard)
        outcome = record.outcome(status)
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
                }
            )

    async def close(self) -> None:
        if self._pending:
            await asyncio.gather(*self._pending, return_exceptions=True)
        if self.usage_log is not None:
            self.usage_log.close()
        close = getattr(self.store, "close", None)
        if close is not None:
            await close()
