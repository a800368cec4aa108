"""Per task adapter series (created only when adapters are configured):
requests and tokens, requests running and waiting apart, whether each is on
the device or cached in host memory, load time, refusals. Every adapter the
gateway serves has its series from the moment it is loaded, at 0 while
idle; a retired adapter's series go with it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

REFUSAL_REASONS = (
    "missing", "format", "truncated", "config", "target", "shape", "rank", "ascend_slice",
    "name", "engine", "unreadable",
)  # fmt: skip


class AdapterMetrics:
    def __init__(self, registry: CollectorRegistry, model: str):
        self.model = model
        m = ["model", "adapter"]
        self.requests = LoopCounter(
            "gateway_adapter_requests_total",
            "Requests run through each task adapter (by its versioned name).",
            m,
            registry=registry,
        )
        self.tokens = LoopCounter(
            "gateway_adapter_tokens_total",
            "Prompt and completion tokens of the requests through each adapter.",
            [*m, "kind"],
            registry=registry,
        )
        self.inflight = LoopGauge(
            "gateway_adapter_inflight_requests",
            "Requests through each adapter now: waiting (queued, or admitted and not yet "
            "producing) and running, apart.",
            [*m, "state"],
            registry=registry,
        )
        self.loaded = LoopGauge(
            "gateway_adapter_loaded",
            "1 where each adapter is: on the device (one of max_loras slots) or cached in "
            "host memory (max_cpu_loras), as the engine's LRU caches hold them.",
            [*m, "where"],
            registry=registry,
        )
        self.load_seconds = LoopHistogram(
            "gateway_adapter_load_seconds",
            "Time to check an adapter, copy it and load it into the engine.",
            ["model"],
            registry=registry,
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
        ).labels(model)
        refusals = LoopCounter(
            "gateway_adapter_refusals_total",
            "Adapters refused before the engine saw them (on a rescan or the admin "
            "endpoint), by reason.",
            ["model", "reason"],
            registry=registry,
        )
        self.refusals = {r: refusals.labels(model, r) for r in REFUSAL_REASONS}

    def added(self, name: str) -> None:
        """An adapter is served: its series exist from now, at 0."""
        self.requests.labels(self.model, name)
        for kind in ("prompt", "completion"):
            self.tokens.labels(self.model, name, kind)
        for state in ("waiting", "running"):
            self.inflight.labels(self.model, name, state).set(0)
        for where in ("device", "host"):
            self.loaded.labels(self.model, name, where).set(0)

    def removed(self, name: str) -> None:
        self.requests.remove(self.model, name)
        for kind in ("prompt", "completion"):
            self.tokens.remove(self.model, name, kind)
        for state in ("waiting", "running"):
            self.inflight.remove(self.model, name, state)
        for where in ("device", "host"):
            self.loaded.remove(self.model, name, where)
