"""Completions, composed: prepare (app.prepare, app.chat) -> run
(app.generation) -> choices (app.choices), told in the endpoint's shape
(app.formats), whole or as a stream of JSON chunks. No FastAPI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from app.admission import Admission
from app.chat import ChatPreparer
from app.chat_template import ChatTemplate, load_source
from app.choices import Choices, Delta
from app.config import Settings
from app.engine.protocol import Engine, RequestOutput
from app.errors import EngineFailure, EngineStalled, GatewayError, RequestTimeout, Unavailable
from app.formats import CHAT, TEXT, TextFormat
from app.generation import Generation, Runner
from app.metrics import Metrics
from app.prepare import PreparedCompletion, Preparer
from app.schemas import ChatCompletionRequest, CompletionRequest
from app.tokenizer import AsyncTokenizer


class CompletionService:
    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics, admission: Admission):
        self.engine = engine
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
        # The error events a stream can end with, exported at 0 from the start
        # so that rate() and the alert see the first one.
        for error in (EngineFailure, EngineStalled, RequestTimeout, Unavailable):
            metrics.stream_errors.labels(metrics.model, error.type)

    async def prepare(
        self, req: CompletionRequest | ChatCompletionRequest, tenant: bytes | None = None
    ) -> PreparedCompletion:
        if isinstance(req, ChatCompletionRequest):
            return await self.chat.prepare(req, tenant)
        return await self.preparer.prepare(req, tenant)

    async def abort_all(self) -> None:
        """Abort every engine request in flight (drain timeout)."""
        await self.runner.abort_all()

    async def complete(self, prep: PreparedCompletion) -> dict[str, Any]:
        """The whole answer: the same deltas a stream sends, accumulated."""
        choices = Choices(prep, self.tokenizer.sync, self.metrics)
        async with self.runner.open(prep) as generation:
            async for i, out in generation:
                for _ in choices.feed(i, out):
                    pass
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


Feed = Callable[[int, RequestOutput], Iterator[Delta]]


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
    """A streaming request: iterating it yields the JSON chunks; `close()`
    aborts what is unfinished and gives the admission place back. The HTTP
    layer calls `close()` when the response ends however it ends (even if
    iteration never started), so nothing is held after the client has gone."""

    def __init__(self, generation: Generation, choices: Choices, fmt: TextFormat):
        self.generation = generation
        self.choices = choices
        self.fmt = fmt

    async def _chunks(self) -> AsyncIterator[str]:
        generation = self.generation
        prep = generation.prep
        choices = self.choices
        fmt = self.fmt
        head = fmt.head(prep)
        usage_field = {"usage": None} if prep.include_usage else {}
        dumps = json.dumps
        encode = fmt.encoder(prep)
        deltas: Feed = choices.feed
        if prep.stream_interval > 1:
            deltas = _coalesced(choices.feed, prep.stream_interval)
        try:
            async for i, out in generation:
                for d in deltas(i, out):
                    if fmt.opens and d.first:
                        opening = {**head, "choices": [fmt.opening(d.choice)], **usage_field}
                        yield dumps(opening)
                    yield encode(d)
        finally:
            await self.close()  # aborts the engine request now if unfinished
        if prep.include_usage:
            usage = choices.usage(generation.cached_tokens)
            yield dumps({**head, "choices": [], "usage": usage})

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    def failed(self, error: GatewayError) -> None:
        metrics = self.choices.metrics
        metrics.stream_errors.labels(metrics.model, error.type).inc()

    async def close(self) -> None:
        await self.generation.close()
