"""The app in-process, on a scripted fake engine: for fault tests that no
real fault fits (the real engine is for everything else)."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import Any

import httpx
from prometheus_client import CollectorRegistry

from app.config import Settings
from app.main import create_app
from testkit.fake_engine import FakeEngine


@contextlib.asynccontextmanager
async def serve(engine: FakeEngine, **overrides: Any) -> AsyncIterator[httpx.AsyncClient]:
    """An HTTP client of an app serving `engine`, ready, with its own registry."""
    settings = Settings(served_model_name="fake", warmup="none", **overrides)
    app = create_app(settings, engine=engine, registry=CollectorRegistry())
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as c:
            yield c
