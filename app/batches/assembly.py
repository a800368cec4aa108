"""The Batch API put together from settings: the store (SQLite under
GATEWAY_DATA_DIR unless GATEWAY_BATCH_STORE names a file or a PostgreSQL URL), the operations
the routes call, and the runner the lifespan starts."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

from prometheus_client import CollectorRegistry

from app.batches.backends import open_store
from app.batches.lines import LineRunner
from app.batches.runner import BatchRunner
from app.batches.service import Batches
from app.batches.store import BatchStore
from app.completion.door import Door
from app.completion.service import CompletionService
from app.config import Settings
from app.observability.batch_metrics import BatchMetrics
from app.tenancy.tenants import TenantBook


@dataclass
class BatchWing:
    api: Batches
    runner: BatchRunner
    store: BatchStore


def build_batches(
    settings: Settings,
    book: TenantBook,
    door: Door,
    serving: Callable[[], CompletionService | None],
    registry: CollectorRegistry,
) -> BatchWing:
    store = open_store(settings.batch_store, settings.data_dir)
    api = Batches(
        store,
        max_file_bytes=settings.max_batch_file_bytes,
        max_lines=settings.max_batch_lines,
        max_active=settings.max_batches_in_progress,
        max_files=settings.max_batch_files,
        max_storage=settings.max_batch_file_storage,
    )
    lines = LineRunner(serving, book.by_owner, door, settings.batch_share)
    metrics = BatchMetrics(registry, settings.model_name)
    runner = BatchRunner(
        store,
        lines,
        lines.room,
        metrics,
        gone=lines.gone,
        lease=settings.batch_lease,
        retention=settings.batch_retention,
        file_retention=settings.batch_file_retention,
    )
    api.changed = runner.wake
    return BatchWing(api, runner, store)
