"""Real gateway processes for tests: started through the CLI exactly as a
user (or Kubernetes) runs it, on the fixture model."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import httpx
import psutil

from testkit.procs import Server, free_port
from tests.support.sse import data_of
from tests.support.wait import until

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
    # Its state (engine records, batches) beside its log, never the user's
    # own; a gateway started again with the same log finds it again.
    env = {"GATEWAY_DATA_DIR": str(log.with_suffix(".state")), **(env or {})}
    return Gateway("gateway", cmd, port, log, cwd=ROOT, env=env)


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
            if (data := data_of(line)) is not None:
                events.append(data)
                if started is not None:
                    started.set()
    return events


def engine_processes(gw: Gateway) -> list[psutil.Process]:
    return psutil.Process(gw.proc.pid).children(recursive=True)


def wait_exit(gw: Gateway, timeout: float = 90) -> int:
    return gw.proc.wait(timeout=timeout)


def wait_failed(gw: Gateway, within: float) -> dict:  # type: ignore[type-arg]
    """Poll /health/live until it reports failure (503); return its JSON."""

    def failed() -> dict | None:  # type: ignore[type-arg]
        assert gw.proc.poll() is None, gw.logs()
        try:
            r = httpx.get(f"{gw.url}/health/live", timeout=2)
        except httpx.TransportError:
            return None
        return r.json() if r.status_code == 503 else None  # type: ignore[no-any-return]

    return until(failed, "/health/live reports the failure", within, every=0.1)


def assert_no_orphans(procs: list[psutil.Process], within: float = 60) -> None:
    """Every one of `procs` ends (generous: a worker whose engine core was
    killed notices its parent's death on its own, slowly on a loaded node)."""

    def ended() -> bool:
        return not [p for p in procs if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]

    until(ended, f"the engine processes {[p.pid for p in procs]} end", within, every=0.1)
