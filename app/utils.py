"""Small shared helpers."""

from __future__ import annotations

import itertools
import json
import secrets
from typing import Any

from starlette.responses import Response

# Unique ids without a random draw per request: 64 random bits per process,
# then a counter (32 hex characters, like a uuid4's hex).
_ID_PREFIX = secrets.token_hex(8)
_ID_COUNTER = itertools.count()


def new_id() -> str:
    return f"{_ID_PREFIX}{next(_ID_COUNTER):016x}"


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
