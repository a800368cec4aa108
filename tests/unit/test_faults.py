"""Engine faults become OpenAI errors: HTTP status before a stream starts, an
SSE error event then [DONE] after. Scripted with a fake engine."""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry

from app.completion.tokenizer import INLINE_CHARS
from app.config import Settings
from app.engine.protocol import SamplingOptions
from app.errors import EngineFailure, Unavailable
from app.main import create_app
from testkit.fake_engine import CharTokenizer, FakeEngine, Out, ReqOut, Script
from tests.support.inprocess import serve
from tests.support.metrics import Samples, parse, value
from tests.support.sse import data_events
from tests.support.wait import until_async

pytestmark = pytest.mark.anyio


async def call(engine: FakeEngine, body: dict, path: str = "/v1/completions") -> httpx.Response:  # type: ignore[type-arg]
    async with serve(engine) as c:
        if path == "/health":
            return await c.get(path)
        return await c.post(path, json=body)


def answered(samples: Samples, status: str) -> float:
    labels = {"model": "fake", "endpoint": "/v1/completions", "status": status}
    return value(samples, "gateway_requests_total", **labels)


def fails_after(n: int, exc: Exception) -> Script:
    async def script(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        for i in range(n):
            yield ReqOut([Out(0, f"t{i}", [5])])
        raise exc

    return script


async def test_mid_stream_failure_ends_with_error_event_then_done() -> None:
    async with serve(FakeEngine(fails_after(2, EngineFailure("boom")))) as c:
        r = await c.post("/v1/completions", json={"prompt": "hi", "stream": True})
        scrape = (await c.get("/metrics")).text
    assert r.status_code == 200
    ev = data_events(r)
    assert [json.loads(e)["choices"][0]["text"] for e in ev[:2]] == ["t0", "t1"]
    err = json.loads(ev[2])["error"]
    assert err["message"] == "boom" and err["type"] == "server_error"
    assert ev[3:] == ["[DONE]"]
    # Counted as a 200 that failed, where an SRE can see it.
    samples = parse(scrape)
    assert value(samples, "gateway_stream_errors_total", model="fake", type="server_error") == 1
    assert answered(samples, "200") == 1


async def test_unexpected_exception_mid_stream_is_not_leaked() -> None:
    r = await call(
        FakeEngine(fails_after(1, RuntimeError("secret internals"))),
        {"prompt": "hi", "stream": True},
    )
    assert "secret internals" not in r.text and "Traceback" not in r.text
    assert data_events(r)[-1] == "[DONE]"
    assert "error" in json.loads(data_events(r)[-2])


@pytest.mark.parametrize("stream", [False, True])
async def test_engine_gone_before_first_output_is_503_with_retry_after(stream: bool) -> None:
    engine = FakeEngine(fails_after(0, Unavailable("The inference engine is not running.")))
    r = await call(engine, {"prompt": "hi", "stream": stream})
    assert r.status_code == 503
    assert r.headers["retry-after"].isdigit()
    assert r.json()["error"]["type"] == "service_unavailable"


async def test_watchdog_fails_the_gateway_when_the_engine_dies() -> None:
    engine = FakeEngine(fails_after(1, EngineFailure("x")))
    exits: list[float] = []
    settings = Settings(
        served_model_name="fake", warmup="none", watchdog_interval=0.01, exit_grace=2
    )
    app = create_app(
        settings, engine=engine, on_exit=lambda: exits.append(1), registry=CollectorRegistry()
    )  # type: ignore[arg-type]

    async def unlive() -> httpx.Response | None:
        live = await c.get("/health/live")
        return live if live.status_code == 503 else None

    async def exited() -> bool | None:
        return True if exits else None

    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/health/live")).status_code == 200
            engine.errored = True
            live = await until_async(unlive, "liveness failed after the engine died")
            assert live.json()["phase"] == "failed" and "engine died" in live.json()["error"]
            r = await c.post("/v1/completions", json={"prompt": "hi"})
            assert r.status_code == 503 and "Retry-After" in r.headers
            assert exits == []  # the grace lets probes read the reason first
            await until_async(exited, "the process asked to exit after the grace")
            assert exits == [1]
    assert app.state.supervisor.exit_code == 1


async def test_unexpected_exception_non_stream_is_a_bare_500(
    caplog: pytest.LogCaptureFixture,
) -> None:
    engine = FakeEngine(fails_after(1, RuntimeError("secret internals")))
    async with serve(engine, cors_origins=["https://app.example"]) as c:
        r = await c.post(
            "/v1/completions", json={"prompt": "hi"}, headers={"origin": "https://app.example"}
        )
        scrape = (await c.get("/metrics")).text
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "Internal server error."
    assert "secret internals" not in r.text
    # Still a request like any other: it has its id, a browser may read it,
    # and it is counted as a 500.
    assert len(r.headers["x-request-id"]) == 32
    assert r.headers["access-control-allow-origin"] == "https://app.example"
    samples = parse(scrape)
    assert answered(samples, "500") == 1
    assert 'status="499"' not in scrape
    # Logged once, with its traceback (not again by the server).
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].exc_info is not None


