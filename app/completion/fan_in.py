"""Several async generators read as one: what a request with several
prompts uses to merge their engine outputs as they come."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncGenerator
from typing import TypeVar

T = TypeVar("T")


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
