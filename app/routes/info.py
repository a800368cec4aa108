from __future__ import annotations

from fastapi import APIRouter, Response

from app import __version__
from app.deps import SupervisorDep
from app.utils import json_response

router = APIRouter()


@router.get("/v1/gateway/info", response_model=None)
async def info(supervisor: SupervisorDep) -> Response:
    """What is serving: device, effective engine arguments, graph capture, versions, phase."""
    engine = supervisor.engine
    body = {
        "gateway_version": __version__,
        "model": supervisor.settings.model_name,
        "truncation": supervisor.settings.truncation,
        "warmup": supervisor.settings.warmup,
        "lifecycle": supervisor.lifecycle.snapshot(),
        "engine": engine.info() if engine is not None else None,
    }
    return json_response(body)
