"""The app factory: settings (and optionally a ready engine) in, ASGI app out."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from pathlib import Path

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from prometheus_client import REGISTRY, CollectorRegistry

from app import __version__
from app.api.accounting import Accounting
from app.api.auth import ApiKeyAuth
from app.api.middleware import BodyLimit, InternalErrors, RequestContext
from app.api.ratelimit import RateLimiter
from app.api.rejection import Rejections, install_error_handlers
from app.api.route_table import Endpoints
from app.api.routes import adapters, batches, completions, health, info, models, tokenize
from app.api.routes import metrics as metrics_routes
from app.batches.assembly import BatchWing, build_batches
from app.completion.assembly import build_service
from app.completion.door import Door
from app.completion.prepared import TRUNCATED_HEADER, TRUNCATED_MESSAGES_HEADER
from app.completion.service import CompletionService
from app.config import Settings
from app.engine.protocol import Engine
from app.errors import GatewayError
from app.lifecycle.supervisor import Supervisor
from app.observability.metrics import EngineStep, Metrics
from app.observability.tracing import Tracing, tracing_configured
from app.tenancy.assembly import Tenancy, build_tenancy
from app.tenancy.budgets import RATE_HEADERS


def create_app(
    settings: Settings | None = None,
    engine: Engine | None = None,
    on_exit: Callable[[], None] = lambda: None,
    registry: CollectorRegistry | None = None,
) -> FastAPI:
    """Build the app.

    Without `engine`, the lifespan starts building vLLM in the background and
    returns at once, so the server binds its port while the engine loads; the
    engine is shut down on exit. A given engine is already built: startup runs
    to `ready` before the app serves. `on_exit` is how the supervisor asks the
    server to stop (engine death, failed startup, end of drain). Metrics go to
    `registry`, by default prometheus_client's global one, where vLLM puts its
    own `vllm:*` metrics.
    """
    settings = settings or Settings()
    registry = REGISTRY if registry is None else registry
    app = FastAPI(title="ascend-llm-gateway", version=__version__, lifespan=_lifespan)
    routes = (completions, batches, adapters, models, tokenize, health, info, metrics_routes)
    for module in routes:
        app.include_router(module.router)
    # From the top down: what HTTP needs, the parts, the pipeline, the supervisor.
    endpoints = Endpoints(app.routes, protect_metrics=settings.metrics_auth)
    rpm = settings.rate_limit_rpm
    limiter = RateLimiter(rpm, settings.rate_limit_burst_or_default) if rpm else None
    tenancy = build_tenancy(settings, registry)
    metrics = Metrics(registry, settings.model_name)
    # The OTEL_* variables turn tracing on (read by the SDK itself).
    tracing = Tracing(settings.trace_content) if tracing_configured() else None
    metrics.exposition.openmetrics = tracing is not None  # exemplars to show
    door = Door(tenancy.ledger, tracing)  # HTTP requests and batch lines come in alike

    def assemble(built: Engine) -> CompletionService:
        return build_service(settings, built, metrics, tenancy.ledger)

    async def build(on_step: Callable[[EngineStep | None], None]) -> Engine:
        if engine is not None:
            return engine
        # Importing vllm (and torch) takes seconds: do it, and the build, off
        # the event loop. The import stays out of unit tests with a fake engine.
        return await asyncio.to_thread(_build_vllm, settings, on_step)

    wing = None
    if settings.batches:  # it runs lines through the service the supervisor will serve
        wing = build_batches(settings, tenancy.book, door, lambda: supervisor.serving(), registry)
    supervisor = Supervisor(settings, build, assemble, metrics, on_exit)
    app.state.batch_wing = wing
    app.state.batches = wing.api if wing is not None else None
    app.state.engine_given = engine is not None
    app.state.tracing = tracing
    app.state.supervisor = supervisor
    app.state.tenancy = tenancy
    rejections = app.state.rejections = Rejections(metrics)
    ledger = tenancy.ledger

    def refused_early(error: GatewayError) -> None:
        """A 431/408 the HTTP parser sent (app.api.header_limits)."""
        rejections.count(error)
        if ledger is not None:
            status = int(error.status)
            ledger.refused_early(status, "timeout" if status == 408 else "rejected")

    app.state.refused_early = refused_early
    install_error_handlers(app, rejections)
    # Innermost first: the 500 for an unexpected exception (so it passes
    # through CORS and the request context like any answer), body limit,
    # API keys, CORS (a preflight carries no key), then request ids and
    # counts around everything.
    app.add_middleware(InternalErrors)
    # An upload may be as large as a batch file, with room for its multipart framing.
    uploads = {"/v1/files": settings.max_batch_file_bytes + 65_536} if wing is not None else {}
    app.add_middleware(
        BodyLimit, max_bytes=settings.max_body_bytes, rejections=rejections, routes=uploads
    )
    if tenancy.book.configured:
        app.add_middleware(ApiKeyAuth, book=tenancy.book, rejections=rejections, limiter=limiter)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST"],
            # The OpenAI SDKs send their own headers (x-stainless-os,
            # x-stainless-retry-count, ...), a list that grows with their
            # releases. No credentials are allowed (the key is a header, not a
            # cookie), so any request header is as safe as a listed one.
            allow_headers=["*"],
            # What the SDK reads back: its retry timing and the request id.
            expose_headers=[
                "Retry-After",
                "X-Request-Id",
                TRUNCATED_HEADER,
                TRUNCATED_MESSAGES_HEADER,
                *RATE_HEADERS,  # a browser app reads its tenant's budgets
            ],
        )
    if door.keeps_records:
        # Outside the keys: a 401 is accounted and traced too; inside the request ids.
        app.add_middleware(Accounting, door=door)
    # Added last, so outermost: request ids and status counts cover 401s and
    # unexpected 500s too.
    app.add_middleware(
        RequestContext,
        endpoints=endpoints,
        inflight=supervisor.inflight,
        metrics=metrics,
        closing=supervisor.closing,
    )
    return app


@asynccontextmanager
async def _lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Start the supervisor (in the background unless the engine was given:
    then startup runs to ready first); SIGHUP reloads; on exit, the
    supervisor, the ledger and the last spans."""
    supervisor: Supervisor = app.state.supervisor
    tenancy: Tenancy = app.state.tenancy
    tracing: Tracing | None = app.state.tracing
    loop = asyncio.get_running_loop()
    hup = False
    # SIGHUP reloads what is reloadable and never ends the process. Not
    # where there are no signals, nor off the main thread (tests).
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
        loop.add_signal_handler(signal.SIGHUP, lambda: _hangup(supervisor, tenancy))
        hup = True
    if app.state.engine_given:
        await supervisor.startup()
    else:
        supervisor.start()
    wing: BatchWing | None = app.state.batch_wing
    runner = asyncio.ensure_future(wing.runner.run()) if wing is not None else None
    try:
        yield
    finally:
        if runner is not None and wing is not None:
            runner.cancel()
            with contextlib.suppress(BaseException):
                await runner
            await wing.runner.stop()
        await supervisor.shutdown()
        if wing is not None:
            wing.store.close()
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        if tenancy.ledger is not None:
            await tenancy.ledger.close()
        if tracing is not None:
            await asyncio.to_thread(tracing.shutdown)  # the last spans exported


def _hangup(supervisor: Supervisor, tenancy: Tenancy) -> None:
    """SIGHUP: the tenants file and usage log, and a look at the adapters."""
    service = supervisor.serving()
    adapters = service.adapters if service is not None else None
    tenancy.hangup(quiet=adapters is not None)
    if adapters is not None:
        adapters.rescan_soon("SIGHUP")


def _build_vllm(settings: Settings, on_step: Callable[[EngineStep | None], None]) -> Engine:
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

    return build_engine(settings, on_step)
