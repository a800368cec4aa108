"""The progress watchdog on a scripted engine that hangs (the real-fault
versions, SIGSTOP of the engine core, are in tests/lifecycle): requests end
with an engine_error, liveness turns 503 with the reason, the process is
asked to exit; the idle canary finds a hang with no traffic."""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator

import httpx
import pytest
from prometheus_client import CollectorRegistry

from app.config import Settings
from app.engine.protocol import SamplingOptions
from app.errors import EngineFailure
from app.main import create_app
from testkit.fake_engine import FakeEngine, Out, ReqOut
from tests.support.inprocess import serve
from tests.support.metrics import parse, value
from tests.support.sse import data_events
from tests.support.wait import until_async

pytestmark = pytest.mark.anyio


async def one_token_then_hang(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    yield ReqOut([Out(0, "t0", [5])])
    await asyncio.Event().wait()  # alive, never another output


async def hang(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    await asyncio.Event().wait()
    yield ReqOut([])  # pragma: no cover


async def test_a_hung_engine_ends_requests_and_fails_liveness() -> None:
    engine = FakeEngine(one_token_then_hang)
    exits: list[int] = []
    settings = Settings(
        served_model_name="fake",
        warmup="none",
        watchdog_interval=0.05,
        stall_timeout=0.5,
        exit_grace=2,
    )
    app = create_app(
        settings,
        engine=engine,  # type: ignore[arg-type]
        on_exit=lambda: exits.append(1),
        registry=CollectorRegistry(),
    )
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            body = {"prompt": "hi", "max_tokens": 10}
            stream, plain = await asyncio.gather(
                c.post("/v1/completions", json={**body, "stream": True}),
                c.post("/v1/completions", json=body),
            )
            live = await c.get("/health/live")
            samples = parse((await c.get("/metrics")).text)
            assert exits == []  # the grace lets probes read the reason first
            await until_async(lambda: _exited(exits), "the exit after the grace")
            assert exits == [1]
    events = data_events(stream)
    assert json.loads(events[0])["choices"][0]["text"] == "t0"
    error = json.loads(events[1])["error"]
    assert (error["type"], error["code"]) == ("engine_error", "engine_stalled")
    assert events[2:] == ["[DONE]"]
    assert plain.status_code == 503 and plain.json()["error"]["code"] == "engine_stalled"
    assert live.status_code == 503
    assert "hung" in live.json()["error"] and "GATEWAY_STALL_TIMEOUT" in live.json()["error"]
    assert value(samples, "gateway_engine_stalls_total", model="fake") == 1
    labels = {"model": "fake", "type": "engine_error"}
    assert value(samples, "gateway_stream_errors_total", **labels) == 1
    assert app.state.supervisor.exit_code == 1
    # Both engine requests were stopped by closing their output streams (vLLM
    # aborts a request whose stream closes); abort() is the drain's tool.
    assert len(set(engine.closed)) == 2 and engine.aborted == []


async def test_the_idle_canary_finds_a_hang_with_no_traffic() -> None:
    engine = FakeEngine(hang)
    settings = Settings(
        served_model_name="fake",
        warmup="none",
        watchdog_interval=0.05,
        stall_timeout=0.3,
        canary_interval=0.1,
        exit_grace=5,
    )
    app = create_app(settings, engine=engine, registry=CollectorRegistry())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            assert (await c.get("/health/live")).status_code == 200
            live = await until_async(lambda: _unlive(c), "the idle canary's hang caught")
    assert "canary" in live.json()["error"]


async def test_a_busy_engine_that_keeps_stepping_is_not_hung() -> None:
    # 25 steps of 0.1 s: the request runs 2.5 times the stall timeout, so
    # without the per-step heartbeat it would be taken for a hang.
    async def slow(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        for i in range(25):
            await asyncio.sleep(0.1)
            app.state.supervisor.watchdog.heartbeat()  # the stat logger, per step
            yield ReqOut([Out(0, f"t{i}", [5], "length" if i == 24 else None)])

    settings = Settings(
        served_model_name="fake", warmup="none", watchdog_interval=0.05, stall_timeout=1.0
    )
    app = create_app(settings, engine=FakeEngine(slow), registry=CollectorRegistry())  # type: ignore[arg-type]
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            r = await c.post("/v1/completions", json={"prompt": "hi"})
            live = await c.get("/health/live")
    assert r.status_code == 200 and r.json()["choices"][0]["finish_reason"] == "length"
    assert live.status_code == 200


async def test_a_failing_canary_is_retried_and_a_later_hang_still_caught(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A canary that fails with an engine error (not the engine's death) used to
    end the watch silently: hang detection was off for the rest of the process."""
    calls: list[int] = []

    async def fails_then_hangs(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
        calls.append(len(calls))
        if len(calls) <= 2:
            raise EngineFailure("the engine failed this request")
        await asyncio.Event().wait()
        yield ReqOut([])  # pragma: no cover

    watch = {"watchdog_interval": 0.05, "stall_timeout": 0.5, "canary_interval": 0.1}
    async with serve(FakeEngine(fails_then_hangs), exit_grace=30, **watch) as c:
        live = await until_async(
            lambda: _unlive(c), "the hang after two failed canaries caught", within=60
        )
        samples = parse((await c.get("/metrics")).text)
    # Two canaries failed, were counted, logged and retried; the third hung and was caught.
    assert len(calls) >= 3
    assert value(samples, "gateway_canary_failures_total", model="fake") == 2
    assert value(samples, "gateway_engine_stalls_total", model="fake") == 1
    failed = [r for r in caplog.records if r.getMessage().startswith("idle canary failed")]
    assert len(failed) == 2 and "the engine failed this request" in failed[0].getMessage()
    assert "canary" in live.json()["error"]


async def _exited(exits: list[int]) -> bool | None:
    return True if exits else None


async def _unlive(c: httpx.AsyncClient) -> httpx.Response | None:
    live = await c.get("/health/live")
    return live if live.status_code == 503 else None


class BrokenWatch(FakeEngine):
    """An engine whose state cannot be read: the watch itself raises."""

    @property  # type: ignore[override]
    def errored(self) -> bool:
        raise RuntimeError("state unreadable")

    @errored.setter
    def errored(self, value: bool) -> None:
        pass


async def test_a_watch_that_fails_is_never_silent(caplog: pytest.LogCaptureFixture) -> None:
    # A defect in the watch must not leave the process live without hang
    # detection: it is logged and liveness fails, so the pod is restarted.
    async with serve(BrokenWatch(hang), exit_grace=30, watchdog_interval=0.05) as c:
        live = await until_async(lambda: _unlive(c), "liveness failed", within=60)
    assert "the engine watchdog failed" in live.json()["error"]
    assert any(r.getMessage() == "the engine watchdog failed" for r in caplog.records)
