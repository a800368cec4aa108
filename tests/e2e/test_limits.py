"""Admission control, request limits and CORS on the real server."""

from __future__ import annotations

import itertools
import threading
import time
from typing import Any

import httpx
import openai

from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.metrics import delta, scrape, value
from tests.support.wait import until

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def _long(url: str, results: list[httpx.Response]) -> threading.Thread:
    def call() -> None:
        results.append(
            httpx.post(
                f"{url}/v1/completions",
                headers=AUTH,
                timeout=300,
                json={"prompt": [1], "max_tokens": 300, "ignore_eos": True},
            )
        )

    t = threading.Thread(target=call)
    t.start()
    return t


def _admission(url: str) -> tuple[float, float]:
    s = scrape(url)
    return (
        value(s, "gateway_admission_running", model=MODEL_NAME),
        value(s, "gateway_admission_queued", model=MODEL_NAME),
    )


def _fill(url: str, results: list[httpx.Response]) -> list[threading.Thread]:
    """GATEWAY_MAX_INFLIGHT=2, GATEWAY_MAX_QUEUE=2: two long requests run, two
    wait; returns once the gateway says so (whatever the machine's speed)."""
    threads = [_long(url, results) for _ in range(2)]
    until(lambda: _admission(url) == (2, 0), "two requests running")
    threads += [_long(url, results) for _ in range(2)]
    until(lambda: _admission(url) == (2, 2), "two running, two queued")
    return threads


def test_admission_serves_inflight_plus_queue_and_refuses_the_rest(secured: Gateway) -> None:
    held: list[httpx.Response] = []
    before = scrape(secured.url)
    threads = _fill(secured.url, held)
    # Every place and queue slot taken: the next six are refused at once.
    refused = [
        httpx.post(
            f"{secured.url}/v1/completions",
            headers=AUTH,
            timeout=60,
            json={"prompt": [1], "max_tokens": 300, "ignore_eos": True},
        )
        for _ in range(6)
    ]
    for t in threads:
        t.join(300)
    assert [r.status_code for r in held] == [200] * 4
    for r in held:
        assert r.json()["usage"]["completion_tokens"] == 300  # admitted work is never cut
    for r in refused:
        assert r.status_code == 503
        assert r.headers["retry-after"].isdigit()
        assert r.json()["error"]["type"] == "overloaded_error"
    after = scrape(secured.url)
    labels = {"model": MODEL_NAME, "reason": "overloaded"}
    assert delta(before, after, "gateway_rejected_requests_total", **labels) == 6
    assert _admission(secured.url) == (0, 0)


def test_sdk_retries_honour_retry_after_and_succeed(secured: Gateway) -> None:
    # While two long requests hold both places and two more fill the queue,
    # the SDK's call is refused with 503 + Retry-After; the SDK waits that
    # long and retries until a place is free, and the call succeeds.
    attempts: list[tuple[float, int, str | None]] = []

    def seen(response: Any) -> None:  # the SDK's own httpx flavour
        attempts.append(
            (time.monotonic(), response.status_code, response.headers.get("retry-after"))
        )

    client = openai.OpenAI(
        base_url=f"{secured.url}/v1",
        api_key=API_KEY,
        max_retries=50,
        http_client=openai.DefaultHttpxClient(event_hooks={"response": [seen]}, timeout=300),
    )
    held: list[httpx.Response] = []
    threads = _fill(secured.url, held)
    out = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=4)
    for t in threads:
        t.join(300)
    assert out.choices[0].finish_reason in ("length", "stop")
    statuses = [status for _, status, _ in attempts]
    assert statuses[0] == 503 and statuses[-1] == 200 and set(statuses) == {503, 200}
    for (at, status, retry_after), (next_at, _, _) in itertools.pairwise(attempts):
        assert status == 503 and retry_after is not None and retry_after.isdigit()
        assert next_at - at >= int(retry_after) * 0.9  # the SDK waited as told


