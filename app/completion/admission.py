"""Admission control: a bound on requests in the engine and on those waiting
for a place. The decision is made at once, on arrival: a running place, a
queued place, or 503 + Retry-After. A request once admitted (running or
queued) is never dropped for capacity."""

from __future__ import annotations

import asyncio
from collections import deque

from app.errors import Overloaded


class Place:
    """One request's place: running, or queued until `wait()` returns.
    `release()` gives it back and may be called any number of times."""

    __slots__ = ("_admission", "_tokens", "queued", "running")

    def __init__(self, admission: Admission, tokens: int, queued: bool):
        self._admission = admission
        self._tokens = tokens
        self.queued = queued
        self.running = not queued

    async def wait(self) -> None:
        """Return once the place is running (at once if it already is)."""
        if not self.queued:
            return
        admission = self._admission
        slot = asyncio.get_running_loop().create_future()
        admission._waiters.append(slot)
        try:
            await slot
            self.running = True
        except asyncio.CancelledError:
            if slot.done() and not slot.cancelled():
                admission._hand_on()  # handed a slot while being cancelled: pass it on
            raise
        finally:
            self._dequeue()

    def _dequeue(self) -> None:
        if self.queued:
            self.queued = False
            self._admission.queued -= 1
            self._admission.queued_tokens -= self._tokens

    def release(self) -> None:
        self._dequeue()
        if self.running:
            self.running = False
            self._admission._hand_on()


class Admission:
    def __init__(self, max_inflight: int, max_queue: int, max_queued_tokens: int):
        self.max_inflight = max_inflight
        self.max_queue = max_queue
        self.max_queued_tokens = max_queued_tokens
        self.running = 0
        self.queued = 0
        self.queued_tokens = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    def enter(self, prompt_tokens: int) -> Place:
        """Decide now: a running place, a queued one, or Overloaded."""
        if self.running < self.max_inflight and not self._waiters:
            self.running += 1
            return Place(self, prompt_tokens, queued=False)
        if self.queued >= self.max_queue:
            raise Overloaded(
                f"The server is at capacity ({self.max_inflight} requests running, "
                f"{self.queued} waiting); retry later."
            )
        if self.queued_tokens + prompt_tokens > self.max_queued_tokens:
            raise Overloaded("The server's queue holds too many prompt tokens; retry later.")
        self.queued += 1
        self.queued_tokens += prompt_tokens
        return Place(self, prompt_tokens, queued=True)

    def _hand_on(self) -> None:
        """A running place ends: give it to the oldest waiter, if any."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)  # `running` stays: the place changes hands
                return
        self.running -= 1
