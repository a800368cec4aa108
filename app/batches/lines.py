"""One batch line run as an ordinary request: the body validated as the
online endpoint validates it, prepared by the same service (limits,
constraints, the tenant's budgets), run below every online priority, told
to the ledger like any request (its usage line carries the batch id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from app.completion.door import Door, validated
from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.service import CompletionService
from app.errors import CLIENT_CLOSED, Unavailable
from app.ids import new_id
from app.tenancy.tenants import Tenant

# Below every online request (vLLM and our admission: the lower runs first).
BATCH_PRIORITY = 1 << 30


class LineRunner:
    def __init__(
        self,
        serving: Callable[[], CompletionService | None],
        tenant_of: Callable[[str], Tenant | None],
        door: Door,
        share: float = 0.75,
    ):
        self.serving = serving  # the service once ready, else None
        self.tenant_of = tenant_of  # a batch's owner -> its tenant now
        self.door = door
        self.share = share  # of the engine's places a batch may fill
        self.inflight = 0  # lines being run now (admitted or about to be)

    def gone(self, owner: str) -> bool:
        """Whether a batch's owner was a key or tenant the tenants file no longer holds."""
        return bool(owner) and self.tenant_of(owner) is None

    def room(self) -> int:
        """Places batch lines may hold in all now (admission's rule)."""
        service = self.serving()
        if service is None:
            return 0
        runner = service.runner
        return runner.admission.batch_room(runner.engine.max_num_seqs, self.share, self.inflight)

    async def __call__(
        self, owner: str, batch_id: str, endpoint: str, body: dict[str, Any]
    ) -> dict[str, Any]:
        service = self.serving()
        if service is None:
            raise Unavailable("The model is not ready.")
        chat = endpoint.endswith("chat/completions")
        tenant = self.tenant_of(owner)
        # Through the one door, as an HTTP request comes: its record and span,
        # the same validation message, the batch's priority from the start.
        record = self.door.open(endpoint, new_id())
        record.batch_id = batch_id
        self.inflight += 1
        status = 500
        try:
            line = {**body, "stream": False}
            req: CompletionRequest | ChatCompletionRequest = (
                validated(ChatCompletionRequest, line)
                if chat
                else validated(CompletionRequest, line)
            )
            prep = await service.prepare(req, tenant, record, priority=BATCH_PRIORITY)
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
            self.door.close(record, status, tenant)
