"""API keys on the real server, with the openai SDK as the client."""

from __future__ import annotations

import httpx
import openai
import pytest

from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.metrics import delta, parse, scrape


def sdk(gw: Gateway, key: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gw.url}/v1", api_key=key, max_retries=0)


def test_right_key_works(secured: Gateway) -> None:
    out = sdk(secured, API_KEY).completions.create(
        model=MODEL_NAME, prompt="Hi", max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 2
    # Any key of the file works.
    assert sdk(secured, "sk-other-key").models.list().data[0].id == MODEL_NAME


@pytest.mark.parametrize("key", ["wrong", API_KEY.upper(), API_KEY.lower(), API_KEY + "x", "# one"])
def test_wrong_or_case_changed_key_is_refused(secured: Gateway, key: str) -> None:
    with pytest.raises(openai.AuthenticationError) as err:
        sdk(secured, key).completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
    assert err.value.status_code == 401
    assert err.value.code == "invalid_api_key"
    assert key not in str(err.value.body)


def test_missing_key_and_other_routes_are_refused(secured: Gateway) -> None:
    for method, path in (
        ("POST", "/tokenize"),
        ("POST", "/detokenize"),
        ("GET", "/v1/models"),
        ("POST", "/v1/completions"),
        ("GET", "/docs"),
        ("GET", "/nope"),
    ):
        r = httpx.request(method, f"{secured.url}{path}", json={"prompt": "x"})
        assert r.status_code == 401, path
        assert r.headers["www-authenticate"] == "Bearer"
        assert r.json()["error"]["code"] == "invalid_api_key"
    basic = httpx.post(
        f"{secured.url}/tokenize",
        json={"prompt": "x"},
        headers={"Authorization": f"Basic {API_KEY}"},
    )
    assert basic.status_code == 401


def test_probes_and_metrics_need_no_key(secured: Gateway) -> None:
    for path in ("/health", "/health/live", "/health/ready", "/health/startup", "/metrics"):
        assert httpx.get(f"{secured.url}{path}").status_code == 200, path
    labels = {"model": MODEL_NAME, "reason": "unauthorized"}
    before = scrape(secured.url)
    assert httpx.post(f"{secured.url}/v1/completions", json={"prompt": "x"}).status_code == 401
    metrics = httpx.get(f"{secured.url}/metrics").text
    assert delta(before, parse(metrics), "gateway_rejected_requests_total", **labels) == 1
    assert API_KEY not in metrics
    assert API_KEY not in secured.logs()
