"""No pooled request lost to a keep-alive race, on the real gateway: pools
of aiohttp and httpx connections (the transports of vLLM's benchmark client
and of the openai SDK) left idle for every gap from 4.90 s to 5.10 s (around
uvicorn's old 5 s timeout, where the race lives: a request written as the
server closes the connection), at 10 s, and just below the pool's own
expiry, then used at once. With GATEWAY_KEEPALIVE_TIMEOUT=5 the same sweep
lost 38 of 672 requests here (`python -m tools.keepalive URL --sweep 4.9
5.1 0.01 --lanes 3`); the default loses none."""

from __future__ import annotations

import asyncio

import pytest

from tests.support.gateway import Gateway
from tools.keepalive import probe, sweep


@pytest.mark.parametrize(
    ("client", "expiry"),
    [
        ("aiohttp", 15.0),  # aiohttp's own pool expiry
        ("httpx", 20.0),  # the openai SDK's transport (its own default expiry is 5 s)
    ],
)
def test_pooled_requests_after_an_idle_gap_are_all_answered(
    gateway: Gateway, client: str, expiry: float
) -> None:
    gaps = [*sweep(4.90, 5.10, 0.01), 10.0, expiry - 0.5]
    results = asyncio.run(probe(gateway.url, gaps, client, connections=16, expiry=expiry, lanes=4))
    lost = {gap: dict(outcomes) for gap, outcomes in results.items() if outcomes != {"ok": 16}}
    assert not lost, f"{client}: requests not answered after these idle gaps: {lost}"
