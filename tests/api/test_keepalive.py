"""No pooled request lost to a keep-alive race, on the real gateway: pools
of aiohttp and httpx connections (the transports of vLLM's benchmark client
and of the openai SDK) left idle just below and above uvicorn's old 5 s
timeout, at 10 s, and just below the pool's own expiry, then used at once.
Before GATEWAY_KEEPALIVE_TIMEOUT (uvicorn's 5 s) such gaps lost requests
(`python -m tools.keepalive`, figures in the README's Connections section)."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.gateway import Gateway
from tools.keepalive import probe


@pytest.mark.parametrize(
    ("client", "expiry", "gaps"),
    [
        ("aiohttp", 15.0, [4.9, 5.1, 10.0, 14.5]),  # aiohttp's own pool expiry: 15 s
        ("httpx", 20.0, [4.9, 5.1, 10.0, 19.5]),
    ],
)
def test_pooled_requests_after_an_idle_gap_are_all_answered(
    gateway: Gateway, client: str, expiry: float, gaps: list[float]
) -> None:
    results = asyncio.run(probe(gateway.url, gaps, client, connections=16, expiry=expiry))
    for gap, outcomes in results.items():
        assert dict(outcomes) == {"ok": 16}, f"{client} after {gap} s idle: {dict(outcomes)}"
