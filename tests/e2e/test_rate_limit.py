"""Per-key rate limits: a key over its rate gets 429 + Retry-After (the openai
SDK's RateLimitError); other keys, probes and /metrics are not affected."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.metrics import scrape, value
from tests.support.wait import until

KEY_A, KEY_B = "sk-rate-a", "sk-rate-b"


@pytest.fixture(scope="module")
def limited(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    gw = start_gateway(
        model_dir,
        tmp_path_factory.mktemp("limited") / "gateway.log",
        "--warmup",
        "none",
        env={
            "GATEWAY_API_KEYS": f'["{KEY_A}", "{KEY_B}"]',
            "GATEWAY_RATE_LIMIT_RPM": "60",  # one a second
            "GATEWAY_RATE_LIMIT_BURST": "3",
        },
    )
    yield gw
    stop_gateway(gw)


def tokenize(url: str, key: str) -> httpx.Response:
    return httpx.post(
        f"{url}/tokenize",
        json={"prompt": "Hi"},
        headers={"Authorization": f"Bearer {key}"},
        timeout=30,
    )


def test_key_over_its_rate_gets_429_and_recovers(limited: Gateway) -> None:
    assert [tokenize(limited.url, KEY_A).status_code for _ in range(3)] == [200] * 3
    # The burst is spent; on a slow machine a token may have come back meanwhile.
    for _ in range(3):
        r = tokenize(limited.url, KEY_A)
        if r.status_code != 200:
            break
    assert r.status_code == 429
    assert r.headers["retry-after"] == "1"
    error = r.json()["error"]
    assert (error["type"], error["code"]) == ("rate_limit_error", "rate_limit_exceeded")
    assert KEY_A not in r.text

    sdk = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=KEY_A, max_retries=0)
    raised = False
    for _ in range(3):  # as above: a token may come back between calls
        try:
            sdk.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=2)
        except openai.RateLimitError:
            raised = True
            break
    assert raised

    # Another key, the probes and the metrics are not limited.
    assert tokenize(limited.url, KEY_B).status_code == 200
    assert httpx.get(f"{limited.url}/health/live").status_code == 200
    samples = scrape(limited.url)
    rejected = value(
        samples, "gateway_rejected_requests_total", model=MODEL_NAME, reason="rate_limited"
    )
    assert rejected >= 2.0

    # a token comes back (a refused call costs none)
    until(lambda: tokenize(limited.url, KEY_A).status_code == 200, "a token back")
    # The SDK's own retry honours Retry-After and gets through.
    retrying = openai.OpenAI(base_url=f"{limited.url}/v1", api_key=KEY_A, max_retries=3)
    out = retrying.completions.create(
        model=MODEL_NAME, prompt="Hi", max_tokens=2, extra_body={"ignore_eos": True}
    )
    assert out.usage is not None and out.usage.completion_tokens == 2
