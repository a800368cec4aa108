"""One streamed completion, whole in one place: the stream object the HTTP
layer reads (app.api.sse_response), the feed that turns engine outputs into
deltas (Choices.feed, coalesced to stream_interval), its end,
and the report of its run (`settle`), which the whole answer uses too.

    generation = runner.open(prep)
    await generation.start()              # unless queued: errors come as statuses
    stream = CompletionStream(generation, Choices(prep, ...))
    while not stream.done:
        write(await stream.next_events())
    await stream.close()                  # however it ended
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator

from app.completion.choices import Choices, Delta
from app.completion.generation import Generation
from app.completion.wire import CHAT, TEXT
from app.engine.protocol import RequestOutput
from app.errors import GatewayError

Feed = Callable[[int, RequestOutput], Iterable[Delta]]


def settle(generation: Generation, choices: Choices) -> None:
    """A run is over: its generation settled with what its choices hold
    (what only its record reads is gathered only when it has one)."""
    if generation.prep.record is None:
        generation.settle(choices.completion_tokens)
        return
    generation.settle(
        choices.completion_tokens,
        choices.finish_reasons(),
        choices.ttft(),
        choices.last_token_at(),
        choices.texts,
    )


def coalesced(feed: Feed, interval: int) -> Feed:
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

    def __init__(self, generation: Generation, choices: Choices):
        self.generation = generation
        self.choices = choices
        self.done = False
        prep = generation.prep
        self._deltas: Feed = choices.feed
        if prep.stream_interval > 1:
            self._deltas = coalesced(choices.feed, prep.stream_interval)
        # One prompt's output that finishes it is the last: its events go
        # out with the usage chunk and [DONE], in one write.
        self._single = len(prep.prompts) == 1
        self.frames = (CHAT if prep.chat else TEXT).frames(prep)

    async def next_events(self) -> str:
        """The events of the next output ("" when it brought nothing to
        send); after `done`, no more."""
        generation, frames = self.generation, self.frames
        encode = frames.delta
        events: list[str] = []
        while True:
            try:
                i, out = await generation.__anext__()
            except StopAsyncIteration:
                events.append(self._end())
                return "".join(events)
            for d in self._deltas(i, out):
                if frames.opens and d.first:
                    events.append(frames.opening(d.choice))
                events.append(encode(d))
            if not (self._single and out.finished):
                return "".join(events)
            # The engine ends this stream right after its finished output.

    def _end(self) -> str:
        self.done = True
        usage = None
        if self.generation.prep.include_usage:
            usage = self.choices.usage(self.generation.cached_tokens)
        return self.frames.end(usage)

    def failed(self, error: GatewayError) -> None:
        metrics = self.choices.metrics
        metrics.stream_errors.labels(metrics.model, error.type).inc()
        record = self.generation.prep.record
        if record is not None:
            record.stream_error = error

    async def close(self) -> None:
        if self.generation.place.used is None:  # not settled yet (close runs twice)
            settle(self.generation, self.choices)
        await self.generation.close()
