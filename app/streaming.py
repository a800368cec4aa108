"""SSE framing of a completion stream: data chunks, an error event if the
stream breaks, and always `[DONE]`. Cancellation is never swallowed: when the
client goes away the engine request is aborted by the cancellation itself,
and the stream is closed when the response ends, however it ends."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterable, AsyncIterator
from typing import Protocol

from sse_starlette import EventSourceResponse
from starlette.types import Receive, Scope, Send

from app.errors import EngineFailure, GatewayError
from app.rejection import sse_error_data

logger = logging.getLogger(__name__)

DONE = "[DONE]"

# JSON may carry these raw, but clients that split lines the Unicode way
# (Python's str.splitlines, httpx's aiter_lines) cut an event in two at
# them. Escaped, the JSON is the same text after parsing.
_LINE_SAFE = str.maketrans({"\u2028": "\\u2028", "\u2029": "\\u2029", "\x85": "\\u0085"})


def line_safe(data: str) -> str:
    return data if data.isascii() else data.translate(_LINE_SAFE)


class ChunkStream(AsyncIterable[str], Protocol):
    def failed(self, error: GatewayError) -> None:
        """The stream is about to end with `error` as its SSE error event."""

    async def close(self) -> None: ...


async def sse_events(chunks: ChunkStream) -> AsyncIterator[str]:
    source = aiter(chunks)
    try:
        async for data in source:
            yield line_safe(data)
    except GatewayError as exc:
        chunks.failed(exc)
        yield sse_error_data(exc)
    except Exception:
        logger.exception("stream failed")
        error = EngineFailure("The stream failed.")
        chunks.failed(error)
        yield sse_error_data(error)
    finally:
        # Close the source now (its cleanup aborts an unfinished engine
        # request), not whenever the garbage collector gets to it.
        await source.aclose()  # type: ignore[attr-defined]
    yield DONE


class StreamResponse(EventSourceResponse):
    def __init__(self, chunks: ChunkStream, headers: dict[str, str], keepalive: float):
        # Comment lines (every `keepalive` seconds, also while the request
        # waits in the queue) keep idle proxies from closing slow streams.
        super().__init__(sse_events(chunks), headers=headers, sep="\n", ping=keepalive)
        self.chunks = chunks

    async def _stream_response(self, send: Send) -> None:
        """sse-starlette's data loop, lean: it wraps every event in an anyio
        cancel scope for a send timeout (unused here: the request deadline
        bounds a stream) and re-parses it for line breaks (ours are one JSON
        line each, line-safe). About a tenth of the serving process's CPU per
        token went there (py-spy, 32 streams). Pings, disconnect detection and
        shutdown stay sse-starlette's."""
        await send(
            {"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers}
        )
        body = self.body_iterator
        try:
            async for data in body:
                chunk = b"data: " + data.encode() + b"\n\n"  # type: ignore[union-attr]
                await send({"type": "http.response.body", "body": chunk, "more_body": True})
        except BaseException:
            # Close the events generator now, so its cleanup (the engine abort)
            # runs before the error escapes.
            aclose = getattr(body, "aclose", None)
            if aclose is not None:
                with contextlib.suppress(Exception):
                    await aclose()
            raise
        async with self._send_lock:
            self.active = False
            await send({"type": "http.response.body", "body": b"", "more_body": False})

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        try:
            await super().__call__(scope, receive, send)
        finally:
            # If the client left before the first chunk, the event generator
            # never ran and its own cleanup with it.
            await self.chunks.close()
