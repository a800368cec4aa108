"""Per-key rate limits: a token bucket per API key (GATEWAY_RATE_LIMIT_RPM
requests a minute, bursts of GATEWAY_RATE_LIMIT_BURST). Beyond it: 429 with
`Retry-After` (the openai SDK raises RateLimitError and retries after it).
Buckets exist only for configured keys, so their number is bounded."""

from __future__ import annotations

import math
import time

from app.errors import RateLimited

# Refills are sums of float fractions: a token due at exactly this second can
# add up to 0.9999999999; within this much of a whole one it counts as whole.
_EPSILON = 1e-9


class RateLimiter:
    def __init__(self, per_minute: int, burst: int):
        self.rate = per_minute / 60.0  # tokens per second
        self.burst = float(burst)
        self._buckets: dict[bytes, tuple[float, float]] = {}  # key digest -> (tokens, at)

    def check(self, key: bytes) -> None:
        """Take one request from `key`'s bucket, or raise RateLimited."""
        now = time.monotonic()
        tokens, at = self._buckets.get(key, (self.burst, now))
        tokens = min(self.burst, tokens + (now - at) * self.rate)
        if tokens < 1 - _EPSILON:
            self._buckets[key] = (tokens, now)
            wait = math.ceil((1 - tokens) / self.rate - _EPSILON)
            raise RateLimited(
                f"Rate limit reached for this API key ({self.rate * 60:g} requests per "
                f"minute); retry after {wait} s.",
                retry_after=wait,
            )
        self._buckets[key] = (max(0.0, tokens - 1), now)
