"""Typed dependencies for routes: each route asks for what it uses, one
Annotated alias each, read from the supervisor the app was built with."""

from __future__ import annotations

from collections.abc import Callable
from typing import Annotated, Any, TypeVar

from fastapi import Depends, Request

from app.completion.catalog import Catalog
from app.completion.prepared import ServedModel
from app.completion.service import CompletionService
from app.completion.tokenizer import AsyncTokenizer
from app.config import Settings
from app.errors import Unavailable
from app.lifecycle.phases import Lifecycle, Phase
from app.lifecycle.supervisor import Supervisor
from app.observability.exposition import Exposition
from app.scopes import TENANT
from app.tenancy.tenants import Tenant

T = TypeVar("T")

_REFUSALS = {
    Phase.STARTING: "The model is loading.",
    Phase.LOADING: "The model is loading.",
    Phase.WARMING: "The model is warming up.",
    Phase.DRAINING: "The server is shutting down.",
    Phase.STOPPED: "The server is shutting down.",
    Phase.FAILED: "The inference engine is not running.",
}


def supervisor_of(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


def serving(supervisor: Supervisor) -> CompletionService:
    """The service, or 503 + Retry-After whenever the gateway is not ready."""
    service = supervisor.serving()
    if service is None:
        raise Unavailable(_REFUSALS.get(supervisor.lifecycle.phase, "Not ready."))
    return service


def _read(what: Callable[[Supervisor], T]) -> Any:
    """A dependency: `what` of the app's supervisor. Async, so that FastAPI
    runs it on the loop rather than on a worker thread."""

    async def dependency(request: Request) -> T:
        return what(supervisor_of(request))

    return Depends(dependency)


def _engine_info(s: Supervisor) -> dict[str, Any] | None:
    return s.engine.info() if s.engine is not None else None


async def _tenant(request: Request) -> Tenant | None:
    tenant: Tenant | None = request.scope.get(TENANT)  # set when keys are configured
    return tenant


ModelDep = Annotated[ServedModel, _read(lambda s: serving(s).model)]
CatalogDep = Annotated[Catalog, _read(lambda s: serving(s).catalog)]
TenantDep = Annotated[Tenant | None, Depends(_tenant)]
TokenizerDep = Annotated[AsyncTokenizer, _read(lambda s: serving(s).tokenizer)]
SettingsDep = Annotated[Settings, _read(lambda s: s.settings)]
LifecycleDep = Annotated[Lifecycle, _read(lambda s: s.lifecycle)]
StatusDep = Annotated[dict[str, Any], _read(Supervisor.status)]  # the health JSON
EngineInfoDep = Annotated[dict[str, Any] | None, _read(_engine_info)]
ExpositionDep = Annotated[Exposition, _read(lambda s: s.metrics.exposition)]
