"""Every refusal is answered and counted in one place (app/api/rejection.py); the
lists that used to be kept by hand (reject reasons, endpoint labels, open
and drained routes, validation field names) are derived, and the README's
metrics table is held to the code.

Then the error table: every error type, its status, OpenAI type and code.
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient

from app.api.rejection import Rejections, install_error_handlers, raw_response, unexpected_error
from app.api.route_table import Endpoints
from app.completion.validation import FIELDS
from app.errors import (
    EngineFailure,
    GatewayError,
    InvalidRequest,
    RateLimited,
    Unavailable,
    reject_reasons,
)
from app.main import create_app
from app.observability.adapter_metrics import AdapterMetrics
from app.observability.batch_metrics import BatchMetrics
from app.observability.metrics import Metrics
from app.observability.tenant_metrics import TenantMetrics
from app.scopes import RECORD
from testkit.fake_engine import FakeEngine, Out, ReqOut
from tests.support.gateway import ROOT
from tests.support.inprocess import serve
from tests.support.metrics import parse, value

pytestmark = pytest.mark.anyio


async def _one_token(ids: list[int], options: object):  # type: ignore[no-untyped-def]
    yield ReqOut([Out(0, "x", [5], "length")], finished=True)


def _rejected(scrape: str, reason: str) -> float:
    return value(parse(scrape), "gateway_rejected_requests_total", model="fake", reason=reason)


async def test_a_body_over_the_limit_is_a_counted_413_declared_or_chunked() -> None:
    async with serve(FakeEngine(_one_token), max_body_bytes=1024) as c:
        declared = await c.post("/v1/completions", content=b"{" + b" " * 2000 + b"}")

        async def chunks():  # type: ignore[no-untyped-def]
            for _ in range(5):
                yield b" " * 500

        chunked = await c.post("/v1/completions", content=chunks())
        scrape = (await c.get("/metrics")).text
    assert declared.status_code == chunked.status_code == 413
    assert declared.json()["error"]["type"] == "invalid_request_error"
    assert _rejected(scrape, "too_large") == 2


async def test_every_reject_reason_is_exported_at_zero_from_the_start() -> None:
    async with serve(FakeEngine(_one_token)) as c:
        samples = parse((await c.get("/metrics")).text)
    for reason in reject_reasons():
        key = ("gateway_rejected_requests_total", (("model", "fake"), ("reason", reason)))
        assert samples[key] == 0, reason


def test_reject_reasons_come_from_the_error_classes() -> None:
    class Teapot(GatewayError):
        reason = "teapot"

    assert "teapot" in reject_reasons()
    assert {"too_large", "unauthorized", "rate_limited", "header_timeout"} <= set(reject_reasons())


def test_routes_declare_their_label_and_whether_they_are_open_or_drained() -> None:
    app = create_app(engine=FakeEngine(_one_token), registry=CollectorRegistry())  # type: ignore[arg-type]
    endpoints = Endpoints(app.routes, protect_metrics=False)
    model = endpoints.match("/v1/models/anything/with/slashes")
    assert model.label == "/v1/models/{model_id}" and not model.open and model.drained
    live = endpoints.match("/health/live")
    assert live.open and not live.drained
    scrape = endpoints.match("/metrics")
    assert scrape.open and not scrape.drained and not scrape.limited
    assert not Endpoints(app.routes, protect_metrics=True).match("/metrics").open
    completions = endpoints.match("/v1/completions")
    assert completions.drained and completions.limited and not completions.open
    assert endpoints.match("/nowhere").label == "other"


async def test_the_endpoint_label_is_the_route_template() -> None:
    async with serve(FakeEngine(_one_token)) as c:
        await c.get("/v1/models/someone-elses-model")
        await c.get("/no/such/path")
        samples = parse((await c.get("/metrics")).text)
    labels = {"model": "fake", "endpoint": "/v1/models/{model_id}", "status": "404"}
    assert value(samples, "gateway_requests_total", **labels) == 1
    other = {"model": "fake", "endpoint": "other", "status": "404"}
    assert value(samples, "gateway_requests_total", **other) == 1


def test_validation_field_names_come_from_the_schemas() -> None:
    assert {"prompt", "max_tokens", "include_usage", "tokens", "return_token_strs"} <= FIELDS


def test_the_readme_metrics_table_matches_the_code() -> None:
    readme = (ROOT / "README.md").read_text()
    table = dict(
        re.findall(
            r"^\| `(gateway_[a-z0-9_]+)(?:\{[^}]*\})?` \| [a-z]+ \| [^|]+ \| (.+) \|$", readme, re.M
        )
    )
    metrics = Metrics(CollectorRegistry(), "m")
    TenantMetrics(metrics.registry, "m")  # registered beside them when tenants are on
    BatchMetrics(metrics.registry, "m")  # and when batches are
    AdapterMetrics(metrics.registry, "m")  # and when task adapters are
    exported = {
        family.name.removesuffix("_total") if family.type == "counter" else family.name
        for family in metrics.registry.collect()
    }
    documented = {name.removesuffix("_total") for name in table}
    assert documented == exported, documented ^ exported
    rejected = table["gateway_rejected_requests_total"]
    for reason in reject_reasons():
        assert f"`{reason}`" in rejected, reason


# -- the error table -----------------------------------------------------------


class Record:
    def __init__(self) -> None:
        self.rejections: list[GatewayError] = []

    def rejected(self, exc: GatewayError) -> None:
        self.rejections.append(exc)


class Body(BaseModel):
    n: int


RAISED: dict[str, Exception] = {}


@pytest.fixture
def app() -> Iterator[tuple[TestClient, Metrics, Record]]:
    metrics = Metrics(CollectorRegistry(), "m")
    record = Record()
    api = FastAPI()

    @api.middleware("http")
    async def with_record(request: Request, call_next: Any) -> Any:
        request.scope[RECORD] = record
        return await call_next(request)

    @api.post("/raise/{name}")
    async def _raise(name: str) -> None:
        raise RAISED[name]

    @api.post("/body")
    async def _body(body: Body) -> int:
        return body.n

    install_error_handlers(api, Rejections(metrics))
    with TestClient(api) as client:
        yield client, metrics, record


def rejected(metrics: Metrics, reason: str) -> float:
    samples = parse(metrics.exposition.render().decode())
    return samples[("gateway_rejected_requests_total", (("model", "m"), ("reason", reason)))]


def answer(client: TestClient, error: Exception) -> Any:
    RAISED["e"] = error
    return client.post("/raise/e")


def test_a_gateway_error_is_its_status_body_and_headers_counted_by_reason(app: Any) -> None:
    client, metrics, record = app
    limited = RateLimited("slow", retry_after=7, extra_headers={"x-ratelimit-limit-requests": "5"})
    r = answer(client, limited)
    assert r.status_code == 429
    assert r.json() == {"error": {"message": "slow", "type": "rate_limit_error", "param": None,
                                  "code": "rate_limit_exceeded"}}  # fmt: skip
    assert r.headers["retry-after"] == "7" and r.headers["x-ratelimit-limit-requests"] == "5"
    assert rejected(metrics, "rate_limited") == 1
    assert record.rejections == [limited]
    r = answer(client, Unavailable("not yet"))
    assert r.status_code == 503 and rejected(metrics, "unavailable") == 1
    assert rejected(metrics, "rate_limited") == 1


def test_an_error_that_is_not_a_rejection_is_answered_but_not_counted(app: Any) -> None:
    client, metrics, record = app
    failure = EngineFailure("engine died")
    assert failure.reason is None
    r = answer(client, failure)
    assert r.status_code == 500 and r.json()["error"]["message"] == "engine died"
    samples = parse(metrics.exposition.render().decode())
    assert sum(v for (n, _), v in samples.items() if n == "gateway_rejected_requests_total") == 0
    assert record.rejections == [failure]  # the record still knows how it ended


def test_validation_errors_name_the_field_or_ask_for_json(app: Any) -> None:
    client, metrics, record = app
    r = client.post("/body", json={"n": "many"})
    assert r.status_code == 400
    error = r.json()["error"]
    assert error["type"] == "invalid_request_error" and error["param"] == "n"
    form = client.post("/body", data={"n": "1"})
    assert form.status_code == 400
    assert form.json()["error"]["message"] == (
        "The request body must be JSON, sent with 'Content-Type: application/json'."
    )
    assert rejected(metrics, "invalid_request") == 2
    assert [type(e) for e in record.rejections] == [InvalidRequest, InvalidRequest]


@pytest.mark.parametrize(
    ("status", "message", "kind"),
    [
        (404, "No such route.", "invalid_request_error"),
        (405, "Method not allowed for this route.", "invalid_request_error"),
        (400, "Request body could not be parsed as JSON.", "invalid_request_error"),
        (418, "I'm a Teapot", "invalid_request_error"),
        (502, "Bad Gateway", "server_error"),
    ],
)
def test_starlette_http_errors_in_openai_shape(
    app: Any, status: int, message: str, kind: str
) -> None:
    client, _, record = app
    r = answer(client, HTTPException(status))
    assert r.status_code == status
    assert r.json()["error"]["message"] == message and r.json()["error"]["type"] == kind
    assert len(record.rejections) == 1


def test_unknown_routes_and_methods(app: Any) -> None:
    client, metrics, _ = app
    assert client.get("/nowhere").json()["error"]["message"] == "No such route."
    assert client.get("/body").status_code == 405
    samples = parse(metrics.exposition.render().decode())  # not refusals of a request: not counted
    assert sum(v for (n, _), v in samples.items() if n == "gateway_rejected_requests_total") == 0


def test_the_raw_answer_is_a_whole_http_message_that_closes() -> None:
    error = InvalidRequest("too many headers")
    raw = raw_response(error)
    head, body = raw.split(b"\r\n\r\n", 1)
    assert head.split(b"\r\n") == [
        b"HTTP/1.1 400 Bad Request",
        b"content-type: application/json",
        b"content-length: " + str(len(body)).encode(),
        b"connection: close",
    ]
    assert json.loads(body) == error.body()


def test_an_unexpected_exception_is_logged_with_its_traceback_and_answered_without(
    caplog: pytest.LogCaptureFixture,
) -> None:
    exc = ValueError("secret detail")
    with caplog.at_level(logging.ERROR, logger="app.api.rejection"):
        r = unexpected_error(exc)
    assert r.status_code == 500
    assert json.loads(bytes(r.body)) == {"error": {"message": "Internal server error.",
                                                   "type": "server_error", "param": None,
                                                   "code": None}}  # fmt: skip
    [logged] = caplog.records
    assert logged.getMessage() == "unhandled error" and logged.exc_info is not None
    assert logged.exc_info[1] is exc


def test_rejections_answer_a_raw_asgi_request_and_tell_its_record() -> None:
    import asyncio

    metrics = Metrics(CollectorRegistry(), "m")
    rejections = Rejections(metrics)
    record = Record()
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: Any) -> None:
        sent.append(message)

    scope = {"type": "http", "method": "POST", "path": "/v1/completions", "headers": [],
             RECORD: record}  # fmt: skip
    error = Unavailable("starting")
    asyncio.run(rejections.send(error, scope, receive, send))
    assert sent[0]["status"] == 503 and json.loads(sent[1]["body"]) == error.body()
    assert record.rejections == [error] and rejected(metrics, "unavailable") == 1
    # outside a request (the HTTP parser level): no scope, still counted and answered
    assert rejections.reject(InvalidRequest("bad")).status_code == 400
    assert rejected(metrics, "invalid_request") == 1
