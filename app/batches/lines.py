"""One batch line run as an ordinary request: the body validated as the
online endpoint validates it, prepared by the same service (limits,
constraints, the tenant's budgets), run below every online priority, told
to the ledger like any request (its usage line carries the batch id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from pydantic import ValidationError

from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.service import CompletionService
from app.errors import CLIENT_CLOSED, InvalidRequest, Unavailable
from app.ids import new_id
from app.observability.record import RequestRecord
from app.tenancy.ledger import Ledger
from app.tenancy.tenants import Tenant

# Below every online request (vLLM and our admission: the lower runs first).
BATCH_PRIORITY = 1 << 30


class LineRunner:
    def __init__(
        self,
        serving: Callable[[], CompletionService | None],
        tenant_of: Callable[[str], Tenant | None],
        ledger: Ledger | None,
        share: float = 0.75,
    ):
        self.serving = serving  # the service once ready, else None
        self.tenant_of = tenant_of  # a batch's owner -> its tenant now
        self.ledger = ledger
        self.share = share  # of the engine's places a batch may fill
        self.inflight = 0  # lines being run now (admitted or about to be)

    def gone(self, owner: str) -> bool:
        """Whether a batch's owner was a key or tenant the tenants file no longer holds."""
        return bool(owner) and self.tenant_of(owner) is None

    def room(self) -> int:
        """Places batch lines may hold in all now: none while any online
        request waits, else up to `share` of the engine's places, less the
        places online requests run in."""
        service = self.serving()
        if service is None:
            return 0
        admission = service.runner.admission
        if admission.queued:
            return 0
        slots = service.runner.engine.max_num_seqs
        online = max(0, admission.running - self.inflight)
        return max(0, min(max(1, int(slots * self.share)), slots - online))

    async def __call__(
        self, owner: str, batch_id: str, endpoint: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        service = self.serving()
        if service is None:
            raise Unavailable("The model is not ready.")
        schema = (
            ChatCompletionRequest if endpoint.endswith("chat/completions") else CompletionRequest
        )
        try:
            req = schema.model_validate({**body, "stream": False})
        except ValidationError as exc:
            first = exc.errors()[0]
            where = ".".join(str(p) for p in first["loc"])
            raise InvalidRequest(f"{where}: {first['msg']}", param=where or None) from None
        tenant = self.tenant_of(owner)
        record = RequestRecord(endpoint, new_id())
        self.inflight += 1
        record.batch_id = batch_id
        status = 500
        try:
            prep = await service.prepare(req, tenant, record)
            prep.priority = BATCH_PRIORITY
            answer = await service.complete(prep)
            status = 200
            return answer
        except asyncio.CancelledError:  # its batch was cancelled or expired
            status = CLIENT_CLOSED
            raise
        except Exception as exc:
            status = int(getattr(exc, "status", 500))
            raise
        finally:
            self.inflight -= 1
            record.tenant = record.tenant or tenant
            if self.ledger is not None:
                self.ledger.finish(record, status)
