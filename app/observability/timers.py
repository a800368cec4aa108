"""Per-request latency bookkeeping: TTFT, inter-token latency, TPOT and
end-to-end latency, observed into app.observability.metrics as outputs arrive."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from app.observability.metrics import Metrics


class RequestTimer:
    """Latency bookkeeping for one completion choice, fed as outputs arrive."""

    __slots__ = ("arrival", "exemplar", "first", "last", "tokens")

    def __init__(self, arrival: float, exemplar: dict[str, str] | None = None):
        self.arrival = arrival
        self.exemplar = exemplar  # the trace of a sampled request, for OpenMetrics
        self.first = 0.0
        self.last = 0.0
        self.tokens = 0

    def tokens_out(self, metrics: Metrics, n: int) -> None:
        if n <= 0:
            return
        now = time.monotonic()
        if self.tokens == 0:
            # The first token's latency is TTFT; tokens that came with it in
            # the same output arrived together (no gap before them).
            self.first = self.last = now
            metrics.ttft.observe(now - self.arrival, self.exemplar)
            n -= 1
            self.tokens = 1
        if n > 0:
            # A step that delivers several tokens at once spreads its gap over them.
            gap = (now - self.last) / n
            for _ in range(n):
                metrics.itl.observe(gap)
            self.tokens += n
        self.last = now

    def finish(self, metrics: Metrics) -> None:
        if self.tokens == 0:
            return
        e2e = self.last - self.arrival
        metrics.e2e.observe(e2e, self.exemplar)
        if self.tokens > 1:
            tpot = (e2e - (self.first - self.arrival)) / (self.tokens - 1)
            metrics.tpot.observe(tpot, self.exemplar)
