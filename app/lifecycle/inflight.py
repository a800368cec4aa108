"""The HTTP requests being served that drain waits for (app.api.middleware counts them)."""

from __future__ import annotations

import asyncio


class InFlight:
    """Count of HTTP requests being served, and a way to wait until none are."""

    def __init__(self) -> None:
        self.count = 0
        self._idle = asyncio.Event()
        self._idle.set()

    def enter(self) -> None:
        self.count += 1
        self._idle.clear()

    def leave(self) -> None:
        self.count -= 1
        if self.count == 0:
            self._idle.set()

    async def wait_idle(self, seconds: float) -> bool:
        """True once none are in flight; False if `seconds` pass first."""
        try:
            async with asyncio.timeout(seconds):
                await self._idle.wait()
        except TimeoutError:
            return False
        return True
