"""What one request costs the serving process, request by request.

python -m bench.per_request [--no-vllm] [--repeat N]

For the gateway and vLLM's server (one alive at a time, each warmed by a
short benchmark run first): the API process's CPU (utime + stime) per
request of each kind, sent one after another by one client, and the wall
time. Kinds: `/health` on a kept-alive connection; a scrape of `/metrics`
and of `/metrics/epp` (a new connection each, as a scraper makes them; on
vLLM's server `/metrics/epp` is its whole `/metrics` again, which it mounts
as a prefix); a completion of 1 token, streamed and not, and a stream of 16
tokens (ignore_eos) on a ~120-token prompt. The difference between the
streams gives the cost per token at c=1; the 1-token ones, per request.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import psutil

from bench.run import MODEL, NAME, measured
from bench.servers import Server, gateway, vllm_server

PROMPT = "The quick brown fox jumps over the lazy dog. " * 12


def kinds(client: httpx.Client, url: str) -> dict[str, Callable[[], Any]]:
    def completion(tokens: int, stream: bool) -> Callable[[], Any]:
        body = {"model": NAME, "prompt": PROMPT, "max_tokens": tokens, "stream": stream}
        body["ignore_eos"] = True
        return lambda: client.post("/v1/completions", json=body).raise_for_status()

    return {
        "GET /health (kept alive)": lambda: client.get("/health").raise_for_status(),
        "GET /metrics (new connection)": lambda: httpx.get(url + "/metrics").raise_for_status(),
        "GET /metrics/epp (new connection)": lambda: httpx.get(url + "/metrics/epp"),
        "completion, 1 token": completion(1, False),
        "stream, 1 token": completion(1, True),
        "stream, 16 tokens": completion(16, True),
    }


def measure(server: Server, repeat: int) -> dict[str, tuple[float, float]]:
    process = psutil.Process(server.proc.pid)

    def cpu() -> float:
        t = process.cpu_times()
        return float(t.user + t.system)

    out: dict[str, tuple[float, float]] = {}
    with httpx.Client(base_url=server.url, timeout=60) as client:
        for kind, call in kinds(client, server.url).items():
            for _ in range(5):
                call()
            c0, t0 = cpu(), time.perf_counter()
            for _ in range(repeat):
                call()
            out[kind] = ((cpu() - c0) * 1e3 / repeat, (time.perf_counter() - t0) * 1e3 / repeat)
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--no-vllm", action="store_true", help="the gateway only")
    p.add_argument("--repeat", type=int, default=100, help="requests of each kind")
    a = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="per-request-"))
    starters = [gateway] if a.no_vllm else [gateway, vllm_server]
    results: dict[str, dict[str, tuple[float, float]]] = {}
    for start in starters:
        server = start(MODEL, logs / f"{start.__name__}.log", NAME)
        try:
            server.wait_ready()
            measured(server, 8, 16)  # warm: first requests pay lazy setup
            results[server.name] = measure(server, a.repeat)
        finally:
            server.stop()
    names = list(results)
    print("| request | " + " | ".join(f"{n}: CPU ms, wall ms" for n in names) + " |")
    print("|---" * (len(names) + 1) + "|")
    for kind in results[names[0]]:
        cells = [f"{results[n][kind][0]:.2f}, {results[n][kind][1]:.1f}" for n in names]
        print(f"| {kind} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
