"""Completions, composed: prepare (app.prepare) -> run (app.generation) ->
choices (app.choices), answered whole or as a stream of JSON chunks.
No FastAPI."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator

from app.admission import Admission
from app.choices import Choices
from app.config import Settings
from app.engine.protocol import Engine
from app.errors import EngineFailure, EngineStalled, GatewayError, RequestTimeout, Unavailable
from app.generation import Generation, Runner
from app.metrics import Metrics
from app.prepare import PreparedCompletion, Preparer
from app.schemas import Completion, CompletionRequest
from app.tokenizer import AsyncTokenizer


class CompletionService:
    def __init__(self, engine: Engine, settings: Settings, metrics: Metrics, admission: Admission):
        self.engine = engine
        self.settings = settings
        self.metrics = metrics
        self.tokenizer = AsyncTokenizer(engine.tokenizer)
        self.preparer = Preparer(engine, settings, self.tokenizer, metrics)
        self.runner = Runner(engine, admission, metrics, settings.request_timeout)
        self.model = self.preparer.model
        # The error events a stream can end with, exported at 0 from the start
        # so that rate() and the alert see the first one.
        for error in (EngineFailure, EngineStalled, RequestTimeout, Unavailable):
            metrics.stream_errors.labels(metrics.model, error.type)

    async def prepare(self, req: CompletionRequest) -> PreparedCompletion:
        return await self.preparer.prepare(req)

    async def abort_all(self) -> None:
        """Abort every engine request in flight (drain timeout)."""
        await self.runner.abort_all()

    async def complete(self, prep: PreparedCompletion) -> Completion:
        """The whole answer: the same deltas a stream sends, accumulated."""
        choices = Choices(prep, self.tokenizer.sync, self.metrics)
        async with self.runner.open(prep) as generation:
            async for i, out in generation:
                for _ in choices.feed(i, out):
                    pass
        return {
            "id": prep.request_id,
            "object": "text_completion",
            "created": prep.created,
            "model": prep.model,
            "choices": choices.final(),
            "usage": choices.usage(),
        }

    async def open_stream(self, prep: PreparedCompletion) -> CompletionStream:
        """Admit the request now (503 when full). With a running place, start
        it and wait for its first output, so that errors the engine raises on
        admission still become a proper HTTP status. A queued request returns
        at once: it waits inside the stream, whose keep-alive comments tell
        the client and proxies that it is alive."""
        generation = self.runner.open(prep)
        stream = CompletionStream(generation, Choices(prep, self.tokenizer.sync, self.metrics))
        if generation.queued:
            return stream
        try:
            await generation.start()
        except BaseException:
            await stream.close()
            raise
        return stream


class CompletionStream:
    """A streaming request: iterating it yields the JSON chunks; `close()`
    aborts what is unfinished and gives the admission place back. The HTTP
    layer calls `close()` when the response ends however it ends (even if
    iteration never started), so nothing is held after the client has gone."""

    def __init__(self, generation: Generation, choices: Choices):
        self.generation = generation
        self.choices = choices

    async def _chunks(self) -> AsyncIterator[str]:
        prep = self.generation.prep
        choices = self.choices
        head = {
            "id": prep.request_id,
            "object": "text_completion",
            "created": prep.created,
            "model": prep.model,
        }
        usage_field = {"usage": None} if prep.include_usage else {}
        dumps = json.dumps
        try:
            async for i, out in self.generation:
                for d in choices.feed(i, out):
                    choice = {
                        "index": d.choice.index,
                        "text": d.text,
                        "logprobs": d.choice.logprobs_from(d.logprobs_start),
                        "finish_reason": d.finish_reason,
                    }
                    yield dumps({**head, "choices": [choice], **usage_field}, ensure_ascii=False)
        finally:
            await self.close()  # aborts the engine request now if unfinished
        if prep.include_usage:
            yield dumps({**head, "choices": [], "usage": choices.usage()})

    def __aiter__(self) -> AsyncIterator[str]:
        return self._chunks()

    def failed(self, error: GatewayError) -> None:
        metrics = self.choices.metrics
        metrics.stream_errors.labels(metrics.model, error.type).inc()

    async def close(self) -> None:
        await self.generation.close()
