from __future__ import annotations

import time

from fastapi import APIRouter, Response

from app.deps import ServiceDep
from app.schemas import ModelCard, ModelList
from app.utils import json_response

router = APIRouter()
_CREATED = int(time.time())


def _card(service: ServiceDep) -> ModelCard:
    return {
        "id": service.model_name,
        "object": "model",
        "created": _CREATED,
        "owned_by": "ascend-llm-gateway",
        "root": service.model_name,
        "parent": None,
        "max_model_len": service.engine.max_model_len,
    }


@router.get("/v1/models", response_model=None)
async def list_models(service: ServiceDep) -> Response:
    """List the served model."""
    body: ModelList = {"object": "list", "data": [_card(service)]}
    return json_response(body)


@router.get("/v1/models/{model_id:path}", response_model=None)
async def get_model(model_id: str, service: ServiceDep) -> Response:
    """Describe the served model; 404 for any other id."""
    service.check_model(model_id)
    return json_response(_card(service))
