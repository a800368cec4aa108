"""Every refusal is answered and counted in one place (app/api/rejection.py); the
lists that used to be kept by hand (reject reasons, endpoint labels, open
and drained routes, validation field names) are derived, and the README's
metrics table is held to the code."""

from __future__ import annotations

import re

import pytest
from prometheus_client import CollectorRegistry

from app.api.route_table import Endpoints
from app.api.validation import FIELDS
from app.errors import GatewayError, reject_reasons
from app.main import create_app
from app.observability.metrics import Metrics
from app.observability.tenant_metrics import TenantMetrics
from testkit.fake_engine import FakeEngine, Out, ReqOut
from tests.support.gateway import ROOT
from tests.support.inprocess import serve
from tests.support.metrics import parse, value

pytestmark = pytest.mark.anyio


@pytest.fixture
def anyio_backend() -> str:
    return "asyncio"


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
    exported = {
        family.name.removesuffix("_total") if family.type == "counter" else family.name
        for family in metrics.registry.collect()
    }
    documented = {name.removesuffix("_total") for name in table}
    assert documented == exported, documented ^ exported
    rejected = table["gateway_rejected_requests_total"]
    for reason in reject_reasons():
        assert f"`{reason}`" in rejected, reason
