"""Traces: one span per completion or chat request, in the caller's trace.

On when OTEL_EXPORTER_OTLP_ENDPOINT or OTEL_EXPORTER_OTLP_TRACES_ENDPOINT
is set (and OTEL_SDK_DISABLED is not true); everything else is the
OpenTelemetry SDK's own reading of the standard variables: the protocol
(OTEL_EXPORTER_OTLP_(TRACES_)PROTOCOL: http/protobuf, the default, or grpc),
OTEL_SERVICE_NAME, OTEL_RESOURCE_ATTRIBUTES, OTEL_TRACES_SAMPLER(_ARG),
OTEL_PROPAGATORS. Spans are exported in batches on the SDK's own thread:
an endpoint that is down costs a request nothing.

The span starts with the request (its parent: the `traceparent` the caller
sent, if any) and ends when the answer is over (a stream: after `[DONE]`,
or when the client left, marked so). Its attributes follow the GenAI
semantic conventions; its children (the wait for an engine place, the
prefill to the first token, the decode) are written at the end from the
request's record, so nothing is done per token.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

from app import __version__
from app.errors import CLIENT_CLOSED, GatewayError
from app.observability.record import RequestRecord

_OPERATION = {"/v1/completions": "text_completion", "/v1/chat/completions": "chat"}


def tracing_configured(environ: Mapping[str, str] = os.environ) -> bool:
    if environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    return bool(
        environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
        or environ.get("OTEL_EXPORTER_OTLP_ENDPOINT")
    )


def _exporter(environ: Mapping[str, str]) -> Any:
    protocol = (
        environ.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        or environ.get("OTEL_EXPORTER_OTLP_PROTOCOL")
        or "http/protobuf"
    ).strip()
    if protocol == "grpc":
        from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

        return OTLPSpanExporter()
    if protocol in ("http/protobuf", "http"):
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import (
            OTLPSpanExporter as HttpExporter,
        )

        return HttpExporter()
    raise ValueError(f"OTEL_EXPORTER_OTLP_TRACES_PROTOCOL {protocol!r}: use http/protobuf or grpc")


class Tracing:
    def __init__(self, content: bool = False, environ: Mapping[str, str] = os.environ):
        from opentelemetry import trace
        from opentelemetry.propagate import get_global_textmap
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        # The SDK reads the service name, resource attributes and sampler
        # from the environment itself. Our own provider, not the global one
        # (vLLM sets that one when its own tracing is on).
        self.provider = TracerProvider(
            resource=Resource.create({"service.version": __version__}),
        )
        self.provider.add_span_processor(BatchSpanProcessor(_exporter(environ)))
        self.tracer = self.provider.get_tracer("ascend-llm-gateway", __version__)
        self._trace = trace
        self._textmap = get_global_textmap()
        self.content = content

    def start(self, record: RequestRecord, headers: list[tuple[bytes, bytes]]) -> None:
        """The request's span, child of the caller's; its context for the
        engine and the exemplar, when sampled."""
        trace = self._trace
        carrier = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        parent = self._textmap.extract(carrier)
        span = self.tracer.start_span(
            _OPERATION.get(record.endpoint, "http"),
            context=parent,
            kind=trace.SpanKind.SERVER,
            start_time=record.wall_ns(record.started),
        )
        record.span = span
        ctx = span.get_span_context()
        out: dict[str, str] = {}
        self._textmap.inject(out, context=trace.set_span_in_context(span, parent))
        record.trace_headers = out
        if ctx.trace_flags.sampled:
            record.exemplar = {"trace_id": format(ctx.trace_id, "032x")}
            if self.content:
                record.content = {}

    def ids(self, record: RequestRecord) -> tuple[str, str] | None:
        """(trace id, span id) in hex, for log lines."""
        if record.span is None:
            return None
        ctx = record.span.get_span_context()
        if not ctx.is_valid:
            return None
        return format(ctx.trace_id, "032x"), format(ctx.span_id, "016x")

    def finish(self, record: RequestRecord, status: int, now: float) -> None:
        span = record.span
        if span is None or not span.is_recording():
            return
        operation = _OPERATION.get(record.endpoint, "http")
        model = record.requested_model or record.model
        if model:
            span.update_name(f"{operation} {model}")
        span.set_attributes(_attributes(record, operation, status))
        outcome = record.outcome(status)
        if outcome == "client_gone":
            span.add_event("gateway.client_gone", timestamp=record.wall_ns(now))
        error = record.error(status)
        if error is not None or (status >= 400 and status != CLIENT_CLOSED):
            self._failed(span, error, status)
        if record.content is not None:
            span.set_attribute("gen_ai.input.messages", json.dumps(record.content.get("input")))
            span.set_attribute("gen_ai.output.messages", json.dumps(record.content.get("output")))
        self._children(record, span, now)
        span.end(end_time=record.wall_ns(now))

    def _failed(self, span: Any, error: GatewayError | None, status: int) -> None:
        from opentelemetry.trace import Status, StatusCode

        kind = (error.code or error.type) if error is not None else str(status)
        span.set_attribute("error.type", kind)
        message = error.message if error is not None else f"HTTP {status}"
        span.set_status(Status(StatusCode.ERROR, message))

    def _children(self, record: RequestRecord, span: Any, now: float) -> None:
        """Admission wait, prefill and decode, from the record's times."""
        ctx = self._trace.set_span_in_context(span)
        run_at = record.run_at
        if run_at is None:
            return
        first = record.started + record.ttft_s if record.ttft_s is not None else None
        phases = []
        if record.queue_s:
            phases.append(("gateway.admission_wait", run_at - record.queue_s, run_at))
        phases.append(("gen_ai.prefill", run_at, first if first is not None else now))
        if first is not None:
            phases.append(("gen_ai.decode", first, record.last_token_at or now))
        for name, start, end in phases:
            child = self.tracer.start_span(name, context=ctx, start_time=record.wall_ns(start))
            child.end(end_time=record.wall_ns(max(start, end)))

    def shutdown(self) -> None:
        self.provider.shutdown()


def _attributes(record: RequestRecord, operation: str, status: int) -> dict[str, Any]:
    attrs: dict[str, Any] = {
        "gen_ai.operation.name": operation,
        "http.request.method": "POST",
        "http.route": record.endpoint,
        "http.response.status_code": status,
        "gateway.request_id": record.request_id,
        "gateway.outcome": record.outcome(status),
    }
    optional = {
        "gen_ai.request.model": record.requested_model or record.model,
        "gen_ai.response.model": record.model,
        "gen_ai.response.id": record.id,
        "gen_ai.request.max_tokens": record.max_tokens,
        "gen_ai.request.temperature": record.temperature,
        "gen_ai.request.top_p": record.top_p,
        "gateway.priority": record.priority,
        "gateway.tenant": getattr(record.tenant, "name", None),
    }
    attrs.update({k: v for k, v in optional.items() if v is not None})
    if record.id is not None:
        attrs["gateway.truncated_tokens"] = record.truncated_tokens
    if record.ran:
        attrs["gen_ai.usage.input_tokens"] = record.prompt_tokens
        attrs["gen_ai.usage.output_tokens"] = record.completion_tokens
        attrs["gen_ai.usage.cache_read.input_tokens"] = record.cached_tokens
        attrs["gen_ai.response.finish_reasons"] = [r or "" for r in record.finish_reasons]
        if record.queue_s is not None:
            attrs["gateway.queue_time_ms"] = record.queue_s * 1e3
        if record.ttft_s is not None:
            attrs["gateway.ttft_ms"] = record.ttft_s * 1e3
    return attrs
