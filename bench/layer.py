"""The serving layer alone: our own CPU per request and per token.

python -m bench.layer [--concurrency 32] [--tenants]

The app in-process, called through ASGI with no socket, on a scripted engine
that gives every open stream one token per step (as vLLM's output handler
does). It isolates the gateway's Python from vLLM's output processing, the
kernel and the client, so a change to the hot path can be tried in seconds
with a py-spy profile beside it. It makes no speed claim: those come from
`python -m bench.ab` and `make bench`, against vLLM's server on the real
engine. Prints the minimum of 5 runs (the least disturbed by the machine).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry

from app.config import Settings
from app.engine.protocol import SamplingOptions
from app.main import create_app
from testkit.fake_engine import FakeEngine, Out, ReqOut


class Stepper:
    """Every step: one token to each open request."""

    def __init__(self) -> None:
        self.open: list[asyncio.Queue[None]] = []
        self.tokens = 64
        # vLLM's stat logger calls the supervisor once per step (heartbeat,
        # fair-share output charge): so does this engine.
        self.on_step: Callable[[None], None] = lambda step: None

    async def script(self, ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        q: asyncio.Queue[None] = asyncio.Queue()
        self.open.append(q)
        try:
            for i in range(self.tokens):
                await q.get()
                last = i == self.tokens - 1
                yield ReqOut([Out(0, " tok", [500 + i], "length" if last else None)], last)
        finally:
            self.open.remove(q)

    async def run(self) -> None:
        while True:
            await asyncio.sleep(0)
            if self.open:
                self.on_step(None)
            for q in list(self.open):
                q.put_nowait(None)


TENANTS = """tenants:
  - name: bench
    keys: [sk-bench]
    tokens_per_minute: 1000000000
    requests_per_minute: 100000000
"""


async def measure(concurrency: int, tenants: bool = False) -> tuple[float, float]:
    stepper = Stepper()
    engine = FakeEngine(script=stepper.script, max_model_len=4096, max_num_seqs=concurrency)
    overrides: dict[str, Any] = {}
    headers: list[tuple[bytes, bytes]] = []
    if tenants:  # a tenants file with budgets that never refuse, and the usage log
        tmp = Path(tempfile.mkdtemp(prefix="layer-"))
        (tmp / "tenants.yaml").write_text(TENANTS)
        overrides = {"tenants_file": tmp / "tenants.yaml", "usage_log": str(tmp / "usage.jsonl")}
        headers = [(b"authorization", b"Bearer sk-bench")]
    settings = Settings(served_model_name="fake", warmup="none", **overrides)
    app = create_app(settings, engine=engine, registry=CollectorRegistry())
    stepper.on_step = app.state.supervisor.engine_step
    limit = asyncio.Semaphore(concurrency)

    async def one(body: bytes) -> None:
        done = asyncio.Event()
        pending = [{"type": "http.request", "body": body, "more_body": False}]

        async def receive() -> dict[str, Any]:
            if pending:
                return pending.pop()
            await done.wait()
            return {"type": "http.disconnect"}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.body" and not message.get("more_body"):
                done.set()

        scope = {
            "type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1",
            "method": "POST", "scheme": "http", "path": "/v1/completions",
            "raw_path": b"/v1/completions", "query_string": b"", "root_path": "",
            "headers": [(b"content-type", b"application/json"),
                        (b"content-length", str(len(body)).encode()), *headers],
            "client": ("127.0.0.1", 1), "server": ("127.0.0.1", 2), "state": {},
        }  # fmt: skip
        async with limit:
            await app(scope, receive, send)  # type: ignore[arg-type]

    async def batch(tokens: int, requests: int) -> float:
        stepper.tokens = tokens
        body = json.dumps(
            {"model": "fake", "prompt": "hello " * 40, "max_tokens": tokens, "stream": True}
        ).encode()
        await asyncio.gather(*(one(body) for _ in range(16)))  # warm
        best = float("inf")
        for _ in range(5):
            t0 = time.process_time()
            await asyncio.gather(*(one(body) for _ in range(requests)))
            best = min(best, time.process_time() - t0)
        return best

    async with app.router.lifespan_context(app):
        steps = asyncio.create_task(stepper.run())
        per_request = await batch(1, 1000) / 1000
        long_requests = 64
        per_token = (await batch(512, long_requests) - long_requests * per_request) / (
            long_requests * 512
        )
        steps.cancel()
    return per_request, per_token


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--tenants", action="store_true", help="a tenants file and the usage log on")
    a = p.parse_args()
    import uvloop

    per_request, per_token = uvloop.run(measure(a.concurrency, a.tenants))
    print(f"per request {per_request * 1e3:.3f} ms CPU, per token {per_token * 1e6:.2f} µs CPU")


if __name__ == "__main__":
    main()
