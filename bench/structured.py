"""What an output constraint costs: the same load with and without a JSON
schema, alternated, on one gateway (the real engine).

    python -m bench.structured [--concurrency 8 32] [--rounds 3] [--requests 64]

Per concurrency and mode: output tokens per second and the API process's CPU
per 1000 output tokens (utime + stime of the gateway process, its engine-core
children excluded), each round's figure and the median; the modes alternate
(A B A B ...) so that drift on a shared machine hits both alike. The grammar
is compiled by the engine core (another process), so the API figure is what
the constraint costs the serving layer; tok/s is what it costs end to end.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.run import MODEL, NAME
from bench.servers import Server, gateway

# A string longer than max_tokens can hold: every constrained answer runs to
# max_tokens, as every unconstrained one does (ignore_eos), so per-token
# figures compare like with like.
SCHEMA = {"type": "string", "minLength": 1000}
MODES: dict[str, dict[str, Any]] = {
    "unconstrained": {"ignore_eos": True},
    "json_schema": {
        "response_format": {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    },
}


def cpu_seconds(server: Server) -> float:
    times = psutil.Process(server.proc.pid).cpu_times()
    return float(times.user + times.system)


async def load(url: str, extra: dict[str, Any], concurrency: int, requests: int) -> int:
    """`requests` completions, `concurrency` at a time; their output tokens."""
    tokens = 0
    queue: asyncio.Queue[int] = asyncio.Queue()
    for i in range(requests):
        queue.put_nowait(i)
    limits = httpx.Limits(max_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=300) as client:

        async def worker() -> None:
            nonlocal tokens
            while not queue.empty():
                i = queue.get_nowait()
                body = {"model": NAME, "prompt": f"Item {i}:", "max_tokens": 64, "seed": i}
                r = await client.post("/v1/completions", json={**body, **extra})
                r.raise_for_status()
                tokens += r.json()["usage"]["completion_tokens"]

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return tokens


def measure(server: Server, mode: str, concurrency: int, requests: int) -> dict[str, float]:
    cpu0, t0 = cpu_seconds(server), time.monotonic()
    tokens = asyncio.run(load(server.url, MODES[mode], concurrency, requests))
    wall, cpu = time.monotonic() - t0, cpu_seconds(server) - cpu0
    return {
        "tok_s": tokens / wall,
        "api_cpu_ms_per_1k": cpu * 1e6 / max(1, tokens),
        "tokens_per_request": tokens / requests,
    }


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--concurrency", type=int, nargs="+", default=[8, 32])
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--requests", type=int, default=64)
    a = p.parse_args()
    log = Path(tempfile.mkdtemp()) / "gateway.log"
    server = gateway(MODEL, log, NAME)
    try:
        server.wait_ready()
        for mode in MODES:  # first-use costs out of the measurement
            measure(server, mode, 4, 8)
        report: dict[str, Any] = {}
        for c in a.concurrency:
            runs: dict[str, list[dict[str, float]]] = {m: [] for m in MODES}
            for _ in range(a.rounds):
                for mode in MODES:
                    runs[mode].append(measure(server, mode, c, a.requests))
            report[f"c={c}"] = {
                mode: {
                    key: {
                        "runs": [round(r[key], 1) for r in rs],
                        "median": round(statistics.median(r[key] for r in rs), 1),
                    }
                    for key in ("tok_s", "api_cpu_ms_per_1k", "tokens_per_request")
                }
                for mode, rs in runs.items()
            }
        print(json.dumps(report, indent=2))
    finally:
        server.stop()


if __name__ == "__main__":
    main()
