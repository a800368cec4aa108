"""A pooled client hammering through a SIGTERM drain (the real gateway, its
own process): every request ends in a 200, or a 503 with Retry-After and
`Connection: close`; none in a disconnect; the process then exits 0."""

from __future__ import annotations

import asyncio
import signal
import time
from collections import Counter
from pathlib import Path

import aiohttp

from tests.support.gateway import spawn_gateway, wait_exit, wait_ready

WORKERS = 8


async def hammer(url: str, sigterm: asyncio.Event) -> tuple[Counter[str], list[str]]:
    """WORKERS loops on one pool until each has seen 0.5 s of answers after
    its first 503 (the drain delay is longer: the port is still open)."""
    outcomes: Counter[str] = Counter()
    bad: list[str] = []
    connector = aiohttp.TCPConnector(limit=WORKERS, keepalive_timeout=15)
    async with aiohttp.ClientSession(url, connector=connector) as session:

        async def worker() -> None:
            refused_at: float | None = None
            while refused_at is None or time.monotonic() - refused_at < 0.5:
                try:
                    body = {"prompt": "hi", "max_tokens": 8, "ignore_eos": True}
                    async with session.post("/v1/completions", json=body) as r:
                        await r.read()
                        if r.status == 200:
                            outcomes["200"] += 1
                            if outcomes["200"] == 40:
                                sigterm.set()  # the test sends SIGTERM now
                            continue
                        closes = r.headers.get("connection") == "close"
                        if r.status == 503 and closes and "retry-after" in r.headers:
                            outcomes["503 close"] += 1
                            refused_at = refused_at or time.monotonic()
                        else:
                            bad.append(f"{r.status} {dict(r.headers)}")
                except aiohttp.ClientError as exc:
                    bad.append(repr(exc))
                    return

        await asyncio.gather(*(worker() for _ in range(WORKERS)))
    return outcomes, bad


def test_a_pooled_client_through_a_drain_sees_no_disconnect(
    model_dir: Path, tmp_path: Path
) -> None:
    gw = spawn_gateway(model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--drain-delay", "5")
    try:
        wait_ready(gw)

        async def run() -> tuple[Counter[str], list[str]]:
            sigterm = asyncio.Event()
            task = asyncio.create_task(hammer(gw.url, sigterm))
            await sigterm.wait()
            gw.proc.send_signal(signal.SIGTERM)
            return await task

        outcomes, bad = asyncio.run(run())
        assert not bad, bad[:5]
        assert outcomes["200"] >= 40 and outcomes["503 close"] >= WORKERS, outcomes
        assert wait_exit(gw) == 0
        assert "phase draining -> stopped" in gw.logs()
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
