"""The one way into a completion, for an HTTP request and a batch line
alike: its record opened (and its span started) before anything can refuse
it, its body validated with the one message, and the record told once to
the ledger (usage log, budgets) and to its span when its answer is over.
The HTTP side (app.api.accounting) and the batch runner's lines
(app.batches.lines) both come in here; the priority a line runs at is
passed into `CompletionService.prepare`, so the record, the usage log and
the queue's metrics all see the priority it really ran at."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any, TypeVar

from pydantic import BaseModel, ValidationError

from app.completion.validation import describe
from app.errors import InvalidRequest
from app.observability.record import Party, RequestRecord
from app.observability.tracing import Tracing
from app.tenancy.ledger import Ledger

M = TypeVar("M", bound=BaseModel)


class Door:
    def __init__(self, ledger: Ledger | None, tracing: Tracing | None):
        self.ledger = ledger
        self.tracing = tracing

    @property
    def keeps_records(self) -> bool:
        """Whether anyone reads records (tenants, the usage log, traces)."""
        return self.ledger is not None or self.tracing is not None

    def open(
        self, endpoint: str, request_id: str, headers: Sequence[tuple[bytes, bytes]] = ()
    ) -> RequestRecord:
        record = RequestRecord(endpoint, request_id)
        if self.tracing is not None:
            self.tracing.start(record, list(headers))
        return record

    def close(self, record: RequestRecord, status: int, tenant: Party | None = None) -> None:
        """Its answer is over (whatever the ending): settled, logged, its span ended."""
        record.tenant = record.tenant or tenant
        if self.ledger is not None:
            self.ledger.finish(record, status)
        if self.tracing is not None:
            self.tracing.finish(record, status, time.monotonic())


def validated(schema: type[M], body: dict[str, Any]) -> M:
    """A body that did not come through FastAPI (a batch line), validated by
    the same schema and refused with the same message as over HTTP."""
    try:
        return schema.model_validate(body)
    except ValidationError as exc:
        message, param = describe(exc.errors())
        raise InvalidRequest(message, param=param) from None
