from __future__ import annotations

from fastapi import APIRouter, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from app.deps import RegistryDep
from app.endpoints import SCRAPE

router = APIRouter(tags=[SCRAPE])


@router.get("/metrics", response_model=None)
async def metrics(registry: RegistryDep) -> Response:
    """Prometheus text format: the gateway's `gateway_*` and vLLM's `vllm:*` metrics."""
    return Response(generate_latest(registry), media_type=CONTENT_TYPE_LATEST)
