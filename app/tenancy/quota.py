"""Where budget counters live: in this process (`memory`, the default) or in
Redis (`redis://host:port/db`), where every gateway of a fleet charges the
same counters atomically (one Lua script per charge), so N replicas
together hold a tenant's budget, not N times it.

Redis unreachable: by default the gateway keeps serving on counters of its
own (fail-open; `gateway_quota_store_up` 0 and one log line when it goes
and when it comes back), or with GATEWAY_QUOTA_FAIL=closed refuses budgeted
requests with 503 until it is back."""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections.abc import Callable
from typing import Any, Protocol

from app.errors import Unavailable
from app.tenancy.budgets import Verdict, Window

logger = logging.getLogger(__name__)


class QuotaStore(Protocol):
    async def charge(self, windows: list[Window], charge_id: str = "") -> Verdict:
        """Atomically: if every window has room for its `add`, add them all."""
        ...

    async def refund(
        self,
        windows: list[Window],
        tokens: int,
        *,
        requests: int = 0,
        charge_id: str = "",
        local: bool = False,
    ) -> None:
        """Give `tokens` back to each token window and `requests` to each
        request window, in the store the charge was taken in (`local`)."""
        ...


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

    async def charge(self, windows: list[Window], charge_id: str = "") -> Verdict:
        now = time.monotonic()
        if now >= self._next_sweep:
            self._counts = {k: v for k, v in self._counts.items() if v[1] > now}
            self._next_sweep = now + 60
        counts = [self._get(w.key, now) for w in windows]
        for i, (w, c) in enumerate(zip(windows, counts, strict=True)):
            if c + w.add > w.limit:
                return Verdict(tuple(counts), refused=i, local=True)
        for w, c in zip(windows, counts, strict=True):
            self._counts[w.key] = (c + w.add, now + w.ttl)
        return Verdict(tuple(c + w.add for w, c in zip(windows, counts, strict=True)), local=True)

    async def refund(
        self,
        windows: list[Window],
        tokens: int,
        *,
        requests: int = 0,
        charge_id: str = "",
        local: bool = True,
    ) -> None:
        self.refund_now(windows, tokens, requests)

    def refund_now(self, windows: list[Window], tokens: int, requests: int = 0) -> None:
        """The same, at once (no task per request for counters of our own)."""
        for w, back in zip(windows, _amounts(windows, tokens, requests), strict=True):
            if back and w.key in self._counts:
                count, expires = self._counts[w.key]
                self._counts[w.key] = (max(0, count - back), expires)


def _amounts(windows: list[Window], tokens: int, requests: int) -> list[int]:
    return [tokens if w.unit == "tokens" else requests for w in windows]


# KEYS: one per window, then the charge's marker; ARGV: limit, add, ttl for
# each window, then the marker's ttl. Returns {0, counts...} when charged,
# {i, counts...} when window i would overflow (nothing charged), {-1} when
# the marker exists (the charge was given up on: never charge it late).
# TTL-then-EXPIRE rather than `EXPIRE ... NX`: Redis 6 has no NX.
_CHARGE = """
local n = #KEYS - 1
if redis.call('EXISTS', KEYS[n + 1]) == 1 then
  return {-1}
end
local counts = {}
for i = 1, n do
  counts[i] = tonumber(redis.call('GET', KEYS[i]) or '0')
end
for i = 1, n do
  if counts[i] + tonumber(ARGV[3*i-1]) > tonumber(ARGV[3*i-2]) then
    return {i, unpack(counts)}
  end
end
for i = 1, n do
  counts[i] = redis.call('INCRBY', KEYS[i], ARGV[3*i-1])
  if redis.call('TTL', KEYS[i]) < 0 then
    redis.call('EXPIRE', KEYS[i], ARGV[3*i])
  end
end
redis.call('SET', KEYS[n + 1], 'c', 'EX', ARGV[3*n + 1])
return {0, unpack(counts)}
"""

# Give a charge back, once. KEYS: windows, then the marker; ARGV: the amount
# for each window, the marker's ttl, the marker's new state ('r' refunded,
# 'x' cancelled), and whether to give back when the marker is gone (a
# refund after it expired: yes; a cancel of a charge that never ran: no).
# Never below zero, never recreating a key that has expired.
_GIVE_BACK = """
local n = #KEYS - 1
local marker = KEYS[n + 1]
local state = redis.call('GET', marker)
if state == 'c' or (not state and ARGV[n + 3] == '1') then
  for i = 1, n do
    local c = redis.call('GET', KEYS[i])
    if c then
      local v = tonumber(c) - tonumber(ARGV[i])
      if v < 0 then v = 0 end
      redis.call('SET', KEYS[i], v, 'KEEPTTL')
    end
  end
end
if state ~= 'r' and state ~= 'x' then
  redis.call('SET', marker, ARGV[n + 2], 'EX', ARGV[n + 1])
end
return 0
"""

