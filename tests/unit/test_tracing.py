"""Tracing in-process (a scripted engine, real OTLP receivers): off without
the variables, a dead endpoint costs no request, the gRPC exporter, the
context handed to the engine, content only when asked, and JSON log lines
inside a request carrying its trace."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import AsyncIterator, Iterator

import pytest

from app.engine.protocol import SamplingOptions
from app.observability.logs import configure
from testkit.fake_engine import FakeEngine, Out, ReqOut
from testkit.otlp import GrpcReceiver, HttpReceiver
from testkit.procs import free_port
from tests.support.inprocess import serve

pytestmark = pytest.mark.anyio
TRACE = "4bf92f3577b34da6a3ce929d0e0e4736"
PARENT = f"00-{TRACE}-00f067aa0ba902b7-01"


async def three(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    for i in range(3):
        done = i == 2
        yield ReqOut([Out(0, f"t{i}", [5], "length" if done else None)], finished=done)


@pytest.fixture
def receiver(monkeypatch: pytest.MonkeyPatch) -> Iterator[HttpReceiver]:
    r = HttpReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{r.endpoint}/v1/traces")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "50")
    yield r
    r.close()


async def test_off_without_the_variables(monkeypatch: pytest.MonkeyPatch) -> None:
    r = HttpReceiver()
    for name in ("OTEL_EXPORTER_OTLP_ENDPOINT", "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"):
        monkeypatch.delenv(name, raising=False)
    engine = FakeEngine(three)
    async with serve(engine) as c:
        resp = await c.post(
            "/v1/completions", json={"prompt": "hi"}, headers={"traceparent": PARENT}
        )
        assert resp.status_code == 200
    r.close()
    assert r.spans == [] and engine.trace_headers == [None]  # nothing made, nothing sent


async def test_spans_go_out_and_the_engine_gets_the_context(receiver: HttpReceiver) -> None:
    engine = FakeEngine(three)
    async with serve(engine) as c:
        r = await c.post(
            "/v1/completions",
            json={"prompt": "hi"},
            headers={"traceparent": PARENT, "x-request-id": "rid-ctx"},
        )
        assert r.status_code == 200
    (span,) = receiver.wait_for(lambda s: s["attributes"].get("gateway.request_id") == "rid-ctx")
    assert span["trace_id"] == TRACE
    # The engine's request carries our span as the parent of whatever it traces.
    (headers,) = engine.trace_headers
    assert headers is not None
    assert headers["traceparent"] == f"00-{TRACE}-{span['span_id']}-01"
    assert "gen_ai.input.messages" not in span["attributes"]


async def test_content_only_when_asked(receiver: HttpReceiver) -> None:
    async with serve(FakeEngine(three), trace_content=True) as c:
        r = await c.post(
            "/v1/completions", json={"prompt": "hello there"}, headers={"x-request-id": "rid-c"}
        )
        assert r.status_code == 200
    (span,) = receiver.wait_for(lambda s: s["attributes"].get("gateway.request_id") == "rid-c")
    a = span["attributes"]
    assert json.loads(a["gen_ai.input.messages"]) == "hello there"
    assert json.loads(a["gen_ai.output.messages"]) == ["t0t1t2"]


async def test_a_dead_endpoint_costs_no_request(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"http://127.0.0.1:{free_port()}")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "1")
    monkeypatch.setenv("OTEL_BSP_SCHEDULE_DELAY", "10")
    async with serve(FakeEngine(three)) as c:
        for stream in (False, True, False):
            r = await c.post("/v1/completions", json={"prompt": "hi", "stream": stream})
            assert r.status_code == 200 and "t2" in r.text


async def test_grpc_exporter(monkeypatch: pytest.MonkeyPatch) -> None:
    r = GrpcReceiver()
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", r.endpoint)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
    monkeypatch.delenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", raising=False)
    async with serve(FakeEngine(three)) as c:
        resp = await c.post("/v1/completions", json={"prompt": "hi"}, headers={"x-request-id": "g"})
        assert resp.status_code == 200
    (span,) = r.wait_for(lambda s: s["attributes"].get("gateway.request_id") == "g")
    assert span["attributes"]["gen_ai.usage.output_tokens"] == 3
    r.close()


async def broken(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    raise RuntimeError("internal detail")
    yield ReqOut([])


async def test_json_log_lines_inside_a_request_carry_its_trace(receiver: HttpReceiver) -> None:
    root = logging.getLogger()
    saved = root.handlers[:], root.level
    configure("info", "json")
    out = io.StringIO()
    handler = root.handlers[0]
    assert isinstance(handler, logging.StreamHandler)
    handler.setStream(out)
    try:
        async with serve(FakeEngine(broken)) as c:
            r = await c.post(
                "/v1/completions", json={"prompt": "hi"}, headers={"x-request-id": "L"}
            )
            assert r.status_code == 500
    finally:
        root.handlers[:], level = saved
        root.setLevel(level)
    lines = [json.loads(x) for x in out.getvalue().splitlines() if x.startswith("{")]
    logged = [x for x in lines if x.get("request_id") == "L"]
    assert logged, out.getvalue()
    (span,) = receiver.wait_for(lambda s: s["attributes"].get("gateway.request_id") == "L")
    for line in logged:
        assert (line["trace_id"], line["span_id"]) == (span["trace_id"], span["span_id"])
    assert span["status"] == 2 and span["attributes"]["http.response.status_code"] == 500
