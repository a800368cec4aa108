"""Completions, composed: prepare (app.completion.prepare, app.completion.chat) -> run
(app.completion.generation) -> choices (app.completion.choices), told in the endpoint's shape
(app.completion.formats), whole or as a stream of JSON chunks. No FastAPI."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from typing import Any, get_args

from app.completion.admission import Admission
from app.completion.chat import ChatPreparer
from app.completion.chat_template import ChatTemplate, load_source
from app.completion.choices import Choices, Delta
from app.completion.formats import CHAT, TEXT, TextFormat
from app.completion.generation import Generation, Runner
from app.completion.prepare import Preparer
from app.completion.prepared import PreparedCompletion
from app.completion.schemas import ChatCompletionRequest, CompletionRequest
from app.completion.sse import chunk_event, end_events
from app.completion.tokenizer import AsyncTokenizer
from app.config import Settings
from app.engine.protocol import Engine, RequestOutput, StructuredKind
from app.errors import EngineFailure, EngineStalled, GatewayError, RequestTimeout, Unavailable
from app.observability.metrics import Metrics
from app.observability.record import RequestRecord
from app.tenancy.ledger import Ledger
from app.tenancy.tenants import Tenant


class CompletionService:
    def __init__(
        self,
        engine: Engine,
        settings: Settings,
        metrics: Metrics,
        admission: Admission,
        ledger: Ledger | None = None,
    ):
        self.engine = engine
        self.ledger = ledger
        self.settings = settings
        self.metrics = metrics
        self.tokenizer = AsyncTokenizer(engine.tokenizer)
        self.preparer = Preparer(engine, settings, self.tokenizer, metrics)
        tok = engine.tokenizer
        template = ChatTemplate(
            load_source(settings.chat_template, tok),
            bos=str(getattr(tok, "bos_token", None) or ""),
            eos=str(getattr(tok, "eos_token", None) or ""),
        )
        self.chat = ChatPreparer(self.preparer, template, self.tokenizer)
        self.runner = Runner(engine, admission, metrics, settings.request_timeout)
        self.model = self.preparer.model
        # The error events a stream can end with and the constraint kinds,
        # exported at 0 from the start so that rate() and alerts see the first.
        for error in (EngineFailure, EngineStalled, RequestTimeout, Unavailable):
            metrics.stream_errors.labels(metrics.model, error.type)
        for kind in get_args(StructuredKind):
            metrics.structured_requests.labels(metrics.model, kind)

    async def prepare(
        self,
        req: CompletionRequest | ChatCompletionRequest,
        tenant: Tenant | None = None,
        record: RequestRecord | None = None,
    ) -> PreparedCompletion:
        """Validate and tokenise; with a record, charge the tenant's budgets
        (429 beyond one) and keep the record for what the run uses."""
        if isinstance(req, ChatCompletionRequest):
            prep = await self.chat.prepare(req, tenant)
        else:
            prep = await self.preparer.prepare(req, tenant)
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
                _ran(generation, choices)
        fmt = CHAT if prep.chat else TEXT
        return fmt.answer(prep, choices, choices.usage(generation.cached_tokens))

    async def open_stream(self, prep: PreparedCompletion) -> CompletionStream:
        """Admit the request now (503 when full). With a running place, start
        it and wait for its first output, so that errors the engine raises on
        admission still become a proper HTTP status. A queued request returns
        at once: it waits inside the stream, whose keep-alive comments tell
        the client and proxies that it is alive."""
        generation = self.runner.open(prep)
        choices = Choices(prep, self.tokenizer.sync, self.metrics)
        stream = CompletionStream(generation, choices, CHAT if prep.chat else TEXT)
        if generation.queued:
            return stream
        try:
            await generation.start()
        except BaseException:
            await stream.close()
            raise
        return stream


Feed = Callable[[int, RequestOutput], Iterable[Delta]]


def _ran(generation: Generation, choices: Choices) -> None:
    """A run is over (before its place goes back): settle its flow's share
    to the tokens it used, and tell its record."""
    prep, place = generation.prep, generation.place
    place.used = prep.prompt_tokens + choices.completion_tokens
    record = prep.record
    if record is not None:
        record.finished_run(
            completion_tokens=choices.completion_tokens,
            cached_tokens=generation.cached_tokens,
            finish_reasons=choices.finish_reasons(),
            queue_s=place.queue_seconds(),
            ttft_s=choices.ttft(),
            run_at=place.started,
            last_token_at=choices.last_token_at(),
            gone=not (generation.finished or generation.failed),
        )
        if record.content is not None:
            record.content["output"] = choices.texts()


def _coalesced(feed: Feed, interval: int) -> Feed:
    """`feed`, with each choice's deltas after its first merged until they
    hold `interval` tokens or finish (vLLM 0.32's stream_interval, done here
    so it works on every vLLM)."""
    pending: dict[int, Delta] = {}

    def merged(prompt_index: int, out: RequestOutput) -> Iterator[Delta]:
        for d in feed(prompt_index, out):
            if d.first:
                yield d  # always alone: the time to first token is not traded away
                continue
            key = d.choice.index
            held = pending.get(key)
            if held is not None:
                held.text += d.text
                held.tokens += d.tokens
                held.finish_reason = d.finish_reason
                d = held
            if d.tokens >= interval or d.finish_reason is not None:
                pending.pop(key, None)
                yield d
            else:
                pending[key] = d

    return merged


class CompletionStream:
    """A streaming request, told as SSE events: each `next_events()` waits
    for the engine's next output and returns the events it makes (several
    joined into one write when they are ready together), the last time with
    the usage chunk and `[DONE]`. `close()` aborts what is unfinished and
    gives the admission place back; the HTTP layer calls it when the
    response ends however it ends (even if no event was asked for), so
    nothing is held after the client has gone.

    A coroutine per output rather than an async generator of chunks: every
    level of generator between the engine and the socket is resumed and
    suspended again for every token of every stream."""

    def __init__(self, generation: Generation, choices: Choices, fmt: TextFormat):
        self.generation = generation
        self.choices = choices
        self.fmt = fmt
        self.done = False
        prep = generation.prep
        self._head = fmt.head(prep)
        self._usage_field = {"usage": None} if prep.include_usage else {}
        self._encode = fmt.encoder(prep)
        self._deltas: Feed = choices.feed
        if prep.stream_interval > 1:
            self._deltas = _coalesced(choices.feed, prep.stream_interval)
        # One prompt's output that finishes it is the last: its events go
        # out with the usage chunk and [DONE], in one write.
        self._single = len(prep.prompts) == 1

    async def next_events(self) -> str:
        """The events of the next output ("" when it brought nothing to
        send); after `done`, no more."""
        generation, encode, fmt = self.generation, self._encode, self.fmt
        events: list[str] = []
        while True:
            try:
                i, out = await generation.__anext__()
            except StopAsyncIteration:
                events.append(self._end())
                return "".join(events)
            for d in self._deltas(i, out):
                if fmt.opens and d.first:
                    opening = {**self._head, "choices": [fmt.opening(d.choice)]}
                    events.append(chunk_event({**opening, **self._usage_field}))
                events.append(encode(d))
            if not (self._single and out.finished):
                return "".join(events)
            # The engine ends this stream right after its finished output.

    def _end(self) -> str:
        self.done = True
        usage = None
        if self.generation.prep.include_usage:
            usage = self.choices.usage(self.generation.cached_tokens)
        return end_events(self._head, usage)

    def failed(self, error: GatewayError) -> None:
        metrics = self.choices.metrics
        metrics.stream_errors.labels(metrics.model, error.type).inc()
        record = self.generation.prep.record
        if record is not None:
            record.stream_error = error

    async def close(self) -> None:
        if self.generation.place.used is None:
            _ran(self.generation, self.choices)
        await self.generation.close()
