from __future__ import annotations

from fastapi import APIRouter, Response

from app import __version__
from app.api.deps import EngineInfoDep, LifecycleDep, SettingsDep
from app.api.responses import json_response

router = APIRouter()


@router.get("/v1/gateway/info", response_model=None)
async def info(settings: SettingsDep, lifecycle: LifecycleDep, engine: EngineInfoDep) -> Response:
    """What is serving: device, effective engine arguments, graph capture, versions, phase."""
    body = {
        "gateway_version": __version__,
        "model": settings.model_name,
        "truncation": settings.truncation,
        "warmup": settings.warmup,
        "lifecycle": lifecycle.snapshot(),
        "engine": engine,
    }
    return json_response(body)
