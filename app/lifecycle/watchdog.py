"""Is the engine still working? Two ways it stops:

- dead: the engine-core process is gone (vLLM sets `errored`);
- hung: alive but stuck (an HCCL hang, an NPU fault, a driver stall). Seen
  as requests running in the engine and no engine step for
  GATEWAY_STALL_TIMEOUT seconds; while idle, an optional canary (a 1-token
  generation every GATEWAY_CANARY_INTERVAL seconds without traffic) must
  finish within the same timeout.

Engine steps arrive through vLLM's stat logger (`heartbeat`), once per step,
so watching costs nothing per token.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable

from app.config import Settings
from app.engine.protocol import Engine
from app.engine.warmup import generate_once, synthetic_prompt
from app.observability.metrics import Metrics

logger = logging.getLogger(__name__)


class Watchdog:
    def __init__(self, settings: Settings, metrics: Metrics):
        self.settings = settings
        self.metrics = metrics
        self.last_step = time.monotonic()

    def heartbeat(self) -> None:
        """An engine step happened (called from the engine's stat logger)."""
        self.last_step = time.monotonic()

    async def watch(self, engine: Engine, busy: Callable[[], int]) -> tuple[str, bool]:
        """Return (why, hung) once the engine is dead or hung; `busy()` is the
        number of requests running in the engine."""
        settings = self.settings
        stall = settings.stall_timeout
        busy_since: float | None = None
        canary: asyncio.Task[None] | None = None
        canary_since = canary_ended = 0.0
        try:
            while True:
                await asyncio.sleep(settings.watchdog_interval)
                if engine.errored:
                    return "the inference engine died (engine core process gone)", False
                now = time.monotonic()
                running = busy()
                if running:
                    busy_since = busy_since or now
                    quiet = now - max(self.last_step, busy_since)
                    if quiet > stall:
                        return (
                            f"the inference engine is hung: {running} request(s) "
                            f"running and no engine step for {quiet:.0f} s "
                            f"(GATEWAY_STALL_TIMEOUT={stall:g})",
                            True,
                        )
                else:
                    busy_since = None
                if canary is not None:
                    if canary.done():
                        # The engine's death is seen above, at the next round;
                        # any other failure of the canary is logged and it is
                        # tried again, so the watch itself never ends silently.
                        failure = canary.exception()
                        if failure is not None:
                            self.metrics.canary_failures.inc()
                            logger.warning("idle canary failed: %r", failure)
                        canary, canary_ended = None, now
                    elif now - canary_since > stall:
                        return (
                            "the inference engine is hung: the idle canary (1 token) got no "
                            f"answer within {stall:g} s (GATEWAY_STALL_TIMEOUT)",
                            True,
                        )
                interval = settings.canary_interval
                idle = not running and now - max(self.last_step, canary_ended) >= interval
                if interval and canary is None and idle:
                    canary_since = now
                    canary = asyncio.create_task(self._canary(engine))
        finally:
            if canary is not None:
                canary.cancel()

    async def _canary(self, engine: Engine) -> None:
        await generate_once(engine, synthetic_prompt(engine, 0, 8), 1, f"canary-{time.time_ns()}")
