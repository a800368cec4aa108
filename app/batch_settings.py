"""The Batch API's settings (`GATEWAY_BATCH_*`), a part of app.config.Settings."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings


class BatchSettings(BaseSettings):
    batches: bool = Field(True, description="The Batch API (/v1/files, /v1/batches).")
    batch_store: str | None = Field(
        None,
        description="Where batches live: a SQLite file (default: GATEWAY_DATA_DIR/batches.db), "
        "or postgresql://... for a fleet that shares them.",
    )
    max_batch_file_bytes: int = Field(
        100 * 2**20, ge=1, description="The largest batch input file (400 above it)."
    )
    max_batch_files: int = Field(
        100, ge=1, description="Input files a tenant may keep at once (429 above it)."
    )
    max_batch_file_storage: int = Field(
        10 * 2**30,
        ge=1,
        description="Bytes of input files a tenant may keep at once (429 above it).",
    )
    batch_file_retention: float = Field(
        30 * 86400,
        gt=0,
        description="Seconds an input file is kept after its upload (unless an unfinished "
        "batch reads it); deleting it earlier is the tenant's DELETE /v1/files/{id}.",
    )
    max_batch_lines: int = Field(50_000, ge=1, description="Requests in one batch.")
    max_batches_in_progress: int = Field(
        4, ge=1, description="Unfinished batches per tenant (429 beyond)."
    )
    batch_retention: float = Field(
        30 * 86400,
        gt=0,
        description="Seconds a finished batch, its lines and its output and error files "
        "are kept (input files stay until deleted).",
    )
    batch_lease: float = Field(
        120,
        gt=0,
        description="Seconds a replica holds a batch line it took; a replica that dies "
        "mid-line has its lines taken by another when the lease runs out.",
    )
    batch_share: float = Field(
        0.75,
        gt=0,
        le=1,
        description="Of the engine's places, what batch lines may fill (only while no "
        "online request waits).",
    )
