"""The Batch API's series: jobs by status, lines answered by outcome, and
the backlog (lines and output tokens still to run: what a KEDA trigger
scales on). Created when batches are on; set by the runner each pass."""

from __future__ import annotations

from prometheus_client import CollectorRegistry

from app.observability.loop_metrics import LoopCounter, LoopGauge

STATUSES = (
    "validating", "in_progress", "finalizing", "completed", "failed", "expired",
    "cancelling", "cancelled",
)  # fmt: skip


class BatchMetrics:
    def __init__(self, registry: CollectorRegistry, model: str):
        self.model = model
        jobs = LoopGauge(
            "gateway_batch_jobs",
            "Batches in the store, by status.",
            ["model", "status"],
            registry=registry,
        )
        self.jobs = {s: jobs.labels(model, s) for s in STATUSES}
        lines = LoopCounter(
            "gateway_batch_lines_total",
            "Batch lines answered by this gateway, by outcome (done, failed).",
            ["model", "outcome"],
            registry=registry,
        )
        self.lines = {o: lines.labels(model, o) for o in ("done", "failed")}
        backlog = {
            "lines": "Batch lines not yet answered, in batches still running.",
            "tokens": "Output tokens those lines may generate (their max_tokens): a scaling "
            "signal.",
        }
        self.backlog = [
            LoopGauge(f"gateway_batch_backlog_{unit}", text, ["model"], registry=registry).labels(
                model
            )
            for unit, text in backlog.items()
        ]  # lines, tokens

    def backlog_now(self, lines: int, tokens: int) -> None:
        for gauge, value in zip(self.backlog, (lines, tokens), strict=True):
            gauge.set(value)

    def jobs_now(self, counts: dict[str, int]) -> None:
        for status, gauge in self.jobs.items():
            gauge.set(counts.get(status, 0))
