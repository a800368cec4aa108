"""Pooled clients after an idle gap: are requests lost to a keep-alive race?

A client pool keeps idle connections open for its own expiry (aiohttp 15 s,
httpx 5 s by default); a server closes them after its keep-alive timeout. If
the server's is shorter, a request sent on a connection the server is
closing is lost ("Server disconnected", a reset), and POSTs are not retried.
For each gap this warms a pool of N connections, leaves it idle for the gap,
then sends N completions at once on it, and counts how they ended.

    python -m tools.keepalive http://127.0.0.1:8000 --sweep 4.9 5.1 0.01
    python -m tools.keepalive http://127.0.0.1:8000 --gaps 10 14.5 --lanes 2
"""

from __future__ import annotations

import argparse
import asyncio
import json
from collections import Counter
from typing import Any

import aiohttp
import httpx

BODY = {"prompt": "hi", "max_tokens": 1}
# aiohttp's and httpx's own defaults for how long an idle pooled connection is kept.
POOL_EXPIRY = {"aiohttp": 15.0, "httpx": 5.0}


async def _aiohttp_round(
    url: str, gap: float, n: int, expiry: float, headers: dict[str, str]
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    connector = aiohttp.TCPConnector(limit=n, keepalive_timeout=expiry)
    async with aiohttp.ClientSession(url, connector=connector, headers=headers) as session:

        async def one() -> str:
            try:
                async with session.post("/v1/completions", json=BODY) as r:
                    await r.read()
                    return "ok" if r.status == 200 else f"status {r.status}"
            except (aiohttp.ServerDisconnectedError, aiohttp.ClientOSError):
                return "disconnect"
            except aiohttp.ClientError as exc:
                return type(exc).__name__

        await asyncio.gather(*(one() for _ in range(n)))  # warm the pool
        await asyncio.sleep(gap)
        outcomes.update(await asyncio.gather(*(one() for _ in range(n))))
    return outcomes


async def _httpx_round(
    url: str, gap: float, n: int, expiry: float, headers: dict[str, str]
) -> Counter[str]:
    outcomes: Counter[str] = Counter()
    limits = httpx.Limits(max_connections=n, keepalive_expiry=expiry)
    async with httpx.AsyncClient(base_url=url, limits=limits, headers=headers) as client:

        async def one() -> str:
            try:
                r = await client.post("/v1/completions", json=BODY, timeout=60)
                return "ok" if r.status_code == 200 else f"status {r.status_code}"
            except (httpx.RemoteProtocolError, httpx.ReadError, httpx.WriteError):
                return "disconnect"
            except httpx.HTTPError as exc:
                return type(exc).__name__

        await asyncio.gather(*(one() for _ in range(n)))
        await asyncio.sleep(gap)
        outcomes.update(await asyncio.gather(*(one() for _ in range(n))))
    return outcomes


def sweep(start: float, stop: float, step: float) -> list[float]:
    """Gaps from `start` to `stop` inclusive (e.g. 4.90 to 5.10 by 0.01)."""
    count = round((stop - start) / step)
    return [round(start + i * step, 6) for i in range(count + 1)]


async def probe(
    url: str,
    gaps: list[float],
    client: str = "aiohttp",
    connections: int = 32,
    expiry: float | None = None,
    api_key: str | None = None,
    lanes: int = 1,
) -> dict[float, Counter[str]]:
    """Per gap, how the requests after it ended. Each gap has a pool of its
    own; `lanes` pools run at once, each lane taking its gaps one after the
    other (one lane: the race as a lone client meets it)."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    pool_expiry = POOL_EXPIRY[client] if expiry is None else expiry
    run = _aiohttp_round if client == "aiohttp" else _httpx_round
    results: dict[float, Counter[str]] = {}

    async def lane(mine: list[float]) -> None:
        for gap in mine:
            results[gap] = await run(url, gap, connections, pool_expiry, headers)

    await asyncio.gather(*(lane(gaps[i::lanes]) for i in range(lanes)))
    return {gap: results[gap] for gap in gaps}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--gaps", type=float, nargs="+", default=[4.9, 5.1, 10.0, 14.5])
    p.add_argument(
        "--sweep", type=float, nargs=3, metavar=("FROM", "TO", "STEP"), help="gaps, instead"
    )
    p.add_argument("--lanes", type=int, default=1, help="pools probing at once")
    p.add_argument("--client", choices=sorted(POOL_EXPIRY), default="aiohttp")
    p.add_argument("--connections", type=int, default=32)
    p.add_argument("--expiry", type=float, help="the pool's idle expiry (default: the client's)")
    p.add_argument("--rounds", type=int, default=1)
    p.add_argument("--api-key")
    a = p.parse_args()
    gaps = sweep(*a.sweep) if a.sweep else a.gaps
    total: dict[float, Counter[str]] = {g: Counter() for g in gaps}
    for _ in range(a.rounds):
        got = asyncio.run(probe(a.url, gaps, a.client, a.connections, a.expiry, a.api_key, a.lanes))
        for gap, outcomes in got.items():
            total[gap].update(outcomes)
    report: dict[str, Any] = {f"{g:g}s": dict(c) for g, c in total.items()}
    lost = sum(c["disconnect"] for c in total.values())
    sent = sum(sum(c.values()) for c in total.values())
    print(json.dumps({"client": a.client, "connections": a.connections, "sent": sent,
                      "disconnects": lost, "gaps": report}))  # fmt: skip


if __name__ == "__main__":
    main()
