from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from typing import Annotated, TypeVar

from fastapi import APIRouter, Depends, Request, Response

from app.api.deps import serving, supervisor_of
from app.api.responses import json_response
from app.api.sse_response import StreamResponse
from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.service import CompletionService
from app.errors import CLIENT_CLOSED
from app.observability.record import RequestRecord
from app.scopes import RECORD, TENANT
from app.tenancy.tenants import Tenant

router = APIRouter()
T = TypeVar("T")


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
    """Serve a prepared completion whole or as a stream, for this request:
    what a completion route uses, resolved as one async dependency (FastAPI
    runs a sync one on a thread, and its bookkeeping per dependency was ~10%
    of a streamed request's own CPU: bench.layer)."""

    __slots__ = ("keepalive", "record", "request", "service", "tenant")

    def __init__(self, request: Request):
        supervisor = supervisor_of(request)
        self.service: CompletionService = serving(supervisor)  # or 503 when not ready
        self.keepalive = supervisor.settings.sse_keepalive
        scope = request.scope
        self.tenant: Tenant | None = scope.get(TENANT)  # when keys are configured
        self.record: RequestRecord | None = scope.get(RECORD)  # tenants, usage log, traces
        self.request = request

    async def __call__(self, body: CompletionRequest | ChatCompletionRequest) -> Response:
        service, request = self.service, self.request
        prep = await service.prepare(body, self.tenant, self.record)
        if body.stream:
            # SSE notices a disconnect itself and cancels the stream.
            chunks = await _unless_disconnected(request, service.open_stream(prep))
            if chunks is None:
                return Response(status_code=CLIENT_CLOSED)
            return StreamResponse(chunks, prep.headers(), self.keepalive)
        result = await _unless_disconnected(request, service.complete(prep))
        if result is None:
            return Response(status_code=CLIENT_CLOSED)
        return json_response(result, headers=prep.headers())


async def _respond(request: Request) -> Respond:
    return Respond(request)


RespondDep = Annotated[Respond, Depends(_respond)]


@router.post("/v1/completions", response_model=None)
async def create_completion(body: CompletionRequest, respond: RespondDep) -> Response:
    """Create a completion (OpenAI-compatible; `stream: true` for SSE)."""
    return await respond(body)


@router.post("/v1/chat/completions", response_model=None)
async def create_chat_completion(body: ChatCompletionRequest, respond: RespondDep) -> Response:
    """Create a chat completion with the chat template (OpenAI-compatible; SSE with `stream`)."""
    return await respond(body)
