"""Prometheus collectors for the gateway, on an injected registry.

In production the registry is prometheus_client's default one, which also
holds vLLM's own `vllm:*` metrics, so `/metrics` exposes both. Tests pass a
fresh registry. Label sets are fixed and small: `model`, plus `endpoint`,
`status`, `finish_reason`, `reason` and `phase` from closed sets.

Per-request latencies are measured at the gateway (what a client sees, our
own overhead included); per-step batch figures come from vLLM's stat logger
(see `EngineStep`).

Every one of them is written on the event loop (routes, middleware, the
streams, vLLM's stat logger callback), so they are app.observability.loop_metrics' lock-free
kind: prometheus_client's classes without the lock per write.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from app.errors import reject_reasons
from app.observability.exposition import Exposition
from app.observability.loop_metrics import LoopCounter, LoopGauge, LoopHistogram

# Buckets span the CPU fixture (sub-ms to ms steps) and Ascend (the seed's
# TPOT is ~26 ms at batch 1; TTFT for a 2048-token prefill is ~100s of ms).
TOKEN_LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.025, 0.03,
    0.04, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 1.0, 2.5,
)  # fmt: skip
FIRST_TOKEN_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25,
    0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0,
)  # fmt: skip
REQUEST_BUCKETS = (
    0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 3.5, 5.0,
    7.5, 10.0, 15.0, 20.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip
LOOP_LAG_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128, 192, 256, 512)

FINISH_REASONS = ("stop", "length", "abort")


class Metrics:
    def __init__(self, registry: CollectorRegistry, model: str):
        self.registry = registry
        self.exposition = Exposition(registry)
        self.model = model
        m = ["model"]

        # hist/gauge/counter: the series of this model; *_by: the labelled family.
        def hist(name: str, doc: str, buckets: tuple[float, ...]) -> Histogram:
            return LoopHistogram(name, doc, m, registry=registry, buckets=buckets).labels(model)

        def gauge_by(name: str, doc: str, labels: tuple[str, ...]) -> Gauge:
            return LoopGauge(name, doc, [*m, *labels], registry=registry)

        def gauge(name: str, doc: str) -> Gauge:
            return gauge_by(name, doc, ()).labels(model)

        def counter_by(name: str, doc: str, labels: tuple[str, ...]) -> Counter:
            return LoopCounter(name, doc, [*m, *labels], registry=registry)

        def counter(name: str, doc: str) -> Counter:
            return counter_by(name, doc, ()).labels(model)

        self.ttft = hist(
            "gateway_time_to_first_token_seconds",
            "Seconds from request arrival to the first output token, per request.",
            FIRST_TOKEN_BUCKETS,
        )
        self.tpot = hist(
            "gateway_time_per_output_token_seconds",
            "Per request: (e2e latency - TTFT) / (output tokens - 1); requests with >= 2 tokens.",
            TOKEN_LATENCY_BUCKETS,
        )
        self.itl = hist(
            "gateway_inter_token_latency_seconds",
            "Seconds between consecutive output tokens of a request (k tokens in a step: k gaps).",
            TOKEN_LATENCY_BUCKETS,
        )
        self.e2e = hist(
            "gateway_e2e_request_latency_seconds",
            "Seconds from request arrival to its last output token.",
            REQUEST_BUCKETS,
        )
        self.queue = hist(
            "gateway_request_queue_seconds",
            "Seconds a request waited in the engine's queue before it was first scheduled.",
            FIRST_TOKEN_BUCKETS,
        )
        self.batch_size = hist(
            "gateway_batch_size",
            "Running sequences per engine step.",
            BATCH_BUCKETS,
        )

        self.batch_occupancy = gauge(
            "gateway_batch_occupancy_ratio",
            "Running sequences / max_num_seqs, at the last engine step.",
        )
        self.token_occupancy = gauge(
            "gateway_batch_token_occupancy_ratio",
            "Tokens scheduled in the last engine step / max_num_batched_tokens.",
        )
        self.running = gauge(
            "gateway_requests_running", "Requests running in the engine (last step)."
        )
        self.waiting = gauge(
            "gateway_requests_waiting", "Requests waiting in the engine's queue (last step)."
        )
        self.kv_cache = gauge(
            "gateway_kv_cache_usage_ratio", "Fraction of KV-cache blocks in use (0-1)."
        )

        self.admission_running = gauge(
            "gateway_admission_running",
            "Requests holding an in-flight place (GATEWAY_MAX_INFLIGHT bounds it).",
        )
        self.admission_queued = gauge(
            "gateway_admission_queued",
            "Requests waiting for an in-flight place (GATEWAY_MAX_QUEUE bounds it).",
        )
        self.loop_lag = hist(
            "gateway_event_loop_lag_seconds",
            "How late the gateway's event loop ran a timer (sampled every 0.5 s): "
            "time every request waits for the serving process itself.",
            LOOP_LAG_BUCKETS,
        )

        self.requests = counter_by(
            "gateway_requests_total",
            "HTTP requests answered, by endpoint and status code (499: client went away).",
            ("endpoint", "status"),
        )
        self.finished = counter_by(
            "gateway_request_finished_total",
            "Completion choices finished, by finish reason (stop, length, abort).",
            ("finish_reason",),
        )
        self.prompt_tokens = counter(
            "gateway_prompt_tokens_total", "Prompt tokens sent to the engine (after truncation)."
        )
        self.prompt_cached_tokens = counter(
            "gateway_prompt_cached_tokens_total",
            "Prompt tokens the engine found in its prefix cache (not computed again).",
        )
        self.generation_tokens = counter(
            "gateway_generation_tokens_total", "Output tokens generated."
        )
        self.truncated_requests = counter(
            "gateway_truncated_requests_total", "Requests whose prompt was truncated."
        )
        self.truncated_tokens = counter(
            "gateway_truncated_tokens_total", "Prompt tokens dropped by truncation."
        )
        self.rejected = counter_by(
            "gateway_rejected_requests_total",
            "Requests refused before reaching the engine, by reason.",
            ("reason",),
        )
        self.timeouts = counter(
            "gateway_request_timeouts_total",
            "Requests whose total deadline passed; their engine work was aborted.",
        )
        self.client_aborts = counter(
            "gateway_client_aborts_total", "Requests abandoned by their client before the end."
        )
        self.stream_errors = counter_by(
            "gateway_stream_errors_total",
            "Streams that ended with an SSE error event after their 200, by OpenAI error "
            "type (their status in gateway_requests_total stays 200).",
            ("type",),
        )

        self.structured_requests = counter_by(
            "gateway_structured_requests_total",
            "Requests with an output constraint the engine enforces, by kind "
            "(json, json_object, choice, regex, grammar).",
            ("kind",),
        )

        self.engine_stalls = counter(
            "gateway_engine_stalls_total",
            "Times the engine was found hung: requests running (or the idle canary) and no "
            "output for GATEWAY_STALL_TIMEOUT seconds; the gateway then fails and exits.",
        )

        self.canary_failures = counter(
            "gateway_canary_failures_total",
            "Idle canaries that failed with an engine error (not the engine's death, not a "
            "hang); each is logged and tried again at the next interval.",
        )

        self.phase = gauge_by("gateway_phase", "1 for the current lifecycle phase.", ("phase",))
        self.phase_duration = gauge_by(
            "gateway_phase_duration_seconds",
            "Seconds spent in each finished lifecycle phase (latest occurrence).",
            ("phase",),
        )
        self.ready = gauge("gateway_ready", "1 when serving requests, else 0.")

        # Export every series of the closed label sets from the start, so that
        # rate() and alerts see zeros rather than nothing.
        for reason in reject_reasons():
            self.rejected.labels(model, reason)
        for finish_reason in FINISH_REASONS:
            self.finished.labels(model, finish_reason)

    def watch_admission(self, running: Callable[[], int], queued: Callable[[], int]) -> None:
        """Read the admission counts at scrape time (no cost per request)."""
        self.admission_running.set_function(running)
        self.admission_queued.set_function(queued)

    async def sample_event_loop(self, interval: float = 0.5) -> None:
        """Forever: sleep `interval`, record how late the wake-up came."""
        loop = asyncio.get_running_loop()
        while True:
            start = loop.time()
            await asyncio.sleep(interval)
            self.loop_lag.observe(max(0.0, loop.time() - start - interval))

    def request_answered(self, endpoint: str, status: int) -> None:
        """`endpoint`: the matched route's template (app.api.route_table), or "other"."""
        self.requests.labels(self.model, endpoint, str(status)).inc()

    def declare_phases(self, phases: list[str], current: str) -> None:
        for phase in phases:
            self.phase.labels(self.model, phase).set(1 if phase == current else 0)

    def phase_changed(self, old: str, new: str, seconds: float) -> None:
        self.phase.labels(self.model, old).set(0)
        self.phase.labels(self.model, new).set(1)
        self.phase_duration.labels(self.model, old).set(seconds)
        self.ready.set(1 if new == "ready" else 0)

    def engine_step(self, step: EngineStep) -> None:
        """Called once per engine step (on the event loop): keep it cheap."""
        self.running.set(step.running)
        self.waiting.set(step.waiting)
        self.kv_cache.set(step.kv_cache_usage)
        if step.max_num_seqs:
            self.batch_occupancy.set(step.running / step.max_num_seqs)
        if step.max_num_batched_tokens:
            self.token_occupancy.set(step.scheduled_tokens / step.max_num_batched_tokens)
        if step.running:
            self.batch_size.observe(step.running)
        for seconds in step.queue_times:
            self.queue.observe(seconds)


@dataclass(slots=True)
class EngineStep:
    """What one engine step reports, in plain numbers (no vllm types)."""

    running: int
    waiting: int
    kv_cache_usage: float
    scheduled_tokens: int
    max_num_seqs: int
    max_num_batched_tokens: int
    queue_times: list[float] = field(default_factory=list)
