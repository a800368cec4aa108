from __future__ import annotations

from fastapi import APIRouter, Request, Response

from app.utils import json_response

router = APIRouter()


@router.get("/health", response_model=None)
async def health(request: Request) -> Response:
    """200 when the engine is up and serving, else 503 (vLLM-compatible)."""
    service = getattr(request.app.state, "service", None)
    if service is None:
        return json_response({"status": "loading"}, status_code=503)
    if service.engine.errored:
        return json_response({"status": "failed"}, status_code=503)
    return json_response({"status": "ok"})
