"""The SSE wire format of a completion stream: each chunk one `data:` line
and a blank line, `[DONE]` last. No I/O here (app.api.sse_response sends)."""

from __future__ import annotations

# JSON may carry these raw, but clients that split lines the Unicode way
# (Python's str.splitlines, httpx's aiter_lines) cut an event in two at
# them. Escaped, the JSON is the same text after parsing.
_LINE_SAFE = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})

DONE_EVENT = "data: [DONE]\n\n"


def line_safe(data: str) -> str:
    return data if data.isascii() else data.translate(_LINE_SAFE)


def sse_event(data: str) -> str:
    """One event carrying `data` (one line of JSON)."""
    return f"data: {line_safe(data)}\n\n"
