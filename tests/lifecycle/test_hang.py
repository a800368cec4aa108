"""A hung engine, injected for real: SIGSTOP of the engine-core process (alive,
never answers; SIGCONT would undo it). The progress watchdog must notice,
end the stream with an engine_error, fail liveness with the reason and exit
non-zero so Kubernetes restarts the pod; while idle, the canary notices."""

from __future__ import annotations

import json
import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import gateway as support
from tests.support.gateway import Gateway, engine_processes
from tests.support.metrics import scrape
from tests.support.wait import until

pytestmark = pytest.mark.engine
# Above the slowest healthy step seen: vLLM 0.18 on the CPU took ~5 s for the
# first step of a prompt shape warmup had not run.
STALL = 8.0


def hung_gateway(model_dir: Path, log: Path, *args: str) -> tuple[Gateway, psutil.Process]:
    gw = support.spawn_gateway(
        model_dir,
        log,
        "--warmup",
        "minimal",
        "--stall-timeout",
        str(STALL),
        "--watchdog-interval",
        "0.2",
        "--exit-grace",
        "2",
        *args,
    )
    support.wait_ready(gw)
    core = next(p for p in engine_processes(gw) if "EngineCore" in p.name())
    return gw, core


def release(gw: Gateway) -> None:
    """Continue a stopped engine core and end a gateway still running."""
    for p in engine_processes(gw) if gw.proc.poll() is None else []:
        p.send_signal(signal.SIGCONT)
    if gw.proc.poll() is None:
        gw.proc.kill()


def engine_requests(gw: Gateway) -> float:
    return sum(v for (n, _), v in scrape(gw.url).items() if n == "vllm:request_success_total")


def keep_busy(url: str, seconds: float) -> list[str]:
    """Keep the engine running requests without a pause for `seconds`: three
    clients, each sending 200-token streams back to back (one of them is
    always running). Returns each stream's finish reason."""
    stop_at = time.monotonic() + seconds
    reasons: list[str] = []

    def client() -> None:
        while time.monotonic() < stop_at:
            events = support.stream_events(
                url, {"prompt": [1], "max_tokens": 200, "ignore_eos": True}
            )
            reasons.append(json.loads(events[-2])["choices"][0]["finish_reason"])

    threads = [threading.Thread(target=client) for _ in range(3)]
    for t in threads:
        t.start()
    while time.monotonic() < stop_at:
        live = httpx.get(f"{url}/health/live", timeout=10)
        assert live.status_code == 200, live.text  # busy and stepping is not hung
        time.sleep(0.2)
    for t in threads:
        t.join(120)
    return reasons


def test_sigstopped_engine_mid_stream_is_found_hung(model_dir: Path, tmp_path: Path) -> None:
    gw, core = hung_gateway(model_dir, tmp_path / "gw.log")
    children = engine_processes(gw)
    try:
        # First, healthy work for twice the stall timeout without a pause:
        # only the per-step heartbeat from vLLM's stat logger tells it from a
        # hang (the watchdog sees requests running the whole time).
        reasons = keep_busy(gw.url, 2 * STALL)
        assert reasons and set(reasons) == {"length"}
        stalls = [v for (n, _), v in scrape(gw.url).items() if n == "gateway_engine_stalls_total"]
        assert stalls == [0.0]
        started = threading.Event()
        result: list[list[str]] = []
        body = {"prompt": [1], "max_tokens": 2000, "ignore_eos": True}
        t = threading.Thread(
            target=lambda: result.append(support.stream_events(gw.url, body, started))
        )
        t.start()
        assert started.wait(60)
        core.send_signal(signal.SIGSTOP)
        stopped_at = time.monotonic()
        snap = support.wait_failed(gw, STALL + 10)
        found_after = time.monotonic() - stopped_at
        assert "hung" in snap["error"] and "GATEWAY_STALL_TIMEOUT" in snap["error"]
        # Not before the stall timeout (less the last step's age), well within it after.
        assert STALL / 2 < found_after < STALL + 30, found_after
        t.join(30)
        events = result[0]
        assert events[-1] == "[DONE]"
        error = json.loads(events[-2])["error"]
        assert (error["type"], error["code"]) == ("engine_error", "engine_stalled")
        assert support.wait_exit(gw, 60) != 0
        support.assert_no_orphans(children)
    finally:
        release(gw)


def test_sigstopped_engine_while_idle_is_found_by_the_canary(
    model_dir: Path, tmp_path: Path
) -> None:
    gw, core = hung_gateway(model_dir, tmp_path / "gw.log", "--canary-interval", "1")
    children = engine_processes(gw)
    try:
        # Two canaries pass while the engine works (vLLM counts each as a
        # finished request; nothing else runs): still live.
        before = engine_requests(gw)
        until(lambda: engine_requests(gw) >= before + 2, "two idle canaries answered")
        assert httpx.get(f"{gw.url}/health/live", timeout=5).status_code == 200
        core.send_signal(signal.SIGSTOP)
        snap = support.wait_failed(gw, 1 + STALL + 10)
        assert "canary" in snap["error"]
        assert support.wait_exit(gw, 60) != 0
        support.assert_no_orphans(children)
    finally:
        release(gw)