async def test_failure_of_one_prompt_cancels_the_others() -> None:
    async def script(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        if ids[1] == 3 + ord("a"):
            yield ReqOut([Out(0, "a", [5])])
            raise EngineFailure("prompt a failed")
        while True:  # prompt b would run forever
            await asyncio.sleep(0.01)
            yield ReqOut([Out(0, "b", [5])])

    engine = FakeEngine(script)
    r = await call(engine, {"prompt": ["a", "b"], "max_tokens": 4})
    assert r.status_code == 500
    assert r.json()["error"]["message"] == "prompt a failed"
    # prompt b's stream (request id suffix -1) was closed; nothing else needed abort()
    assert [rid.rsplit("-", 1)[1] for rid in engine.closed] == ["1"]
    assert engine.aborted == []


class StuckTokenizer(CharTokenizer):
    """Holds its caller until released, as tokenizing a very long prompt does."""

    def __init__(self) -> None:
        self.entered = threading.Event()
        self.release = threading.Event()

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        self.entered.set()
        if not self.release.wait(10):
            raise RuntimeError("the tokenizer was never released")
        return super().encode(text, add_special_tokens)


@pytest.mark.parametrize("path", ["/v1/completions", "/tokenize"])
async def test_a_long_tokenization_leaves_the_event_loop_serving(path: str) -> None:
    async def one_token(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        yield ReqOut([Out(0, "t", [5], finish_reason="stop")], finished=True)

    tokenizer = StuckTokenizer()
    async with serve(FakeEngine(one_token, tokenizer=tokenizer)) as c:
        # Long enough for the worker (shorter texts are encoded inline).
        prompt = "a long prompt " * (INLINE_CHARS // 10)
        slow = asyncio.create_task(c.post(path, json={"prompt": prompt}))
        assert await asyncio.to_thread(tokenizer.entered.wait, 5)
        # Tokenizing on the event loop would hold this request until the
        # tokenizer gave up; on the worker thread it is answered meanwhile.
        assert (await c.get("/health/live")).status_code == 200
        assert not slow.done()
        tokenizer.release.set()
        assert (await slow).status_code == 200


def _stalls(after: int) -> Script:
    """`after` outputs, then nothing more (an engine request that never ends)."""

    async def script(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        for i in range(after):
            yield ReqOut([Out(0, f"t{i}", [5])])
        await asyncio.Event().wait()
        yield ReqOut([])

    return script


@pytest.mark.parametrize(
    ("script", "body", "status", "outcome"),
    [
        (_stalls(1), {"prompt": "hi"}, 504, "timeout"),
        (_stalls(1), {"prompt": "hi", "stream": True}, 200, "timeout"),
        (fails_after(1, EngineFailure("boom")), {"prompt": "hi"}, 500, "error"),
        (fails_after(1, EngineFailure("boom")), {"prompt": "hi", "stream": True}, 200, "error"),
    ],
)
async def test_usage_log_records_timeouts_and_engine_failures_once(
    script: Script, body: dict[str, Any], status: int, outcome: str, tmp_path: Path
) -> None:
    """The endings no real fault gives on demand: the deadline passing, and an
    engine error mid-request (a stream's 200 ends in an error event)."""
    log = tmp_path / "usage.jsonl"
    engine = FakeEngine(script)
    async with serve(engine, usage_log=str(log), request_timeout=0.3) as c:
        r = await c.post("/v1/completions", json=body, headers={"x-request-id": "rid-1"})
        assert r.status_code == status
    lines = [json.loads(x) for x in log.read_text().splitlines()]
    assert len(lines) == 1, lines
    line = lines[0]
    assert (line["request_id"], line["status"], line["outcome"]) == ("rid-1", status, outcome)
    assert line["completion_tokens"] == 1 and line["tenant"] is None
