"""Health endpoints, all JSON with the phase and its timings.

- /health/live: 200 unless failed (a liveness probe restarts a dead engine)
- /health/startup: 200 once the gateway has been ready (startup probe)
- /health/ready: 200 only while ready (readiness probe; 503 while draining)
- /health: vLLM-compatible alias of ready
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Response

from app.api.deps import LifecycleDep, StatusDep
from app.api.responses import json_response
from app.api.route_table import PROBE
from app.lifecycle.phases import Phase

router = APIRouter(tags=[PROBE])


def _answer(status: dict[str, Any], ok: bool) -> Response:
    return json_response(status, status_code=200 if ok else 503)


@router.get("/health/live", response_model=None)
async def live(status: StatusDep, lifecycle: LifecycleDep) -> Response:
    """200 unless the gateway has failed."""
    return _answer(status, lifecycle.phase is not Phase.FAILED)


@router.get("/health/startup", response_model=None)
async def startup(status: StatusDep, lifecycle: LifecycleDep) -> Response:
    """200 once the engine has been ready at least once."""
    return _answer(status, lifecycle.has_been_ready)


@router.get("/health/ready", response_model=None)
async def ready(status: StatusDep, lifecycle: LifecycleDep) -> Response:
    """200 only while requests are admitted."""
    return _answer(status, lifecycle.phase is Phase.READY)


@router.get("/health", response_model=None)
async def health(status: StatusDep, lifecycle: LifecycleDep) -> Response:
    """vLLM-compatible: same as /health/ready."""
    return _answer(status, lifecycle.phase is Phase.READY)
