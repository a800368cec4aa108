"""Signals at the edges of the lifecycle, on real gateway processes: SIGTERM
while the engine is still loading, a second SIGTERM during a drain, and
SIGTERM after the engine has died (the drain's failed branch). Each must
end the process promptly, with its own exit code, and leave no engine
process behind."""

from __future__ import annotations

import signal
import threading
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.support import gateway as support
from tests.support.gateway import Gateway
from tests.support.wait import until

pytestmark = pytest.mark.engine


def phase(gw: Gateway) -> str | None:
    try:
        return str(httpx.get(f"{gw.url}/health/startup", timeout=5).json()["phase"])
    except httpx.TransportError:
        return None


def exit_watching_children(gw: Gateway, within: float) -> tuple[int, list[psutil.Process]]:
    """Wait for the process to exit, noting every child it had meanwhile."""
    seen: dict[int, psutil.Process] = {}
    deadline = time.monotonic() + within
    while gw.proc.poll() is None:
        assert time.monotonic() < deadline, f"still running after {within:g} s"
        try:
            for child in psutil.Process(gw.proc.pid).children(recursive=True):
                seen.setdefault(child.pid, child)
        except psutil.NoSuchProcess:
            break
        time.sleep(0.05)
    return gw.proc.wait(), list(seen.values())


def test_sigterm_while_loading_stops_cleanly(model_dir: Path, tmp_path: Path) -> None:
    gw = support.spawn_gateway(model_dir, tmp_path / "gw.log", "--drain-delay", "0")
    try:
        until(lambda: phase(gw) == "loading", "the loading phase")
        gw.proc.send_signal(signal.SIGTERM)
        code, children = exit_watching_children(gw, 180)
        assert code == 0, gw.logs()[-3000:]
        support.assert_no_orphans(children)
        logs = gw.logs()
        assert "phase loading -> draining" in logs
        assert "Traceback" not in logs
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()


def test_a_second_sigterm_ends_a_drain_at_once(model_dir: Path, tmp_path: Path) -> None:
    gw = support.spawn_gateway(
        model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--drain-timeout", "300",
        "--drain-delay", "0",
    )  # fmt: skip
    try:
        support.wait_ready(gw)
        children = support.engine_processes(gw)
        started = threading.Event()
        result: list[list[str]] = []
        body = {"prompt": [1], "max_tokens": 2000, "ignore_eos": True}
        t = threading.Thread(target=lambda: result.append(_events(gw, body, started)))
        t.start()
        assert started.wait(60)
        gw.proc.send_signal(signal.SIGTERM)
        until(lambda: phase(gw) == "draining", "draining")
        stopped = time.monotonic()
        gw.proc.send_signal(signal.SIGTERM)  # the operator insists
        code, _ = exit_watching_children(gw, 120)
        # long before the 300 s drain would have ended, and not as a failure
        assert time.monotonic() - stopped < 120 and code == 0, gw.logs()[-3000:]
        support.assert_no_orphans(children)
        t.join(60)
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()


def _events(gw: Gateway, body: dict, started: threading.Event) -> list[str]:  # type: ignore[type-arg]
    try:
        return support.stream_events(gw.url, body, started)
    except httpx.HTTPError:
        return []  # the server went away mid-stream: expected here


def test_sigterm_after_the_engine_died_exits_at_once(model_dir: Path, tmp_path: Path) -> None:
    # The failed phase holds the process for its exit grace (probes read the
    # reason); a SIGTERM then has nothing to drain and ends it now.
    gw = support.spawn_gateway(
        model_dir, tmp_path / "gw.log", "--warmup", "minimal", "--exit-grace", "300"
    )
    try:
        support.wait_ready(gw)
        children = support.engine_processes(gw)
        core = next(p for p in children if "EngineCore" in p.name())
        core.kill()
        snap = support.wait_failed(gw, 60)
        assert "engine" in snap["error"]
        gw.proc.send_signal(signal.SIGTERM)
        code, _ = exit_watching_children(gw, 120)
        assert code == 1, gw.logs()[-3000:]  # still the failure's exit code
        support.assert_no_orphans(children)
    finally:
        if gw.proc.poll() is None:
            gw.proc.kill()
