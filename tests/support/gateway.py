"""Real gateway processes for tests: started through the CLI exactly as a
user (or Kubernetes) runs it, on the fixture model."""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path

import httpx
import psutil

from testkit.procs import Server, free_port

__all__ = ["free_port"]

ROOT = Path(__file__).resolve().parents[2]
MODEL_DIR = ROOT / ".cache" / "models" / "tiny-mobilellama"
MODEL_NAME = "tiny-mobilellama"
STARTUP_TIMEOUT = 300.0
API_KEY = "sk-test-Key-1"


class Gateway(Server):
    """A gateway process started through the CLI."""


def spawn_gateway(
    model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Gateway:
    """Start the CLI as Kubernetes would; do not wait for anything."""
    port = free_port()
    cmd = [sys.executable, "-m", "app", "--model", str(model_dir), "--port", str(port), *args]
    return Gateway("gateway", cmd, port, log, cwd=ROOT, env=env or {})


def wait_ready(gw: Gateway, timeout: float = STARTUP_TIMEOUT) -> None:
    gw.wait_ready(timeout, "/health/ready")


def start_gateway(
    model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Gateway:
    gw = spawn_gateway(model_dir, log, *args, env=env)
    wait_ready(gw)
    return gw


def stop_gateway(gw: Gateway) -> None:
    gw.stop()


def stream_events(url: str, body: dict, started: threading.Event | None = None) -> list[str]:  # type: ignore[type-arg]
    events: list[str] = []
    with httpx.stream(
        "POST", f"{url}/v1/completions", json={**body, "stream": True}, timeout=120
    ) as r:
        assert r.status_code == 200
        for line in r.iter_lines():
            if line.startswith("data:"):
                events.append(line[5:].strip())
                if started is not None:
                    started.set()
    return events


def engine_processes(gw: Gateway) -> list[psutil.Process]:
    return psutil.Process(gw.proc.pid).children(recursive=True)


def wait_exit(gw: Gateway, timeout: float = 90) -> int:
    return gw.proc.wait(timeout=timeout)


def wait_failed(gw: Gateway, within: float) -> dict:  # type: ignore[type-arg]
    """Poll /health/live until it reports failure (503); return its JSON."""
    deadline = time.monotonic() + within
    while True:
        try:
            r = httpx.get(f"{gw.url}/health/live", timeout=2)
            if r.status_code == 503:
                return r.json()  # type: ignore[no-any-return]
        except httpx.TransportError:
            pass
        assert gw.proc.poll() is None, gw.logs()
        assert time.monotonic() < deadline
        time.sleep(0.1)


def assert_no_orphans(procs: list[psutil.Process], within: float = 60) -> None:
    """Every one of `procs` ends (generous: a worker whose engine core was
    killed notices its parent's death on its own, slowly on a loaded node)."""
    deadline = time.monotonic() + within
    alive = procs
    while alive and time.monotonic() < deadline:
        alive = [p for p in alive if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
        time.sleep(0.1)
    assert not alive, f"orphan engine processes: {alive}"
