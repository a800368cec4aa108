"""The lifecycle's phases, and where the process stands in them.

starting -> loading (engine construction: weights, KV cache, graph capture)
-> warming (real generations) -> ready -> draining (after SIGTERM) -> stopped;
any phase can go to failed. The HTTP port is bound before loading starts, so
health endpoints answer throughout.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import Any

logger = logging.getLogger(__name__)


class Phase(enum.StrEnum):
    STARTING = "starting"
    LOADING = "loading"
    WARMING = "warming"
    READY = "ready"
    DRAINING = "draining"
    STOPPED = "stopped"
    FAILED = "failed"


class Lifecycle:
    """The current phase, its timings, and the error that ended in `failed`."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.phase = Phase.STARTING
        self.since = self.started_at
        self.durations: dict[str, float] = {}
        self.error: str | None = None
        self.has_been_ready = False
        # Called with (old, new, seconds in old) on every change; metrics subscribe.
        self.listeners: list[Callable[[str, str, float], None]] = []

    def enter(self, phase: Phase) -> None:
        if phase is self.phase:
            return
        now = time.monotonic()
        old, spent = self.phase, now - self.since
        self.durations[old.value] = round(spent, 3)
        self.phase, self.since = phase, now
        if phase is Phase.READY:
            self.has_been_ready = True
        log = logger.error if phase is Phase.FAILED else logger.info
        log("phase %s -> %s after %.2fs in %s", old.value, phase.value, spent, old.value)
        for listener in self.listeners:
            listener(old.value, phase.value, spent)

    def fail(self, reason: str) -> None:
        if self.phase is Phase.FAILED:
            return
        self.error = reason
        self.enter(Phase.FAILED)

    def snapshot(self) -> dict[str, Any]:
        now = time.monotonic()
        return {
            "phase": self.phase.value,
            "seconds_in_phase": round(now - self.since, 3),
            "uptime_seconds": round(now - self.started_at, 3),
            "phase_durations": dict(self.durations),
            "error": self.error,
        }
