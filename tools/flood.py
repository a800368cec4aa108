"""Open N streaming completions at once against a running server and classify
how each one ends. Run as its own process (the load must not share the
server's event loop):

    python -m tools.flood http://127.0.0.1:8000 --streams 1000 --max-tokens 4

Each stream ends as one of:
- `ok`: 200, data chunks, a final finish_reason, then `[DONE]`;
- `refused`: 503 with `Retry-After` and an OpenAI error body (admission);
- `error`: anything else (another status, an SSE error event, a broken body);
- `hung`: no end within --timeout seconds.
Prints one JSON object. (The server's own event-loop lag is on its
/metrics: gateway_event_loop_lag_seconds.)
"""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from typing import Any

import httpx


async def one_stream(
    client: httpx.AsyncClient, body: dict[str, Any], hung_after: float, start: asyncio.Event
) -> str:
    await start.wait()
    try:
        async with asyncio.timeout(hung_after):
            async with client.stream("POST", "/v1/completions", json=body) as r:
                if r.status_code == 503:
                    error = json.loads(await r.aread())["error"]
                    ok = r.headers.get("retry-after", "").isdigit() and error["type"]
                    return "refused" if ok else "error"
                if r.status_code != 200:
                    return "error"
                finished = done = False
                async for line in r.aiter_lines():
                    if not line.startswith("data:"):
                        continue
                    data = line[5:].strip()
                    if data == "[DONE]":
                        done = True
                        break
                    chunk = json.loads(data)
                    if "error" in chunk:
                        return "error"
                    if chunk["choices"] and chunk["choices"][0]["finish_reason"]:
                        finished = True
                return "ok" if finished and done else "error"
    except TimeoutError:
        return "hung"
    except (httpx.HTTPError, ValueError, KeyError):
        return "error"


async def flood(
    url: str, streams: int, max_tokens: int, prompt_tokens: int, hung_after: float, api_key: str
) -> dict[str, Any]:
    body = {
        "prompt": [1] + [450] * (prompt_tokens - 1),
        "max_tokens": max_tokens,
        "ignore_eos": True,
        "stream": True,
    }
    limits = httpx.Limits(max_connections=None, max_keepalive_connections=0)
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    async with httpx.AsyncClient(
        base_url=url, limits=limits, timeout=hung_after, headers=headers
    ) as client:
        start = asyncio.Event()
        tasks = [
            asyncio.create_task(one_stream(client, body, hung_after, start)) for _ in range(streams)
        ]
        await asyncio.sleep(0.5)  # every task waits at the start line
        t0 = time.perf_counter()
        start.set()
        outcomes = await asyncio.gather(*tasks)
        elapsed = time.perf_counter() - t0
    counts = Counter(outcomes)
    return {
        "streams": streams,
        "max_tokens": max_tokens,
        "prompt_tokens": prompt_tokens,
        "seconds": round(elapsed, 3),
        **{k: counts.get(k, 0) for k in ("ok", "refused", "error", "hung")},
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("url")
    p.add_argument("--streams", type=int, default=1000)
    p.add_argument("--max-tokens", type=int, default=4)
    p.add_argument("--prompt-tokens", type=int, default=8)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds before a stream is hung")
    p.add_argument("--api-key", default="")
    a = p.parse_args()
    result = asyncio.run(
        flood(a.url, a.streams, a.max_tokens, a.prompt_tokens, a.timeout, a.api_key)
    )
    print(json.dumps(result))


if __name__ == "__main__":
    main()