def test_body_over_the_limit_is_413_in_openai_shape(secured: Gateway) -> None:
    big = {"prompt": "x" * (1_100_000), "max_tokens": 1}
    r = httpx.post(f"{secured.url}/v1/completions", headers=AUTH, json=big, timeout=30)
    assert r.status_code == 413
    assert r.json()["error"]["type"] == "invalid_request_error"

    def chunks():  # no Content-Length: the limit still applies
        for _ in range(40):
            yield b"x" * 32768

    r = httpx.post(
        f"{secured.url}/v1/completions",
        content=chunks(),
        headers={**AUTH, "content-type": "application/json"},
        timeout=30,
    )
    assert r.status_code == 413
    assert "bytes" in r.json()["error"]["message"]


def test_stop_and_prompt_list_limits(strict: httpx.Client) -> None:
    r = strict.post("/v1/completions", json={"prompt": "x", "stop": ["a"] * 9})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = strict.post("/v1/completions", json={"prompt": "x", "stop": ["a" * 257]})
    assert r.status_code == 400 and r.json()["error"]["param"] == "stop"
    r = strict.post("/v1/completions", json={"prompt": ["x"] * 65})
    assert r.status_code == 400 and r.json()["error"]["param"] == "prompt"
    for bad in (b"NaN", b"Infinity", b"-Infinity", b"1e999"):
        r = strict.post(
            "/v1/completions",
            content=b'{"prompt": "x", "top_p": ' + bad + b"}",
            headers={"content-type": "application/json"},
        )
        assert r.status_code == 400, bad
        assert r.json()["error"]["param"] == "top_p"


def test_cors_only_for_configured_origins(secured: Gateway) -> None:
    pre = httpx.options(
        f"{secured.url}/v1/completions",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "authorization,content-type",
        },
    )
    assert pre.status_code == 200
    assert pre.headers["access-control-allow-origin"] == "https://app.example.com"
    other = httpx.options(
        f"{secured.url}/v1/completions",
        headers={"Origin": "https://evil.example.com", "Access-Control-Request-Method": "POST"},
    )
    assert "access-control-allow-origin" not in other.headers


def test_cors_lets_a_browser_use_the_openai_sdk(secured: Gateway) -> None:
    # The SDK's own request headers (x-stainless-*, ...), captured from a real call.
    sent: list[str] = []
    hook = {"request": [lambda req: sent.extend(req.headers.keys())]}
    with httpx.Client(event_hooks=hook) as http_client:
        sdk = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=API_KEY, http_client=http_client)  # type: ignore[arg-type]
        sdk.completions.create(model=MODEL_NAME, prompt="x", max_tokens=1)
    # What a browser would ask before sending them (the CORS-safelisted ones aside).
    asked = sorted({h for h in sent if h not in {"accept", "host", "content-length"}})
    assert any(h.startswith("x-stainless-") for h in asked)
    pre = httpx.options(
        f"{secured.url}/v1/completions",
        headers={
            "Origin": "https://app.example.com",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": ",".join(asked),
        },
    )
    assert pre.status_code == 200, pre.text
    allowed = {h.strip().lower() for h in pre.headers["access-control-allow-headers"].split(",")}
    assert set(asked) <= allowed
    # The SDK reads these from responses: its retry timing and the request id.
    r = httpx.get(
        f"{secured.url}/v1/models",
        headers={"Origin": "https://app.example.com", "Authorization": f"Bearer {API_KEY}"},
    )
    exposed = {h.strip().lower() for h in r.headers["access-control-expose-headers"].split(",")}
    assert {"retry-after", "x-request-id", "x-truncated-prompt-tokens"} <= exposed


def test_cors_is_off_by_default(http: httpx.Client) -> None:
    r = http.get("/v1/models", headers={"Origin": "https://app.example.com"})
    assert "access-control-allow-origin" not in r.headers
