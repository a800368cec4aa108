"""Completions, composed: prepare (app.completion.prepare, app.completion.chat) -> run
(app.completion.generation) -> choices (app.completion.choices), told in the
endpoint's shape (app.completion.wire), whole here or as a stream
(app.completion.stream). Built by app.completion.assembly. No FastAPI."""

from __future__ import annotations

from typing import Any

from app.completion.chat import ChatPreparer
from app.completion.choices import Choices
from app.completion.generation import Runner
from app.completion.prepare import Preparer
from app.completion.prepared import PreparedCompletion
from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.stream import CompletionStream, settle
from app.completion.tokenizer import AsyncTokenizer
from app.completion.wire import CHAT, TEXT
from app.errors import GatewayError
from app.observability.metrics import Metrics
from app.observability.record import RequestRecord
from app.tenancy.ledger import Ledger
from app.tenancy.tenants import Tenant


class CompletionService:
    def __init__(
        self,
        preparer: Preparer,
        chat: ChatPreparer,
        runner: Runner,
        metrics: Metrics,
        ledger: Ledger | None = None,
    ):
        self.preparer = preparer
        self.chat = chat
        self.runner = runner
        self.tokenizer: AsyncTokenizer = preparer.tokenizer
        self.model = preparer.model
        self.catalog = preparer.catalog  # model ids, adapters among them
        self.adapters = preparer.catalog.adapters  # None without GATEWAY_LORA_*
        self.metrics = metrics
        self.ledger = ledger

    async def prepare(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        tenant: Tenant | None = None,
        record: RequestRecord | None = None,
        priority: int | None = None,
    ) -> PreparedCompletion:
        """Validate and tokenise; with a record, charge the tenant's budgets
        (429 beyond one) and keep the record for what the run uses.
        `priority`: what it runs at, when the caller decides (a batch line's,
        below every online one), else the tenant's and the request's."""
        if isinstance(req, ChatCompletionRequest):
            prep = await self.chat.prepare(req, tenant)
        else:
            prep = await self.preparer.prepare(req, tenant)
        if priority is not None:
            prep.priority = priority
        if record is not None:
            prep.record = record
            options = prep.options
            record.prepared(
                prep.request_id,
                prep.model,
                prep.priority,
                prep.prompt_tokens,
                requested_model=req.model,
                truncated_tokens=prep.dropped_tokens,
                max_tokens=options.max_tokens,
                temperature=options.temperature,
                top_p=options.top_p,
            )
            if record.content is not None:  # GATEWAY_TRACE_CONTENT
                if isinstance(req, ChatCompletionRequest):
                    record.content["input"] = req.model_dump(mode="json")["messages"]
                else:
                    record.content["input"] = req.prompt
            if tenant is not None and self.ledger is not None:
                await self.ledger.charge(record, tenant, prep.budget_tokens)
        return prep

    def engine_stepped(self) -> None:
        """Once per engine step: running requests pay their flows' output."""
        self.runner.admission.step()

    def in_engine(self) -> int:
        """Engine requests in flight now (the watchdog's measure of busy)."""
        return len(self.runner.active)

    def break_all(self, error: GatewayError) -> None:
        """End every request now with `error` (the engine is hung)."""
        self.runner.break_all(error)

    async def abort_all(self) -> None:
        """Abort every engine request in flight (drain timeout)."""
        await self.runner.abort_all()

    async def complete(self, prep: PreparedCompletion) -> dict[str, Any]:
        """The whole answer: the same deltas a stream sends, accumulated."""
        choices = Choices(prep, self.tokenizer.sync, self.metrics)
        async with self.runner.open(prep) as generation:
            try:
                async for i, out in generation:
                    choices.feed(i, out)
            finally:
                settle(generation, choices)
        fmt = CHAT if prep.chat else TEXT
        return fmt.answer(prep, choices, choices.usage(generation.cached_tokens))

    async def open_stream(self, prep: PreparedCompletion) -> CompletionStream:
        """Admit the request now (503 when full). With a running place, start
        it and wait for its first output, so that errors the engine raises on
        admission still become a proper HTTP status. A queued request returns
        at once: it waits inside the stream, whose keep-alive comments tell
        the client and proxies that it is alive."""
        generation = self.runner.open(prep)
        if not generation.queued:
            await generation.start()  # if it fails, it is settled and closed
        return CompletionStream(generation, Choices(prep, self.tokenizer.sync, self.metrics))
