"""Per-tenant series, with bounded labels: `tenant` is a name from the
tenants file or `default` (every other caller); `priority` is a value the
file or the reserve names, or `other`. Created only when tenants or the
usage log are configured."""

from __future__ import annotations

from collections.abc import Iterable

from prometheus_client import CollectorRegistry, Counter

from app.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram
from app.observability.metrics import FIRST_TOKEN_BUCKETS

OTHER_PRIORITY = "other"
BUDGETS = ("tokens_per_minute", "requests_per_minute", "tokens_per_day", "max_concurrent")


class TenantMetrics:
    def __init__(self, registry: CollectorRegistry, model: str):
        self.model = model
        self.tokens = LoopCounter(
            "gateway_tenant_tokens_total",
            "Tokens per tenant, by kind: prompt, completion, cached (prompt tokens found "
            "in the prefix cache).",
            ["model", "tenant", "kind"],
            registry=registry,
        )
        self.requests = LoopCounter(
            "gateway_tenant_requests_total",
            "Completion and chat requests per tenant, by outcome (ok, client_gone, rejected, "
            "throttled, overloaded, unavailable, timeout, error).",
            ["model", "tenant", "outcome"],
            registry=registry,
        )
        self.throttled = LoopCounter(
            "gateway_tenant_throttled_total",
            "Requests refused for a tenant's budget (429), by budget (tokens_per_minute, "
            "requests_per_minute, tokens_per_day, max_concurrent).",
            ["model", "tenant", "budget"],
            registry=registry,
        )
        self.queue_wait = LoopHistogram(
            "gateway_admission_wait_seconds",
            "Seconds a request waited for an in-flight place (the gateway's own queue), "
            "by effective priority.",
            ["model", "priority"],
            registry=registry,
            buckets=FIRST_TOKEN_BUCKETS,
        )
        self.store_up = LoopGauge(
            "gateway_quota_store_up",
            "1 while the quota store (GATEWAY_QUOTA_STORE) answers; 0 while the gateway "
            "serves on its own counters (or refuses, with GATEWAY_QUOTA_FAIL=closed).",
            ["model"],
            registry=registry,
        ).labels(model)
        self.store_up.set(1)
        self.reloads = LoopCounter(
            "gateway_tenants_reloads_total",
            "Reloads of the tenants file (SIGHUP), by result (ok, refused).",
            ["model", "result"],
            registry=registry,
        )
        for result in ("ok", "refused"):
            self.reloads.labels(model, result)
        # Counted on the usage log's writer thread: prometheus_client's own
        # (locked) counter, not a loop one.
        self.usage_log_errors = Counter(
            "gateway_usage_log_errors_total",
            "Usage-log lines that could not be written (disk full, file gone, ...).",
            ["model"],
            registry=registry,
        ).labels(model)
        self._priorities: set[int] = set()

    def declare(
        self, tenants: Iterable[str], outcomes: Iterable[str], priorities: Iterable[int]
    ) -> None:
        """Every series of the closed label sets, at 0 from the start."""
        outcomes = list(outcomes)
        self._priorities = set(priorities)
        for priority in [*self._priorities, OTHER_PRIORITY]:
            self.queue_wait.labels(self.model, str(priority))
        for name in tenants:
            for kind in ("prompt", "completion", "cached"):
                self.tokens.labels(self.model, name, kind)
            for outcome in outcomes:
                self.requests.labels(self.model, name, outcome)
            for budget in BUDGETS:
                self.throttled.labels(self.model, name, budget)

    def waited(self, priority: int, seconds: float) -> None:
        label = str(priority) if priority in self._priorities else OTHER_PRIORITY
        self.queue_wait.labels(self.model, label).observe(seconds)
