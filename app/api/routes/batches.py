"""OpenAI's Files and Batches endpoints (purpose `batch`), HTTP only: the
operations are app.batches.service's, owned by the caller's tenant.

Work in progress (#36): uploads above GATEWAY_MAX_BODY_BYTES are refused by
the body limit before they reach here.
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends, File, Form, Request, Response, UploadFile
from fastapi.responses import StreamingResponse
from pydantic import BaseModel, ConfigDict

from app.api.responses import json_response
from app.batches.service import Batches
from app.errors import ResourceNotFound
from app.scopes import TENANT
from app.tenancy.tenants import Tenant

router = APIRouter()


class Caller:
    """The batch operations and the caller they are done for."""

    __slots__ = ("batches", "owner")

    def __init__(self, batches: Batches, owner: str):
        self.batches = batches
        self.owner = owner


async def _caller(request: Request) -> Caller:
    batches: Batches | None = request.app.state.batches
    if batches is None:
        raise ResourceNotFound("Batches are off on this gateway (GATEWAY_BATCHES).")
    tenant: Tenant | None = request.scope.get(TENANT)
    return Caller(batches, tenant.identity.hex() if tenant is not None else "")


CallerDep = Annotated[Caller, Depends(_caller)]


class BatchCreate(BaseModel):
    model_config = ConfigDict(extra="forbid")
    input_file_id: str
    endpoint: str
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None


@router.post("/v1/files", response_model=None)
async def upload_file(
    caller: CallerDep,
    file: Annotated[UploadFile, File()],
    purpose: Annotated[str, Form()],
) -> Response:
    """Upload a JSONL file of requests for a batch."""
    # The parser spooled it to disk; the store reads it from there a chunk at
    # a time (never whole in memory), refused once past the limit.
    await file.seek(0)
    meta = await caller.batches.upload(caller.owner, file.filename or "", purpose, file.file)
    return json_response(meta)


@router.get("/v1/files", response_model=None)
async def list_files(caller: CallerDep) -> Response:
    return json_response(await caller.batches.files(caller.owner))


@router.get("/v1/files/{file_id}", response_model=None)
async def get_file(file_id: str, caller: CallerDep) -> Response:
    return json_response(await caller.batches.file(caller.owner, file_id))


@router.get("/v1/files/{file_id}/content", response_model=None)
async def file_content(file_id: str, caller: CallerDep) -> Response:
    pieces = await caller.batches.pieces(caller.owner, file_id)
    return StreamingResponse(pieces, media_type="application/jsonl")


@router.delete("/v1/files/{file_id}", response_model=None)
async def delete_file(file_id: str, caller: CallerDep) -> Response:
    return json_response(await caller.batches.delete(caller.owner, file_id))


@router.post("/v1/batches", response_model=None)
async def create_batch(body: BatchCreate, caller: CallerDep) -> Response:
    batch = await caller.batches.create(
        caller.owner, body.input_file_id, body.endpoint, body.completion_window, body.metadata
    )
    return json_response(batch)


@router.get("/v1/batches", response_model=None)
async def list_batches(caller: CallerDep, after: str | None = None, limit: int = 20) -> Response:
    return json_response(await caller.batches.list(caller.owner, after, limit))


@router.get("/v1/batches/{batch_id}", response_model=None)
async def get_batch(batch_id: str, caller: CallerDep) -> Response:
    return json_response(await caller.batches.get(caller.owner, batch_id))


@router.post("/v1/batches/{batch_id}/cancel", response_model=None)
async def cancel_batch(batch_id: str, caller: CallerDep) -> Response:
    result: dict[str, Any] = await caller.batches.cancel(caller.owner, batch_id)
    return json_response(result)
