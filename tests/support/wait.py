"""Event-driven waits: poll a condition with a generous deadline instead of
sleeping a fixed time (a loaded machine makes fixed sleeps flaky)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

T = TypeVar("T")

# Generous: the bound only matters when the behaviour is broken, and a
# 2-core machine with both cores busy is many times slower than an idle one.
WITHIN = 60.0


def until(check: Callable[[], T], what: str, within: float = WITHIN, every: float = 0.02) -> T:
    """`check()`'s first truthy value; fails the test after `within` seconds."""
    deadline = time.monotonic() + within
    while not (result := check()):
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        time.sleep(every)
    return result


async def until_async(
    check: Callable[[], Awaitable[T | None]], what: str, within: float = WITHIN, every: float = 0.01
) -> T:
    """`until` inside an event loop: `check` is a coroutine function whose
    first value that is not None is returned."""
    deadline = time.monotonic() + within
    while (result := await check()) is None:
        assert time.monotonic() < deadline, f"not within {within:g} s: {what}"
        await asyncio.sleep(every)
    return result
