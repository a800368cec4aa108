"""Traces on the real engine, exported to a real OTLP/HTTP receiver: the
request's span in the caller's trace with the GenAI attributes checked
against the answer, its children, vLLM's own spans as its children, stream
timing, the client gone, error spans, OpenMetrics exemplars (JSON logs,
the gRPC exporter, a dead endpoint, tracing off: tests/unit/test_tracing.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from prometheus_client.openmetrics.parser import text_string_to_metric_families

from testkit.otlp import HttpReceiver, Span
from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.sse import data_of

TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
SERVER = 2  # SpanKind.SERVER in the protocol
ERROR = 2  # Status.STATUS_CODE_ERROR


class Traced:
    def __init__(self, gw: Gateway, receiver: HttpReceiver):
        self.gw, self.receiver, self.url = gw, receiver, gw.url
        self.client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="x", max_retries=0)

    def span(self, rid: str) -> Span:
        """Our span of the request with this x-request-id."""
        found = self.receiver.wait_for(
            lambda s: (
                s["attributes"].get("gateway.request_id") == rid
                and s["scope"] == "ascend-llm-gateway"
            )
        )
        assert len(found) == 1, found
        return found[0]

    def children(self, span: Span) -> dict[str, Span]:
        spans = self.receiver.wait_for(lambda s: s["parent_span_id"] == span["span_id"])
        return {s["name"]: s for s in spans}


@pytest.fixture(scope="module")
def traced(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Traced]:
    receiver = HttpReceiver()
    endpoint = f"{receiver.endpoint}/v1/traces"
    gw = start_gateway(
        model_dir,
        tmp_path_factory.mktemp("traces") / "gw.log",
        env={
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": endpoint,
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/protobuf",
            "OTEL_SERVICE_NAME": "gateway-under-test",
            "OTEL_RESOURCE_ATTRIBUTES": "deployment.environment=test",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
            "GATEWAY_LOG_FORMAT": "json",
            "GATEWAY_CHAT_TEMPLATE": "mobilellama-v1",
            # vLLM's own tracing too: its spans should join our trace.
            "GATEWAY_ENGINE_ARGS": json.dumps({"otlp_traces_endpoint": endpoint}),
        },
    )
    yield Traced(gw, receiver)
    stop_gateway(gw)
    receiver.close()


def _rid(name: str) -> str:
    return f"{name}-{time.monotonic_ns()}"


def test_a_span_in_the_callers_trace_with_genai_attributes(traced: Traced) -> None:
    rid, parent = _rid("plain"), "00f067aa0ba902b7"
    raw = traced.client.completions.with_raw_response.create(
        model=MODEL_NAME, prompt="The capital of France is", max_tokens=12,
        temperature=0.5, top_p=0.9,
        extra_headers={"x-request-id": rid, "traceparent": f"00-{TRACE}-{parent}-01"},
    )  # fmt: skip
    answer = raw.parse()
    span = traced.span(rid)
    assert (span["trace_id"], span["parent_span_id"], span["kind"]) == (TRACE, parent, SERVER)
    assert span["name"] == f"text_completion {MODEL_NAME}" and span["status"] == 0
    a = span["attributes"]
    assert a["gen_ai.operation.name"] == "text_completion"
    assert a["gen_ai.request.model"] == a["gen_ai.response.model"] == MODEL_NAME
    assert a["gen_ai.response.id"] == answer.id
    assert (a["gen_ai.request.max_tokens"], a["gen_ai.request.temperature"]) == (12, 0.5)
    assert a["gen_ai.request.top_p"] == pytest.approx(0.9)
    assert a["gen_ai.usage.input_tokens"] == answer.usage.prompt_tokens
    assert a["gen_ai.usage.output_tokens"] == answer.usage.completion_tokens
    cached = answer.usage.prompt_tokens_details.cached_tokens or 0
    assert a["gen_ai.usage.cache_read.input_tokens"] == cached
    assert a["gen_ai.response.finish_reasons"] == [answer.choices[0].finish_reason]
    assert a["gateway.truncated_tokens"] == 0 and a["gateway.ttft_ms"] > 0
    assert "gen_ai.input.messages" not in a  # no content unless GATEWAY_TRACE_CONTENT
    assert span["resource"]["service.name"] == "gateway-under-test"
    assert span["resource"]["deployment.environment"] == "test"
    kids = traced.children(span)
    assert {"gen_ai.prefill", "gen_ai.decode"} <= set(kids)
    assert kids["gen_ai.prefill"]["end"] <= kids["gen_ai.decode"]["end"] <= span["end"]
    assert span["start"] <= kids["gen_ai.prefill"]["start"]


def test_the_engines_own_spans_are_children_of_ours(traced: Traced) -> None:
    rid = _rid("engine")
    traced.client.completions.create(
        model=MODEL_NAME, prompt="Hello", max_tokens=3,
        extra_headers={"x-request-id": rid, "traceparent": f"00-{TRACE}-00f067aa0ba902b8-01"},
    )  # fmt: skip
    ours = traced.span(rid)
    engine = traced.receiver.wait_for(
        lambda s: s["name"] == "llm_request" and s["parent_span_id"] == ours["span_id"]
    )
    assert engine[0]["trace_id"] == TRACE


def test_a_new_trace_when_the_caller_sends_none_and_chat_is_named_chat(traced: Traced) -> None:
    rid = _rid("chat")
    traced.client.chat.completions.create(
        model=MODEL_NAME, messages=[{"role": "user", "content": "hi"}], max_tokens=3,
        extra_headers={"x-request-id": rid},
    )  # fmt: skip
    span = traced.span(rid)
    assert span["parent_span_id"] == "" and span["trace_id"] != TRACE
    assert span["name"] == f"chat {MODEL_NAME}"
    assert span["attributes"]["gen_ai.operation.name"] == "chat"


def test_a_stream_span_ends_with_the_stream_not_at_the_first_byte(traced: Traced) -> None:
    rid = _rid("stream")
    with traced.client.completions.create(
        model=MODEL_NAME, prompt="Once", max_tokens=40, stream=True,
        extra_body={"ignore_eos": True}, extra_headers={"x-request-id": rid},
    ) as stream:  # fmt: skip
        chunks = iter(stream)
        next(chunks)
        first_received = time.time_ns()
        rest = list(chunks)
    assert len(rest) >= 1
    span = traced.span(rid)
    assert span["end"] > first_received  # it did not end when the first chunk left
    assert span["attributes"]["gen_ai.usage.output_tokens"] == 40
    assert span["attributes"]["gateway.outcome"] == "ok"


def test_a_client_that_leaves_ends_the_span_marked_so(traced: Traced) -> None:
    rid = _rid("gone")
    with httpx.stream(
        "POST", f"{traced.url}/v1/completions", headers={"x-request-id": rid}, timeout=60,
        json={"model": MODEL_NAME, "prompt": "Once", "max_tokens": 1500, "stream": True,
              "ignore_eos": True},
    ) as r:  # fmt: skip
        for line in r.iter_lines():
            if data_of(line) is not None:
                break  # cut the connection after the first event
    span = traced.span(rid)
    assert "gateway.client_gone" in span["events"]
    assert span["attributes"]["gateway.outcome"] == "client_gone"
    assert span["attributes"]["gen_ai.usage.output_tokens"] < 1500


@pytest.mark.parametrize(
    ("body", "status", "error_type"),
    [
        ({"prompt": "x", "max_tokens": 5000}, 400, "context_length_exceeded"),
        ({"prompt": "x", "temperature": 9}, 400, "invalid_request_error"),
        ({"prompt": "x", "model": "nope"}, 404, "model_not_found"),
    ],
)
def test_failures_are_error_spans_with_the_error_code(
    traced: Traced, body: dict[str, Any], status: int, error_type: str
) -> None:
    rid = _rid("bad")
    r = httpx.post(
        f"{traced.url}/v1/completions",
        json={"model": MODEL_NAME, **body},
        headers={"x-request-id": rid},
    )
    assert r.status_code == status
    span = traced.span(rid)
    assert span["status"] == ERROR and span["attributes"]["error.type"] == error_type
    assert span["attributes"]["http.response.status_code"] == status


def test_latency_histograms_carry_trace_exemplars_in_openmetrics_only(traced: Traced) -> None:
    rid = _rid("exemplar")
    trace = "0af7651916cd43dd8448eb211c80319c"
    traced.client.completions.create(
        model=MODEL_NAME, prompt="Hi", max_tokens=8, extra_body={"ignore_eos": True},
        extra_headers={"x-request-id": rid, "traceparent": f"00-{trace}-b7ad6b7169203331-01"},
    )  # fmt: skip
    om = httpx.get(f"{traced.url}/metrics", headers={"Accept": "application/openmetrics-text"})
    assert om.headers["content-type"].startswith("application/openmetrics-text")
    exemplars: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(om.text):
        for s in family.samples:
            if s.exemplar is not None:
                exemplars.setdefault(family.name, set()).add(s.exemplar.labels["trace_id"])
    for name in (
        "gateway_time_to_first_token_seconds",
        "gateway_time_per_output_token_seconds",
        "gateway_e2e_request_latency_seconds",
    ):
        assert trace in exemplars.get(name, set()), name
    plain = httpx.get(f"{traced.url}/metrics")
    assert plain.headers["content-type"].startswith("text/plain")
    assert " # {" not in plain.text  # the 0.0.4 text format has no exemplars
