"""Where budget counters live: in this process (`memory`, the default) or in
Redis (`redis://host:port/db`), where every gateway of a fleet charges the
same counters atomically (one Lua script per charge), so N replicas
together hold a tenant's budget, not N times it.

Redis unreachable: by default the gateway keeps serving on counters of its
own (fail-open; `gateway_quota_store_up` 0 and one log line when it goes
and when it comes back), or with GATEWAY_QUOTA_FAIL=closed refuses budgeted
requests with 503 until it is back."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any

from app.errors import Unavailable
from app.tenancy.budgets import QuotaStore, Verdict, Window

logger = logging.getLogger(__name__)


class MemoryStore:
    """Counters of this process, each gone when its window has passed."""

    def __init__(self) -> None:
        self._counts: dict[str, tuple[int, float]] = {}  # key -> (count, expires)
        self._next_sweep = 0.0

    def _get(self, key: str, now: float) -> int:
        entry = self._counts.get(key)
        if entry is None or entry[1] <= now:
            return 0
        return entry[0]

    async def charge(self, windows: list[Window]) -> Verdict:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._next_sweep = now + 60
        counts = [self._get(w.key, now) for w in windows]
        for i, (w, c) in enumerate(zip(windows, counts, strict=True)):
            if c + w.add > w.limit:
                return Verdict(tuple(counts), refused=i)
        for w, c in zip(windows, counts, strict=True):
            self._counts[w.key] = (c + w.add, now + w.ttl)
        return Verdict(tuple(c + w.add for w, c in zip(windows, counts, strict=True)))

    async def refund(self, windows: list[Window], tokens: int) -> None:
        self.refund_now(windows, tokens)

    def refund_now(self, windows: list[Window], tokens: int) -> None:
        """The same, at once (no task per request for counters of our own)."""
        for w in windows:
            if w.unit == "tokens" and w.key in self._counts:
                count, expires = self._counts[w.key]
                self._counts[w.key] = (max(0, count - tokens), expires)


# KEYS: one per window; ARGV: limit, add, ttl for each. Returns {0, counts...}
# when charged, or {i, counts...} when window i would overflow (nothing charged).
_CHARGE = """
local counts = {}
for i = 1, #KEYS do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, #KEYS do
  if counts[i] + tonumber(ARGV[3*i-1]) > tonumber(ARGV[3*i-2]) then
    return {i, unpack(counts)}
  end
end
for i = 1, #KEYS do
  counts[i] = redis.call('INCRBY', KEYS[i], ARGV[3*i-1])
  redis.call('EXPIRE', KEYS[i], ARGV[3*i], 'NX')
end
return {0, unpack(counts)}
"""

# KEYS: token windows; ARGV[1]: tokens to give back (never below zero, never
# creating a key that has expired).
_REFUND = """
for i = 1, #KEYS do
  local c = redis.call('GET', KEYS[i])
  if c then
    local n = tonumber(c) - tonumber(ARGV[1])
    if n < 0 then n = 0 end
    redis.call('SET', KEYS[i], n, 'KEEPTTL')
  end
end
return 0
"""


class RedisStore:
    """The fleet's counters in Redis, with this process's own as the fallback."""

    RETRY_AFTER = 2.0  # seconds between attempts while Redis is unreachable

    def __init__(
        self,
        url: str,
        fail_open: bool = True,
        on_state: Callable[[bool], None] = lambda up: None,
    ):
        import redis.asyncio as aioredis  # only when a Redis store is configured

        self.url = url
        self.fail_open = fail_open
        self.on_state = on_state
        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=0.5, socket_connect_timeout=0.5, health_check_interval=30
        )
        self._charge = self._client.register_script(_CHARGE)
        self._refund = self._client.register_script(_REFUND)
        self._local = MemoryStore()
        self.up = True
        self._retry_at = 0.0
        on_state(True)

    def _down(self, exc: Exception) -> None:
        self._retry_at = time.monotonic() + self.RETRY_AFTER
        if self.up:
            self.up = False
            self.on_state(False)
            mode = "this gateway's own counters" if self.fail_open else "refusing budgeted requests"
            logger.warning("quota store %s unreachable (%s): %s", _safe(self.url), exc, mode)

    def _back(self) -> None:
        if not self.up:
            self.up = True
            self.on_state(True)
            logger.warning("quota store %s reachable again: fleet counters", _safe(self.url))

    async def charge(self, windows: list[Window]) -> Verdict:
        if self.up or time.monotonic() >= self._retry_at:
            args: list[Any] = []
            for w in windows:
                args += [w.limit, w.add, w.ttl]
            try:
                result = await self._charge(keys=[w.key for w in windows], args=args)
            except Exception as exc:  # redis.RedisError, OSError, timeouts
                self._down(exc)
            else:
                self._back()
                refused = int(result[0])
                counts = tuple(int(c) for c in result[1:])
                return Verdict(counts, refused=refused - 1 if refused else None)
        if not self.fail_open:
            raise Unavailable("The quota store is unreachable; budgeted requests wait for it.")
        return await self._local.charge(windows)

    async def refund(self, windows: list[Window], tokens: int) -> None:
        keys = [w.key for w in windows if w.unit == "tokens"]
        if not keys or tokens <= 0:
            return
        if self.up:
            try:
                await self._refund(keys=keys, args=[tokens])
                return
            except Exception as exc:
                self._down(exc)
        await self._local.refund(windows, tokens)

    async def close(self) -> None:
        await self._client.aclose()


def _safe(url: str) -> str:
    """The URL without a password, for logs."""
    if "@" in url:
        scheme, _, rest = url.partition("://")
        return f"{scheme}://***@{rest.split('@', 1)[1]}"
    return url


def open_store(
    spec: str, fail_open: bool = True, on_state: Callable[[bool], None] = lambda up: None
) -> QuotaStore:
    """`memory`, or a redis:// / rediss:// / unix:// URL."""
    if spec == "memory":
        return MemoryStore()
    return RedisStore(spec, fail_open=fail_open, on_state=on_state)
