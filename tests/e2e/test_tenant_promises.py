"""The tenancy review's findings over HTTP on the real engine: a tenants
file that names nobody yet still needs a key (and a reload lets tenants in),
a reservation larger than a whole budget is a 400, headers recomputed from
now with the binding budget named and readable by a browser, a 431 sent
before the app runs is one usage-log line."""

from __future__ import annotations

import json
import signal
import socket
from collections.abc import Iterator
from pathlib import Path

import httpx
import openai
import pytest

from tests.support.gateway import MODEL_NAME, Gateway, start_gateway, stop_gateway
from tests.support.wait import until

pytestmark = pytest.mark.engine

TENANTS = """
tenants:
  - name: small
    keys: ["sk-small"]
    tokens_per_minute: 1000
    tokens_per_day: 1200
"""
ORIGIN = "http://app.example"


@pytest.fixture(scope="module")
def gw(model_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    tmp = tmp_path_factory.mktemp("promises")
    (tmp / "tenants.yaml").write_text("tenants: []\n")
    gateway = start_gateway(
        model_dir,
        tmp / "gw.log",
        "--warmup", "minimal", "--data-dir", str(tmp),
        env={
            "GATEWAY_TENANTS_FILE": str(tmp / "tenants.yaml"),
            "GATEWAY_USAGE_LOG": str(tmp / "usage.jsonl"),
            "GATEWAY_CORS_ORIGINS": json.dumps([ORIGIN]),
            "GATEWAY_MAX_HEADERS": "20",
        },
    )  # fmt: skip
    yield gateway
    stop_gateway(gateway)


def _usage(gw: Gateway) -> list[dict]:  # type: ignore[type-arg]
    path = gw.log.parent / "usage.jsonl"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_nobody_yet_means_every_route_needs_a_key_until_a_reload(gw: Gateway) -> None:
    # Before: an empty file installed no key check at all, and a reload
    # that added tenants never installed it.
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401
    r = httpx.post(f"{gw.url}/v1/completions", json={"prompt": "x", "max_tokens": 1})
    assert r.status_code == 401
    assert "names nobody yet" in gw.logs()
    (gw.log.parent / "tenants.yaml").write_text(TENANTS)
    gw.proc.send_signal(signal.SIGHUP)
    until(lambda: "tenants file reloaded: 1 tenants" in gw.logs(), "the reload")
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-small", max_retries=0)
    out = client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=3)
    assert out.usage is not None and out.usage.completion_tokens == 3
    assert httpx.get(f"{gw.url}/v1/models").status_code == 401


def test_a_reservation_above_the_whole_budget_is_a_400_not_a_429(gw: Gateway) -> None:
    client = openai.OpenAI(base_url=f"{gw.url}/v1", api_key="sk-small", max_retries=0)
    with pytest.raises(openai.BadRequestError) as bad:  # before: 429 + Retry-After forever
        client.completions.create(model=MODEL_NAME, prompt="Hello", max_tokens=1500)
    assert bad.value.code == "budget_too_small" and "max_tokens" in str(bad.value.message)
    assert "retry-after" not in bad.value.response.headers


def test_headers_name_the_binding_budget_and_a_browser_may_read_them(gw: Gateway) -> None:
    h = {"Authorization": "Bearer sk-small", "Origin": ORIGIN}
    r = httpx.post(f"{gw.url}/v1/completions", headers=h, json={"prompt": "Hello", "max_tokens": 2})
    assert r.status_code == 200
    # The day (1200) binds before the minute (1000 left of 1000) once a
    # request has been charged to both: the headers describe the day.
    assert r.headers["x-ratelimit-budget-tokens"] in ("tokens_per_minute", "tokens_per_day")
    models = httpx.get(f"{gw.url}/v1/models", headers=h)  # charges nothing
    reset = models.headers["x-ratelimit-reset-tokens"]
    remaining = int(models.headers["x-ratelimit-remaining-tokens"])
    limit = int(models.headers["x-ratelimit-limit-tokens"])
    assert remaining <= limit and reset.endswith("s")
    exposed = models.headers["access-control-expose-headers"].lower()
    assert "x-ratelimit-remaining-tokens" in exposed and "x-ratelimit-reset-tokens" in exposed


def test_a_431_before_the_app_runs_is_one_usage_line(gw: Gateway) -> None:
    before = [x for x in _usage(gw) if x["status"] == 431]
    port = int(gw.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        headers = "".join(f"x-h{i}: v\r\n" for i in range(30))
        s.sendall(f"POST /v1/completions HTTP/1.1\r\nHost: x\r\n{headers}\r\n".encode())
        assert b" 431 " in s.recv(4096).split(b"\r\n", 1)[0]
    until(lambda: len([x for x in _usage(gw) if x["status"] == 431]) == len(before) + 1, "a line")
    line = [x for x in _usage(gw) if x["status"] == 431][-1]
    assert line["outcome"] == "rejected" and line["tenant"] is None
