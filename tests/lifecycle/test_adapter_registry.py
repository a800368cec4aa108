"""The adapter directory is the registry, on real gateway processes: two
replicas on one directory converge on what the admin endpoint of either
loads or unloads, and a gateway SIGKILLed and started again serves the
same adapters (and drops the copies its killed process left)."""

from __future__ import annotations

import signal
from pathlib import Path

import httpx
import pytest

from tests.support.adapters import FIXTURE_ADAPTERS, copy_adapter
from tests.support.gateway import Gateway, spawn_gateway, start_gateway, stop_gateway, wait_ready
from tests.support.wait import until

pytestmark = pytest.mark.engine
ADMIN = "sk-admin-lifecycle"


def _models(gw: Gateway) -> set[str]:
    r = httpx.get(f"{gw.url}/v1/models", headers={"Authorization": f"Bearer {ADMIN}-user"})
    assert r.status_code == 200, r.text
    return {m["id"] for m in r.json()["data"]}


def _admin(gw: Gateway, op: str, **body: str) -> httpx.Response:
    headers = {"Authorization": f"Bearer {ADMIN}"}
    return httpx.post(f"{gw.url}/v1/{op}_lora_adapter", json=body, headers=headers, timeout=60)


def test_replicas_converge_and_a_restart_serves_the_same_set(
    model_dir: Path, tmp_path: Path
) -> None:
    lora = tmp_path / "lora"
    lora.mkdir()
    copy_adapter("classify", lora)
    env = {
        "GATEWAY_LORA_DIR": str(lora),
        "GATEWAY_LORA_RESCAN": "1",
        "GATEWAY_ADMIN_KEYS": ADMIN,
        "GATEWAY_API_KEYS": f"{ADMIN}-user",
    }
    a = start_gateway(model_dir, tmp_path / "a.log", env=env)
    b = start_gateway(model_dir, tmp_path / "b.log", env=env)
    try:
        base = _models(a) - {"classify"}
        assert _models(a) == _models(b) == base | {"classify"}
        r = _admin(a, "load", lora_name="extract@1", lora_path=str(FIXTURE_ADAPTERS / "extract@1"))
        assert r.status_code == 200, r.text
        assert "extract@1" in _models(a)  # at once where it was loaded
        until(lambda: {"extract@1", "extract"} <= _models(b), "replica b serves extract@1", 20)
        assert _admin(b, "unload", lora_name="classify").status_code == 200
        until(lambda: "classify" not in _models(a), "replica a drops classify", 20)
        served = _models(a)
        # SIGKILL a, start it again on the same directory and state.
        copies = tmp_path / "a.state" / "adapters" / str(a.proc.pid)
        assert copies.is_dir()
        a.proc.send_signal(signal.SIGKILL)
        a.proc.wait(30)
        again = spawn_gateway(model_dir, tmp_path / "a.log", env=env)
        try:
            wait_ready(again)
            assert _models(again) == served == _models(b)
            assert not copies.exists()  # the killed process's copies are gone
            r = httpx.post(
                f"{again.url}/v1/completions",
                json={"model": "extract", "prompt": "Hi", "max_tokens": 4},
                headers={"Authorization": f"Bearer {ADMIN}-user"},
            )
            assert r.status_code == 200 and r.json()["model"] == "extract@1"
        finally:
            stop_gateway(again)
    finally:
        for gw in (a, b):
            if gw.proc.poll() is None:
                stop_gateway(gw)
