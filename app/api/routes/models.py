from __future__ import annotations

import time

from fastapi import APIRouter, Response

from app.api.deps import CatalogDep, TenantDep
from app.api.responses import json_response
from app.completion.catalog import Listed
from app.completion.schemas import ModelCard, ModelList

router = APIRouter()
_CREATED = int(time.time())


def _card(entry: Listed, max_model_len: int) -> ModelCard:
    return {
        "id": entry.id,
        "object": "model",
        "created": _CREATED,
        "owned_by": "ascend-llm-gateway",
        "root": entry.root,
        "parent": entry.parent,
        "max_model_len": max_model_len,
    }


@router.get("/v1/models", response_model=None)
async def list_models(catalog: CatalogDep, tenant: TenantDep) -> Response:
    """List the models this key may use: the served model under each of its
    names, and each task adapter (by version, and its newest by family name)."""
    limit = catalog.model.max_model_len
    body: ModelList = {"object": "list", "data": [_card(e, limit) for e in catalog.listing(tenant)]}
    return json_response(body)


@router.get("/v1/models/{model_id:path}", response_model=None)
async def get_model(model_id: str, catalog: CatalogDep, tenant: TenantDep) -> Response:
    """Describe one model id; 404 for any other (or one this key may not use)."""
    catalog.resolve(model_id, tenant)
    entry = next(e for e in catalog.listing(tenant) if e.id == model_id)
    return json_response(_card(entry, catalog.model.max_model_len))
