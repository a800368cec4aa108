"""The app factory: settings (and optionally a ready engine) in, ASGI app out."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app import __version__
from app.config import Settings
from app.engine.protocol import Engine
from app.errors import install_error_handlers
from app.routes import completions, health, models, tokenize
from app.service import CompletionService

logger = logging.getLogger(__name__)


def create_app(settings: Settings | None = None, engine: Engine | None = None) -> FastAPI:
    """Build the app. Without `engine`, the lifespan builds vLLM from settings
    and shuts it down on exit; a given engine belongs to the caller."""
    settings = settings or Settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        owned = engine is None
        if engine is None:
            from app.engine.vllm import build_engine  # keeps vllm out of unit tests

            eng: Engine = await build_engine(settings)
        else:
            eng = engine
        app.state.service = CompletionService(eng, settings.model_name, settings.truncation)
        logger.info(
            "serving %s (max_model_len %d, truncation %s)",
            settings.model_name,
            eng.max_model_len,
            settings.truncation,
        )
        try:
            yield
        finally:
            app.state.service = None
            if owned:
                eng.shutdown()

    app = FastAPI(title="ascend-llm-gateway", version=__version__, lifespan=lifespan)
    app.state.service = None
    install_error_handlers(app)
    for module in (completions, models, tokenize, health):
        app.include_router(module.router)
    return app
