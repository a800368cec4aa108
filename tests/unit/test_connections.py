"""Connections under the CLI's own uvicorn configuration (app.__main__'s
uvicorn_config), served in-process on a scripted engine: an idle keep-alive
connection is closed cleanly at the keep-alive timeout, and while draining
every answer closes its connection. The real-engine versions with pooled
clients are tests/e2e/test_keepalive.py and tests/lifecycle/test_keepalive_drain.py."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator

import httpx
import pytest
import uvicorn
from fastapi import FastAPI
from prometheus_client import CollectorRegistry

from app.__main__ import uvicorn_config
from app.config import Settings
from app.engine.protocol import SamplingOptions
from app.main import create_app
from testkit.fake_engine import FakeEngine, Out, ReqOut
from testkit.procs import free_port, wait_ok
from tests.support.raw_http import read_response
from tests.support.wait import until


async def one_token(ids: list[int], options: SamplingOptions) -> AsyncIterator[ReqOut]:
    yield ReqOut([Out(0, "a", [5], "stop")], finished=True)


class Served:
    def __init__(self, app: FastAPI, url: str):
        self.app, self.url = app, url
        self.loop: asyncio.AbstractEventLoop | None = None

    def call(self, fn: Callable[[], object]) -> None:
        """Run `fn` on the server's event loop."""
        assert self.loop is not None
        self.loop.call_soon_threadsafe(fn)


@pytest.fixture
def served(request: pytest.FixtureRequest) -> Iterator[Served]:
    overrides = getattr(request, "param", {})
    settings = Settings(served_model_name="fake", warmup="none", port=free_port(), **overrides)
    app = create_app(settings, engine=FakeEngine(one_token), registry=CollectorRegistry())  # type: ignore[arg-type]
    server = uvicorn.Server(uvicorn_config(settings, app))
    url = f"http://127.0.0.1:{settings.port}"
    served = Served(app, url)

    def run() -> None:
        async def serve() -> None:
            served.loop = asyncio.get_running_loop()
            await server.serve()

        asyncio.run(serve())

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_ok(f"{url}/health/ready", 30, thread.is_alive)
    yield served
    server.should_exit = True
    thread.join(30)


@pytest.mark.parametrize("served", [{"keepalive_timeout": 3}], indirect=True)
def test_an_idle_connection_is_closed_cleanly_at_the_keepalive_timeout(served: Served) -> None:
    port = int(served.url.rsplit(":", 1)[1])
    body = b'{"prompt": "hi", "max_tokens": 1}'
    request = (
        b"POST /v1/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
        b"content-length: " + str(len(body)).encode() + b"\r\n\r\n" + body
    )
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        head = read_response(sock)
        assert head.startswith(b"HTTP/1.1 200")
        assert b"connection: close" not in head.lower()
        # Idle, well before the timeout: still good for another request.
        time.sleep(0.3)
        sock.sendall(request)
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        t0 = time.monotonic()
        # Then nothing more arrives but the server's FIN: no half-written answer.
        assert sock.recv(65536) == b""
        waited = time.monotonic() - t0
    # closed by the keep-alive timeout (3 s here), not at once; generous after it
    assert 1.5 < waited < 60


def test_the_default_keepalive_outlives_common_client_pools() -> None:
    # aiohttp keeps idle pooled connections 15 s, nginx upstreams 60 s, Go 90 s.
    config = uvicorn_config(Settings(), create_app(Settings(), registry=CollectorRegistry()))
    assert config.timeout_keep_alive == Settings().keepalive_timeout > 90


@pytest.mark.parametrize("served", [{"drain_delay": 30}], indirect=True)
def test_while_draining_every_answer_closes_its_connection(served: Served) -> None:
    with httpx.Client(base_url=served.url, timeout=10) as client:
        before = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert before.status_code == 200 and "connection" not in before.headers
        served.call(served.app.state.supervisor.begin_drain)

        def refused() -> httpx.Response | None:
            r = client.get("/health/ready")
            return r if r.status_code != 200 else None

        r = until(refused, "ready turns 503")
        assert r.headers["connection"] == "close"
        late = client.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
        assert late.status_code == 503
        assert late.headers["connection"] == "close" and late.headers["retry-after"].isdigit()
        # The port stays open during drain_delay: a new connection is answered, not refused.
        assert client.get("/health/live").status_code == 200
