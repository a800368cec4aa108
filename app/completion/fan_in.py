"""The engine requests of one run, read as one sequence of outputs: one
prompt's output stream as the engine gives it, several prompts' tracked,
tagged with their index and merged as they come (fan_in)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator, Callable
from contextlib import aclosing
from typing import Any, TypeVar

from app.completion.prepared import PreparedCompletion, PreparedPrompt
from app.engine.protocol import Engine, RequestOutput

T = TypeVar("T")


def engine_outputs(
    engine: Engine,
    prep: PreparedCompletion,
    active: set[str],
    accepted: Callable[[PreparedPrompt, RequestOutput], None],
) -> AsyncGenerator[Any, None]:
    """The run's engine requests, each in `active` while it runs. One prompt:
    the engine's own output stream, untagged (no generator of ours between
    it and the consumer: each level costs per token), and its first output
    goes to `accepted` by the caller. Several: each prompt's outputs tagged
    with its index, `accepted` told of each one's first, all fanned in."""
    trace = prep.record.trace_headers if prep.record is not None else None
    adapter = prep.adapter.ref if prep.adapter is not None else None

    def request(prompt: PreparedPrompt, request_id: str) -> AsyncGenerator[RequestOutput, None]:
        if adapter is None:  # the base model (engines without adapters take no argument)
            return engine.generate(
                prompt.token_ids, prep.options, request_id, prep.cache_salt, prep.priority, trace
            )
        return engine.generate(
            prompt.token_ids, prep.options, request_id, prep.cache_salt, prep.priority, trace,
            adapter,
        )  # fmt: skip

    if len(prep.prompts) == 1:
        active.add(prep.request_id)
        return request(prep.prompts[0], prep.request_id)

    async def tagged(
        index: int, prompt: PreparedPrompt, request_id: str
    ) -> AsyncGenerator[tuple[int, RequestOutput], None]:
        active.add(request_id)
        try:
            # Closed here and now when we are (its abort runs at once, not
            # whenever the garbage collector finalises it).
            gen = request(prompt, request_id)
            first = True
            async with aclosing(gen):
                async for out in gen:
                    if first:
                        accepted(prompt, out)
                        first = False
                    yield index, out
        finally:
            active.discard(request_id)

    return fan_in([tagged(i, p, f"{prep.request_id}-{i}") for i, p in enumerate(prep.prompts)])


async def fan_in(sources: list[AsyncGenerator[T, None]]) -> AsyncGenerator[T, None]:
    """Every source's items, in the order they arrive. The first error of any
    source is raised (and ends the others); closing this closes them all."""
    queue: asyncio.Queue[tuple[T] | Exception | None] = asyncio.Queue()

    async def pump(source: AsyncGenerator[T, None]) -> None:
        try:
            async for item in source:
                queue.put_nowait((item,))
        except Exception as exc:
            queue.put_nowait(exc)
        finally:
            queue.put_nowait(None)

    tasks = [asyncio.create_task(pump(source)) for source in sources]
    try:
        running = len(tasks)
        while running:
            got = await queue.get()
            if got is None:
                running -= 1
            elif isinstance(got, Exception):
                raise got
            else:
                yield got[0]
    finally:
        # Cancelling a pump cancels its source (an engine request: aborted).
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
