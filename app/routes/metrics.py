from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import SupervisorDep

router = APIRouter()


@router.get("/metrics", response_model=None)
async def metrics(supervisor: SupervisorDep) -> Response:
    """Prometheus text format: the gateway's `gateway_*` and vLLM's `vllm:*` metrics."""
    body = generate_latest(supervisor.metrics.registry)
    return Response(body, media_type=CONTENT_TYPE_LATEST)
