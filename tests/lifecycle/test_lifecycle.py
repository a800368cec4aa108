"""Startup phases, SIGTERM drain, engine death and failed startup, on real
processes started through the CLI exactly as Kubernetes runs them."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import pytest

from tests.support.gateway import (
    assert_no_orphans,
    engine_processes,
    spawn_gateway,
    stream_events,
    wait_exit,
    wait_failed,
    wait_ready,
)
from tests.support.wait import until

pytestmark = pytest.mark.engine


def finish_reason(events: list[str]) -> str | None:
    reasons = [
        json.loads(e)["choices"][0]["finish_reason"]
        for e in events[:-1]
        if json.loads(e).get("choices")
    ]
    return reasons[-1] if reasons else None


def test_answers_while_loading_then_drains_on_sigterm(model_dir: Path, tmp_path: Path) -> None:
    gw = spawn_gateway(model_dir, tmp_path / "gw.log", "--drain-timeout", "4")
    try:
        # Bind first, build after: the port answers before the engine exists.
        snap = None
        while snap is None:
            try:
                r = httpx.get(f"{gw.url}/health/live", timeout=1)
                snap = r.json()
            except httpx.TransportError:
                assert gw.proc.poll() is None, gw.logs()
                time.sleep(0.05)
        assert r.status_code == 200
        assert snap["phase"] in ("starting", "loading")
        assert httpx.get(f"{gw.url}/health/ready").status_code == 503
        assert httpx.get(f"{gw.url}/health/startup").status_code == 503
        assert httpx.get(f"{gw.url}/health").status_code == 503
        early = httpx.post(f"{gw.url}/v1/completions", json={"prompt": "hi"})
        assert early.status_code == 503
        assert early.headers["retry-after"].isdigit()
        assert early.json()["error"]["type"] == "service_unavailable"

        wait_ready(gw)
        snap = httpx.get(f"{gw.url}/health/ready").json()
        assert snap["phase"] == "ready" and snap["error"] is None
        assert set(snap["phase_durations"]) == {"starting", "loading", "warming"}
        assert snap["phase_durations"]["loading"] > 0
        assert snap["graph"]["capture_sizes"] == []  # eager on the CPU: nothing captured
        assert httpx.get(f"{gw.url}/health/startup").status_code == 200
        children = engine_processes(gw)
        assert any("EngineCore" in p.name() for p in children)

        # 10 short streams finish within the drain budget; one long one is aborted.
        results: dict[int, list[str]] = {}
        started = [threading.Event() for _ in range(11)]

        def run(i: int) -> None:
            n = 2040 if i == 10 else 32
            results[i] = stream_events(
                gw.url, {"prompt": [1], "max_tokens": n, "ignore_eos": True}, started[i]
            )

        threads = [threading.Thread(target=run, args=(i,)) for i in range(11)]
        for t in threads:
            t.start()
        for ev in started:
            assert ev.wait(60)
        gw.proc.send_signal(signal.SIGTERM)
        until(
            lambda: httpx.get(f"{gw.url}/health/ready").json()["phase"] == "draining",
            "the phase is draining",
        )
        assert httpx.get(f"{gw.url}/health/ready").status_code == 503
        assert httpx.get(f"{gw.url}/health/live").status_code == 200
        late = httpx.post(f"{gw.url}/v1/completions", json={"prompt": "hi"})
        assert late.status_code == 503 and "retry-after" in late.headers
        for t in threads:
            t.join(60)
        for i in range(10):
            assert results[i][-1] == "[DONE]"
            assert finish_reason(results[i]) == "length"
        assert results[10][-1] == "[DONE]"
        assert finish_reason(results[10]) == "abort"
        assert wait_exit(gw) == 0
        assert_no_orphans(children)
        logs = gw.logs()
        assert "phase draining -> stopped" in logs
        # A planned stop reads as one: no error, no traceback, no exit noise.
        assert " ERROR " not in logs and "Traceback" not in logs and "leaked" not in logs
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()


def test_engine_death_ends_streams_and_exits_non_zero(model_dir: Path, tmp_path: Path) -> None:
    gw = spawn_gateway(
        model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--log-format", "json"
    )
    try:
        wait_ready(gw)
        children = engine_processes(gw)
        core = next(p for p in children if "EngineCore" in p.name())
        started = threading.Event()
        result: list[list[str]] = []
        t = threading.Thread(
            target=lambda: result.append(
                stream_events(
                    gw.url, {"prompt": [1], "max_tokens": 2000, "ignore_eos": True}, started
                )
            )
        )
        t.start()
        assert started.wait(60)
        core.kill()
        t.join(30)
        events = result[0]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert error["type"] == "service_unavailable"

        # live turns 503 with the reason, then the process exits non-zero.
        def failed() -> httpx.Response | None:
            r = httpx.get(f"{gw.url}/health/live", timeout=2)
            return r if r.status_code == 503 else None

        r = until(failed, "live turns 503", every=0.1)
        assert r.json()["phase"] == "failed" and "engine" in r.json()["error"]
        assert httpx.post(f"{gw.url}/v1/completions", json={"prompt": "x"}).status_code == 503
        assert wait_exit(gw) != 0
        assert_no_orphans(children)
        # JSON logs: one object per line, a line per phase change, request ids.
        records = [json.loads(line) for line in gw.logs().splitlines() if line.startswith("{")]
        messages = [r["message"] for r in records]
        assert any(m.startswith("phase loading -> warming after") for m in messages)
        assert any(m.startswith("phase ready -> failed after") for m in messages)
        assert any(
            "POST /v1/completions" in r["message"] and len(r.get("request_id", "")) == 32
            for r in records
        )
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()


def test_bad_model_path_fails_with_a_reason(tmp_path: Path) -> None:
    gw = spawn_gateway(tmp_path / "no-such-model", tmp_path / "gw.log", "--exit-grace", "5")
    try:
        snap = wait_failed(gw, 60)
        assert snap["phase"] == "failed"
        assert "no-such-model" in snap["error"] and "GATEWAY_MODEL" in snap["error"]
        assert "Traceback" not in snap["error"]
        assert wait_exit(gw, 30) != 0
        assert "no-such-model" in gw.logs()
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
