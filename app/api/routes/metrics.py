from __future__ import annotations

from fastapi import APIRouter, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.openmetrics.exposition import CONTENT_TYPE_LATEST as OPENMETRICS

from app.api.deps import ExpositionDep
from app.api.route_table import SCRAPE

router = APIRouter(tags=[SCRAPE])

# What the Gateway API Inference Extension's endpoint picker reads from a
# model server (its model-server protocol, vLLM's names): queue, running,
# KV-cache usage, LoRA adapters, cache block size. Absent ones are skipped.
PICKER_METRICS = (
    "vllm:num_requests_waiting",
    "vllm:num_requests_running",
    "vllm:kv_cache_usage_perc",
    "vllm:lora_requests_info",
    "vllm:cache_config_info",
)


@router.get("/metrics", response_model=None)
async def metrics(request: Request, exposition: ExpositionDep) -> Response:
    """Prometheus text format: the gateway's `gateway_*` and vLLM's `vllm:*`
    metrics; OpenMetrics (with trace exemplars) when the scraper asks for it."""
    if exposition.openmetrics and "application/openmetrics-text" in request.headers.get(
        "accept", ""
    ):
        return Response(exposition.render_openmetrics(), media_type=OPENMETRICS)
    return Response(exposition.render(), media_type=CONTENT_TYPE_LATEST)


@router.get("/metrics/epp", response_model=None)
async def picker_metrics(exposition: ExpositionDep) -> Response:
    """The endpoint picker's metrics alone (it scrapes every 50 ms by default):
    point its `--model-server-metrics-path` here."""
    return Response(exposition.render(PICKER_METRICS), media_type=CONTENT_TYPE_LATEST)