# Seconds a charge's marker lives: longer than a request may take
# (GATEWAY_REQUEST_TIMEOUT's default 600), so its refund finds it.
MARKER_TTL = 900


class RedisStore:
    """The fleet's counters in Redis, with this process's own as the fallback.

    Every charge carries an id (its marker key), so an answer lost to a
    timeout never counts twice: the charge is taken locally (fail-open) and,
    once Redis answers again, cancelled there if the script did run (or
    fenced off if it runs later). A refund that fails is kept and retried;
    the marker makes it count once."""

    RETRY_AFTER = 2.0  # seconds between attempts while Redis is unreachable

    def __init__(
        self,
        url: str,
        fail_open: bool = True,
        on_state: Callable[[bool], None] = lambda up: None,
        timeout: float = 0.5,
    ):
        import redis.asyncio as aioredis  # only when a Redis store is configured

        self.url = url
        self.fail_open = fail_open
        self.on_state = on_state
        self._client: Any = aioredis.Redis.from_url(
            url, socket_timeout=timeout, socket_connect_timeout=timeout, health_check_interval=30
        )
        self._charge = self._client.register_script(_CHARGE)
        self._give_back = self._client.register_script(_GIVE_BACK)
        self._local = MemoryStore()
        self.up = True
        self._retry_at = 0.0
        # What Redis may or may not have done: charges to cancel, refunds to
        # retry, (windows, amounts, marker, state, if the marker is gone).
        self.pending: list[tuple[list[Window], list[int], str, str, bool]] = []
        self._reconciling: asyncio.Task[None] | None = None
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
        if self.pending and self._reconciling is None:
            self._reconciling = asyncio.ensure_future(self.reconcile())

    async def charge(self, windows: list[Window], charge_id: str = "") -> Verdict:
        marker = f"gw:charge:{charge_id or uuid.uuid4().hex}"
        if self.up or time.monotonic() >= self._retry_at:
            args: list[Any] = []
            for w in windows:
                args += [w.limit, w.add, w.ttl]
            try:
                result = await self._charge(
                    keys=[*(w.key for w in windows), marker], args=[*args, MARKER_TTL]
                )
            except Exception as exc:  # redis.RedisError, OSError, timeouts
                self._down(exc)
                # It may have run (an answer lost to the timeout): cancel it there.
                self.pending.append((windows, [w.add for w in windows], marker, "x", False))
            else:
                self._back()
                refused = int(result[0])
                if refused >= 0:
                    counts = tuple(int(c) for c in result[1:])
                    return Verdict(counts, refused=refused - 1 if refused else None)
        if not self.fail_open:
            raise Unavailable("The quota store is unreachable; budgeted requests wait for it.")
        return await self._local.charge(windows)

    async def refund(
        self,
        windows: list[Window],
        tokens: int,
        *,
        requests: int = 0,
        charge_id: str = "",
        local: bool = False,
    ) -> None:
        amounts = _amounts(windows, tokens, requests)
        if not any(amounts):
            return
        if local:  # charged on our own counters while Redis was away: back there
            self._local.refund_now(windows, tokens, requests)
            return
        entry = (windows, amounts, f"gw:charge:{charge_id}", "r", True)
        if not await self._give(entry):
            self.pending.append(entry)

    async def _give(self, entry: tuple[list[Window], list[int], str, str, bool]) -> bool:
        windows, amounts, marker, state, if_gone = entry
        if not self.up and time.monotonic() < self._retry_at:
            return False
        try:
            await self._give_back(
                keys=[*(w.key for w in windows), marker],
                args=[*amounts, MARKER_TTL, state, "1" if if_gone else "0"],
            )
        except Exception as exc:
            self._down(exc)
            return False
        self._back()
        return True

    async def reconcile(self) -> None:
        """Cancel the charges whose answer was lost, retry the refunds that
        failed; what fails again waits for the next time Redis answers."""
        try:
            while self.pending:
                entry = self.pending[0]
                if not await self._give(entry):
                    return
                self.pending.remove(entry)
        finally:
            self._reconciling = None

    async def close(self) -> None:
        if self._reconciling is not None:
            await asyncio.gather(self._reconciling, return_exceptions=True)
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
