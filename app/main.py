"""The app factory: settings (and optionally a ready engine) in, ASGI app out."""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI

from app import __version__
from app.config import Settings
from app.engine.protocol import Engine
from app.errors import install_error_handlers
from app.lifecycle import Supervisor
from app.middleware import RequestContext
from app.routes import completions, health, metrics, models, tokenize


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    on_exit: Callable[[], None] = lambda: None,
) -> FastAPI:
    """Build the app.

    Without `engine`, the lifespan starts building vLLM in the background and
    returns at once, so the server binds its port while the engine loads; the
    engine is shut down on exit. A given engine is already built: startup runs
    to `ready` before the app serves. `on_exit` is how the supervisor asks the
    server to stop (engine death, failed startup, end of drain).
    """
    settings = settings or Settings()

    async def build() -> Engine:
        if engine is not None:
            return engine
        # Importing vllm (and torch) takes seconds: do it, and the build, off
        # the event loop. The import stays out of unit tests with a fake engine.
        return await asyncio.to_thread(_build_vllm, settings)

    supervisor = Supervisor(settings, build, on_exit)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if engine is None:
            supervisor.start()
        else:
            await supervisor.startup()
        try:
            yield
        finally:
            await supervisor.shutdown()

    app = FastAPI(title="ascend-llm-gateway", version=__version__, lifespan=lifespan)
    app.state.supervisor = supervisor
    install_error_handlers(app)
    for module in (completions, models, tokenize, health, metrics):
        app.include_router(module.router)
    app.add_middleware(RequestContext, supervisor=supervisor)
    return app


def _build_vllm(settings: Settings) -> Engine:
    model = Path(settings.model)
    if not (model / "config.json").is_file():
        raise FileNotFoundError(
            f"no model at {settings.model!r}: GATEWAY_MODEL must be a local directory "
            "with config.json, tokenizer and safetensors weights"
        )
    # Models come from local directories only: never wait on a model hub.
    # Set before vllm (and so huggingface_hub) is first imported.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    from app.engine.vllm import build_engine

    return build_engine(settings)
