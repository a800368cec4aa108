from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from app.api.deps import Completing, get_completing
from app.api.responses import json_response
from app.api.sse_response import StreamResponse
from app.completion.schemas import ChatCompletionRequest, CompletionRequest

router = APIRouter()
T = TypeVar("T")

# Not an HTTP status anyone receives: the client has gone (nginx's 499).
CLIENT_CLOSED = 499


async def _unless_disconnected(request: Request, work: Awaitable[T]) -> T | None:
    """Run `work`, cancelling it (and so aborting its engine request) if the
    client disconnects first. None means the client went away."""
    task = asyncio.ensure_future(work)

    async def watch() -> None:
        # The body has been read: the next message is the disconnect.
        while (await request.receive())["type"] != "http.disconnect":
            pass
        task.cancel()

    watcher = asyncio.create_task(watch())
    try:
        return await task
    except asyncio.CancelledError:
        if watcher.done() and not watcher.cancelled():
            return None  # our own cancellation: the client left
        raise
    finally:
        watcher.cancel()


class Respond:
    """Serve a prepared completion whole or as a stream, for this request."""

    def __init__(self, completing: Completing, request: Request):
        self.service, self.settings = completing.service, completing.settings
        self.tenant, self.record, self.request = completing.tenant, completing.record, request

    async def __call__(self, body: CompletionRequest | ChatCompletionRequest) -> Response:
        service, request = self.service, self.request
        prep = await service.prepare(body, self.tenant, self.record)
        if body.stream:
            # SSE notices a disconnect itself and cancels the stream.
            chunks = await _unless_disconnected(request, service.open_stream(prep))
            if chunks is None:
                return Response(status_code=CLIENT_CLOSED)
            return StreamResponse(chunks, prep.headers(), self.settings.sse_keepalive)
        result = await _unless_disconnected(request, service.complete(prep))
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(result, headers=prep.headers())


async def _respond(request: Request) -> Respond:
    # One async dependency: FastAPI runs a class (or any sync) one on a thread,
    # and each level of dependencies costs its own bookkeeping per request.
    return Respond(await get_completing(request), request)


RespondDep = Annotated[Respond, Depends(_respond)]


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, respond: RespondDep) -> Response:
    """Create a completion (OpenAI-compatible; `stream: true` for SSE)."""
    return await respond(body)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, respond: RespondDep) -> Response:
    """Create a chat completion with the chat template (OpenAI-compatible; SSE with `stream`)."""
    return await respond(body)
