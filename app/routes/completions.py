from __future__ import annotations

from fastapi import APIRouter, Response

from app.deps import ServiceDep
from app.schemas import CompletionRequest
from app.streaming import sse_response
from app.utils import json_response

router = APIRouter()


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, service: ServiceDep) -> Response:
    """Create a completion (OpenAI-compatible; `stream: true` for SSE)."""
    prep = service.prepare(body)
    if body.stream:
        return sse_response(await service.open_stream(prep), prep.headers())
    return json_response(await service.complete(prep), headers=prep.headers())
