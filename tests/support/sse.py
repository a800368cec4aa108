"""Read a raw SSE response: the data payloads in order, `[DONE]` included."""

from __future__ import annotations

import httpx


def data_events(response: httpx.Response) -> list[str]:
    return [
        line[len("data:") :].strip() for line in response.iter_lines() if line.startswith("data:")
    ]
