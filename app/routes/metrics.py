from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, REGISTRY, generate_latest

router = APIRouter()


@router.get("/metrics", response_model=None)
async def metrics() -> Response:
    """Prometheus text format: vLLM's own `vllm:*` metrics (gateway metrics: see README)."""
    return Response(generate_latest(REGISTRY), media_type=CONTENT_TYPE_LATEST)
