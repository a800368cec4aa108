"""Admission control: a bound on requests in the engine and on those waiting
for a place. Beyond both, a request is refused at once (503 + Retry-After);
a request once admitted is never dropped for capacity."""

from __future__ import annotations

import asyncio

from app.errors import Overloaded


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, max_queued_tokens: int):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.max_queued_tokens = max_queued_tokens
        self._slots = asyncio.Semaphore(max_inflight)
        self.queued = 0
        self.queued_tokens = 0

    async def acquire(self, prompt_tokens: int) -> None:
        """Take an in-flight place, waiting in the bounded queue if need be."""
        if not self._slots.locked():
            await self._slots.acquire()  # a place is free: no wait
            return
        if self.queued >= self.max_queue:
            raise Overloaded(
                f"The server is at capacity ({self.max_inflight} requests running, "
                f"{self.queued} waiting); retry later."
            )
        if self.queued_tokens + prompt_tokens > self.max_queued_tokens:
            raise Overloaded("The server's queue holds too many prompt tokens; retry later.")
        self.queued += 1
        self.queued_tokens += prompt_tokens
        try:
            await self._slots.acquire()
        finally:
            self.queued -= 1
            self.queued_tokens -= prompt_tokens

    def release(self) -> None:
        self._slots.release()
