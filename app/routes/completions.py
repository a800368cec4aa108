from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import TypeVar

from fastapi import APIRouter, Request, Response

from app.deps import ServiceDep, SettingsDep, TenantDep
from app.schemas import ChatCompletionRequest, CompletionRequest
from app.streaming import StreamResponse
from app.utils import json_response

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


async def _serve(
    body: CompletionRequest | ChatCompletionRequest,
    service: ServiceDep,
    settings: SettingsDep,
    tenant: TenantDep,
    request: Request,
) -> Response:
    prep = await service.prepare(body, tenant)
    if body.stream:
        # SSE notices a disconnect itself and cancels the stream.
        chunks = await _unless_disconnected(request, service.open_stream(prep))
        if chunks is None:
            return Response(status_code=CLIENT_CLOSED)
        return StreamResponse(chunks, prep.headers(), settings.sse_keepalive)
    result = await _unless_disconnected(request, service.complete(prep))
    if result is None:
        return Response(status_code=CLIENT_CLOSED)
    return json_response(result, headers=prep.headers())


@router.post("/v1/completions", response_model=None)
async def create_completion(
    body: CompletionRequest,
    service: ServiceDep,
    settings: SettingsDep,
    tenant: TenantDep,
    request: Request,
) -> Response:
    """Create a completion (OpenAI-compatible; `stream: true` for SSE)."""
    return await _serve(body, service, settings, tenant, request)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(
    body: ChatCompletionRequest,
    service: ServiceDep,
    settings: SettingsDep,
    tenant: TenantDep,
    request: Request,
) -> Response:
    """Create a chat completion with the chat template (OpenAI-compatible; SSE with `stream`)."""
    return await _serve(body, service, settings, tenant, request)
