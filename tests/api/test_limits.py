"""Admission control, request limits and CORS on the real server."""

from __future__ import annotations

import threading

import httpx
import openai

from tests.support.gateway import API_KEY, MODEL_NAME, Gateway
from tests.support.metrics import scrape, value

AUTH = {"Authorization": f"Bearer {API_KEY}"}


def test_admission_serves_inflight_plus_queue_and_refuses_the_rest(secured: Gateway) -> None:
    # GATEWAY_MAX_INFLIGHT=2, GATEWAY_MAX_QUEUE=2: of 10 concurrent long requests,
    # 2 run, 2 wait for a place, 6 are refused at once.
    results: list[httpx.Response] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def call() -> None:
        barrier.wait()
        r = httpx.post(
            f"{secured.url}/v1/completions",
            headers=AUTH,
            timeout=120,
            json={"prompt": [1], "max_tokens": 300, "ignore_eos": True},
        )
        with lock:
            results.append(r)

    threads = [threading.Thread(target=call) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    served = [r for r in results if r.status_code == 200]
    refused = [r for r in results if r.status_code == 503]
    assert (len(served), len(refused)) == (4, 6), [r.status_code for r in results]
    for r in served:
        assert r.json()["usage"]["completion_tokens"] == 300  # admitted work is never cut
    for r in refused:
        assert r.headers["retry-after"].isdigit()
        assert r.json()["error"]["type"] == "overloaded_error"
    rejected = value(
        scrape(secured.url),
        "gateway_rejected_requests_total",
        model=MODEL_NAME,
        reason="overloaded",
    )
    assert rejected == 6.0


def test_sdk_retries_honour_retry_after_and_succeed(secured: Gateway) -> None:
    # While two long requests hold both places and two more fill the queue, the
    # SDK's retry (after Retry-After) of a refused call lands once they finish.
    client = openai.OpenAI(base_url=f"{secured.url}/v1", api_key=API_KEY, max_retries=8)
    blockers = [
        threading.Thread(
            target=lambda: httpx.post(
                f"{secured.url}/v1/completions",
                headers=AUTH,
                timeout=120,
                json={"prompt": [1], "max_tokens": 150, "ignore_eos": True},
            )
        )
        for _ in range(4)
    ]
    for t in blockers:
        t.start()
    out = client.completions.create(model=MODEL_NAME, prompt="Hi", max_tokens=4)
    assert out.choices[0].finish_reason in ("length", "stop")
    for t in blockers:
        t.join(120)


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
