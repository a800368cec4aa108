"""The SSE wire format of a completion stream, all of it: each chunk one
`data:` line and a blank line; the chat stream's opening chunk; the usage
chunk; the error event that ends a broken stream; `[DONE]` last; and the
per-token fast path of a text completion. No I/O here (app.api.sse_response
sends what these return)."""

from __future__ import annotations

import json
from collections.abc import Callable
from json.encoder import encode_basestring as quote
from typing import TYPE_CHECKING, Any

from app.errors import GatewayError

if TYPE_CHECKING:
    from app.completion.choices import Delta

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


def chunk_event(chunk: dict[str, Any]) -> str:
    """A stream chunk (an opening chunk, say) as one event."""
    return sse_event(json.dumps(chunk))


def end_events(head: dict[str, Any], usage: Any | None) -> str:
    """What ends a stream that finished: the usage chunk when asked for, then [DONE]."""
    if usage is None:
        return DONE_EVENT
    return sse_event(json.dumps({**head, "choices": [], "usage": usage})) + DONE_EVENT


def error_data(exc: GatewayError) -> str:
    """The `data:` payload of the error event that ends a broken stream."""
    body = exc.body()
    body["error"]["code"] = exc.code or int(exc.status)
    return json.dumps(body)


def error_events(exc: GatewayError) -> str:
    """What ends a broken stream: its error event, then [DONE]."""
    return sse_event(error_data(exc)) + DONE_EVENT


def text_delta_encoder(head: dict[str, Any], tail: dict[str, Any]) -> Callable[[Delta], str]:
    """The per-token path of a text completion without logprobs: only the
    index, text and finish reason change, so the envelope is encoded once
    (byte for byte what json.dumps writes), and the text with json's own C
    string encoder."""
    start = json.dumps({**head, "choices": [{"index": 0}]}, ensure_ascii=False)
    start = "data: " + line_safe(start[: start.rindex("0}]}")])
    end = "}], " + line_safe(json.dumps(tail)[1:]) + "\n\n" if tail else "}]}\n\n"

    def encode(d: Delta) -> str:
        text = line_safe(quote(d.text))
        reason = "null" if d.finish_reason is None else quote(d.finish_reason)
        return (
            f'{start}{d.choice.index}, "text": {text}, '
            f'"logprobs": null, "finish_reason": {reason}{end}'
        )

    return encode
