"""Typed dependencies for routes."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request

from app.errors import Unavailable
from app.service import CompletionService


def get_service(request: Request) -> CompletionService:
    service: CompletionService | None = getattr(request.app.state, "service", None)
    if service is None:
        raise Unavailable("The model is still loading.")
    if service.engine.errored:
        raise Unavailable("The inference engine is not running.")
    return service


ServiceDep = Annotated[CompletionService, Depends(get_service)]
