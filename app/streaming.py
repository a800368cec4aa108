"""SSE framing of a completion stream: data chunks, an error event if the
stream breaks, and always `[DONE]`. Cancellation is never swallowed: when the
client goes away the engine request is aborted by the cancellation itself."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator

from sse_starlette import EventSourceResponse

from app.errors import EngineFailure, GatewayError, sse_error_data

logger = logging.getLogger(__name__)

DONE = "[DONE]"


async def sse_events(chunks: AsyncIterator[str]) -> AsyncIterator[str]:
    try:
        async for data in chunks:
            yield data
    except GatewayError as exc:
        yield sse_error_data(exc)
    except Exception:
        logger.exception("stream failed")
        yield sse_error_data(EngineFailure("The stream failed."))
    finally:
        # Close the source now (aborting its engine request if unfinished),
        # not whenever the garbage collector gets to it.
        await chunks.aclose()  # type: ignore[attr-defined]
    yield DONE


def sse_response(chunks: AsyncIterator[str], headers: dict[str, str]) -> EventSourceResponse:
    return EventSourceResponse(
        sse_events(chunks),
        headers=headers,
        sep="\n",
        # Comment lines keep idle proxies from closing slow streams.
        ping=15,
    )
