"""A client that goes away has its engine request aborted at once."""

from __future__ import annotations

import asyncio
import re

import httpx
import openai

from tests.support.gateway import MODEL_NAME, Gateway
from tests.support.metrics import metric, wait_running_zero
from tests.support.sse import data_of

LONG = {"prompt": [1], "max_tokens": 2000, "ignore_eos": True}


def client_aborts(http: httpx.Client) -> float:
    return metric(http, "gateway_client_aborts_total")


def engine_running(http: httpx.Client) -> float:
    return metric(http, "vllm:num_requests_running")


def test_cancelled_streams_are_aborted(
    gateway: Gateway, http: httpx.Client, client: openai.OpenAI
) -> None:
    async def open_and_abandon() -> float:
        async with httpx.AsyncClient(base_url=gateway.url, timeout=60) as c:

            async def one() -> httpx.Response:
                req = c.build_request("POST", "/v1/completions", json={**LONG, "stream": True})
                r = await c.send(req, stream=True)
                lines = r.aiter_lines()
                while data_of(await anext(lines)) is None:
                    pass
                return r

            responses = await asyncio.gather(*(one() for _ in range(30)))
            running = await asyncio.to_thread(engine_running, http)
            for r in responses:
                await r.aclose()  # the client goes away midway
            return running

    aborts_before = client_aborts(http)
    running_before = asyncio.run(open_and_abandon())
    assert running_before > 0
    wait_running_zero(http)
    assert client_aborts(http) - aborts_before == 30
    out = client.completions.create(
        model=MODEL_NAME, prompt="Hi", max_tokens=8, extra_body={"ignore_eos": True}
    )
    assert out.choices[0].finish_reason == "length"
    assert out.usage is not None and out.usage.completion_tokens == 8


def test_abandoned_non_stream_request_is_aborted(gateway: Gateway, http: httpx.Client) -> None:
    aborts_before = client_aborts(http)
    try:
        httpx.post(f"{gateway.url}/v1/completions", json=LONG, timeout=1.0)
    except httpx.ReadTimeout:
        pass
    else:
        raise AssertionError("a 2000-token completion should outlast a 1 s timeout")
    wait_running_zero(http)
    assert client_aborts(http) - aborts_before == 1


def test_request_id_is_honoured_or_generated(http: httpx.Client) -> None:
    r = http.post(
        "/v1/completions",
        json={"prompt": "x", "max_tokens": 1},
        headers={"x-request-id": "trace-abc.123"},
    )
    assert r.headers["x-request-id"] == "trace-abc.123"
    generated = http.get("/health").headers["x-request-id"]
    assert re.fullmatch(r"[0-9a-f]{32}", generated)
    # A malformed id is not echoed back.
    bad = http.get("/health", headers={"x-request-id": "<script>"}).headers["x-request-id"]
    assert bad != "<script>"
