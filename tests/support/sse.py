"""Read a raw SSE response: the data payloads in order, `[DONE]` included."""

from __future__ import annotations

import httpx


def data_of(line: str) -> str | None:
    """The payload of a `data:` line; None for anything else (comments, blanks)."""
    return line[len("data:") :].strip() if line.startswith("data:") else None


def data_events(response: httpx.Response) -> list[str]:
    return [d for line in response.iter_lines() if (d := data_of(line)) is not None]
