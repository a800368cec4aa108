"""The table from an error to the client's answer (app/api/rejection.py),
through a FastAPI app with only the gateway's error handlers: each kind of
error's status, body and headers, the count by reason, the request's record
told, and the raw answer the HTTP parser level sends."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi import FastAPI, Request
from prometheus_client import CollectorRegistry
from pydantic import BaseModel
from starlette.exceptions import HTTPException
from starlette.testclient import TestClient

from app.api.rejection import Rejections, install_error_handlers, raw_response, unexpected_error
from app.errors import EngineFailure, GatewayError, InvalidRequest, RateLimited, Unavailable
from app.observability.metrics import Metrics
from app.scopes import RECORD
from tests.support.metrics import parse


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
