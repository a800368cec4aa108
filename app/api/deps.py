"""Typed dependencies for routes: each route asks for what it uses, nothing
reaches through the supervisor."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Request

from app.completion.prepared import ServedModel
from app.completion.service import CompletionService
from app.completion.tokenizer import AsyncTokenizer
from app.config import Settings
from app.errors import Unavailable
from app.lifecycle.phases import Lifecycle, Phase
from app.lifecycle.supervisor import Supervisor
from app.observability.exposition import Exposition
from app.observability.record import RequestRecord
from app.scopes import RECORD, TENANT
from app.tenancy.tenants import Tenant

_REFUSALS = {
    Phase.STARTING: "The model is loading.",
    Phase.LOADING: "The model is loading.",
    Phase.WARMING: "The model is warming up.",
    Phase.DRAINING: "The server is shutting down.",
    Phase.STOPPED: "The server is shutting down.",
    Phase.FAILED: "The inference engine is not running.",
}


async def _supervisor(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


_SupervisorDep = Annotated[Supervisor, Depends(_supervisor)]


def _serving(supervisor: Supervisor) -> CompletionService:
    service = supervisor.serving()
    if service is None:
        raise Unavailable(_REFUSALS.get(supervisor.lifecycle.phase, "Not ready."))
    return service


async def get_service(supervisor: _SupervisorDep) -> CompletionService:
    """The service, or 503 + Retry-After whenever the gateway is not ready."""
    return _serving(supervisor)


ServiceDep = Annotated[CompletionService, Depends(get_service)]


async def get_model(service: ServiceDep) -> ServedModel:
    return service.model


ModelDep = Annotated[ServedModel, Depends(get_model)]


async def get_tokenizer(service: ServiceDep) -> AsyncTokenizer:
    return service.tokenizer


TokenizerDep = Annotated[AsyncTokenizer, Depends(get_tokenizer)]


async def get_settings(supervisor: _SupervisorDep) -> Settings:
    return supervisor.settings


SettingsDep = Annotated[Settings, Depends(get_settings)]


async def get_lifecycle(supervisor: _SupervisorDep) -> Lifecycle:
    return supervisor.lifecycle


LifecycleDep = Annotated[Lifecycle, Depends(get_lifecycle)]


async def get_status(supervisor: _SupervisorDep) -> dict[str, Any]:
    """The health JSON: phase and timings, graph capture once the engine exists."""
    return supervisor.status()


StatusDep = Annotated[dict[str, Any], Depends(get_status)]


async def get_engine_info(supervisor: _SupervisorDep) -> dict[str, Any] | None:
    engine = supervisor.engine
    return engine.info() if engine is not None else None


EngineInfoDep = Annotated[dict[str, Any] | None, Depends(get_engine_info)]


async def get_exposition(supervisor: _SupervisorDep) -> Exposition:
    return supervisor.metrics.exposition


ExpositionDep = Annotated[Exposition, Depends(get_exposition)]


@dataclass(frozen=True, slots=True)
class Completing:
    """What a completion route uses, resolved as one dependency: FastAPI's
    bookkeeping per dependency (the service, settings, tenant and supervisor
    separately) was ~10% of a streamed request's own CPU (bench.layer)."""

    service: CompletionService
    settings: Settings
    tenant: Tenant | None  # the caller's tenant when keys are configured
    record: RequestRecord | None  # its accounting, when tenants or the usage log are on


async def get_completing(request: Request) -> Completing:
    """The service (or 503 + Retry-After when not ready), settings, tenant, record."""
    supervisor: Supervisor = request.app.state.supervisor
    scope = request.scope
    return Completing(
        _serving(supervisor), supervisor.settings, scope.get(TENANT), scope.get(RECORD)
    )
