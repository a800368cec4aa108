"""JSON answers for the routes."""

from __future__ import annotations

import json
from typing import Any

from starlette.responses import Response


def json_response(
    content: Any, status_code: int = 200, headers: dict[str, str] | None = None
) -> Response:
    """JSON without FastAPI's encoder pass (our bodies are plain dicts already)."""
    return Response(
        json.dumps(content, ensure_ascii=False),
        status_code=status_code,
        headers=headers,
        media_type="application/json",
    )
