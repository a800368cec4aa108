from __future__ import annotations

import time

from fastapi import APIRouter, Response

from app.api.deps import ModelDep
from app.api.responses import json_response
from app.completion.prepared import ServedModel
from app.completion.schemas import ModelCard, ModelList

router = APIRouter()
_CREATED = int(time.time())


def _card(model: ServedModel, name: str) -> ModelCard:
    return {
        "id": name,
        "object": "model",
        "created": _CREATED,
        "owned_by": "ascend-llm-gateway",
        "root": model.name,
        "parent": None,
        "max_model_len": model.max_model_len,
    }


@router.get("/v1/models", response_model=None)
async def list_models(model: ModelDep) -> Response:
    """List the served model, once per name it answers to."""
    body: ModelList = {"object": "list", "data": [_card(model, n) for n in model.names]}
    return json_response(body)


@router.get("/v1/models/{model_id:path}", response_model=None)
async def get_model(model_id: str, model: ModelDep) -> Response:
    """Describe the served model under one of its names; 404 for any other id."""
    model.check(model_id)
    return json_response(_card(model, model_id))
