"""Typed dependencies for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unavailable
from app.lifecycle import Phase, Supervisor
from app.service import CompletionService

_REFUSALS = {
    Phase.STARTING: "The model is loading.",
    Phase.LOADING: "The model is loading.",
    Phase.WARMING: "The model is warming up.",
    Phase.DRAINING: "The server is shutting down.",
    Phase.STOPPED: "The server is shutting down.",
    Phase.FAILED: "The inference engine is not running.",
}


def get_supervisor(request: Request) -> Supervisor:
    supervisor: Supervisor = request.app.state.supervisor
    return supervisor


SupervisorDep = Annotated[Supervisor, Depends(get_supervisor)]


def get_service(supervisor: SupervisorDep) -> CompletionService:
    """The service, or 503 + Retry-After whenever the gateway is not ready."""
    service = supervisor.serving()
    if service is None:
        raise Unavailable(_REFUSALS.get(supervisor.lifecycle.phase, "Not ready."))
    return service


ServiceDep = Annotated[CompletionService, Depends(get_service)]
