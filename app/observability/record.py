"""What one completion or chat request did, gathered as it goes and read
once when its answer is over: by the usage log and budgets
(app.tenancy.ledger) and by its trace span (app.observability.tracing).
Plain data: the HTTP layer opens it, the pipeline fills it in."""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from app.errors import CLIENT_CLOSED, GatewayError

if TYPE_CHECKING:
    from opentelemetry.trace import Span


class Party(Protocol):
    """The caller, as a record shows it (app.tenancy.tenants.Tenant)."""

    @property
    def name(self) -> str: ...


# The outcome of a request, from its status and how its run ended.
OUTCOMES = (
    "ok",
    "client_gone",
    "rejected",
    "throttled",
    "overloaded",
    "unavailable",
    "timeout",
    "error",
)


@dataclass(slots=True)
class RequestRecord:
    endpoint: str
    request_id: str
    started: float = field(default_factory=time.monotonic)
    ts: float = field(default_factory=time.time)
    tenant: Party | None = None  # once the key is known
    # From the validated request (prepared()).
    id: str | None = None
    model: str | None = None
    requested_model: str | None = None
    priority: int | None = None
    prompt_tokens: int = 0
    truncated_tokens: int = 0
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    # From its run (finished_run()).
    completion_tokens: int = 0
    cached_tokens: int = 0
    finish_reasons: list[str | None] = field(default_factory=list)
    queue_s: float | None = None
    ttft_s: float | None = None
    run_at: float | None = None  # monotonic: when it got an engine place
    last_token_at: float | None = None  # monotonic
    ran: bool = False  # a run ended
    gone: bool = False  # its client left before the run ended
    stream_error: GatewayError | None = None  # the error event a stream ended with
    rejection: GatewayError | None = None  # the error it was answered with, if any
    batch_id: str | None = None  # the batch it is a line of (app.batches)
    # Budgets (app.tenancy.ledger).
    charge: object = None  # app.tenancy.budgets.Charge: the ledger's, narrowed where read
    concurrent: bool = False  # counted in its tenant's concurrency
    # Tracing (app.observability.tracing).
    span: Span | None = None
    trace_headers: dict[str, str] | None = None  # for the engine's own spans
    exemplar: dict[str, str] | None = None  # {"trace_id": ...} when sampled
    content: dict[str, object] | None = None  # prompt and output (GATEWAY_TRACE_CONTENT)

    def prepared(
        self,
        answer_id: str,
        model: str,
        priority: int,
        prompt_tokens: int,
        *,
        requested_model: str | None,
        truncated_tokens: int,
        max_tokens: int | None,
        temperature: float | None,
        top_p: float | None,
    ) -> None:
        """The validated request: its id, model, priority, tokens, and the
        sampling values a trace reports."""
        self.id, self.model, self.priority = answer_id, model, priority
        self.prompt_tokens, self.truncated_tokens = prompt_tokens, truncated_tokens
        self.requested_model, self.max_tokens = requested_model, max_tokens
        self.temperature, self.top_p = temperature, top_p

    def finished_run(
        self,
        *,
        completion_tokens: int,
        cached_tokens: int,
        finish_reasons: list[str | None],
        queue_s: float | None,
        ttft_s: float | None,
        run_at: float | None,
        last_token_at: float | None,
        gone: bool,
    ) -> None:
        """Its run is over."""
        self.ran = True
        self.completion_tokens, self.cached_tokens = completion_tokens, cached_tokens
        self.finish_reasons, self.queue_s, self.ttft_s = finish_reasons, queue_s, ttft_s
        self.run_at, self.last_token_at, self.gone = run_at, last_token_at, gone

    def rejected(self, exc: GatewayError) -> None:
        self.rejection = exc

    def wall_ns(self, monotonic: float) -> int:
        """A monotonic time as nanoseconds since the epoch (for spans)."""
        return int((self.ts + monotonic - self.started) * 1e9)

    def error(self, status: int) -> GatewayError | None:
        """What it failed with: a stream's error event, or its answer's."""
        if status == 200:
            return self.stream_error
        return self.rejection

    def outcome(self, status: int) -> str:
        if status == CLIENT_CLOSED or (status == 200 and self.gone):
            return "client_gone"
        if status == 200 and self.stream_error is not None:
            status = int(self.stream_error.status)  # the stream's 200 ended in this error
        if status == 200:
            return "ok"
        if status == 429:
            return "throttled"
        if status == 503:
            overloaded = self.rejection is not None and self.rejection.reason == "overloaded"
            return "overloaded" if overloaded else "unavailable"
        if status == 504:
            return "timeout"
        return "rejected" if status < 500 else "error"
